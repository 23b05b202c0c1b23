import { describe, expect, it } from "vitest";
import { activeHsms } from "../src/injection/addresses.js";
import { buildInjectionPlan } from "../src/injection/plan.js";
import type { JsonObject } from "../src/injection/pod.js";
import {
  CONFIG_FORMATS,
  renderConfig,
  type ConfigFormat,
  type RenderedCluster,
} from "../src/injection/render.js";
import {
  annotationUpdate,
  podUsesCluster,
  readConfig,
  readInjectedPod,
  staleAddresses,
} from "../src/refresh/pods.js";
import { runInjection } from "./support/inject-pod.js";
import { HSM_CA_FILE, snapshotOf } from "./support/running-pods.js";

const FIRST = "cluster-abcdefghij2";
const SECOND = "cluster-zyxwvutsr34";
const REGION = "us-east-1";
const NOW = new Date("2024-05-01T08:30:00.000Z");

function cluster(clusterId: string, ips: readonly string[]): RenderedCluster {
  const snapshot = snapshotOf(clusterId, REGION, ips);
  return { snapshot, active: activeHsms(snapshot.hsms) };
}

/** Builds a pod as the webhook admitted it, with an initContainer and a sidecar. */
function admittedPod(
  clusters: readonly RenderedCluster[],
  options: {
    format?: ConfigFormat;
    configPath?: string;
    containers?: string[];
  } = {},
): JsonObject {
  const plan = buildInjectionPlan(
    {
      configFormat: options.format ?? "sdk5",
      configPath: options.configPath,
      containers: options.containers,
    },
    clusters,
    HSM_CA_FILE,
  );
  const pod: JsonObject = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: "checkout-7d9f8c6b5-x2x4q",
      namespace: "shop",
      creationTimestamp: "2024-04-30T10:00:00Z",
      ownerReferences: [
        {
          apiVersion: "apps/v1",
          kind: "ReplicaSet",
          name: "checkout-7d9f8c6b5",
          uid: "0b7a5c1e-1111-4c4c-9c9c-123456789abc",
          controller: true,
        },
      ],
    },
    spec: {
      initContainers: [
        { name: "migrate", image: "registry.example.com/migrate:1" },
      ],
      containers: [
        { name: "app", image: "registry.example.com/app:1" },
        { name: "proxy", image: "registry.example.com/envoy:1.30" },
      ],
    },
  };
  return runInjection(pod, plan, NOW).pod;
}

describe("readConfig", () => {
  it.each(CONFIG_FORMATS.map((format) => [format]))(
    "recognizes %s configs",
    (format) => {
      const text = renderConfig(
        [cluster(FIRST, ["10.0.1.10"]), cluster(SECOND, ["10.1.0.7"])],
        { format, hsmCaFile: HSM_CA_FILE },
      );
      const summary = readConfig(text);
      expect(summary?.format).toBe(format);
      expect(summary?.clusterIds).toEqual(
        format === "sdk3" ? [] : [FIRST, SECOND],
      );
      expect(summary?.region).toBe(format === "json" ? REGION : undefined);
    },
  );

  it.each([
    ["missing", undefined],
    ["not JSON", "servers: [10.0.1.10]"],
    ["a list", "[]"],
    ["no clusters", '{"clusters": []}'],
    ["unknown shape", '{"clusters": [{"name": "x"}]}'],
  ])("ignores %s", (_name, text) => {
    expect(readConfig(text)).toBeUndefined();
  });
});

