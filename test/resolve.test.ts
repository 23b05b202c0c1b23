import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AnnotationSource,
  CLUSTER_ID_ANNOTATION,
  CONFIG_FORMAT_ANNOTATION,
  CONFIG_PATH_ANNOTATION,
  CONTAINERS_ANNOTATION,
  type InjectionDecision,
  type Injected,
  INJECT_ANNOTATION,
  MAX_CLUSTER_IDS,
  REGION_ANNOTATION,
  describeSource,
  resolveInjection,
} from "../src/injection/resolve.js";

const DEFAULTS = { clusterId: "cluster-jxhlf7644ne", region: "us-east-1" };
const CONTAINERS = ["app", "sidecar", "init-db"];
const OTHER_CLUSTER = "cluster-ABCDEFGHIJKLMN23";

type Level =
  | "pod"
  | "ReplicaSet"
  | "Deployment"
  | "StatefulSet"
  | "DaemonSet"
  | "Job"
  | "CronJob"
  | "namespace";

const LEVELS: readonly Level[] = [
  "pod",
  "ReplicaSet",
  "Deployment",
  "StatefulSet",
  "DaemonSet",
  "Job",
  "CronJob",
  "namespace",
];

const POD: AnnotationSource = { kind: "Pod", name: "" };
const REPLICA_SET: AnnotationSource = {
  kind: "ReplicaSet",
  name: "checkout-7d9f",
};
const DEPLOYMENT: AnnotationSource = { kind: "Deployment", name: "checkout" };
const STATEFUL_SET: AnnotationSource = { kind: "StatefulSet", name: "ledger" };
const DAEMON_SET: AnnotationSource = { kind: "DaemonSet", name: "agent" };
const JOB: AnnotationSource = { kind: "Job", name: "rotate-28391" };
const CRON_JOB: AnnotationSource = { kind: "CronJob", name: "rotate" };
const NAMESPACE: AnnotationSource = { kind: "Namespace", name: "payments" };

/** Returns the chain of a pod created at this level, in resolver order, and the annotated source. */
function chainFor(level: Level): {
  chain: AnnotationSource[];
  target: AnnotationSource;
} {
  switch (level) {
    case "pod":
      return { chain: [POD, NAMESPACE], target: POD };
    case "ReplicaSet":
      return { chain: [POD, REPLICA_SET, NAMESPACE], target: REPLICA_SET };
    case "Deployment":
      return {
        chain: [POD, REPLICA_SET, DEPLOYMENT, NAMESPACE],
        target: DEPLOYMENT,
      };
    case "StatefulSet":
      return { chain: [POD, STATEFUL_SET, NAMESPACE], target: STATEFUL_SET };
    case "DaemonSet":
      return { chain: [POD, DAEMON_SET, NAMESPACE], target: DAEMON_SET };
    case "Job":
      return { chain: [POD, JOB, NAMESPACE], target: JOB };
    case "CronJob":
      return { chain: [POD, JOB, CRON_JOB, NAMESPACE], target: CRON_JOB };
    case "namespace":
      return { chain: [POD, NAMESPACE], target: NAMESPACE };
  }
}

/** Builds the sources for `level` with `annotations` on the level's object and none elsewhere. */
function sourcesWith(
  level: Level,
  annotations: Record<string, string>,
): AnnotationSource[] {
  const { chain, target } = chainFor(level);
  return chain.map((source) =>
    source === target ? { ...source, annotations } : { ...source },
  );
}

function whereOf(level: Level): string {
  return describeSource(chainFor(level).target);
}

function resolve(
  sources: AnnotationSource[],
  containers = CONTAINERS,
): InjectionDecision {
  return resolveInjection(sources, containers, DEFAULTS);
}

function expectInjected(decision: InjectionDecision): Injected {
  if (!("inject" in decision) || !decision.inject) {
    throw new Error(
      `expected an injected decision, got ${JSON.stringify(decision)}`,
    );
  }
  return decision;
}

function expectError(decision: InjectionDecision): string {
  if (!("error" in decision)) {
    throw new Error(`expected a rejection, got ${JSON.stringify(decision)}`);
  }
  return decision.error;
}

