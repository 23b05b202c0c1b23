import { describe, expect, it } from "vitest";

import {
  ANNOTATION_CONFIG,
  ANNOTATION_INJECTED_AT,
  ANNOTATION_INJECTED_IPS,
  InvalidPodError,
  LABEL_INJECTED,
  injectPod,
  type InjectionPlan,
} from "../src/injection/mutate.js";
import { isObject, type JsonObject } from "../src/injection/pod.js";
import { renderConfig } from "../src/injection/render.js";
import { ownedView } from "../src/injection/view.js";
import {
  OWNED_ENV_NAMES,
  runInjection,
  stripOwned,
} from "./support/inject-pod.js";

const CLUSTER_ID = "cluster-jxhlf7644ne";
const IPS = ["10.0.2.40", "10.0.12.5"];
const CONFIG = renderConfig(
  [
    {
      snapshot: {
        clusterId: CLUSTER_ID,
        region: "us-east-1",
        hsms: [],
        fetchedAt: 0,
      },
      active: [
        { hsmId: "hsm-aaaaaaaaaaa", eniIp: IPS[0], state: "ACTIVE" },
        { hsmId: "hsm-bbbbbbbbbbb", eniIp: IPS[1], state: "ACTIVE" },
      ],
    },
  ],
  { format: "sdk5", hsmCaFile: "/opt/cloudhsm/etc/customerCA.crt" },
);
const PLAN: InjectionPlan = { clusterId: CLUSTER_ID, ips: IPS, config: CONFIG };
const CONFIG_PATH = "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg";

const NOW = new Date("2024-05-01T12:00:00.000Z");
const LATER = new Date("2024-05-01T13:30:00.000Z");
const EARLIER = "2024-04-01T08:00:00.000Z";

const IMAGE = "registry.example.com/shop/checkout:2.14.1";
const VOLUME_NAME = "cloudhsm-config";
const MOUNT_DIR = "/var/run/cloudhsm";

/** The env list head every injected container gets under PLAN with the default mount. */
const EXPECTED_ENV = [
  { name: "CLOUDHSM_CLUSTER_ID", value: CLUSTER_ID },
  { name: "CLOUDHSM_HSM_IPS", value: "10.0.2.40,10.0.12.5" },
  { name: "CLOUDHSM_HSM_IP", value: "10.0.2.40" },
  { name: "CLOUDHSM_CONFIG_FILE", value: "/var/run/cloudhsm/cloudhsm.cfg" },
];

/** The config volume as the webhook writes it, with the defaults the API server fills in. */
const EXPECTED_VOLUME = {
  name: VOLUME_NAME,
  downwardAPI: {
    defaultMode: 420,
    items: [
      {
        path: "cloudhsm.cfg",
        fieldRef: {
          apiVersion: "v1",
          fieldPath: "metadata.annotations['cloudhsm/config']",
        },
      },
    ],
  },
};

const EXPECTED_MOUNT = {
  name: VOLUME_NAME,
  mountPath: MOUNT_DIR,
  readOnly: true,
};

// Each fixture builds a new pod, so changes made by one test never reach another.

function container(name: string, fields: JsonObject = {}): JsonObject {
  return { name, image: IMAGE, ...fields };
}

function pod(spec: JsonObject, metadata?: JsonObject | null): JsonObject {
  const result: JsonObject = { apiVersion: "v1", kind: "Pod" };
  if (metadata !== undefined) {
    result.metadata = metadata;
  }
  result.spec = spec;
  return result;
}

function basicMetadata(fields: JsonObject = {}): JsonObject {
  return { name: "checkout-7d9f-x2x4k", namespace: "shop", ...fields };
}

function minimalPod(): JsonObject {
  return pod({ containers: [container("app")] }, basicMetadata());
}

function podWithoutMetadata(): JsonObject {
  return pod({ containers: [container("app")] });
}

function podWithNullMetadata(): JsonObject {
  return pod({ containers: [container("app")] }, null);
}

function podWithEmptyLists(): JsonObject {
  return pod(
    {
      containers: [container("app", { env: [], volumeMounts: [] })],
      initContainers: [],
      volumes: [],
    },
    basicMetadata({ annotations: {}, labels: {} }),
  );
}

function podWithNullFields(): JsonObject {
  return pod(
    {
      containers: [container("app", { env: null, volumeMounts: null })],
      initContainers: null,
      volumes: null,
    },
    basicMetadata({ annotations: null, labels: null }),
  );
}

function podWithLabelsOnly(): JsonObject {
  return pod(
    { containers: [container("app")] },
    basicMetadata({ labels: { "app.kubernetes.io/name": "checkout" } }),
  );
}

