import fc from "fast-check";
import { describe, expect, it } from "vitest";

import {
  ANNOTATION_CONFIG,
  ANNOTATION_INJECTED_AT,
  ANNOTATION_INJECTED_IPS,
  LABEL_INJECTED,
  type InjectionPlan,
} from "../src/injection/mutate.js";
import { PatchCache } from "../src/injection/patch-cache.js";
import { isObject, type JsonObject } from "../src/injection/pod.js";
import {
  OWNED_ENV_NAMES,
  injectUncached,
  runInjection,
  stripOwned,
} from "./support/inject-pod.js";

const NOW = new Date("2024-05-01T12:00:00.000Z");
const LATER = new Date("2024-05-01T13:30:00.000Z");
const EARLIER = new Date("2024-04-01T08:00:00.000Z");

const VOLUME_NAME = "cloudhsm-config";
const MOUNT_DIR = "/var/run/cloudhsm";
const CONFIG_PATHS = [
  "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
  "/etc/cloudhsm/cloudhsm.cfg",
];
const MAX_CONTAINERS = 6;

// Generators. Maps are built with Object.fromEntries, which defines keys such as "__proto__" as
// own properties, the way JSON.parse does for a request body.

const containerName = fc.stringMatching(/^[a-z][a-z0-9-]{0,8}[a-z0-9]$/);

const envName = fc.constantFrom(
  ...OWNED_ENV_NAMES,
  "LISTEN_ADDR",
  "DB_PASSWORD",
  "HSM_ENDPOINT",
  "POD_IP",
  "LOG_LEVEL",
);

const envSource: fc.Arbitrary<JsonObject> = fc.oneof(
  fc
    .oneof(
      fc.constantFrom("$(CLOUDHSM_HSM_IP):2223", ":8080", "", "10.0.9.9"),
      fc.string({ maxLength: 12 }),
    )
    .map((value) => ({ value })),
  fc.constantFrom<JsonObject>(
    { valueFrom: { secretKeyRef: { name: "db", key: "password" } } },
    { valueFrom: { secretKeyRef: { key: "token", name: "api" } } },
    { valueFrom: { configMapKeyRef: { name: "hsm", key: "first" } } },
    { valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
  ),
);

/** Env entries with either key order, and sometimes a field no Kubernetes version defines. */
const envEntry: fc.Arbitrary<JsonObject> = fc
  .record({
    name: envName,
    source: envSource,
    nameFirst: fc.boolean(),
    future: fc.option(fc.constantFrom(1, "kept", [1, { z: 0 }]), {
      nil: undefined,
    }),
  })
  .map(({ name, source, nameFirst, future }) => {
    const entry: JsonObject = nameFirst
      ? { name, ...source }
      : { ...source, name };
    if (future !== undefined) {
      entry.futureEnvField = future;
    }
    return entry;
  });

const envFromEntry = fc.constantFrom<JsonObject>(
  { configMapRef: { name: "settings" } },
  { prefix: "S3_", secretRef: { name: "s3", optional: true } },
);

const mountPath = fc.constantFrom(
  "/tmp",
  "/data",
  MOUNT_DIR,
  `${MOUNT_DIR}/`,
  ...CONFIG_PATHS,
  "/var/run/secrets/kubernetes.io/serviceaccount",
);

const volumeName = fc.constantFrom(
  "tmp",
  "data",
  "hsm-files",
  "settings",
  VOLUME_NAME,
);

const volumeMount: fc.Arbitrary<JsonObject> = fc
  .record({
    name: volumeName,
    mountPath,
    readOnly: fc.option(fc.boolean(), { nil: undefined }),
  })
  .map(({ name, mountPath: path, readOnly }) =>
    readOnly === undefined
      ? { name, mountPath: path }
      : { name, mountPath: path, readOnly },
  );

/** Generates a list field that is absent, null, empty or filled. */
function optionalList<T>(
  entry: fc.Arbitrary<T>,
  unique?: (value: T) => unknown,
): fc.Arbitrary<T[] | null | undefined> {
  const filled = unique
    ? fc.uniqueArray(entry, { minLength: 1, maxLength: 5, selector: unique })
    : fc.array(entry, { minLength: 1, maxLength: 5 });
  return fc.oneof(
    fc.constant(undefined),
    fc.constant(null),
    fc.constant<T[]>([]),
    filled,
  );
}

const containerFields = fc.record({
  env: optionalList(envEntry),
  envFrom: optionalList(envFromEntry),
  volumeMounts: optionalList(volumeMount, (mount) =>
    String(mount.mountPath).replace(/\/+$/, ""),
  ),
  restartPolicy: fc.option(fc.constant("Always"), { nil: undefined }),
  future: fc.option(fc.constant({ z: 1, a: [null, 0, ""] }), {
    nil: undefined,
  }),
});

const volume: fc.Arbitrary<JsonObject> = fc
  .record({
    name: volumeName,
    source: fc.constantFrom<JsonObject>(
      { emptyDir: {} },
      { configMap: { name: "settings" } },
      { secret: { secretName: "hsm-files" } },
    ),
  })
  .map(({ name, source }) => ({ name, ...source }));

const mapKey = fc.oneof(
  fc.constantFrom(
    "__proto__",
    "constructor",
    "prototype",
    "hasOwnProperty",
    "toString",
    "a/b",
    "a~b",
    "~1",
    "~0",
    "x/~/y",
    "example.com/owner~team",
    "cloudhsm/inject",
    LABEL_INJECTED,
    ANNOTATION_CONFIG,
    ANNOTATION_INJECTED_IPS,
    ANNOTATION_INJECTED_AT,
  ),
  fc.string({ maxLength: 8 }),
);

/** A string map that is absent, null, empty or filled, with keys that need care. */
const stringMap: fc.Arbitrary<JsonObject | null | undefined> = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.constant({}),
  fc
    .uniqueArray(fc.tuple(mapKey, fc.string({ maxLength: 8 })), {
      minLength: 1,
      maxLength: 8,
      selector: ([key]) => key,
    })
    .map((entries) => Object.fromEntries(entries) as JsonObject),
);