describe("readInjectedPod", () => {
  it("reads what the webhook wrote", () => {
    const pod = readInjectedPod(
      admittedPod([
        cluster(FIRST, ["10.0.2.40", "10.0.1.10"]),
        cluster(SECOND, ["10.1.0.7"]),
      ]),
    );
    expect(pod).toMatchObject({
      namespace: "shop",
      name: "checkout-7d9f8c6b5-x2x4q",
      createdAt: Date.parse("2024-04-30T10:00:00Z"),
      format: "sdk5",
      clusterIds: [FIRST, SECOND],
      region: undefined,
      givenIps: ["10.0.1.10", "10.0.2.40"],
      subPathMount: false,
      controller: {
        apiVersion: "apps/v1",
        kind: "ReplicaSet",
        name: "checkout-7d9f8c6b5",
      },
    });
  });

  it("takes the cluster of an sdk3 pod from its environment", () => {
    const pod = readInjectedPod(
      admittedPod([cluster(FIRST, ["10.0.1.10"])], { format: "sdk3" }),
    );
    expect(pod?.format).toBe("sdk3");
    expect(pod?.clusterIds).toEqual([FIRST]);
  });

  it("reads subPath and injected containers", () => {
    const pod = readInjectedPod(
      admittedPod([cluster(FIRST, ["10.0.1.10"])], {
        configPath: "/opt/cloudhsm/etc/cloudhsm.cfg",
        containers: ["proxy"],
      }),
    );
    expect(pod?.subPathMount).toBe(true);
    expect(pod?.givenIps).toEqual(["10.0.1.10"]);
  });

  it("skips a pod without a name or namespace", () => {
    expect(readInjectedPod({ metadata: { name: "x" } })).toBeUndefined();
    expect(readInjectedPod({ metadata: { namespace: "x" } })).toBeUndefined();
  });
});

describe("podUsesCluster and staleAddresses", () => {
  it("matches config clusters and region", () => {
    const sdk5 = readInjectedPod(
      admittedPod([
        cluster(FIRST, ["10.0.1.10"]),
        cluster(SECOND, ["10.1.0.7"]),
      ]),
    )!;
    expect(podUsesCluster(sdk5, FIRST, REGION)).toBe(true);
    expect(podUsesCluster(sdk5, SECOND, "eu-west-1")).toBe(true);
    expect(podUsesCluster(sdk5, "cluster-othercluster2", REGION)).toBe(false);
    const json = readInjectedPod(
      admittedPod([cluster(FIRST, ["10.0.1.10"])], { format: "json" }),
    )!;
    expect(podUsesCluster(json, FIRST, REGION)).toBe(true);
    expect(podUsesCluster(json, FIRST, "eu-west-1")).toBe(false);
  });

  it("compares the first cluster's given addresses", () => {
    const pod = readInjectedPod(
      admittedPod([
        cluster(FIRST, ["10.0.1.10", "10.0.2.20"]),
        cluster(SECOND, ["10.1.0.7"]),
      ]),
    )!;
    expect(staleAddresses(pod, FIRST, ["10.0.1.10", "10.0.3.30"])).toEqual([
      "10.0.2.20",
    ]);
    expect(staleAddresses(pod, FIRST, ["10.0.1.10", "10.0.2.20"])).toEqual([]);
    expect(staleAddresses(pod, SECOND, [])).toEqual([]);
  });
});

describe("annotationUpdate", () => {
  it("renders every cluster of the pod with the new list", () => {
    const pod = readInjectedPod(
      admittedPod([
        cluster(FIRST, ["10.0.1.10", "10.0.2.20"]),
        cluster(SECOND, ["10.1.0.7"]),
      ]),
    )!;
    const current = [
      cluster(FIRST, ["10.0.1.10", "10.0.3.30"]),
      cluster(SECOND, ["10.1.0.7"]),
    ];
    const update = annotationUpdate(pod, current, HSM_CA_FILE, NOW);
    expect(update).toEqual({
      "cloudhsm/config": renderConfig(current, {
        format: "sdk5",
        hsmCaFile: HSM_CA_FILE,
      }),
      "cloudhsm/injected-ips": "10.0.1.10,10.0.3.30",
      "cloudhsm/refreshed-at": NOW.toISOString(),
    });
  });

  it("returns nothing when the config is current", () => {
    const clusters = [cluster(FIRST, ["10.0.1.10"])];
    for (const format of CONFIG_FORMATS) {
      const pod = readInjectedPod(admittedPod(clusters, { format }))!;
      expect(
        annotationUpdate(pod, clusters, HSM_CA_FILE, NOW),
        format,
      ).toBeUndefined();
    }
  });

  it("leaves a config of unknown format alone", () => {
    const object = admittedPod([cluster(FIRST, ["10.0.1.10"])]);
    (
      object.metadata as JsonObject & { annotations: Record<string, string> }
    ).annotations["cloudhsm/config"] = "[global]\nserver = 10.0.1.10\n";
    const pod = readInjectedPod(object)!;
    expect(pod.format).toBeUndefined();
    expect(
      annotationUpdate(pod, [cluster(FIRST, ["10.0.3.30"])], HSM_CA_FILE, NOW),
    ).toBeUndefined();
  });
});