function typicalPod(): JsonObject {
  return pod(
    {
      serviceAccountName: "checkout",
      initContainers: [
        container("migrate", {
          command: ["/bin/migrate", "--up"],
          env: [{ name: "DB_HOST", value: "db.shop.svc" }],
        }),
      ],
      containers: [
        container("web", {
          ports: [{ name: "http", containerPort: 8080 }],
          env: [
            { name: "LISTEN_ADDR", value: ":8080" },
            {
              name: "DB_PASSWORD",
              valueFrom: { secretKeyRef: { name: "db", key: "password" } },
            },
            {
              name: "POD_IP",
              valueFrom: { fieldRef: { fieldPath: "status.podIP" } },
            },
          ],
          envFrom: [
            { configMapRef: { name: "checkout-settings" } },
            { prefix: "S3_", secretRef: { name: "s3", optional: true } },
          ],
          volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
        }),
        container("metrics", {
          env: [{ name: "PORT", value: "9102" }],
        }),
      ],
      volumes: [
        { name: "tmp", emptyDir: {} },
        { name: "settings", configMap: { name: "checkout-settings" } },
      ],
    },
    basicMetadata({
      generateName: "checkout-7d9f-",
      labels: {
        "app.kubernetes.io/name": "checkout",
        "pod-template-hash": "7d9f",
      },
      annotations: {
        "cloudhsm/inject": "true",
        "prometheus.io/scrape": "true",
      },
      ownerReferences: [
        {
          apiVersion: "apps/v1",
          kind: "ReplicaSet",
          name: "checkout-7d9f",
          uid: "0b5a9f5e-3b7c-4f4f-9f3d-2f1f8f7e6d5c",
          controller: true,
        },
      ],
    }),
  );
}

/**
 * Builds a pod injected earlier with other addresses, whose manifest also set CLOUDHSM_*
 * variables.
 */
function stalePod(): JsonObject {
  return pod(
    {
      containers: [
        container("web", {
          env: [
            { name: "CLOUDHSM_CLUSTER_ID", value: CLUSTER_ID },
            { name: "CLOUDHSM_HSM_IPS", value: "10.0.9.9,10.0.9.10" },
            { name: "LISTEN_ADDR", value: ":8080" },
            {
              name: "CLOUDHSM_HSM_IP",
              valueFrom: {
                configMapKeyRef: { name: "hsm-addresses", key: "first" },
              },
            },
            { name: "CLOUDHSM_CONFIG_FILE", value: "/etc/old.cfg" },
            { name: "CLOUDHSM_HSM_IP", value: "10.0.9.9" },
            { name: "LOG_LEVEL", value: "debug" },
          ],
          volumeMounts: [
            { name: VOLUME_NAME, mountPath: MOUNT_DIR, readOnly: true },
          ],
        }),
      ],
      volumes: [EXPECTED_VOLUME],
    },
    basicMetadata({
      labels: { [LABEL_INJECTED]: "true" },
      annotations: {
        [ANNOTATION_CONFIG]: "{}\n",
        [ANNOTATION_INJECTED_IPS]: "10.0.9.9,10.0.9.10",
        [ANNOTATION_INJECTED_AT]: EARLIER,
      },
    }),
  );
}

function podWithEnvReferences(): JsonObject {
  return pod(
    {
      containers: [
        container("web", {
          env: [
            { name: "CLOUDHSM_HSM_IP", value: "10.0.9.9" },
            { name: "HSM_ENDPOINT", value: "$(CLOUDHSM_HSM_IP):2223" },
            { name: "HSM_LIST", value: "$(CLOUDHSM_HSM_IPS)" },
          ],
        }),
      ],
    },
    basicMetadata(),
  );
}

function podWithSidecars(): JsonObject {
  return pod(
    {
      initContainers: [
        container("wait-for-db", { command: ["/bin/wait", "db:5432"] }),
        container("log-shipper", {
          restartPolicy: "Always",
          env: [{ name: "SHIP_TO", value: "logs.shop.svc" }],
        }),
      ],
      containers: [container("web")],
      ephemeralContainers: [
        {
          name: "debugger",
          image: "busybox:1.36",
          targetContainerName: "web",
          env: [{ name: "CLOUDHSM_HSM_IP", value: "10.0.9.9" }],
        },
      ],
    },
    basicMetadata(),
  );
}

function podWithEscapedKeys(): JsonObject {
  return pod(
    { containers: [container("app")] },
    basicMetadata({
      labels: {
        "app.kubernetes.io/name": "checkout",
        "team~tilde": "payments",
      },
      annotations: {
        "example.com/owner~team": "payments",
        "a/b~c/d": "value",
        "~1already~0escaped": "value",
      },
    }),
  );
}

function podWithTwelveContainers(): JsonObject {
  const containers = Array.from({ length: 12 }, (_, index) =>
    container(`worker-${index}`, {
      env: [{ name: "WORKER_INDEX", value: String(index) }],
    }),
  );
  return pod({ containers }, basicMetadata());
}

/**
 * Builds a pod with fields that no Kubernetes version defines, at every level injection walks
 * through.
 */