const metadata: fc.Arbitrary<JsonObject | undefined> = fc.option(
  fc
    .record({ annotations: stringMap, labels: stringMap })
    .map(({ annotations, labels }) => {
      const result: JsonObject = { name: "checkout-7d9f-x2x4k" };
      if (annotations !== undefined) {
        result.annotations = annotations;
      }
      if (labels !== undefined) {
        result.labels = labels;
      }
      return result;
    }),
  { nil: undefined, freq: 8 },
);

function buildContainer(
  name: string,
  fields: {
    env: unknown;
    envFrom: unknown;
    volumeMounts: unknown;
    restartPolicy?: string;
    future?: JsonObject;
  },
): JsonObject {
  const entry: JsonObject = { name, image: "registry.example.com/app:1.0" };
  for (const key of ["env", "envFrom", "volumeMounts"] as const) {
    if (fields[key] !== undefined) {
      entry[key] = fields[key];
    }
  }
  if (fields.restartPolicy !== undefined) {
    entry.restartPolicy = fields.restartPolicy;
  }
  if (fields.future !== undefined) {
    entry.futureContainerField = fields.future;
  }
  return entry;
}

const podArbitrary: fc.Arbitrary<JsonObject> = fc
  .record({
    names: fc.uniqueArray(containerName, {
      minLength: 1,
      maxLength: MAX_CONTAINERS,
    }),
    initCount: fc.nat({ max: MAX_CONTAINERS }),
    fields: fc.array(containerFields, {
      minLength: MAX_CONTAINERS,
      maxLength: MAX_CONTAINERS,
    }),
    volumes: optionalList(volume, (entry) => entry.name),
    metadata,
    futureSpec: fc.boolean(),
  })
  .map(({ names, initCount, fields, volumes, metadata: meta, futureSpec }) => {
    const all = names.map((name, index) =>
      buildContainer(name, fields[index]!),
    );
    // At least one regular container stays, because the Pod schema requires one.
    const split = Math.min(initCount, all.length - 1);
    const spec: JsonObject = {};
    if (split > 0) {
      spec.initContainers = all.slice(0, split);
    }
    spec.containers = all.slice(split);
    if (volumes !== undefined) {
      spec.volumes = volumes;
    }
    if (futureSpec) {
      spec.futureSpecField = { mode: "strict", weights: [3, 1, 2] };
    }
    const pod: JsonObject = { apiVersion: "v1", kind: "Pod" };
    if (meta !== undefined) {
      pod.metadata = meta;
    }
    pod.spec = spec;
    return pod;
  });

