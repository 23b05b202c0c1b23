import { parseArgs } from "node:util";
import { LOG_LEVELS, type LogLevel } from "./log.js";

/** One command-line flag and the environment variable that sets it when the flag is absent. */
export interface FlagSpec {
  readonly name: string;
  readonly env: string;
  readonly kind: "string" | "seconds" | "port" | "choice" | "boolean";
  readonly choices?: readonly string[];
  readonly default?: string;
  readonly description: string;
  /** Further environment variables read, in order, after `env`. */
  readonly fallbackEnv?: readonly string[];
  /** One-letter alias, such as "f" for `-f`. */
  readonly short?: string;
  /** Shown as "(required)" in --help; the command's reader enforces it. */
  readonly required?: boolean;
}

/** A flag or environment value that cannot be used; the message names it and what is allowed. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Default path of the cluster's issuing CA certificate in Client SDK 5 installs. */
export const DEFAULT_HSM_CA_FILE = "/opt/cloudhsm/etc/customerCA.crt";

export const CLUSTER_ID_PATTERN = /^cluster-[2-7a-zA-Z]{11,16}$/;
export const REGION_PATTERN = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;
const ENV_PREFIX = "CLOUDHSM_WEBHOOK_";

function flag(spec: Omit<FlagSpec, "env"> & { env?: string }): FlagSpec {
  return {
    ...spec,
    env: spec.env ?? ENV_PREFIX + spec.name.toUpperCase().replaceAll("-", "_"),
  };
}

/** Flags shared by every command that looks up HSMs. */
export const DISCOVERY_FLAGS: readonly FlagSpec[] = [
  flag({
    name: "cluster-id",
    required: true,
    kind: "string",
    description:
      "CloudHSM cluster id used when a pod names none (cluster-xxxxxxxxxxx)",
  }),
  flag({
    name: "region",
    required: true,
    kind: "string",
    fallbackEnv: ["AWS_REGION", "AWS_DEFAULT_REGION"],
    description: "AWS region of the default cluster",
  }),
  flag({
    name: "aws-endpoint",
    kind: "string",
    description:
      "cloudhsmv2 endpoint URL, for VPC endpoints and tests (default: the SDK's regional endpoint)",
  }),
  flag({
    name: "aws-timeout",
    kind: "seconds",
    default: "5",
    description:
      "deadline for one DescribeClusters call, retries included, in seconds",
  }),
  flag({
    name: "static-hsms",
    kind: "string",
    description:
      "JSON file shaped like a DescribeClusters response, used instead of AWS",
  }),
  flag({
    name: "hsm-ca-file",
    kind: "string",
    default: DEFAULT_HSM_CA_FILE,
    description:
      "path of the cluster's CA certificate inside application containers",
  }),
];

/** Values of --refresh-running, which sets what happens to running pods when addresses change. */
export const REFRESH_RUNNING_MODES = ["off", "annotate", "restart"] as const;
export type RefreshRunningMode = (typeof REFRESH_RUNNING_MODES)[number];

/** Flags of `cloudhsm-webhook serve`. */
export const SERVE_FLAGS: readonly FlagSpec[] = [
  flag({
    name: "port",
    kind: "port",
    default: "8443",
    description: "HTTPS port for /mutate, /healthz and /readyz",
  }),
  flag({
    name: "host",
    kind: "string",
    default: "0.0.0.0",
    description: "address to listen on",
  }),
  flag({
    name: "tls-cert",
    required: true,
    kind: "string",
    description:
      "PEM serving certificate (chain); reloaded when the file changes",
  }),
  flag({
    name: "tls-key",
    required: true,
    kind: "string",
    description: "PEM private key of the serving certificate; reloaded with it",
  }),
  ...DISCOVERY_FLAGS,
  flag({
    name: "refresh-interval",
    kind: "seconds",
    default: "30",
    description:
      "seconds between background DescribeClusters calls per cluster",
  }),
  flag({
    name: "max-staleness",
    kind: "seconds",
    default: "900",
    description:
      "seconds the last good HSM list is served while refreshes fail",
  }),
  flag({
    name: "on-unavailable",
    kind: "choice",
    choices: ["deny", "allow"],
    default: "deny",
    description:
      "with no usable HSM list: deny the pod (it is retried), or allow it uninjected with a warning",
  }),
  flag({
    name: "on-lookup-error",
    kind: "choice",
    choices: ["allow", "deny"],
    default: "allow",
    description:
      "when owner or namespace annotations cannot be read: allow the pod (injected with its own options if it opts in itself, otherwise uninjected) with a warning, or deny it",
  }),
  flag({
    name: "lookup-cache-ttl",
    kind: "seconds",
    default: "30",
    description: "seconds owner and namespace annotations are cached",
  }),
  flag({
    name: "lookup-timeout",
    kind: "seconds",
    default: "2",
    description:
      "deadline for one owner or namespace read from the API server, in seconds",
  }),
  flag({
    name: "refresh-running",
    kind: "choice",
    choices: REFRESH_RUNNING_MODES,
    default: "off",
    description:
      "what happens to running injected pods when a cluster's ACTIVE addresses change. annotate rewrites their config annotations, and restart also rolls the workloads that set cloudhsm/auto-restart",
  }),
  flag({
    name: "restart-interval",
    kind: "seconds",
    default: "60",
    description:
      "seconds between two workload restarts under --refresh-running=restart",
  }),
  flag({
    name: "metrics-port",
    kind: "port",
    default: "9090",
    description: "plain-HTTP port for Prometheus /metrics; 0 turns it off",
  }),
  flag({
    name: "shutdown-delay",
    kind: "seconds",
    default: "2",
    description:
      "seconds between SIGTERM and closing the listener, while /readyz answers 503 and requests are still served",
  }),
  flag({
    name: "shutdown-timeout",
    kind: "seconds",
    default: "20",
    description:
      "seconds to let in-flight requests finish after SIGTERM before exiting",
  }),
  flag({
    name: "log-level",
    kind: "choice",
    choices: LOG_LEVELS,
    default: "info",
    description: "pino log level",
  }),
];