function podWithUnknownFields(): JsonObject {
  return {
    apiVersion: "v1",
    kind: "Pod",
    futureTopLevel: { enabled: true },
    metadata: basicMetadata({
      futureMetadata: ["a", "b"],
      annotations: { "prometheus.io/scrape": "true" },
    }),
    spec: {
      futureSpecField: { mode: "strict", weights: [3, 1, 2] },
      containers: [
        container("web", {
          futureContainerField: { z: 1, a: { nested: [null, 0, ""] } },
          env: [
            {
              name: "DB_PASSWORD",
              futureEnvField: "kept",
              valueFrom: {
                secretKeyRef: { name: "db", key: "password" },
                futureSource: {},
              },
            },
            { value: "1", name: "VALUE_FIRST" },
            { name: "PLAIN", value: "2" },
            {
              name: "POD_IP",
              valueFrom: { fieldRef: { fieldPath: "status.podIP" } },
            },
            { name: "FUTURE_LAST", value: "3", futureEnvField: [1, 2] },
            {
              name: "KEY_FIRST",
              valueFrom: { secretKeyRef: { key: "token", name: "api" } },
            },
          ],
          volumeMounts: [
            { name: "tmp", mountPath: "/tmp", futureMountField: 7 },
          ],
        }),
      ],
      volumes: [
        { name: "tmp", emptyDir: { medium: "Memory" }, futureVolume: 1 },
      ],
    },
    status: { phase: "Pending", futureStatus: "x" },
  };
}

/** Builds a pod of about 1 MB, most of it in fields that injection does not touch. */
function largePod(): JsonObject {
  const containers = Array.from({ length: 40 }, (_, index) =>
    container(`c${index}`, {
      env: Array.from({ length: 60 }, (_, envIndex) => ({
        name: `VAR_${envIndex}`,
        value: `value-${index}-${envIndex}`,
      })),
      volumeMounts: [{ name: `data-${index}`, mountPath: `/data/${index}` }],
    }),
  );
  const volumes = containers.map((_, index) => ({
    name: `data-${index}`,
    emptyDir: {},
  }));
  return pod(
    { containers, volumes },
    basicMetadata({
      annotations: {
        "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(800_000),
      },
    }),
  );
}

// Accessors for the patched pod. They fail the test with a plain message when a field is missing.

function metadataOf(value: JsonObject): JsonObject {
  const metadata = value.metadata;
  if (!isObject(metadata)) {
    throw new Error("pod has no metadata object");
  }
  return metadata;
}

function annotationsOf(value: JsonObject): JsonObject {
  const annotations = metadataOf(value).annotations;
  return isObject(annotations) ? annotations : {};
}

function labelsOf(value: JsonObject): JsonObject {
  const labels = metadataOf(value).labels;
  return isObject(labels) ? labels : {};
}

function specOf(value: JsonObject): JsonObject {
  const spec = value.spec;
  if (!isObject(spec)) {
    throw new Error("pod has no spec object");
  }
  return spec;
}

function listOf(parent: JsonObject, key: string): JsonObject[] {
  const list = parent[key];
  return Array.isArray(list) ? (list as JsonObject[]) : [];
}

/** Lists initContainers, then containers, as injection visits them. */
function allContainers(value: JsonObject): JsonObject[] {
  const spec = specOf(value);
  return [...listOf(spec, "initContainers"), ...listOf(spec, "containers")];
}

function containerNamed(value: JsonObject, name: string): JsonObject {
  const found = allContainers(value).find((entry) => entry.name === name);
  if (found === undefined) {
    throw new Error(`pod has no container named ${name}`);
  }
  return found;
}

function envNames(entry: JsonObject): string[] {
  return listOf(entry, "env").map((variable) => String(variable.name));
}

/** Returns the webhook's variables of a container, in the order of OWNED_ENV_NAMES. */
function ownedEnv(entry: JsonObject): JsonObject[] {
  return OWNED_ENV_NAMES.flatMap((name) =>
    listOf(entry, "env").filter((variable) => variable.name === name),
  );
}

function userEnv(entry: JsonObject): JsonObject[] {
  return listOf(entry, "env").filter(
    (variable) => !OWNED_ENV_NAMES.includes(String(variable.name)),
  );
}

function configVolumes(value: JsonObject): JsonObject[] {
  return listOf(specOf(value), "volumes").filter(
    (volume) => volume.name === VOLUME_NAME,
  );
}

function configMounts(entry: JsonObject): JsonObject[] {
  return listOf(entry, "volumeMounts").filter(
    (mount) => mount.name === VOLUME_NAME,
  );
}

function duplicates(values: readonly unknown[]): unknown[] {
  return values.filter((value, index) => values.indexOf(value) !== index);
}

/**
 * Checks everything a pod injected under PLAN with the default mount carries, and that nothing
 * outside the webhook's fields changed.
 */