describe("describeSource", () => {
  it.each([
    [{ kind: "Pod", name: "" }, "pod"],
    [{ kind: "Pod", name: "web-0" }, "pod"],
    [{ kind: "Namespace", name: "payments" }, "namespace payments"],
    [{ kind: "Deployment", name: "checkout" }, "Deployment checkout"],
    [{ kind: "CronJob", name: "rotate" }, "CronJob rotate"],
  ])("renders %o as %s", (source, expected) => {
    expect(describeSource(source)).toBe(expected);
  });
});

describe("opt-in", () => {
  it("not injected without annotations", () => {
    const decision = resolve([POD, REPLICA_SET, DEPLOYMENT, NAMESPACE]);
    expect(decision).toEqual({ inject: false });
  });

  it("not injected with an empty chain", () => {
    expect(resolve([])).toEqual({ inject: false });
  });

  it.each(LEVELS)("inject true on %s injects with defaults", (level) => {
    const decision = expectInjected(
      resolve(sourcesWith(level, { [INJECT_ANNOTATION]: "true" })),
    );
    expect(decision.decidedBy).toBe(whereOf(level));
    expect(decision.options).toEqual({
      clusterIds: [DEFAULTS.clusterId],
      region: DEFAULTS.region,
      configFormat: "sdk5",
    });
    expect(decision.warnings).toEqual([]);
  });

  it.each(LEVELS)("inject false on %s is recorded as decidedBy", (level) => {
    const decision = resolve(
      sourcesWith(level, { [INJECT_ANNOTATION]: "false" }),
    );
    expect(decision).toEqual({ inject: false, decidedBy: whereOf(level) });
  });

  it.each(LEVELS)("invalid inject value on %s rejects", (level) => {
    const error = expectError(
      resolve(sourcesWith(level, { [INJECT_ANNOTATION]: "yes" })),
    );
    expect(error).toBe(
      `invalid cloudhsm/inject "yes" on ${whereOf(level)}: expected "true" or "false"`,
    );
  });

  it.each(["True", "TRUE", " true", "1", ""])(
    "inject value %j is invalid",
    (value) => {
      const error = expectError(
        resolve([{ ...POD, annotations: { [INJECT_ANNOTATION]: value } }]),
      );
      expect(error).toContain(
        `invalid cloudhsm/inject ${JSON.stringify(value)} on pod`,
      );
    },
  );
});

