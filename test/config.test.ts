import { describe, expect, it } from "vitest";

import {
  ConfigError,
  DISCOVERY_FLAGS,
  SERVE_FLAGS,
  formatFlagHelp,
  readFlags,
  readServeConfig,
} from "../src/config.js";

const CLUSTER_ID = "cluster-jxhlf7644ne";

/** Flags that make a valid serve configuration. Each test overrides or drops some of them. */
const REQUIRED_ARGS = [
  `--cluster-id=${CLUSTER_ID}`,
  "--region=us-east-1",
  "--tls-cert=/etc/webhook/tls.crt",
  "--tls-key=/etc/webhook/tls.key",
];

function values(argv: readonly string[], env: NodeJS.ProcessEnv = {}) {
  return readFlags(SERVE_FLAGS, argv, env).values;
}

/** Reads a serve configuration from the required flags, without `drop`, plus `extra`. */
function serveConfig(
  extra: readonly string[] = [],
  drop: readonly string[] = [],
) {
  const argv = REQUIRED_ARGS.filter(
    (arg) => !drop.some((name) => arg.startsWith(`--${name}=`)),
  );
  return readServeConfig(values([...argv, ...extra]));
}

/** Runs `action` and returns the ConfigError it raises. */
function configError(action: () => unknown): ConfigError {
  try {
    action();
  } catch (error) {
    if (error instanceof ConfigError) {
      return error;
    }
    throw error;
  }
  throw new Error("no ConfigError was raised");
}

describe("readFlags precedence", () => {
  it.each([
    {
      name: "flag over env",
      argv: ["--cluster-id=cluster-fromflag234"],
      env: { CLOUDHSM_WEBHOOK_CLUSTER_ID: "cluster-fromenv23456" },
      expected: "cluster-fromflag234",
    },
    {
      name: "env without flag",
      argv: [],
      env: { CLOUDHSM_WEBHOOK_CLUSTER_ID: "cluster-fromenv23456" },
      expected: "cluster-fromenv23456",
    },
    {
      name: "nothing set",
      argv: [],
      env: {},
      expected: undefined,
    },
    {
      name: "empty env",
      argv: [],
      env: { CLOUDHSM_WEBHOOK_CLUSTER_ID: "" },
      expected: undefined,
    },
    {
      name: "flag with space",
      argv: ["--cluster-id", "cluster-fromflag234"],
      env: {},
      expected: "cluster-fromflag234",
    },
  ])("reads cluster-id: $name", ({ argv, env, expected }) => {
    expect(values(argv, env)["cluster-id"]).toBe(expected);
  });

  it.each([
    { name: "default", argv: [], env: {}, expected: "8443" },
    {
      name: "env over default",
      argv: [],
      env: { CLOUDHSM_WEBHOOK_PORT: "9443" },
      expected: "9443",
    },
    {
      name: "flag over env",
      argv: ["--port=10443"],
      env: { CLOUDHSM_WEBHOOK_PORT: "9443" },
      expected: "10443",
    },
    {
      name: "empty env keeps default",
      argv: [],
      env: { CLOUDHSM_WEBHOOK_PORT: "" },
      expected: "8443",
    },
  ])("reads port: $name", ({ argv, env, expected }) => {
    expect(values(argv, env).port).toBe(expected);
  });

  it.each([
    {
      name: "AWS_REGION fallback",
      argv: [],
      env: { AWS_REGION: "eu-west-1" },
      expected: "eu-west-1",
    },
    {
      name: "AWS_DEFAULT_REGION fallback",
      argv: [],
      env: { AWS_DEFAULT_REGION: "eu-west-2" },
      expected: "eu-west-2",
    },
    {
      name: "AWS_REGION over AWS_DEFAULT_REGION",
      argv: [],
      env: { AWS_REGION: "eu-west-1", AWS_DEFAULT_REGION: "eu-west-2" },
      expected: "eu-west-1",
    },
    {
      name: "own env over AWS_REGION",
      argv: [],
      env: { CLOUDHSM_WEBHOOK_REGION: "us-west-2", AWS_REGION: "eu-west-1" },
      expected: "us-west-2",
    },
    {
      name: "flag over every env",
      argv: ["--region=ap-south-1"],
      env: { CLOUDHSM_WEBHOOK_REGION: "us-west-2", AWS_REGION: "eu-west-1" },
      expected: "ap-south-1",
    },
  ])("reads region: $name", ({ argv, env, expected }) => {
    expect(values(argv, env).region).toBe(expected);
  });

  it("reads help flag", () => {
    expect(readFlags(SERVE_FLAGS, ["-h"], {}).help).toBe(true);
    expect(readFlags(SERVE_FLAGS, ["--help"], {}).help).toBe(true);
    expect(readFlags(SERVE_FLAGS, [], {}).help).toBe(false);
  });

  it("returns positionals", () => {
    const parsed = readFlags(SERVE_FLAGS, ["serve", "--port=1"], {});

    expect(parsed.positionals).toEqual(["serve"]);
  });

  it("rejects unknown flag", () => {
    const error = configError(() => readFlags(SERVE_FLAGS, ["--prot=1"], {}));

    expect(error.message).toContain("unknown flag --prot");
    expect(error.message).toContain("--help");
  });

  it("rejects flag without value", () => {
    const error = configError(() => readFlags(SERVE_FLAGS, ["--port"], {}));

    expect(error.message).toContain("--port");
  });
});

