import { readFile } from "node:fs/promises";
import type { Readable, Writable } from "node:stream";
import {
  ConfigError,
  DISCOVERY_FLAGS,
  formatFlagHelp,
  readDiscoveryConfig,
  readFlags,
  type DiscoveryConfig,
  type FlagSpec,
} from "../config.js";
import { AwsHsmSource } from "../discovery/aws-source.js";
import { DiscoveryError, type HsmSource } from "../discovery/types.js";
import { activeHsms, summarizeStates } from "../injection/addresses.js";
import type { RenderedCluster } from "../injection/render.js";
import {
  ManifestError,
  clusterKey,
  injectManifests,
  parseManifests,
  planManifests,
  renderManifests,
  requiredClusters,
  type RequiredCluster,
} from "../offline/manifests.js";
import { createSource } from "./serve.js";

/** Flags of `cloudhsm-webhook inject`: the input file, and how to find HSMs. */
export const INJECT_FLAGS: readonly FlagSpec[] = [
  {
    name: "filename",
    short: "f",
    env: "CLOUDHSM_WEBHOOK_INJECT_FILENAME",
    kind: "string",
    description: 'manifest file to inject, or "-" for standard input',
  },
  ...DISCOVERY_FLAGS,
];

export const INJECT_USAGE = `Usage: cloudhsm-webhook inject -f FILE [flags]

Writes the manifests in FILE to standard output with the CloudHSM addresses injected into every
pod template that opts in, as the webhook would inject the pods created from it. FILE holds YAML
documents or JSON; "-f -" reads standard input.

Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and the items of a
List are injected. Opt-in and options are read from the pod template, then from the workload's
own metadata, then from a Namespace of the same input. Other documents are copied unchanged,
and comments outside the changed fields are kept. Running inject on its own output changes
nothing while the addresses stay the same.

Nothing is written unless every document succeeds. The exit status is 0 on success, 1 for an
invalid document or a failed DescribeClusters call, and 2 for invalid flags. Documents are
numbered from 1 in messages.

Flags:
${formatFlagHelp(INJECT_FLAGS)}
`;

