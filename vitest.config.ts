import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    setupFiles: ["test/support/fail-on-unhandled.ts"],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    // Two cores on CI: integration tests start TLS servers and child processes.
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
  },
});