describe("readServeConfig", () => {
  it("reads a valid configuration", () => {
    const config = serveConfig();

    expect(config.clusterId).toBe(CLUSTER_ID);
    expect(config.region).toBe("us-east-1");
    expect(config.port).toBe(8443);
    expect(config.host).toBe("0.0.0.0");
    expect(config.tlsCert).toBe("/etc/webhook/tls.crt");
    expect(config.tlsKey).toBe("/etc/webhook/tls.key");
    expect(config.awsTimeoutMs).toBe(5000);
    expect(config.refreshIntervalMs).toBe(30_000);
    expect(config.maxStalenessMs).toBe(900_000);
    expect(config.lookupCacheTtlMs).toBe(30_000);
    expect(config.lookupTimeoutMs).toBe(2000);
    expect(config.shutdownTimeoutMs).toBe(20_000);
    expect(config.metricsPort).toBe(9090);
    expect(config.onUnavailable).toBe("deny");
    expect(config.onLookupError).toBe("allow");
    expect(config.logLevel).toBe("info");
    expect(config.hsmCaFile).toBe("/opt/cloudhsm/etc/customerCA.crt");
    expect(config.awsEndpoint).toBeUndefined();
    expect(config.staticHsms).toBeUndefined();
  });

  it("converts fractional seconds", () => {
    expect(serveConfig(["--aws-timeout=0.5"]).awsTimeoutMs).toBe(500);
  });

  it("accepts staleness equal to interval", () => {
    const config = serveConfig(["--refresh-interval=60", "--max-staleness=60"]);

    expect(config.maxStalenessMs).toBe(60_000);
  });

  it("accepts metrics port 0", () => {
    expect(serveConfig(["--metrics-port=0"]).metricsPort).toBe(0);
  });

  it.each([
    {
      name: "missing cluster id",
      extra: [],
      drop: ["cluster-id"],
      flag: "--cluster-id",
    },
    {
      name: "short cluster id",
      extra: ["--cluster-id=cluster-abc"],
      drop: ["cluster-id"],
      flag: "--cluster-id",
    },
    {
      name: "cluster id with 0 and 1",
      extra: ["--cluster-id=cluster-01234567890"],
      drop: ["cluster-id"],
      flag: "--cluster-id",
    },
    {
      name: "cluster id without prefix",
      extra: ["--cluster-id=jxhlf7644ne"],
      drop: ["cluster-id"],
      flag: "--cluster-id",
    },
    { name: "missing region", extra: [], drop: ["region"], flag: "--region" },
    {
      name: "upper-case region",
      extra: ["--region=US-EAST-1"],
      drop: ["region"],
      flag: "--region",
    },
    {
      name: "region without number",
      extra: ["--region=us-east"],
      drop: ["region"],
      flag: "--region",
    },
    {
      name: "zero seconds",
      extra: ["--refresh-interval=0"],
      drop: [],
      flag: "--refresh-interval",
    },
    {
      name: "negative seconds",
      extra: ["--lookup-timeout=-5"],
      drop: [],
      flag: "--lookup-timeout",
    },
    {
      name: "seconds with unit",
      extra: ["--aws-timeout=5s"],
      drop: [],
      flag: "--aws-timeout",
    },
    {
      name: "empty seconds",
      extra: ["--shutdown-timeout="],
      drop: [],
      flag: "--shutdown-timeout",
    },
    {
      name: "infinite seconds",
      extra: ["--lookup-cache-ttl=Infinity"],
      drop: [],
      flag: "--lookup-cache-ttl",
    },
    {
      name: "port above range",
      extra: ["--port=70000"],
      drop: [],
      flag: "--port",
    },
    { name: "negative port", extra: ["--port=-1"], drop: [], flag: "--port" },
    {
      name: "port with letters",
      extra: ["--metrics-port=90a"],
      drop: [],
      flag: "--metrics-port",
    },
    {
      name: "fractional port",
      extra: ["--port=8443.5"],
      drop: [],
      flag: "--port",
    },
    {
      name: "staleness below interval",
      extra: ["--refresh-interval=60", "--max-staleness=30"],
      drop: [],
      flag: "--max-staleness",
    },
    {
      name: "unknown choice",
      extra: ["--on-unavailable=retry"],
      drop: [],
      flag: "--on-unavailable",
    },
    {
      name: "unknown log level",
      extra: ["--log-level=loud"],
      drop: [],
      flag: "--log-level",
    },
    {
      name: "endpoint not a URL",
      extra: ["--aws-endpoint=not a url"],
      drop: [],
      flag: "--aws-endpoint",
    },
    {
      name: "endpoint not http",
      extra: ["--aws-endpoint=ftp://cloudhsm.example"],
      drop: [],
      flag: "--aws-endpoint",
    },
    {
      name: "relative CA file",
      extra: ["--hsm-ca-file=customerCA.crt"],
      drop: [],
      flag: "--hsm-ca-file",
    },
    {
      name: "missing TLS certificate",
      extra: [],
      drop: ["tls-cert"],
      flag: "--tls-cert",
    },
    {
      name: "missing TLS key",
      extra: [],
      drop: ["tls-key"],
      flag: "--tls-key",
    },
  ])("rejects $name", ({ extra, drop, flag }) => {
    const error = configError(() => serveConfig(extra, drop));

    expect(error.message).toContain(flag);
  });

  it("names the env var of a missing flag", () => {
    const error = configError(() => serveConfig([], ["cluster-id"]));

    expect(error.message).toContain("CLOUDHSM_WEBHOOK_CLUSTER_ID");
  });

  it("names interval in staleness error", () => {
    const error = configError(() =>
      serveConfig(["--refresh-interval=60", "--max-staleness=30"]),
    );

    expect(error.message).toContain("--refresh-interval");
  });

  it("shows the rejected value", () => {
    const error = configError(() => serveConfig(["--port=70000"]));

    expect(error.message).toContain('"70000"');
  });
});

describe("formatFlagHelp", () => {
  const help = formatFlagHelp(SERVE_FLAGS);

  it.each(SERVE_FLAGS.map((spec) => spec.name))("mentions --%s", (name) => {
    expect(help).toContain(`--${name}`);
  });

  it.each(
    SERVE_FLAGS.flatMap((spec) => [spec.env, ...(spec.fallbackEnv ?? [])]),
  )("mentions env %s", (env) => {
    expect(help).toContain(env);
  });

  it("includes discovery flags", () => {
    for (const spec of DISCOVERY_FLAGS) {
      expect(SERVE_FLAGS).toContain(spec);
    }
  });

  it("shows defaults and choices", () => {
    expect(help).toContain("(default 8443)");
    expect(help).toContain("--on-unavailable deny|allow");
  });

  it("uses the env prefix", () => {
    expect(help).toContain("CLOUDHSM_WEBHOOK_MAX_STALENESS");
  });
});