describe("opt-in precedence", () => {
  it("pod false beats Deployment true", () => {
    const decision = resolve([
      { ...POD, annotations: { [INJECT_ANNOTATION]: "false" } },
      REPLICA_SET,
      { ...DEPLOYMENT, annotations: { [INJECT_ANNOTATION]: "true" } },
      { ...NAMESPACE, annotations: { [INJECT_ANNOTATION]: "true" } },
    ]);
    expect(decision).toEqual({ inject: false, decidedBy: "pod" });
  });

  it("pod false hides an invalid owner value", () => {
    const decision = resolve([
      { ...POD, annotations: { [INJECT_ANNOTATION]: "false" } },
      { ...DEPLOYMENT, annotations: { [INJECT_ANNOTATION]: "maybe" } },
    ]);
    expect(decision).toEqual({ inject: false, decidedBy: "pod" });
  });

  it("pod true beats namespace false", () => {
    const decision = expectInjected(
      resolve([
        { ...POD, annotations: { [INJECT_ANNOTATION]: "true" } },
        { ...NAMESPACE, annotations: { [INJECT_ANNOTATION]: "false" } },
      ]),
    );
    expect(decision.decidedBy).toBe("pod");
  });

  it("ReplicaSet beats Deployment", () => {
    const decision = resolve([
      POD,
      { ...REPLICA_SET, annotations: { [INJECT_ANNOTATION]: "false" } },
      { ...DEPLOYMENT, annotations: { [INJECT_ANNOTATION]: "true" } },
      NAMESPACE,
    ]);
    expect(decision).toEqual({
      inject: false,
      decidedBy: "ReplicaSet checkout-7d9f",
    });
  });

  it("Job beats CronJob", () => {
    const decision = expectInjected(
      resolve([
        POD,
        { ...JOB, annotations: { [INJECT_ANNOTATION]: "true" } },
        { ...CRON_JOB, annotations: { [INJECT_ANNOTATION]: "false" } },
        NAMESPACE,
      ]),
    );
    expect(decision.decidedBy).toBe("Job rotate-28391");
  });

  it("nearest owner beats namespace", () => {
    const decision = resolve([
      POD,
      REPLICA_SET,
      { ...DEPLOYMENT, annotations: { [INJECT_ANNOTATION]: "false" } },
      { ...NAMESPACE, annotations: { [INJECT_ANNOTATION]: "true" } },
    ]);
    expect(decision).toEqual({
      inject: false,
      decidedBy: "Deployment checkout",
    });
  });

  it("namespace decides when owners are silent", () => {
    const decision = expectInjected(
      resolve([
        { ...POD, annotations: { "app.kubernetes.io/name": "checkout" } },
        { ...DEPLOYMENT, annotations: {} },
        { ...NAMESPACE, annotations: { [INJECT_ANNOTATION]: "true" } },
      ]),
    );
    expect(decision.decidedBy).toBe("namespace payments");
  });

  it("options are not validated when not injected", () => {
    const decision = resolve([
      {
        ...POD,
        annotations: {
          [CLUSTER_ID_ANNOTATION]: "bad",
          [REGION_ANNOTATION]: "bad",
          [CONTAINERS_ANNOTATION]: "Bad_Name",
          [CONFIG_PATH_ANNOTATION]: "relative",
          [CONFIG_FORMAT_ANNOTATION]: "xml",
        },
      },
      NAMESPACE,
    ]);
    expect(decision).toEqual({ inject: false });
  });
});

/**
 * One row per option: a valid value, how it shows in the options, an invalid value and the
 * allowed-values part of the rejection message.
 */
const OPTION_CASES = [
  {
    key: CLUSTER_ID_ANNOTATION,
    valid: OTHER_CLUSTER,
    expected: { clusterIds: [OTHER_CLUSTER] },
    invalid: "cluster-xyz",
    allowed: "expected cluster-<11 to 16 characters from a-z, A-Z, 2-7>",
  },
  {
    key: REGION_ANNOTATION,
    valid: "us-gov-west-1",
    expected: { region: "us-gov-west-1" },
    invalid: "US-EAST-1",
    allowed:
      "expected an AWS region such as us-east-1, us-gov-west-1 or eu-central-2",
  },
  {
    key: CONTAINERS_ANNOTATION,
    valid: "sidecar,init-db",
    expected: { containers: ["sidecar", "init-db"] },
    invalid: "App",
    allowed:
      'expected a comma-separated list of container names (lowercase letters, digits and "-", at most 63 characters)',
  },
  {
    key: CONFIG_PATH_ANNOTATION,
    valid: "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
    expected: { configPath: "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg" },
    invalid: "/opt/cloudhsm/../etc/x.cfg",
    allowed:
      'expected an absolute, normalized file path such as /opt/cloudhsm/etc/cloudhsm-pkcs11.cfg, without ".", ".." or empty segments, a trailing slash or control characters',
  },
  {
    key: CONFIG_FORMAT_ANNOTATION,
    valid: "json",
    expected: { configFormat: "json" },
    invalid: "yaml",
    allowed: "expected sdk5, sdk3 or json",
  },
] as const;