/** Plans whose container list picks by position, so it can name containers the pod has. */
const planArbitrary = fc.record({
  ips: fc
    .subarray(["10.0.2.40", "10.0.3.7", "10.0.12.5"], { minLength: 1 })
    .map((ips) => [...ips]),
  configPath: fc.option(fc.constantFrom(...CONFIG_PATHS), { nil: undefined }),
  selection: fc.option(
    fc.array(fc.boolean(), {
      minLength: MAX_CONTAINERS + 1,
      maxLength: MAX_CONTAINERS + 1,
    }),
    { nil: undefined },
  ),
});

type PlanInput = typeof planArbitrary extends fc.Arbitrary<infer T> ? T : never;

function containerNames(pod: JsonObject): string[] {
  const spec = pod.spec as JsonObject;
  const lists = [spec.initContainers, spec.containers];
  return lists.flatMap((list) =>
    Array.isArray(list)
      ? list.map((entry) => String((entry as JsonObject).name))
      : [],
  );
}

/** Builds a plan. The last selection flag adds a container name that the pod does not have. */
function buildPlan(input: PlanInput, pod: JsonObject): InjectionPlan {
  const plan: {
    clusterId: string;
    ips: string[];
    config: string;
    configPath?: string;
    containers?: string[];
  } = {
    clusterId: "cluster-jxhlf7644ne",
    ips: input.ips,
    config: `{"servers":${JSON.stringify(input.ips)}}\n`,
  };
  if (input.configPath !== undefined) {
    plan.configPath = input.configPath;
  }
  if (input.selection !== undefined) {
    const names = containerNames(pod);
    const selected = names.filter((_, index) => input.selection![index]);
    if (input.selection[MAX_CONTAINERS]) {
      selected.push("not-in-pod");
    }
    plan.containers = selected;
  }
  return plan;
}

function listOf(parent: unknown, key: string): JsonObject[] {
  const list = isObject(parent) ? parent[key] : undefined;
  return Array.isArray(list) ? (list as JsonObject[]) : [];
}

function allContainers(pod: JsonObject): JsonObject[] {
  return [
    ...listOf(pod.spec, "initContainers"),
    ...listOf(pod.spec, "containers"),
  ];
}

function mountPathOf(entry: JsonObject): string {
  return String(entry.mountPath).replace(/\/+$/, "");
}

/** Checks the env head, the webhook's env names and the config mount of one injected container. */
function expectContainerInjected(
  entry: JsonObject,
  plan: InjectionPlan,
  warnings: readonly string[],
): void {
  const env = listOf(entry, "env");
  const filePath = plan.configPath ?? `${MOUNT_DIR}/cloudhsm.cfg`;
  const ownedInOrder = OWNED_ENV_NAMES.flatMap((name) =>
    env.filter((variable) => variable.name === name),
  );
  expect(ownedInOrder).toEqual([
    { name: "CLOUDHSM_CLUSTER_ID", value: plan.clusterId },
    { name: "CLOUDHSM_HSM_IPS", value: plan.ips.join(",") },
    { name: "CLOUDHSM_HSM_IP", value: plan.ips[0] },
    { name: "CLOUDHSM_CONFIG_FILE", value: filePath },
  ]);
  // User entries may repeat a name, which Kubernetes allows, but each of the webhook's names
  // appears once.
  const owned = env.filter((variable) =>
    OWNED_ENV_NAMES.includes(String(variable.name)),
  );
  expect(owned).toHaveLength(4);

  const mounts = listOf(entry, "volumeMounts");
  const paths = mounts.map(mountPathOf);
  expect(paths.filter((path, index) => paths.indexOf(path) !== index)).toEqual(
    [],
  );
  const ours = mounts.filter((mount) => mount.name === VOLUME_NAME);
  const conflicted = warnings.some((warning) =>
    warning.startsWith(`container "${String(entry.name)}"`),
  );
  if (conflicted) {
    expect(ours).toEqual([]);
  } else {
    expect(ours).toHaveLength(1);
    expect(ours[0]?.mountPath).toBe(plan.configPath ?? MOUNT_DIR);
  }
}

