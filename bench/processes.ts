/** Child processes of the benchmark: the webhook under test and the floor server. */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import {
  closeSync,
  createReadStream,
  existsSync,
  openSync,
  readFileSync,
  symlinkSync,
} from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

export const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Node arguments that run the CLI from the TypeScript sources. */
export const TSX_ENTRY: readonly string[] = [
  "--import",
  "tsx",
  "src/cli/main.ts",
];

/**
 * Compiles src with tsc and tsconfig.build.json into `outDir`, as the image build does, and
 * returns the Node arguments that run the compiled CLI. Rejects with tsc's output when the
 * compilation fails.
 */
export async function compileWebhook(outDir: string): Promise<string[]> {
  const tsc = join(REPO_ROOT, "node_modules/typescript/bin/tsc");
  try {
    await promisify(execFile)(
      process.execPath,
      [tsc, "-p", "tsconfig.build.json", "--outDir", outDir],
      { cwd: REPO_ROOT, timeout: 300_000, maxBuffer: 10 * 1024 * 1024 },
    );
  } catch (error) {
    const output = (error as { stdout?: string }).stdout ?? "";
    throw new Error(
      `tsc -p tsconfig.build.json failed, so there is no build to measure. Fix the errors or run with --tsx:\n${output.slice(0, 2000)}`,
    );
  }
  const main = join(outDir, "src/cli/main.js");
  if (!existsSync(main)) {
    throw new Error(`tsc wrote no ${main}`);
  }
  // The compiled files import packages by name, which Node resolves from node_modules folders
  // above them.
  symlinkSync(join(REPO_ROOT, "node_modules"), join(outDir, "node_modules"));
  return [main];
}

/** A child process that the benchmark started and must stop. */
export interface Child {
  readonly pid: number;
  readonly port: number;
  /** Resident set size in bytes, read from /proc. */
  rssBytes(): number;
  /** User plus system CPU time in seconds, read from /proc. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

// Linux reports utime and stime in clock ticks, which are 100 per second on common kernels.
const CLOCK_TICKS_PER_SECOND = 100;

function readRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) {
    throw new Error(`no VmRSS line in /proc/${pid}/status`);
  }
  return Number(match[1]) * 1024;
}

function readCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name in parentheses may contain spaces, so fields are counted after it.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / CLOCK_TICKS_PER_SECOND;
}

/** Sends SIGTERM, then SIGKILL after `graceMs`, to this one child, and waits for its exit. */
async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  const exited = new Promise<void>((resolve) =>
    child.once("exit", () => resolve()),
  );
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

function childEnvironment(extra: Record<string, string>): NodeJS.ProcessEnv {
  // Only what the child needs: no AWS profile, kubeconfig or proxy setting of the caller leaks in.
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", ...extra };
}

export interface WebhookProcessOptions {
  /** Node arguments that run the CLI: TSX_ENTRY or the result of compileWebhook. */
  readonly entry: readonly string[];
  /** Flags after `serve`. */
  readonly args: readonly string[];
  readonly env: Record<string, string>;
  /** File that receives the webhook's stdout, its pino log. */
  readonly logFile: string;
  /** Extra node flags, such as --cpu-prof. */
  readonly nodeFlags?: readonly string[];
}

/**
 * Starts `cloudhsm-webhook serve` with its log written to a file, as a container runtime would,
 * and waits for the "serving" line that carries its port.
 */
export async function startWebhookProcess(
  options: WebhookProcessOptions,
): Promise<Child> {
  const logFd = openSync(options.logFile, "w");
  const child = spawn(
    process.execPath,
    [...(options.nodeFlags ?? []), ...options.entry, "serve", ...options.args],
    {
      cwd: REPO_ROOT,
      env: childEnvironment(options.env),
      stdio: ["ignore", logFd, "pipe"],
    },
  );
  closeSync(logFd);
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });

  const deadline = Date.now() + 30_000;
  let port: number | undefined;
  for (let attempt = 0; attempt < 600 && Date.now() < deadline; attempt += 1) {
    if (child.exitCode !== null) {
      throw new Error(
        `the webhook exited with status ${child.exitCode} before serving: ${stderr.trim()}`,
      );
    }
    port = findServingPort(readFileSync(options.logFile, "utf8"));
    if (port !== undefined) {
      break;
    }
    await sleep(50);
  }
  if (port === undefined || child.pid === undefined) {
    await stopChild(child, 2_000);
    throw new Error(
      `the webhook did not log its port within 30 s: ${stderr.trim()}`,
    );
  }
  const pid = child.pid;
  return {
    pid,
    port,
    rssBytes: () => readRssBytes(pid),
    cpuSeconds: () => readCpuSeconds(pid),
    stop: () => stopChild(child, 10_000),
  };
}

function findServingPort(log: string): number | undefined {
  for (const line of log.split("\n")) {
    if (line.includes('"cloudhsm-webhook serving"')) {
      const parsed = JSON.parse(line) as { port?: unknown };
      return typeof parsed.port === "number" ? parsed.port : undefined;
    }
  }
  return undefined;
}

/** Starts bench/floor-server.ts and waits for its "listening PORT" line. */
export async function startFloorProcess(
  certFile: string,
  keyFile: string,
  templateFile: string,
): Promise<Child> {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "bench/floor-server.ts",
      certFile,
      keyFile,
      templateFile,
    ],
    {
      cwd: REPO_ROOT,
      env: childEnvironment({ NODE_ENV: "production" }),
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(`the floor server did not start within 30 s: ${stderr}`),
        ),
      30_000,
    );
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const match = /^listening (\d+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(
        new Error(`the floor server exited with status ${code}: ${stderr}`),
      );
    });
  });
  const pid = child.pid!;
  return {
    pid,
    port,
    rssBytes: () => readRssBytes(pid),
    cpuSeconds: () => readCpuSeconds(pid),
    stop: () => stopChild(child, 5_000),
  };
}

/** Counts the lines of a file that contain `text`, reading it as a stream. */
export async function countLines(file: string, text: string): Promise<number> {
  const lines = createInterface({ input: createReadStream(file) });
  let count = 0;
  for await (const line of lines) {
    if (line.includes(text)) {
      count += 1;
    }
  }
  return count;
}