describe("options at each level", () => {
  const rows = OPTION_CASES.flatMap((option) =>
    LEVELS.map((level) => ({ ...option, level })),
  );

  it.each(rows)("$key on $level is used", ({ key, valid, expected, level }) => {
    const sources = sourcesWith(level, { [key]: valid });
    // Opt in on the pod, so that the option's level differs from the opt-in level.
    const podAnnotations = sources[0]?.annotations ?? {};
    sources[0] = {
      ...POD,
      annotations: { ...podAnnotations, [INJECT_ANNOTATION]: "true" },
    };
    const decision = expectInjected(resolve(sources));
    expect(decision.options).toMatchObject(expected);
  });

  it.each(rows)(
    "invalid $key on $level rejects",
    ({ key, invalid, allowed, level }) => {
      const sources = sourcesWith(level, {
        [INJECT_ANNOTATION]: "true",
        [key]: invalid,
      });
      const error = expectError(resolve(sources));
      expect(error).toBe(
        `invalid ${key} ${JSON.stringify(invalid)} on ${whereOf(level)}: ${allowed}`,
      );
    },
  );

  it("example message for a Deployment", () => {
    const error = expectError(
      resolve([
        { ...POD, annotations: { [INJECT_ANNOTATION]: "true" } },
        REPLICA_SET,
        {
          ...DEPLOYMENT,
          annotations: { [CLUSTER_ID_ANNOTATION]: "cluster-xyz" },
        },
        NAMESPACE,
      ]),
    );
    expect(error).toBe(
      'invalid cloudhsm/cluster-id "cluster-xyz" on Deployment checkout: expected cluster-<11 to 16 characters from a-z, A-Z, 2-7>',
    );
  });
});

describe("option precedence", () => {
  it.each(OPTION_CASES)(
    "$key on pod beats namespace",
    ({ key, valid, expected, invalid }) => {
      const decision = expectInjected(
        resolve([
          {
            ...POD,
            annotations: { [INJECT_ANNOTATION]: "true", [key]: valid },
          },
          { ...NAMESPACE, annotations: { [key]: invalid } },
        ]),
      );
      expect(decision.options).toMatchObject(expected);
    },
  );

  it.each(OPTION_CASES)(
    "$key on ReplicaSet hides Deployment",
    ({ key, valid, expected, invalid }) => {
      const decision = expectInjected(
        resolve([
          { ...POD, annotations: { [INJECT_ANNOTATION]: "true" } },
          { ...REPLICA_SET, annotations: { [key]: valid } },
          { ...DEPLOYMENT, annotations: { [key]: invalid } },
          NAMESPACE,
        ]),
      );
      expect(decision.options).toMatchObject(expected);
    },
  );

  it("options mix from several levels", () => {
    const decision = expectInjected(
      resolve([
        { ...POD, annotations: { [CONTAINERS_ANNOTATION]: "app" } },
        { ...JOB, annotations: { [CONFIG_FORMAT_ANNOTATION]: "sdk3" } },
        {
          ...CRON_JOB,
          annotations: {
            [INJECT_ANNOTATION]: "true",
            [CONFIG_FORMAT_ANNOTATION]: "json",
          },
        },
        {
          ...NAMESPACE,
          annotations: {
            [CLUSTER_ID_ANNOTATION]: OTHER_CLUSTER,
            [REGION_ANNOTATION]: "eu-central-2",
            [CONFIG_PATH_ANNOTATION]: "/etc/hsm.cfg",
          },
        },
      ]),
    );
    expect(decision.decidedBy).toBe("CronJob rotate");
    expect(decision.options).toEqual({
      clusterIds: [OTHER_CLUSTER],
      region: "eu-central-2",
      containers: ["app"],
      configPath: "/etc/hsm.cfg",
      configFormat: "sdk3",
    });
  });
});

function injectOnPod(annotations: Record<string, string>): InjectionDecision {
  return resolve([
    { ...POD, annotations: { [INJECT_ANNOTATION]: "true", ...annotations } },
  ]);
}

