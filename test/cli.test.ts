import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { expect, test } from "vitest";

const run = promisify(execFile);
const main = resolve("src/cli/main.ts");
const version = (
  JSON.parse(readFileSync("package.json", "utf8")) as { version: string }
).version;

test("--version prints the package version", async () => {
  const { stdout } = await run(process.execPath, [
    "--import",
    "tsx",
    main,
    "--version",
  ]);
  expect(stdout.trim()).toBe(`cloudhsm-webhook ${version}`);
});

test("unknown command exits 2 with usage", async () => {
  const failure = await run(process.execPath, [
    "--import",
    "tsx",
    main,
    "frobnicate",
  ]).catch((error: { code: number; stderr: string }) => error);
  expect((failure as { code: number }).code).toBe(2);
  expect((failure as { stderr: string }).stderr).toContain(
    'unknown command "frobnicate"',
  );
});
