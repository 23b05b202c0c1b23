import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { LineBatcher } from "../src/log.js";

let folder: string;
let fileNumber = 0;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-batcher-"));
});

afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

/** Creates a batcher in front of a real pino destination that writes to a new file. */
function batcherToFile(batchLength: number, flushMs = 60_000) {
  fileNumber += 1;
  const file = join(folder, `log-${fileNumber}.txt`);
  const destination = pino.destination({
    dest: file,
    sync: false,
    minLength: batchLength,
  });
  const ready = new Promise<void>((done) => destination.once("ready", done));
  return {
    file,
    ready,
    batcher: new LineBatcher(destination, batchLength, flushMs),
  };
}

/** Reads the file until it has `count` lines, for at most 5 s. */
async function waitForLines(file: string, count: number): Promise<string[]> {
  let lines: string[] = [];
  for (let attempt = 0; attempt < 100; attempt += 1) {
    lines = (await readFile(file, "utf8")).split("\n").filter(Boolean);
    if (lines.length >= count) {
      return lines;
    }
    await new Promise((done) => setTimeout(done, 50));
  }
  return lines;
}

describe("LineBatcher", () => {
  it("keeps short batches until flush", async () => {
    const { file, ready, batcher } = batcherToFile(4096);
    await ready;

    batcher.write("first\n");
    batcher.write("second\n");
    await new Promise((done) => setTimeout(done, 100));
    const before = await readFile(file, "utf8");
    await new Promise<void>((done, fail) =>
      batcher.flush((error) => (error ? fail(error) : done())),
    );

    expect(before).toBe("");
    expect(await readFile(file, "utf8")).toBe("first\nsecond\n");
  });

  it("writes a full batch without flush", async () => {
    const { file, ready, batcher } = batcherToFile(100);
    await ready;
    const lines = Array.from(
      { length: 4 },
      (_, index) => `line ${index} ${"x".repeat(30)}`,
    );

    for (const line of lines) {
      batcher.write(`${line}\n`);
    }

    expect(await waitForLines(file, 3)).toEqual(lines.slice(0, 3));
  });

  it("writes pending lines on the timer", async () => {
    const { file, ready, batcher } = batcherToFile(4096, 50);
    await ready;

    batcher.write("timed\n");

    expect(await waitForLines(file, 1)).toEqual(["timed"]);
  });

  it("writes everything in flushSync", async () => {
    const { file, ready, batcher } = batcherToFile(100);
    await ready;
    const lines = Array.from({ length: 7 }, (_, index) => `sync ${index}`);

    for (const line of lines) {
      batcher.write(`${line} ${"y".repeat(20)}\n`);
    }
    batcher.flushSync();

    expect((await readFile(file, "utf8")).split("\n").filter(Boolean)).toEqual(
      lines.map((line) => `${line} ${"y".repeat(20)}`),
    );
  });

  it("writes pending lines at exit", async () => {
    // A process that logs three lines and exits at once, before any batch is full.
    const script = [
      `const { createServerLogger } = await import(${JSON.stringify(resolve("src/log.ts"))});`,
      `const logger = createServerLogger("info");`,
      `for (const n of [1, 2, 3]) logger.info({ n }, "early line");`,
      `process.exit(0);`,
    ].join("\n");

    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "--eval", script],
      { timeout: 20_000, env: { PATH: process.env.PATH } },
    );
    const lines = stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { n: number; msg: string });

    expect(lines.map((line) => line.n)).toEqual([1, 2, 3]);
    expect(lines.every((line) => line.msg === "early line")).toBe(true);
  });
});