describe("cluster ids", () => {
  it.each([
    ["cluster-jxhlf7644ne", ["cluster-jxhlf7644ne"]],
    ["cluster-abcdefghijk", ["cluster-abcdefghijk"]],
    [" cluster-abcdefghijk ", ["cluster-abcdefghijk"]],
    ["cluster-ABCDEFGHIJKLMNOP", ["cluster-ABCDEFGHIJKLMNOP"]],
    [
      `cluster-jxhlf7644ne,${OTHER_CLUSTER}`,
      ["cluster-jxhlf7644ne", OTHER_CLUSTER],
    ],
    [
      `cluster-jxhlf7644ne , ${OTHER_CLUSTER}`,
      ["cluster-jxhlf7644ne", OTHER_CLUSTER],
    ],
    [
      `${OTHER_CLUSTER},cluster-jxhlf7644ne,${OTHER_CLUSTER}`,
      [OTHER_CLUSTER, "cluster-jxhlf7644ne"],
    ],
  ])("%j resolves to %j", (value, expected) => {
    const decision = expectInjected(
      injectOnPod({ [CLUSTER_ID_ANNOTATION]: value }),
    );
    expect(decision.options.clusterIds).toEqual(expected);
  });

  it.each([
    "cluster-abcdefghij",
    "cluster-abcdefghijklmnopq",
    "cluster-abcdefghij1",
    "cluster-abcdefghij8",
    "Cluster-abcdefghijk",
    "cluster_abcdefghijk",
    "",
    " ",
  ])("single value %j is invalid", (value) => {
    const error = expectError(injectOnPod({ [CLUSTER_ID_ANNOTATION]: value }));
    expect(error).toBe(
      `invalid cloudhsm/cluster-id ${JSON.stringify(value)} on pod: expected cluster-<11 to 16 characters from a-z, A-Z, 2-7>`,
    );
  });

  it("list entry that is invalid is named", () => {
    const value = "cluster-jxhlf7644ne,cluster-xyz";
    const error = expectError(injectOnPod({ [CLUSTER_ID_ANNOTATION]: value }));
    expect(error).toBe(
      `invalid cloudhsm/cluster-id "${value}" on pod: entry "cluster-xyz" is invalid, expected cluster-<11 to 16 characters from a-z, A-Z, 2-7>`,
    );
  });

  it.each([
    ["cluster-jxhlf7644ne,", 2],
    [",cluster-jxhlf7644ne", 1],
    ["cluster-jxhlf7644ne,,cluster-abcdefghijk", 2],
    [" , ", 1],
    [",", 1],
  ])("list %j with an empty entry is invalid", (value, entry) => {
    const error = expectError(injectOnPod({ [CLUSTER_ID_ANNOTATION]: value }));
    expect(error).toContain(
      `invalid cloudhsm/cluster-id ${JSON.stringify(value)} on pod: `,
    );
    expect(error).toContain(`entry ${entry} is empty`);
    expect(error).toContain("expected a comma-separated list of cluster-<");
  });

  it("list longer than the maximum is invalid", () => {
    const ids = Array.from({ length: MAX_CLUSTER_IDS + 1 }, (_, i) => {
      return `cluster-abcdefghij${String.fromCharCode(97 + i)}`;
    });
    const error = expectError(
      injectOnPod({ [CLUSTER_ID_ANNOTATION]: ids.join(",") }),
    );
    expect(error).toContain(
      `expected at most ${MAX_CLUSTER_IDS} cluster ids, got ${ids.length}`,
    );
  });

  it("list at the maximum is accepted", () => {
    const ids = Array.from({ length: MAX_CLUSTER_IDS }, (_, i) => {
      return `cluster-abcdefghij${String.fromCharCode(97 + i)}`;
    });
    const decision = expectInjected(
      injectOnPod({ [CLUSTER_ID_ANNOTATION]: ids.join(",") }),
    );
    expect(decision.options.clusterIds).toEqual(ids);
  });

  it("missing default and annotation rejects", () => {
    const decision = resolveInjection(
      [{ ...POD, annotations: { [INJECT_ANNOTATION]: "true" } }],
      CONTAINERS,
      { clusterId: "", region: "us-east-1" },
    );
    expect(expectError(decision)).toBe(
      "missing cloudhsm/cluster-id: the pod, its owners and its namespace do not set it, and the webhook has no default cluster id",
    );
  });

  it("annotation works without a default", () => {
    const decision = resolveInjection(
      [
        {
          ...POD,
          annotations: {
            [INJECT_ANNOTATION]: "true",
            [CLUSTER_ID_ANNOTATION]: OTHER_CLUSTER,
          },
        },
      ],
      CONTAINERS,
      { clusterId: "", region: "us-east-1" },
    );
    expect(expectInjected(decision).options.clusterIds).toEqual([
      OTHER_CLUSTER,
    ]);
  });
});