export type FlagValues = Readonly<Record<string, string | undefined>>;

/**
 * Reads flags, then their environment variables, then defaults. Returns raw strings; the
 * typed readers below check each one and name it in the error.
 */
export function readFlags(
  specs: readonly FlagSpec[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { values: FlagValues; help: boolean; positionals: string[] } {
  const options: Record<
    string,
    { type: "string" | "boolean"; short?: string }
  > = {
    help: { type: "boolean", short: "h" },
  };
  for (const spec of specs) {
    options[spec.name] = {
      type: spec.kind === "boolean" ? "boolean" : "string",
    };
    if (spec.short !== undefined) {
      options[spec.name]!.short = spec.short;
    }
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options,
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    // parseArgs suggests "--" for positionals, which no command takes, so unknown flags get a
    // message of their own.
    const unknown = /Unknown option '([^']+)'/.exec((error as Error).message);
    const problem = unknown
      ? `unknown flag ${unknown[1]}`
      : (error as Error).message;
    throw new ConfigError(`${problem}; run with --help for the list of flags`);
  }
  const values: Record<string, string | undefined> = {};
  for (const spec of specs) {
    const fromFlag = parsed.values[spec.name];
    const fromEnv = [spec.env, ...(spec.fallbackEnv ?? [])]
      .map((name) => env[name])
      .find((value) => value !== undefined && value !== "");
    const value = fromFlag ?? fromEnv ?? spec.default;
    values[spec.name] = typeof value === "boolean" ? String(value) : value;
  }
  return {
    values,
    help: parsed.values.help === true,
    positionals: parsed.positionals,
  };
}

export function requireString(
  values: FlagValues,
  name: string,
  hint: string,
): string {
  const value = values[name];
  if (value === undefined || value === "") {
    throw new ConfigError(
      `missing --${name} (or ${ENV_PREFIX}${envSuffix(name)}): ${hint}`,
    );
  }
  return value;
}

export function readSeconds(
  values: FlagValues,
  name: string,
  allowZero = false,
): number {
  const raw = values[name] ?? "";
  const seconds = Number(raw);
  const tooSmall = allowZero ? seconds < 0 : seconds <= 0;
  if (raw.trim() === "" || !Number.isFinite(seconds) || tooSmall) {
    const expected = allowZero ? "zero or a positive" : "a positive";
    throw new ConfigError(
      `invalid --${name} "${raw}": expected ${expected} number of seconds`,
    );
  }
  return seconds;
}

export function readPort(values: FlagValues, name: string): number {
  const raw = values[name] ?? "";
  const port = Number(raw);
  if (!/^\d+$/.test(raw) || port > 65535) {
    throw new ConfigError(
      `invalid --${name} "${raw}": expected a port number from 0 to 65535`,
    );
  }
  return port;
}

export function readChoice<T extends string>(
  values: FlagValues,
  name: string,
  choices: readonly T[],
): T {
  const raw = values[name] ?? "";
  if (!choices.includes(raw as T)) {
    throw new ConfigError(
      `invalid --${name} "${raw}": expected one of ${choices.join(", ")}`,
    );
  }
  return raw as T;
}

function envSuffix(name: string): string {
  return name.toUpperCase().replaceAll("-", "_");
}

/** Settings for finding HSMs, shared by serve, inject and describe. */
export interface DiscoveryConfig {
  readonly clusterId: string;
  readonly region: string;
  readonly awsEndpoint?: string;
  readonly awsTimeoutMs: number;
  readonly staticHsms?: string;
  readonly hsmCaFile: string;
}