function expectInjected(original: JsonObject, injected: JsonObject): void {
  expect(labelsOf(injected)[LABEL_INJECTED]).toBe("true");
  expect(annotationsOf(injected)[ANNOTATION_CONFIG]).toBe(CONFIG);
  expect(annotationsOf(injected)[ANNOTATION_INJECTED_IPS]).toBe(
    "10.0.2.40,10.0.12.5",
  );
  expect(configVolumes(injected)).toEqual([EXPECTED_VOLUME]);

  for (const entry of allContainers(injected)) {
    const before = containerNamed(original, String(entry.name));
    expect(ownedEnv(entry)).toEqual(EXPECTED_ENV);
    expect(duplicates(envNames(entry))).toEqual([]);
    // A JSONPatch may rewrite a moved entry key by key; its value stays the same.
    expect(userEnv(entry)).toEqual(userEnv(before));
    expect(JSON.stringify(entry.envFrom)).toBe(JSON.stringify(before.envFrom));
    expect(configMounts(entry)).toEqual([EXPECTED_MOUNT]);
    expect(
      duplicates(listOf(entry, "volumeMounts").map((mount) => mount.mountPath)),
    ).toEqual([]);
  }

  expect(stripOwned(injected)).toEqual(stripOwned(original));
}

/** Injects again into the output of a first pass and checks that nothing changes. */
function expectSecondPassNoOp(injected: JsonObject, plan: InjectionPlan): void {
  const second = runInjection(injected, plan, LATER);
  expect(second.patch).toEqual([]);
  expect(second.result.changed).toBe(false);
  expect(JSON.stringify(second.pod)).toBe(JSON.stringify(injected));
}

interface ShapeCase {
  readonly name: string;
  readonly build: () => JsonObject;
}

/** Pod shapes that all get the full default injection. */
const SHAPES: readonly ShapeCase[] = [
  { name: "minimal pod", build: minimalPod },
  { name: "no metadata", build: podWithoutMetadata },
  { name: "null metadata", build: podWithNullMetadata },
  { name: "empty maps and lists", build: podWithEmptyLists },
  { name: "null maps and lists", build: podWithNullFields },
  { name: "labels without annotations", build: podWithLabelsOnly },
  { name: "typical pod", build: typicalPod },
  { name: "stale CLOUDHSM env", build: stalePod },
  { name: "env references", build: podWithEnvReferences },
  { name: "native sidecars", build: podWithSidecars },
  { name: "escaped keys", build: podWithEscapedKeys },
  { name: "twelve containers", build: podWithTwelveContainers },
  { name: "unknown fields", build: podWithUnknownFields },
  { name: "large pod", build: largePod },
];

describe("injectPod shapes", () => {
  it.each(SHAPES)("injects $name", ({ build }) => {
    const original = build();
    const snapshot = JSON.stringify(original);

    const { pod: injected, patch, result } = runInjection(original, PLAN, NOW);

    expectInjected(original, injected);
    expect(annotationsOf(injected)[ANNOTATION_INJECTED_AT]).toBe(
      NOW.toISOString(),
    );
    expect(result.changed).toBe(true);
    expect(patch.length).toBeGreaterThan(0);
    expect(result.warnings).toEqual([]);
    expect(result.injectedContainers).toEqual(
      allContainers(original).map((entry) => entry.name),
    );
    expect(JSON.stringify(original)).toBe(snapshot);
  });

  it.each(SHAPES)("reinjects $name as no-op", ({ build }) => {
    const { pod: injected } = runInjection(build(), PLAN, NOW);

    expectSecondPassNoOp(injected, PLAN);
  });
});

describe("injectPod env", () => {
  it("replaces stale CLOUDHSM variables", () => {
    const { pod: injected } = runInjection(stalePod(), PLAN, NOW);
    const web = containerNamed(injected, "web");

    // Existing variables are replaced in place and their duplicates dropped.
    expect(envNames(web)).toEqual([
      "CLOUDHSM_CLUSTER_ID",
      "CLOUDHSM_HSM_IPS",
      "LISTEN_ADDR",
      "CLOUDHSM_HSM_IP",
      "CLOUDHSM_CONFIG_FILE",
      "LOG_LEVEL",
    ]);
    expect(ownedEnv(web)).toEqual(EXPECTED_ENV);
  });

  it("drops valueFrom of stale variable", () => {
    const { pod: injected } = runInjection(stalePod(), PLAN, NOW);
    const web = containerNamed(injected, "web");
    const hsmIp = listOf(web, "env").find(
      (variable) => variable.name === "CLOUDHSM_HSM_IP",
    );

    expect(hsmIp).toEqual({ name: "CLOUDHSM_HSM_IP", value: "10.0.2.40" });
  });

  it("moves injected-at on stale pod", () => {
    const { pod: injected } = runInjection(stalePod(), PLAN, NOW);

    expect(annotationsOf(injected)[ANNOTATION_INJECTED_AT]).toBe(
      NOW.toISOString(),
    );
  });

  it("keeps a declared variable before its references", () => {
    const { pod: injected } = runInjection(podWithEnvReferences(), PLAN, NOW);
    const names = envNames(containerNamed(injected, "web"));

    expect(names).toEqual([
      "CLOUDHSM_HSM_IP",
      "HSM_ENDPOINT",
      "HSM_LIST",
      "CLOUDHSM_CLUSTER_ID",
      "CLOUDHSM_HSM_IPS",
      "CLOUDHSM_CONFIG_FILE",
    ]);
  });

  it("appends missing variables after user entries", () => {
    const { pod: injected } = runInjection(typicalPod(), PLAN, NOW);
    const web = containerNamed(injected, "web");
    const names = envNames(web);

    expect(names.slice(-4)).toEqual(OWNED_ENV_NAMES);
    expect(userEnv(web)).toEqual(
      listOf(containerNamed(typicalPod(), "web"), "env"),
    );
  });

  it("keeps valueFrom and envFrom of user entries", () => {
    const original = typicalPod();
    const { pod: injected } = runInjection(original, PLAN, NOW);
    const web = containerNamed(injected, "web");
    const before = containerNamed(original, "web");

    expect(userEnv(web)).toEqual(listOf(before, "env"));
    expect(JSON.stringify(web.envFrom)).toBe(JSON.stringify(before.envFrom));
  });

  it("writes config path into env", () => {
    const plan = { ...PLAN, configPath: CONFIG_PATH };
    const { pod: injected } = runInjection(minimalPod(), plan, NOW);
    const env = listOf(containerNamed(injected, "app"), "env");

    expect(env[3]).toEqual({
      name: "CLOUDHSM_CONFIG_FILE",
      value: CONFIG_PATH,
    });
  });

  it("sets empty first IP without addresses", () => {
    const plan = { ...PLAN, ips: [] };
    const { pod: injected } = runInjection(minimalPod(), plan, NOW);
    const env = listOf(containerNamed(injected, "app"), "env");

    expect(env[1]).toEqual({ name: "CLOUDHSM_HSM_IPS", value: "" });
    expect(env[2]).toEqual({ name: "CLOUDHSM_HSM_IP", value: "" });
  });
});