function prototypeSnapshot(): string[] {
  return Object.getOwnPropertyNames(Object.prototype).sort();
}

/**
 * Returns the pod injected at EARLIER under the earlier plan, as on reinvocation, or the pod
 * itself when there is no earlier plan. Half the generated cases have one.
 */
function injectedBefore(
  generated: JsonObject,
  earlierInput: PlanInput | undefined,
): JsonObject {
  return earlierInput === undefined
    ? generated
    : runInjection(generated, buildPlan(earlierInput, generated), EARLIER).pod;
}

/** A pod, injected before or not, and the plan to inject now. */
const injectionCase = fc
  .tuple(
    podArbitrary,
    planArbitrary,
    fc.option(planArbitrary, { nil: undefined }),
  )
  .map(([generated, planInput, earlierInput]) => {
    const original = injectedBefore(generated, earlierInput);
    return { original, plan: buildPlan(planInput, original) };
  });

describe("injectPod properties", () => {
  it("holds for random pods", () => {
    const prototypeBefore = prototypeSnapshot();

    fc.assert(
      fc.property(injectionCase, ({ original, plan }) => {
        const snapshot = JSON.stringify(original);

        const { pod, patch, result } = runInjection(original, plan, NOW);

        expect(JSON.stringify(original)).toBe(snapshot);
        expect(result.changed).toBe(patch.length > 0);
        expect(stripOwned(pod)).toEqual(stripOwned(original));

        const metadata = pod.metadata as JsonObject;
        const labels = metadata.labels as JsonObject;
        const annotations = metadata.annotations as JsonObject;
        expect(Object.getPrototypeOf(labels)).toBe(Object.prototype);
        expect(Object.getPrototypeOf(annotations)).toBe(Object.prototype);
        expect(labels[LABEL_INJECTED]).toBe("true");
        expect(annotations[ANNOTATION_CONFIG]).toBe(plan.config);
        expect(annotations[ANNOTATION_INJECTED_IPS]).toBe(plan.ips.join(","));
        expect(typeof annotations[ANNOTATION_INJECTED_AT]).toBe("string");

        const selected = plan.containers;
        const injected = allContainers(pod).filter(
          (entry) => !selected || selected.includes(String(entry.name)),
        );
        expect(result.injectedContainers).toEqual(
          injected.map((entry) => entry.name),
        );
        for (const entry of injected) {
          expectContainerInjected(entry, plan, result.warnings);
        }
        const volumes = listOf(pod.spec, "volumes");
        expect(
          volumes.filter((entry) => entry.name === VOLUME_NAME).length,
        ).toBeLessThanOrEqual(1);

        const second = runInjection(pod, plan, LATER);
        expect(second.patch).toEqual([]);
        expect(second.result.changed).toBe(false);
        expect(JSON.stringify(second.pod)).toBe(JSON.stringify(pod));

        expect(prototypeSnapshot()).toEqual(prototypeBefore);
        expect(({} as JsonObject)[LABEL_INJECTED]).toBeUndefined();
      }),
      { numRuns: 200 },
    );
  });
});

describe("PatchCache properties", () => {
  it("matches uncached injection", () => {
    fc.assert(
      fc.property(injectionCase, ({ original, plan }) => {
        const cache = new PatchCache();

        // The second pod is an equal copy, as the next pod of a ReplicaSet is.
        for (const [pod, now] of [
          [original, NOW],
          [structuredClone(original), LATER],
        ] as const) {
          const expected = injectUncached(pod, plan, now);
          const actual = cache.inject(pod, plan, now);
          expect(actual.patch?.json).toBe(expected.patch?.json);
          expect(actual.patch?.length).toBe(expected.patch?.length);
          expect(actual.patch?.ascii).toBe(expected.patch?.ascii);
          expect(actual.warnings).toEqual(expected.warnings);
          if (actual.patch?.base64 !== undefined) {
            expect(actual.patch.base64).toBe(
              Buffer.from(actual.patch.json, "utf8").toString("base64"),
            );
          }
        }
      }),
      { numRuns: 200 },
    );
  });
});
