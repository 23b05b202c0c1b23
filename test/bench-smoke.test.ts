import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, test } from "vitest";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("..", import.meta.url));

let folder: string;
let results: Record<string, any>;
let stdout: string;

// The smoke run starts the webhook and the floor as child processes and sends a few hundred
// requests. Its timings mean nothing. It only proves that every section still runs.
beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-bench-smoke-"));
  const jsonFile = join(folder, "results.json");
  const output = await run(
    process.execPath,
    [
      "--import",
      "tsx",
      "bench/run.ts",
      "--quick",
      "--smoke",
      "--json",
      jsonFile,
    ],
    {
      cwd: repoRoot,
      timeout: 100_000,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
      maxBuffer: 10 * 1024 * 1024,
    },
  );
  stdout = output.stdout;
  results = JSON.parse(await readFile(jsonFile, "utf8")) as Record<string, any>;
}, 120_000);

afterAll(async () => {
  if (folder !== undefined) {
    await rm(folder, { recursive: true, force: true });
  }
});

test("smoke run reports every section", () => {
  expect(results.mode).toBe("smoke");
  for (const section of [
    "throughput",
    "latency",
    "costGrowth",
    "awsCost",
    "memory",
    "awsCli",
    "targets",
  ]) {
    expect(results).toHaveProperty(section);
  }
  expect(stdout).toContain("## Targets");
});

test("smoke run sees no correctness problem", () => {
  expect(results.problems).toEqual([]);
  expect(results.decisionLines.found).toBe(results.decisionLines.expected);
  expect(results.decisionLines.expected).toBeGreaterThan(0);
});

test("both servers handled requests", () => {
  expect(results.throughput.webhook.requests).toBeGreaterThan(0);
  expect(results.throughput.floor.requests).toBeGreaterThan(0);
  expect(results.latency.webhook.requests).toBeGreaterThan(0);
});

test("cost growth covers sizes and containers", () => {
  const names = results.costGrowth.map((series: any) => series.name);
  expect(names).toEqual([
    "pod size, annotation padding",
    "pod size, env padding",
    "containers",
  ]);
  for (const series of results.costGrowth) {
    expect(series.cases).toHaveLength(3);
  }
});

test("admissions made no extra AWS calls", () => {
  expect(results.awsCost.admissions).toBeGreaterThan(0);
  expect(results.awsCost.describeCalls).toBeLessThanOrEqual(
    results.awsCost.allowedCalls,
  );
});