describe("injectPod containers", () => {
  it("injects native sidecar", () => {
    const { pod: injected } = runInjection(podWithSidecars(), PLAN, NOW);
    const sidecar = containerNamed(injected, "log-shipper");

    expect(ownedEnv(sidecar)).toEqual(EXPECTED_ENV);
    expect(sidecar.restartPolicy).toBe("Always");
    expect(configMounts(sidecar)).toEqual([EXPECTED_MOUNT]);
  });

  it("leaves ephemeral containers alone", () => {
    const original = podWithSidecars();
    const { pod: injected, patch } = runInjection(original, PLAN, NOW);

    expect(JSON.stringify(specOf(injected).ephemeralContainers)).toBe(
      JSON.stringify(specOf(original).ephemeralContainers),
    );
    expect(
      patch.filter((operation) =>
        operation.path.startsWith("/spec/ephemeralContainers"),
      ),
    ).toEqual([]);
  });

  it("lists initContainers first", () => {
    const { result } = runInjection(podWithSidecars(), PLAN, NOW);

    expect(result.injectedContainers).toEqual([
      "wait-for-db",
      "log-shipper",
      "web",
    ]);
  });

  it("injects all of twelve containers", () => {
    const { pod: injected, patch } = runInjection(
      podWithTwelveContainers(),
      PLAN,
      NOW,
    );
    const paths = patch.map((operation) => operation.path);

    for (const entry of allContainers(injected)) {
      expect(envNames(entry)).toEqual(["WORKER_INDEX", ...OWNED_ENV_NAMES]);
    }
    expect(paths.some((path) => path.startsWith("/spec/containers/11/"))).toBe(
      true,
    );
  });

  it("injects only selected containers", () => {
    const original = typicalPod();
    const plan = { ...PLAN, containers: ["web"] };
    const { pod: injected, result } = runInjection(original, plan, NOW);

    expect(result.injectedContainers).toEqual(["web"]);
    expect(ownedEnv(containerNamed(injected, "web"))).toEqual(EXPECTED_ENV);
    expect(JSON.stringify(containerNamed(injected, "metrics"))).toBe(
      JSON.stringify(containerNamed(original, "metrics")),
    );
    expect(JSON.stringify(containerNamed(injected, "migrate"))).toBe(
      JSON.stringify(containerNamed(original, "migrate")),
    );
    expect(configVolumes(injected)).toEqual([EXPECTED_VOLUME]);
  });

  it("selects an initContainer by name", () => {
    const plan = { ...PLAN, containers: ["migrate"] };
    const { pod: injected, result } = runInjection(typicalPod(), plan, NOW);

    expect(result.injectedContainers).toEqual(["migrate"]);
    expect(configMounts(containerNamed(injected, "migrate"))).toEqual([
      EXPECTED_MOUNT,
    ]);
    expect(configMounts(containerNamed(injected, "web"))).toEqual([]);
  });

  it("reinjects selected containers as no-op", () => {
    const plan = { ...PLAN, containers: ["web"] };
    const { pod: injected } = runInjection(typicalPod(), plan, NOW);

    expectSecondPassNoOp(injected, plan);
  });
});