describe("region", () => {
  it.each([
    "us-east-1",
    "us-gov-west-1",
    "eu-central-2",
    "ap-southeast-7",
    "cn-north-1",
    "us-isob-east-1",
    "il-central-1",
  ])("%s is accepted", (region) => {
    const decision = expectInjected(
      injectOnPod({ [REGION_ANNOTATION]: region }),
    );
    expect(decision.options.region).toBe(region);
  });

  it.each([
    "us-east",
    "useast1",
    "us-east-0",
    "us-east-1a",
    "u-east-1",
    "us--east-1",
    " us-east-1",
    "",
  ])("%j is invalid", (region) => {
    const error = expectError(injectOnPod({ [REGION_ANNOTATION]: region }));
    expect(error).toBe(
      `invalid cloudhsm/region ${JSON.stringify(region)} on pod: expected an AWS region such as us-east-1, us-gov-west-1 or eu-central-2`,
    );
  });
});

describe("containers", () => {
  it("default is all containers", () => {
    const decision = expectInjected(injectOnPod({}));
    expect(decision.options.containers).toBeUndefined();
  });

  it("list keeps order and drops duplicates", () => {
    const decision = expectInjected(
      injectOnPod({ [CONTAINERS_ANNOTATION]: "init-db, app,init-db" }),
    );
    expect(decision.options.containers).toEqual(["init-db", "app"]);
    expect(decision.warnings).toEqual([]);
  });

  it("unknown name warns and is dropped", () => {
    const decision = expectInjected(
      resolve([
        { ...POD, annotations: { [INJECT_ANNOTATION]: "true" } },
        {
          ...STATEFUL_SET,
          annotations: { [CONTAINERS_ANNOTATION]: "app,metrics" },
        },
      ]),
    );
    expect(decision.options.containers).toEqual(["app"]);
    expect(decision.warnings).toEqual([
      'cloudhsm/containers on StatefulSet ledger names "metrics", but the pod has no container or initContainer of that name',
    ]);
  });

  it("no matching name warns twice", () => {
    const decision = expectInjected(
      injectOnPod({ [CONTAINERS_ANNOTATION]: "metrics" }),
    );
    expect(decision.options.containers).toEqual([]);
    expect(decision.warnings).toHaveLength(2);
    expect(decision.warnings[0]).toContain('names "metrics"');
    expect(decision.warnings[1]).toBe(
      "cloudhsm/containers on pod matches no container of the pod, so no container gets HSM addresses",
    );
  });

  it("pod without containers warns", () => {
    const decision = expectInjected(
      resolve(
        [
          {
            ...POD,
            annotations: {
              [INJECT_ANNOTATION]: "true",
              [CONTAINERS_ANNOTATION]: "app",
            },
          },
        ],
        [],
      ),
    );
    expect(decision.options.containers).toEqual([]);
    expect(decision.warnings).toHaveLength(2);
  });

  it("invalid list entry is named", () => {
    const error = expectError(
      injectOnPod({ [CONTAINERS_ANNOTATION]: "app,Side_Car" }),
    );
    expect(error).toContain(
      'invalid cloudhsm/containers "app,Side_Car" on pod: entry "Side_Car" is invalid',
    );
  });

  it.each(["", ",", "app,", "-app", "app-", `${"a".repeat(64)}`])(
    "value %j is invalid",
    (value) => {
      const error = expectError(
        injectOnPod({ [CONTAINERS_ANNOTATION]: value }),
      );
      expect(error).toContain(
        `invalid cloudhsm/containers ${JSON.stringify(value)} on pod: `,
      );
    },
  );

  it("63-character name is accepted", () => {
    const name = "a".repeat(63);
    const decision = expectInjected(
      resolve(
        [
          {
            ...POD,
            annotations: {
              [INJECT_ANNOTATION]: "true",
              [CONTAINERS_ANNOTATION]: name,
            },
          },
        ],
        [name],
      ),
    );
    expect(decision.options.containers).toEqual([name]);
  });
});

