/**
 * Times `aws cloudhsmv2 describe-clusters`, the command that an init container runs today to
 * find the HSM addresses, against the loopback fake endpoint.
 */
import { execFile } from "node:child_process";
import { accessSync, constants, realpathSync } from "node:fs";
import { delimiter, join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Returns the path of `aws` on PATH, or undefined when there is none. */
export function findAwsCli(): string | undefined {
  for (const folder of (process.env.PATH ?? "").split(delimiter)) {
    if (folder === "") {
      continue;
    }
    const candidate = join(folder, "aws");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not in this folder; PATH lookup goes on.
    }
  }
  return undefined;
}

export interface AwsCliTiming {
  readonly path: string;
  /** `path` with symbolic links resolved. */
  readonly resolvedPath: string;
  readonly version: string;
  readonly runsMs: number[];
}

/**
 * Runs the command `runs` times and returns each wall time. Every run gets an endpoint on
 * 127.0.0.1, static credentials, no config files and no instance metadata, so nothing leaves
 * this machine. Throws when a run fails or its output lacks the cluster id.
 */
export async function timeAwsCli(options: {
  readonly path: string;
  readonly endpoint: string;
  readonly clusterId: string;
  readonly region: string;
  readonly runs: number;
  readonly home: string;
}): Promise<AwsCliTiming> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: options.home,
    AWS_ACCESS_KEY_ID: "AKIDLOOPBACKBENCH",
    AWS_SECRET_ACCESS_KEY: "loopback-bench-secret",
    AWS_EC2_METADATA_DISABLED: "true",
    AWS_CONFIG_FILE: join(options.home, "no-aws-config"),
    AWS_SHARED_CREDENTIALS_FILE: join(options.home, "no-aws-credentials"),
    AWS_DEFAULT_REGION: options.region,
    AWS_PAGER: "",
  };
  const version = await run(options.path, ["--version"], {
    env,
    timeout: 60_000,
  });
  const args = [
    "cloudhsmv2",
    "describe-clusters",
    "--endpoint-url",
    options.endpoint,
    "--region",
    options.region,
    "--filters",
    `clusterIds=${options.clusterId}`,
    "--output",
    "json",
  ];
  const runsMs: number[] = [];
  for (let index = 0; index < options.runs; index += 1) {
    const started = performance.now();
    const { stdout } = await run(options.path, args, { env, timeout: 60_000 });
    runsMs.push(performance.now() - started);
    if (!stdout.includes(options.clusterId)) {
      throw new Error(
        `aws cloudhsmv2 describe-clusters printed no ${options.clusterId}: ${stdout.slice(0, 300)}`,
      );
    }
  }
  return {
    path: options.path,
    resolvedPath: realpathSync(options.path),
    version: `${version.stdout}${version.stderr}`.trim(),
    runsMs,
  };
}