describe("injectPod patch", () => {
  it("escapes slash in annotation keys", () => {
    const { patch } = runInjection(podWithEscapedKeys(), PLAN, NOW);
    const paths = patch.map((operation) => operation.path);

    expect(paths).toContain("/metadata/annotations/cloudhsm~1config");
    expect(paths).toContain("/metadata/labels/cloudhsm~1injected");
  });

  it("keeps keys with tilde", () => {
    const original = podWithEscapedKeys();
    const { pod: injected } = runInjection(original, PLAN, NOW);

    expect(annotationsOf(injected)["example.com/owner~team"]).toBe("payments");
    expect(annotationsOf(injected)["a/b~c/d"]).toBe("value");
    expect(annotationsOf(injected)["~1already~0escaped"]).toBe("value");
    expect(labelsOf(injected)["team~tilde"]).toBe("payments");
  });

  it("adds whole metadata when absent", () => {
    const { patch } = runInjection(podWithoutMetadata(), PLAN, NOW);
    const metadataOps = patch.filter((operation) =>
      operation.path.startsWith("/metadata"),
    );

    expect(metadataOps.map((operation) => operation.path)).toEqual([
      "/metadata",
    ]);
    expect(metadataOps[0]?.op).toBe("add");
  });

  it("moves user env entries intact", () => {
    const original = podWithUnknownFields();
    const { pod: injected } = runInjection(original, PLAN, NOW);

    expect(userEnv(containerNamed(injected, "web"))).toEqual(
      listOf(containerNamed(original, "web"), "env"),
    );
  });

  it("keeps unknown fields byte for byte", () => {
    const original = podWithUnknownFields();
    const { pod: injected } = runInjection(original, PLAN, NOW);
    const web = containerNamed(injected, "web");
    const before = containerNamed(original, "web");

    expect(JSON.stringify(injected.futureTopLevel)).toBe(
      JSON.stringify(original.futureTopLevel),
    );
    expect(JSON.stringify(metadataOf(injected).futureMetadata)).toBe(
      JSON.stringify(metadataOf(original).futureMetadata),
    );
    expect(JSON.stringify(specOf(injected).futureSpecField)).toBe(
      JSON.stringify(specOf(original).futureSpecField),
    );
    expect(JSON.stringify(web.futureContainerField)).toBe(
      JSON.stringify(before.futureContainerField),
    );
    expect(userEnv(web)).toEqual(listOf(before, "env"));
    expect(JSON.stringify(injected.status)).toBe(
      JSON.stringify(original.status),
    );
  });

  it("keeps large fields out of patch", () => {
    const { patch } = runInjection(largePod(), PLAN, NOW);

    expect(JSON.stringify(patch)).not.toContain("xxxxxxxxxx");
  });

  it("reports change with patch", () => {
    const injected = runInjection(minimalPod(), PLAN, NOW).pod;
    delete annotationsOf(injected)[ANNOTATION_INJECTED_AT];

    const {
      patch,
      result,
      pod: restored,
    } = runInjection(injected, PLAN, LATER);

    expect(result.changed).toBe(true);
    expect(patch.length).toBeGreaterThan(0);
    expect(annotationsOf(restored)[ANNOTATION_INJECTED_AT]).toBe(
      LATER.toISOString(),
    );
  });
});

describe("injectPod reinvocation", () => {
  it("keeps injected-at", () => {
    const { pod: injected } = runInjection(typicalPod(), PLAN, NOW);
    const second = runInjection(injected, PLAN, LATER);

    expect(annotationsOf(second.pod)[ANNOTATION_INJECTED_AT]).toBe(
      NOW.toISOString(),
    );
  });

  /** Adds what the API server and its built-in admission plugins fill into a created pod. */
  function fillApiServerDefaults(value: JsonObject): JsonObject {
    const filled = JSON.parse(JSON.stringify(value)) as JsonObject;
    const spec = specOf(filled);
    spec.restartPolicy = "Always";
    spec.dnsPolicy = "ClusterFirst";
    spec.schedulerName = "default-scheduler";
    spec.securityContext = {};
    spec.terminationGracePeriodSeconds = 30;
    spec.volumes = [
      ...listOf(spec, "volumes"),
      {
        name: "kube-api-access-5x7qz",
        projected: {
          defaultMode: 420,
          sources: [
            { serviceAccountToken: { expirationSeconds: 3607, path: "token" } },
          ],
        },
      },
    ];
    for (const entry of allContainers(filled)) {
      entry.imagePullPolicy = "IfNotPresent";
      entry.terminationMessagePath = "/dev/termination-log";
      entry.terminationMessagePolicy = "File";
      entry.resources = {};
      entry.volumeMounts = [
        ...listOf(entry, "volumeMounts"),
        {
          name: "kube-api-access-5x7qz",
          readOnly: true,
          mountPath: "/var/run/secrets/kubernetes.io/serviceaccount",
        },
      ];
    }
    return filled;
  }

  it("is no-op with API-server defaults", () => {
    const { pod: injected } = runInjection(typicalPod(), PLAN, NOW);

    expectSecondPassNoOp(fillApiServerDefaults(injected), PLAN);
  });

  it("accepts volume without defaults", () => {
    const { pod: injected } = runInjection(minimalPod(), PLAN, NOW);
    const [volume] = configVolumes(injected);
    const downwardAPI = volume?.downwardAPI as JsonObject;
    delete downwardAPI.defaultMode;
    const [item] = listOf(downwardAPI, "items");
    delete (item?.fieldRef as JsonObject).apiVersion;

    expectSecondPassNoOp(injected, PLAN);
  });

  it("replaces edited config volume", () => {
    const { pod: injected } = runInjection(typicalPod(), PLAN, NOW);
    const spec = specOf(injected);
    spec.volumes = [
      { name: VOLUME_NAME, emptyDir: {} },
      ...listOf(spec, "volumes").filter(
        (volume) => volume.name !== VOLUME_NAME,
      ),
    ];

    const second = runInjection(injected, PLAN, LATER);

    expect(configVolumes(second.pod)).toEqual([EXPECTED_VOLUME]);
    expect(second.result.changed).toBe(true);
  });

  it("removes duplicate config mounts", () => {
    const { pod: injected } = runInjection(minimalPod(), PLAN, NOW);
    const app = containerNamed(injected, "app");
    app.volumeMounts = [...listOf(app, "volumeMounts"), EXPECTED_MOUNT];

    const second = runInjection(injected, PLAN, LATER);

    expect(configMounts(containerNamed(second.pod, "app"))).toEqual([
      EXPECTED_MOUNT,
    ]);
  });

  it("updates addresses on new plan", () => {
    const { pod: injected } = runInjection(typicalPod(), PLAN, NOW);
    const plan = { ...PLAN, ips: ["10.0.3.7"] };

    const second = runInjection(injected, plan, LATER);
    const env = ownedEnv(containerNamed(second.pod, "web"));

    expect(env[1]).toEqual({ name: "CLOUDHSM_HSM_IPS", value: "10.0.3.7" });
    expect(env[2]).toEqual({ name: "CLOUDHSM_HSM_IP", value: "10.0.3.7" });
    expect(annotationsOf(second.pod)[ANNOTATION_INJECTED_IPS]).toBe("10.0.3.7");
    expect(annotationsOf(second.pod)[ANNOTATION_INJECTED_AT]).toBe(
      LATER.toISOString(),
    );
  });
});