describe("config path", () => {
  it.each([
    "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
    "/a",
    "/etc/cloudhsm/.hidden",
    "/x/...y",
  ])("%s is accepted", (path) => {
    const decision = expectInjected(
      injectOnPod({ [CONFIG_PATH_ANNOTATION]: path }),
    );
    expect(decision.options.configPath).toBe(path);
  });

  it.each([
    "opt/cloudhsm.cfg",
    "./cloudhsm.cfg",
    "/",
    "/opt/cloudhsm/",
    "/opt//cloudhsm.cfg",
    "/opt/./cloudhsm.cfg",
    "/opt/../etc/passwd",
    "/..",
    "/opt/cloudhsm.cfg/.",
    "/opt/cloud\nhsm.cfg",
    "/opt/cloud\u0000hsm.cfg",
    `/${"a".repeat(4096)}`,
    "",
  ])("%j is invalid", (path) => {
    const error = expectError(injectOnPod({ [CONFIG_PATH_ANNOTATION]: path }));
    expect(error).toMatch(
      /^invalid cloudhsm\/config-path ".*" on pod: expected an absolute, normalized file path/,
    );
  });

  it("absent path is left undefined", () => {
    const decision = expectInjected(injectOnPod({}));
    expect(decision.options.configPath).toBeUndefined();
  });
});

describe("config format", () => {
  it.each(["sdk5", "sdk3", "json"] as const)("%s is accepted", (format) => {
    const decision = expectInjected(
      injectOnPod({ [CONFIG_FORMAT_ANNOTATION]: format }),
    );
    expect(decision.options.configFormat).toBe(format);
  });

  it.each(["SDK5", "sdk4", "yaml", ""])("%j is invalid", (format) => {
    const error = expectError(
      injectOnPod({ [CONFIG_FORMAT_ANNOTATION]: format }),
    );
    expect(error).toBe(
      `invalid cloudhsm/config-format ${JSON.stringify(format)} on pod: expected sdk5, sdk3 or json`,
    );
  });
});

describe("messages", () => {
  it("long values are shortened", () => {
    const value = "x".repeat(1000);
    const error = expectError(injectOnPod({ [REGION_ANNOTATION]: value }));
    expect(error).toContain(`"${"x".repeat(120)}..."`);
    expect(error.length).toBeLessThan(300);
  });

  it("control characters are escaped", () => {
    const error = expectError(
      injectOnPod({ [REGION_ANNOTATION]: "us-east-1\nX-Injected: 1" }),
    );
    expect(error).not.toContain("\n");
    expect(error).toContain('"us-east-1\\nX-Injected: 1"');
  });
});

describe("odd annotation objects", () => {
  it("null and missing annotations are skipped", () => {
    const decision = expectInjected(
      resolve([
        { ...POD, annotations: null },
        { ...REPLICA_SET },
        { ...DEPLOYMENT, annotations: { [INJECT_ANNOTATION]: "true" } },
      ]),
    );
    expect(decision.decidedBy).toBe("Deployment checkout");
  });

  it("__proto__ key is an ordinary annotation", () => {
    const annotations = JSON.parse(
      `{"__proto__": {"${INJECT_ANNOTATION}": "true"}, "constructor": "x", "hasOwnProperty": "y"}`,
    ) as Record<string, string>;
    const decision = resolve([{ ...POD, annotations }, NAMESPACE]);
    expect(decision).toEqual({ inject: false });
  });

  it("inherited keys do not count", () => {
    const inherited = Object.create({ [INJECT_ANNOTATION]: "true" }) as Record<
      string,
      string
    >;
    expect(resolve([{ ...POD, annotations: inherited }])).toEqual({
      inject: false,
    });
  });

  it("null-prototype annotations work", () => {
    const annotations = Object.create(null) as Record<string, string>;
    annotations[INJECT_ANNOTATION] = "true";
    annotations["__proto__"] = "x";
    const decision = expectInjected(resolve([{ ...POD, annotations }]));
    expect(decision.decidedBy).toBe("pod");
  });

  it("non-string inject value rejects", () => {
    const annotations = { [INJECT_ANNOTATION]: true } as unknown as Record<
      string,
      string
    >;
    const error = expectError(resolve([{ ...POD, annotations }]));
    expect(error).toBe(
      'invalid cloudhsm/inject true on pod: expected "true" or "false"',
    );
  });

  it("non-string option values reject", () => {
    for (const key of [
      CLUSTER_ID_ANNOTATION,
      REGION_ANNOTATION,
      CONTAINERS_ANNOTATION,
      CONFIG_PATH_ANNOTATION,
      CONFIG_FORMAT_ANNOTATION,
    ]) {
      const annotations = {
        [INJECT_ANNOTATION]: "true",
        [key]: 42,
      } as unknown as Record<string, string>;
      const error = expectError(resolve([{ ...POD, annotations }]));
      expect(error, key).toMatch(
        new RegExp(`^invalid ${key} 42 on pod: expected `),
      );
    }
  });

  it("annotations that are not objects are skipped", () => {
    const annotations = "cloudhsm/inject" as unknown as Record<string, string>;
    expect(resolve([{ ...POD, annotations }])).toEqual({ inject: false });
  });
});