/** The streams a command reads and writes; process.stdin/stdout/stderr in the CLI. */
export interface CommandStreams {
  readonly stdin: Readable;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

export interface InjectOverrides {
  /** Time written into cloudhsm/injected-at. */
  readonly now?: Date;
}

// Clusters are described a few at a time, so an input that names many cannot flood the API.
const DESCRIBE_CONCURRENCY = 4;

/**
 * Runs `inject` with explicit streams and returns the exit status. Flag errors return 2, and
 * every other failure returns 1 with a message on stderr and nothing on stdout.
 */
export async function runInjectCommand(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  streams: CommandStreams,
  overrides: InjectOverrides = {},
): Promise<number> {
  let config: DiscoveryConfig;
  let filename: string;
  try {
    const { values, help, positionals } = readFlags(INJECT_FLAGS, argv, env);
    if (help) {
      await write(streams.stdout, INJECT_USAGE);
      return 0;
    }
    if (positionals.length > 0) {
      throw new ConfigError(
        `unexpected argument "${positionals[0]}": pass the manifest file with -f`,
      );
    }
    filename = values.filename ?? "";
    if (filename === "") {
      throw new ConfigError(
        'missing -f FILE: the manifest file to inject, or "-f -" for standard input',
      );
    }
    config = readDiscoveryConfig(values);
  } catch (error) {
    if (error instanceof ConfigError) {
      await write(
        streams.stderr,
        `cloudhsm-webhook inject: ${error.message}\n`,
      );
      return 2;
    }
    throw error;
  }

  try {
    const output = await injectText(
      await readInput(filename, streams.stdin),
      config,
      streams.stderr,
      overrides.now ?? new Date(),
    );
    await write(streams.stdout, output);
    return 0;
  } catch (error) {
    if (error instanceof ManifestError || error instanceof InputError) {
      await write(streams.stderr, prefixLines(error.message));
      return 1;
    }
    throw error;
  }
}

/** Runs `inject` on the process streams, for the CLI's command table. */
export function runInject(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<number> {
  return runInjectCommand(argv, env, {
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
  });
}

/** The input file cannot be read, or a cluster cannot be described. */
class InputError extends Error {
  override readonly name = "InputError";
}

async function injectText(
  text: string,
  config: DiscoveryConfig,
  stderr: Writable,
  now: Date,
): Promise<string> {
  const manifests = parseManifests(text);
  const plan = planManifests(manifests, {
    clusterId: config.clusterId,
    region: config.region,
  });
  const clusters = await describeClusters(
    requiredClusters(plan.targets),
    config,
  );
  const warnings = [
    ...plan.warnings,
    ...injectManifests(plan, clusters, config.hsmCaFile, now),
  ];
  const output = renderManifests(manifests);
  for (const warning of warnings) {
    await write(stderr, `cloudhsm-webhook inject: warning: ${warning}\n`);
  }
  return output;
}

/**
 * Describes every required cluster. Throws InputError naming each cluster that failed or has no
 * ACTIVE HSM, with the documents that need it, because the webhook would reject those pods.
 */
async function describeClusters(
  required: readonly RequiredCluster[],
  config: DiscoveryConfig,
): Promise<Map<string, RenderedCluster>> {
  const clusters = new Map<string, RenderedCluster>();
  if (required.length === 0) {
    return clusters;
  }
  const source = createSource(config);
  const failures: string[] = [];
  try {
    for (
      let start = 0;
      start < required.length;
      start += DESCRIBE_CONCURRENCY
    ) {
      const batch = required.slice(start, start + DESCRIBE_CONCURRENCY);
      const results = await Promise.all(
        batch.map((cluster) => describeOne(source, cluster)),
      );
      results.forEach((result, index) => {
        const cluster = batch[index]!;
        const users = `needed by ${cluster.locations.join(", ")}`;
        if ("failure" in result) {
          failures.push(`${result.failure} (${users})`);
          return;
        }
        const active = activeHsms(result.snapshot.hsms);
        if (active.length === 0) {
          failures.push(
            `cluster ${cluster.clusterId} in ${cluster.region} has no ACTIVE HSM ` +
              `(${summarizeStates(result.snapshot.hsms)}) (${users})`,
          );
          return;
        }
        clusters.set(clusterKey(cluster.clusterId, cluster.region), {
          snapshot: result.snapshot,
          active,
        });
      });
    }
  } finally {
    if (source instanceof AwsHsmSource) {
      source.destroy();
    }
  }
  if (failures.length > 0) {
    throw new InputError(failures.join("\n"));
  }
  return clusters;
}

async function describeOne(
  source: HsmSource,
  cluster: RequiredCluster,
): Promise<
  { snapshot: Awaited<ReturnType<HsmSource["describe"]>> } | { failure: string }
> {
  try {
    return {
      snapshot: await source.describe(cluster.clusterId, cluster.region),
    };
  } catch (error) {
    if (error instanceof DiscoveryError) {
      return { failure: `${error.code}: ${error.message}` };
    }
    throw error;
  }
}

async function readInput(filename: string, stdin: Readable): Promise<string> {
  if (filename === "-") {
    const chunks: Buffer[] = [];
    for await (const chunk of stdin) {
      chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
    }
    return Buffer.concat(chunks).toString("utf8");
  }
  try {
    return await readFile(filename, "utf8");
  } catch (error) {
    throw new InputError(
      `cannot read ${filename}: ${(error as Error).message}`,
    );
  }
}

function prefixLines(message: string): string {
  return message
    .split("\n")
    .map((line) => `cloudhsm-webhook inject: ${line}\n`)
    .join("");
}

/** Writes `text` and waits until the stream has taken it. */
export function write(stream: Writable, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (error) => (error ? reject(error) : resolve()));
  });
}