describe("injectPod mounts", () => {
  function podWithUserMount(mountPath: string): JsonObject {
    return pod(
      {
        containers: [
          container("web", {
            volumeMounts: [{ name: "hsm-files", mountPath }],
          }),
          container("metrics"),
        ],
        volumes: [{ name: "hsm-files", secret: { secretName: "hsm-files" } }],
      },
      basicMetadata(),
    );
  }

  it.each([MOUNT_DIR, `${MOUNT_DIR}/`])(
    "keeps user mount at %s",
    (mountPath) => {
      const original = podWithUserMount(mountPath);
      const { pod: injected, result } = runInjection(original, PLAN, NOW);
      const web = containerNamed(injected, "web");

      expect(listOf(web, "volumeMounts")).toEqual([
        { name: "hsm-files", mountPath },
      ]);
      expect(ownedEnv(web)).toEqual(EXPECTED_ENV);
      expect(result.warnings).toHaveLength(1);
      expect(result.warnings[0]).toContain('container "web"');
      expect(result.warnings[0]).toContain('volume "hsm-files"');
      expect(result.warnings[0]).toContain("cloudhsm/config-path");
    },
  );

  it("mounts other containers despite conflict", () => {
    const { pod: injected } = runInjection(
      podWithUserMount(MOUNT_DIR),
      PLAN,
      NOW,
    );

    expect(configMounts(containerNamed(injected, "metrics"))).toEqual([
      EXPECTED_MOUNT,
    ]);
    expect(configVolumes(injected)).toEqual([EXPECTED_VOLUME]);
  });

  it("adds no volume when every mount conflicts", () => {
    const original = podWithUserMount(MOUNT_DIR);
    const plan = { ...PLAN, containers: ["web"] };
    const { pod: injected } = runInjection(original, plan, NOW);

    expect(configVolumes(injected)).toEqual([]);
  });

  it("removes own mount under user mount", () => {
    const { pod: injected } = runInjection(minimalPod(), PLAN, NOW);
    const app = containerNamed(injected, "app");
    app.volumeMounts = [
      ...listOf(app, "volumeMounts"),
      { name: "hsm-files", mountPath: MOUNT_DIR },
    ];
    specOf(injected).volumes = [
      ...listOf(specOf(injected), "volumes"),
      { name: "hsm-files", emptyDir: {} },
    ];

    const second = runInjection(injected, PLAN, LATER);

    expect(listOf(containerNamed(second.pod, "app"), "volumeMounts")).toEqual([
      { name: "hsm-files", mountPath: MOUNT_DIR },
    ]);
    expect(second.result.warnings).toHaveLength(1);
  });

  it("reinjects conflicting pod as no-op", () => {
    const { pod: injected } = runInjection(
      podWithUserMount(MOUNT_DIR),
      PLAN,
      NOW,
    );

    expectSecondPassNoOp(injected, PLAN);
  });

  it("mounts config path with subPath", () => {
    const plan = { ...PLAN, configPath: CONFIG_PATH };
    const { pod: injected } = runInjection(typicalPod(), plan, NOW);

    for (const entry of allContainers(injected)) {
      expect(configMounts(entry)).toEqual([
        {
          name: VOLUME_NAME,
          mountPath: CONFIG_PATH,
          readOnly: true,
          subPath: "cloudhsm.cfg",
        },
      ]);
    }
    expect(configVolumes(injected)).toEqual([EXPECTED_VOLUME]);
  });

  it("reinjects config path as no-op", () => {
    const plan = { ...PLAN, configPath: CONFIG_PATH };
    const { pod: injected } = runInjection(typicalPod(), plan, NOW);

    expectSecondPassNoOp(injected, plan);
  });

  it("keeps user mount at config path", () => {
    const original = podWithUserMount(CONFIG_PATH);
    const plan = { ...PLAN, configPath: CONFIG_PATH, containers: ["web"] };
    const { pod: injected, result } = runInjection(original, plan, NOW);

    expect(configMounts(containerNamed(injected, "web"))).toEqual([]);
    expect(result.warnings).toHaveLength(1);
  });

  it("moves mount to new config path", () => {
    const original = typicalPod();
    const { pod: first } = runInjection(original, PLAN, NOW);
    const plan = { ...PLAN, configPath: CONFIG_PATH };

    const { pod: second, result } = runInjection(first, plan, LATER);

    expect(result.changed).toBe(true);
    for (const entry of allContainers(second)) {
      const before = containerNamed(original, String(entry.name));
      expect(configMounts(entry)).toEqual([
        {
          name: VOLUME_NAME,
          mountPath: CONFIG_PATH,
          readOnly: true,
          subPath: "cloudhsm.cfg",
        },
      ]);
      expect(ownedEnv(entry)[3]).toEqual({
        name: "CLOUDHSM_CONFIG_FILE",
        value: CONFIG_PATH,
      });
      expect(JSON.stringify(userEnv(entry))).toBe(
        JSON.stringify(userEnv(before)),
      );
    }
    expect(configVolumes(second)).toEqual([EXPECTED_VOLUME]);
    expect(JSON.stringify(stripOwned(second))).toBe(
      JSON.stringify(stripOwned(original)),
    );
    expectSecondPassNoOp(second, plan);
  });

  it("moves mount back to default", () => {
    const plan = { ...PLAN, configPath: CONFIG_PATH };
    const { pod: first } = runInjection(typicalPod(), plan, NOW);

    const { pod: second } = runInjection(first, PLAN, LATER);

    for (const entry of allContainers(second)) {
      expect(configMounts(entry)).toEqual([EXPECTED_MOUNT]);
    }
    expectSecondPassNoOp(second, PLAN);
  });
});