export function readDiscoveryConfig(values: FlagValues): DiscoveryConfig {
  const clusterId = requireString(
    values,
    "cluster-id",
    "the CloudHSM cluster id (cluster-xxxxxxxxxxx)",
  );
  if (!CLUSTER_ID_PATTERN.test(clusterId)) {
    throw new ConfigError(
      `invalid --cluster-id "${clusterId}": expected cluster- followed by 11 to 16 characters from a-z, A-Z and 2-7`,
    );
  }
  const region = requireString(
    values,
    "region",
    "the AWS region of the cluster (AWS_REGION is read too)",
  );
  if (!REGION_PATTERN.test(region)) {
    throw new ConfigError(
      `invalid --region "${region}": expected an AWS region such as us-east-1`,
    );
  }
  const awsEndpoint = values["aws-endpoint"] || undefined;
  if (awsEndpoint !== undefined) {
    let url: URL;
    try {
      url = new URL(awsEndpoint);
    } catch {
      throw new ConfigError(
        `invalid --aws-endpoint "${awsEndpoint}": expected an http or https URL`,
      );
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new ConfigError(
        `invalid --aws-endpoint "${awsEndpoint}": expected an http or https URL`,
      );
    }
  }
  // Commands that render no config, such as describe, do not offer the flag.
  const hsmCaFile = values["hsm-ca-file"] ?? DEFAULT_HSM_CA_FILE;
  if (!hsmCaFile.startsWith("/")) {
    throw new ConfigError(
      `invalid --hsm-ca-file "${hsmCaFile}": expected an absolute path`,
    );
  }
  return {
    clusterId,
    region,
    awsEndpoint,
    awsTimeoutMs: readSeconds(values, "aws-timeout") * 1000,
    staticHsms: values["static-hsms"] || undefined,
    hsmCaFile,
  };
}

export interface ServeConfig extends DiscoveryConfig {
  readonly port: number;
  readonly host: string;
  readonly tlsCert: string;
  readonly tlsKey: string;
  readonly refreshIntervalMs: number;
  readonly maxStalenessMs: number;
  readonly onUnavailable: "deny" | "allow";
  readonly onLookupError: "allow" | "deny";
  readonly lookupCacheTtlMs: number;
  readonly lookupTimeoutMs: number;
  readonly refreshRunning: RefreshRunningMode;
  readonly restartIntervalMs: number;
  readonly metricsPort: number;
  readonly shutdownDelayMs: number;
  readonly shutdownTimeoutMs: number;
  readonly logLevel: LogLevel;
}

export function readServeConfig(values: FlagValues): ServeConfig {
  const discovery = readDiscoveryConfig(values);
  const refreshIntervalMs = readSeconds(values, "refresh-interval") * 1000;
  const maxStalenessMs = readSeconds(values, "max-staleness") * 1000;
  if (maxStalenessMs < refreshIntervalMs) {
    throw new ConfigError(
      `invalid --max-staleness ${maxStalenessMs / 1000}: it must be at least --refresh-interval (${refreshIntervalMs / 1000}), or every list expires before it is refreshed`,
    );
  }
  return {
    ...discovery,
    port: readPort(values, "port"),
    host: requireString(values, "host", "the address to listen on"),
    tlsCert: requireString(
      values,
      "tls-cert",
      "the PEM serving certificate; the webhook serves HTTPS only",
    ),
    tlsKey: requireString(
      values,
      "tls-key",
      "the PEM key of the serving certificate",
    ),
    refreshIntervalMs,
    maxStalenessMs,
    onUnavailable: readChoice(values, "on-unavailable", ["deny", "allow"]),
    onLookupError: readChoice(values, "on-lookup-error", ["allow", "deny"]),
    lookupCacheTtlMs: readSeconds(values, "lookup-cache-ttl") * 1000,
    lookupTimeoutMs: readSeconds(values, "lookup-timeout") * 1000,
    refreshRunning: readChoice(
      values,
      "refresh-running",
      REFRESH_RUNNING_MODES,
    ),
    restartIntervalMs: readSeconds(values, "restart-interval") * 1000,
    metricsPort: readPort(values, "metrics-port"),
    shutdownDelayMs: readSeconds(values, "shutdown-delay", true) * 1000,
    shutdownTimeoutMs: readSeconds(values, "shutdown-timeout") * 1000,
    logLevel: readChoice(values, "log-level", LOG_LEVELS),
  };
}

function defaultNote(spec: FlagSpec): string {
  if (spec.default !== undefined) {
    return ` (default ${spec.default})`;
  }
  return spec.required ? " (required)" : "";
}

/** Formats the flag table for --help: flag, environment variable, default and meaning. */
export function formatFlagHelp(specs: readonly FlagSpec[]): string {
  return specs
    .map((spec) => {
      const placeholder =
        spec.kind === "boolean"
          ? ""
          : spec.choices
            ? ` ${spec.choices.join("|")}`
            : " VALUE";
      const defaults = defaultNote(spec);
      const envs = [spec.env, ...(spec.fallbackEnv ?? [])].join(", ");
      const short = spec.short !== undefined ? `-${spec.short}, ` : "";
      return `  ${short}--${spec.name}${placeholder}\n      ${spec.description}${defaults}\n      env: ${envs}`;
    })
    .join("\n");
}