describe("properties", () => {
  const keys = [
    INJECT_ANNOTATION,
    CLUSTER_ID_ANNOTATION,
    REGION_ANNOTATION,
    CONTAINERS_ANNOTATION,
    CONFIG_PATH_ANNOTATION,
    CONFIG_FORMAT_ANNOTATION,
    "__proto__",
    "constructor",
  ];
  const annotationsArbitrary = fc.dictionary(
    fc.constantFrom(...keys),
    fc.oneof(
      fc.constantFrom(
        "true",
        "false",
        OTHER_CLUSTER,
        "us-west-2",
        "app",
        "/etc/a.cfg",
        "json",
      ),
      fc.string(),
    ),
  );
  const chainArbitrary = fc.array(annotationsArbitrary, {
    minLength: 0,
    maxLength: 4,
  });

  it("pod false always opts out", () => {
    fc.assert(
      fc.property(chainArbitrary, (owners) => {
        const sources: AnnotationSource[] = [
          { ...POD, annotations: { [INJECT_ANNOTATION]: "false" } },
          ...owners.map((annotations, i) => ({
            kind: "ReplicaSet",
            name: `rs-${i}`,
            annotations,
          })),
        ];
        expect(resolve(sources)).toEqual({ inject: false, decidedBy: "pod" });
      }),
      { numRuns: 200 },
    );
  });

  it("random chains never throw", () => {
    fc.assert(
      fc.property(chainArbitrary, (chain) => {
        const sources = chain.map((annotations, i) => ({
          kind: "Job",
          name: `job-${i}`,
          annotations,
        }));
        const decision = resolve(sources);
        expect(typeof decision).toBe("object");
      }),
      { numRuns: 300 },
    );
  });

  it("nearest cluster id wins", () => {
    const idArbitrary = fc.option(
      fc.stringMatching(/^cluster-[2-7a-z]{11,16}$/),
      { nil: undefined },
    );
    fc.assert(
      fc.property(
        fc.array(idArbitrary, { minLength: 1, maxLength: 5 }),
        (ids) => {
          const sources = ids.map((id, i): AnnotationSource => {
            const annotations: Record<string, string> = {};
            if (id !== undefined) {
              annotations[CLUSTER_ID_ANNOTATION] = id;
            }
            return {
              kind: i === 0 ? "Pod" : "Deployment",
              name: `level-${i}`,
              annotations,
            };
          });
          sources.push({
            ...NAMESPACE,
            annotations: { [INJECT_ANNOTATION]: "true" },
          });
          const expected =
            ids.find((id) => id !== undefined) ?? DEFAULTS.clusterId;
          const decision = expectInjected(resolve(sources));
          expect(decision.options.clusterIds).toEqual([expected]);
        },
      ),
      { numRuns: 200 },
    );
  });
});