describe("injectPod invalid shapes", () => {
  const INVALID: readonly { name: string; build: () => unknown }[] = [
    { name: "missing spec", build: () => ({ metadata: {} }) },
    { name: "spec not an object", build: () => ({ spec: [] }) },
    { name: "missing containers", build: () => ({ spec: {} }) },
    {
      name: "containers not an array",
      build: () => ({ spec: { containers: {} } }),
    },
    {
      name: "container not an object",
      build: () => ({ spec: { containers: ["app"] } }),
    },
    {
      name: "container without name",
      build: () => ({ spec: { containers: [{ image: IMAGE }] } }),
    },
    {
      name: "container with empty name",
      build: () => ({ spec: { containers: [{ name: "" }] } }),
    },
    {
      name: "container with number name",
      build: () => ({ spec: { containers: [{ name: 7 }] } }),
    },
    {
      name: "initContainers not an array",
      build: () => ({
        spec: { containers: [{ name: "app" }], initContainers: "x" },
      }),
    },
    {
      name: "initContainer without name",
      build: () => ({
        spec: { containers: [{ name: "app" }], initContainers: [{}] },
      }),
    },
    {
      name: "env not a list",
      build: () => ({
        spec: { containers: [{ name: "app", env: { A: "1" } }] },
      }),
    },
    {
      name: "volumeMounts not a list",
      build: () => ({
        spec: { containers: [{ name: "app", volumeMounts: "x" }] },
      }),
    },
    {
      name: "volumes not a list",
      build: () => ({ spec: { containers: [{ name: "app" }], volumes: {} } }),
    },
    {
      name: "metadata not an object",
      build: () => ({ metadata: "x", spec: { containers: [{ name: "app" }] } }),
    },
    {
      name: "annotations a list",
      build: () => ({
        metadata: { annotations: [] },
        spec: { containers: [{ name: "app" }] },
      }),
    },
    {
      name: "labels a string",
      build: () => ({
        metadata: { labels: "x" },
        spec: { containers: [{ name: "app" }] },
      }),
    },
  ];

  it.each(INVALID)("rejects $name", ({ build }) => {
    const view = ownedView(build() as JsonObject);

    expect(() => injectPod(view, PLAN, NOW)).toThrow(InvalidPodError);
  });

  it("names the field in the error", () => {
    const view = ownedView({ spec: { containers: {} } });

    expect(() => injectPod(view, PLAN, NOW)).toThrow(/spec\.containers/);
  });
});
