import { isIPv4 } from "node:net";
import {
  ConfigError,
  DISCOVERY_FLAGS,
  formatFlagHelp,
  readChoice,
  readDiscoveryConfig,
  readFlags,
  type DiscoveryConfig,
  type FlagSpec,
} from "../config.js";
import { AwsHsmSource } from "../discovery/aws-source.js";
import {
  DiscoveryError,
  type ClusterSnapshot,
  type Hsm,
} from "../discovery/types.js";
import { activeHsms } from "../injection/addresses.js";
import { write, type CommandStreams } from "./inject.js";
import { createSource } from "./serve.js";

export const OUTPUT_FORMATS = ["table", "json"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** Flags of `cloudhsm-webhook describe`: the output format, and how to find HSMs. */
export const DESCRIBE_FLAGS: readonly FlagSpec[] = [
  {
    name: "output",
    short: "o",
    env: "CLOUDHSM_WEBHOOK_DESCRIBE_OUTPUT",
    kind: "choice",
    choices: OUTPUT_FORMATS,
    default: "table",
    description: "output format",
  },
  // describe renders no config, so it has no use for --hsm-ca-file.
  ...DISCOVERY_FLAGS.filter((flag) => flag.name !== "hsm-ca-file").map(
    (flag) =>
      flag.name === "cluster-id"
        ? {
            ...flag,
            description:
              "CloudHSM cluster id to describe (cluster-xxxxxxxxxxx)",
          }
        : flag,
  ),
];

export const DESCRIBE_USAGE = `Usage: cloudhsm-webhook describe [flags]

Calls DescribeClusters for --cluster-id in --region, or reads --static-hsms, and prints each HSM
with its availability zone, ENI IP, state, and whether the webhook would inject its address.
Only ACTIVE HSMs with an IPv4 ENI address are injected, in numeric address order.

The exit status is 0 when the cluster was described, even when it has no ACTIVE HSM, 1 when
DescribeClusters failed (the message starts with the error code), and 2 for invalid flags.

Flags:
${formatFlagHelp(DESCRIBE_FLAGS)}
`;

/** One HSM and whether the webhook injects its address. */
export interface HsmRow {
  readonly hsmId: string;
  readonly availabilityZone: string | null;
  readonly eniIp: string | null;
  readonly state: string;
  readonly injected: boolean;
  /** The reason the address is not injected, or null when it is injected. */
  readonly reason: string | null;
}

/** The JSON document that `describe -o json` prints. */
export interface ClusterDescription {
  readonly clusterId: string;
  readonly region: string;
  readonly clusterState: string | null;
  /** Time of the DescribeClusters response, in RFC 3339 format. */
  readonly fetchedAt: string;
  /** The addresses a pod created now would get, in injection order. */
  readonly injectedIps: readonly string[];
  readonly hsms: readonly HsmRow[];
}

/**
 * Lists a cluster's HSMs with the injection decision for each. The injected ones come first, in
 * injection order, then the others by HSM id, each with the reason it is left out.
 */
export function describeCluster(snapshot: ClusterSnapshot): ClusterDescription {
  const active = activeHsms(snapshot.hsms);
  const injected = new Set<Hsm>(active);
  const seenIps = new Set(active.map((hsm) => hsm.eniIp));
  const others = snapshot.hsms
    .filter((hsm) => !injected.has(hsm))
    .sort((left, right) => left.hsmId.localeCompare(right.hsmId));
  return {
    clusterId: snapshot.clusterId,
    region: snapshot.region,
    clusterState: snapshot.clusterState ?? null,
    fetchedAt: new Date(snapshot.fetchedAt).toISOString(),
    injectedIps: active.map((hsm) => hsm.eniIp!),
    hsms: [
      ...active.map((hsm) => toRow(hsm, null)),
      ...others.map((hsm) => toRow(hsm, exclusionReason(hsm, seenIps))),
    ],
  };
}

function toRow(hsm: Hsm, reason: string | null): HsmRow {
  return {
    hsmId: hsm.hsmId,
    availabilityZone: hsm.availabilityZone ?? null,
    eniIp: hsm.eniIp ?? null,
    state: hsm.state,
    injected: reason === null,
    reason,
  };
}

/** Explains why activeHsms() left an HSM out. */
function exclusionReason(hsm: Hsm, injectedIps: ReadonlySet<unknown>): string {
  if (hsm.state !== "ACTIVE") {
    return `state is ${hsm.state}`;
  }
  if (!hsm.eniIp) {
    return "no ENI IP";
  }
  if (!isIPv4(hsm.eniIp)) {
    return "ENI IP is not IPv4";
  }
  if (injectedIps.has(hsm.eniIp)) {
    return "ENI IP of another HSM";
  }
  return "not injected";
}

/** Formats a description as a header line and an aligned table. */
export function formatTable(description: ClusterDescription): string {
  const header = ["HSM ID", "AVAILABILITY ZONE", "ENI IP", "STATE", "INJECTED"];
  const rows = description.hsms.map((row) => [
    row.hsmId,
    row.availabilityZone ?? "-",
    row.eniIp ?? "-",
    row.state,
    row.injected ? "yes" : `no (${row.reason})`,
  ]);
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => row[column]!.length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) =>
        column === cells.length - 1 ? cell : cell.padEnd(widths[column]!),
      )
      .join("  ")
      .trimEnd();
  const state = description.clusterState ?? "state unknown";
  const summary =
    description.injectedIps.length === 0
      ? "no address would be injected"
      : `pods get ${description.injectedIps.join(",")}`;
  return [
    `Cluster ${description.clusterId} in ${description.region} (${state}): ${summary}`,
    "",
    line(header),
    ...rows.map(line),
    "",
  ].join("\n");
}

/** Runs `describe` with explicit streams and returns the exit status. */
export async function runDescribeCommand(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  streams: Pick<CommandStreams, "stdout" | "stderr">,
): Promise<number> {
  let config: DiscoveryConfig;
  let format: OutputFormat;
  try {
    const { values, help, positionals } = readFlags(DESCRIBE_FLAGS, argv, env);
    if (help) {
      await write(streams.stdout, DESCRIBE_USAGE);
      return 0;
    }
    if (positionals.length > 0) {
      throw new ConfigError(
        `unexpected argument "${positionals[0]}": describe takes only flags`,
      );
    }
    format = readChoice(values, "output", OUTPUT_FORMATS);
    config = readDiscoveryConfig(values);
  } catch (error) {
    if (error instanceof ConfigError) {
      await write(
        streams.stderr,
        `cloudhsm-webhook describe: ${error.message}\n`,
      );
      return 2;
    }
    throw error;
  }

  const source = createSource(config);
  let snapshot: ClusterSnapshot;
  try {
    snapshot = await source.describe(config.clusterId, config.region);
  } catch (error) {
    if (error instanceof DiscoveryError) {
      await write(
        streams.stderr,
        `cloudhsm-webhook describe: ${error.code}: ${error.message}\n`,
      );
      return 1;
    }
    throw error;
  } finally {
    if (source instanceof AwsHsmSource) {
      source.destroy();
    }
  }

  const description = describeCluster(snapshot);
  await write(
    streams.stdout,
    format === "json"
      ? `${JSON.stringify(description, null, 2)}\n`
      : formatTable(description),
  );
  return 0;
}

/** Runs `describe` on the process streams, for the CLI's command table. */
export function runDescribe(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<number> {
  return runDescribeCommand(argv, env, {
    stdout: process.stdout,
    stderr: process.stderr,
  });
}
