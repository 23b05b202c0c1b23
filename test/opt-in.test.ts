import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { WorkloadLookup } from "../src/kube/lookup.js";
import {
  FakeKubeApi,
  makeObject,
  ownerReferenceTo,
  type FakeObject,
} from "./support/fake-kube.js";
import {
  startHarness,
  TEST_CLUSTER_ID,
  type Harness,
} from "./support/webhook-harness.js";

const NAMESPACE = "shop";
const OTHER_CLUSTER = "cluster-zyxwvutsrq7";
const DEGRADED_CLUSTER = "cluster-degradedabc2";

let kube: FakeKubeApi;
let harness: Harness | undefined;

const clusters = {
  Clusters: [
    {
      ClusterId: DEGRADED_CLUSTER,
      Hsms: [
        { HsmId: "hsm-degradedabc2", EniIp: "10.7.0.1", State: "DEGRADED" },
      ],
    },
    {
      ClusterId: TEST_CLUSTER_ID,
      Hsms: [{ HsmId: "hsm-abcdefghij2", EniIp: "10.0.2.40", State: "ACTIVE" }],
    },
    {
      ClusterId: OTHER_CLUSTER,
      Hsms: [
        {
          HsmId: "hsm-zyxwvutsrq2",
          EniIp: "10.9.0.7",
          State: "ACTIVE",
          AvailabilityZone: "us-east-1b",
        },
        {
          HsmId: "hsm-zyxwvutsrq3",
          EniIp: "10.9.0.8",
          State: "DEGRADED",
          AvailabilityZone: "us-east-1c",
        },
      ],
    },
  ],
};

beforeEach(async () => {
  kube = await FakeKubeApi.start();
  kube.put(makeObject("Namespace", "", NAMESPACE));
});

afterEach(async () => {
  await harness?.close();
  harness = undefined;
  await kube.close();
});

async function serve(args: string[] = []): Promise<Harness> {
  const lookup = new WorkloadLookup(kube.kubeConfig(), {
    requestTimeoutMs: 500,
  });
  harness = await startHarness({ staticClusters: clusters, lookup, args });
  return harness;
}

/** Serves a Deployment, its ReplicaSet, and returns a pod as the ReplicaSet creates it. */
function deploymentPod(
  deploymentAnnotations: Record<string, string>,
  podAnnotations: Record<string, string> = {},
) {
  const deployment = makeObject("Deployment", NAMESPACE, "checkout", {
    annotations: deploymentAnnotations,
  });
  const replicaSet = makeObject("ReplicaSet", NAMESPACE, "checkout-7d9f8c6b5", {
    controller: deployment,
  });
  kube.put(deployment, replicaSet);
  return podOwnedBy(replicaSet, podAnnotations);
}

function podOwnedBy(
  owner: FakeObject | undefined,
  annotations: Record<string, string> = {},
) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: `${owner?.metadata.name ?? "bare"}-`,
      annotations,
      ...(owner ? { ownerReferences: [ownerReferenceTo(owner)] } : {}),
    },
    spec: {
      initContainers: [
        { name: "migrate", image: "registry.example.com/migrate:1" },
      ],
      containers: [
        { name: "app", image: "registry.example.com/app:1" },
        { name: "metrics", image: "registry.example.com/exporter:1" },
      ],
    },
  };
}

function envNames(container: Record<string, any>): string[] {
  return (container.env ?? []).map((entry: any) => entry.name);
}

describe("opt-in by workload or namespace", () => {
  test("Deployment annotation injects its pods", async () => {
    const webhook = await serve();
    const outcome = await webhook.admit(
      deploymentPod({ "cloudhsm/inject": "true" }),
      { namespace: NAMESPACE },
    );
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.pod.metadata.annotations["cloudhsm/injected-ips"]).toBe(
      "10.0.2.40",
    );
  });

  test("namespace annotation injects a bare pod", async () => {
    kube.put(
      makeObject("Namespace", "", NAMESPACE, {
        annotations: { "cloudhsm/inject": "true" },
      }),
    );
    const webhook = await serve();
    const outcome = await webhook.admit(podOwnedBy(undefined), {
      namespace: NAMESPACE,
    });
    expect(outcome.pod.metadata.labels["cloudhsm/injected"]).toBe("true");
  });

  test("CronJob annotation injects through the Job", async () => {
    const cronJob = makeObject("CronJob", NAMESPACE, "nightly", {
      annotations: { "cloudhsm/inject": "true" },
    });
    const job = makeObject("Job", NAMESPACE, "nightly-29000000", {
      controller: cronJob,
    });
    kube.put(cronJob, job);
    const webhook = await serve();
    const outcome = await webhook.admit(podOwnedBy(job), {
      namespace: NAMESPACE,
    });
    expect(outcome.pod.metadata.labels["cloudhsm/injected"]).toBe("true");
  });

  test("pod false wins over Deployment true", async () => {
    const webhook = await serve();
    const pod = deploymentPod(
      { "cloudhsm/inject": "true" },
      { "cloudhsm/inject": "false" },
    );
    const reads = kube.totalRequests;
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.patch).toBeUndefined();
    expect(kube.totalRequests).toBe(reads);
  });

  test("pod without any opt-in is left alone", async () => {
    const webhook = await serve();
    const outcome = await webhook.admit(deploymentPod({}), {
      namespace: NAMESPACE,
    });
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.response.patch).toBeUndefined();
  });

  test("50 pods of one ReplicaSet cost a handful of reads", async () => {
    const webhook = await serve();
    const pod = deploymentPod({ "cloudhsm/inject": "true" });
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, () =>
        webhook.admit(pod, { namespace: NAMESPACE }),
      ),
    );
    expect(outcomes.every((outcome) => outcome.patch.length > 0)).toBe(true);
    expect(kube.totalRequests).toBeLessThanOrEqual(3);
  });
});

describe("options from the chain", () => {
  test("cluster-id on the Deployment picks the cluster", async () => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": OTHER_CLUSTER,
    });
    const { pod: patched } = await webhook.admit(pod, { namespace: NAMESPACE });
    const env = Object.fromEntries(
      patched.spec.containers[0].env.map((entry: any) => [
        entry.name,
        entry.value,
      ]),
    );
    expect(env.CLOUDHSM_CLUSTER_ID).toBe(OTHER_CLUSTER);
    expect(env.CLOUDHSM_HSM_IPS).toBe("10.9.0.7");
  });

  test("several clusters make a multi-cluster config", async () => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": `${OTHER_CLUSTER},${TEST_CLUSTER_ID}`,
    });
    const { pod: patched } = await webhook.admit(pod, { namespace: NAMESPACE });
    const config = JSON.parse(patched.metadata.annotations["cloudhsm/config"]);
    expect(
      config.clusters.map((entry: any) => entry.cluster.cluster_id),
    ).toEqual([OTHER_CLUSTER, TEST_CLUSTER_ID]);
    expect(patched.metadata.annotations["cloudhsm/injected-ips"]).toBe(
      "10.9.0.7",
    );
  });

  test("second cluster without ACTIVE HSMs is left out with a warning", async () => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": `${TEST_CLUSTER_ID},${DEGRADED_CLUSTER}`,
    });
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(true);
    const config = JSON.parse(
      outcome.pod.metadata.annotations["cloudhsm/config"],
    );
    expect(
      config.clusters.map((entry: any) => entry.cluster.cluster_id),
    ).toEqual([TEST_CLUSTER_ID]);
    expect(outcome.response.warnings.join("\n")).toMatch(
      new RegExp(
        `cluster ${DEGRADED_CLUSTER} in us-east-1 has no ACTIVE HSM \\(1 DEGRADED\\); it was left out`,
      ),
    );
  });

  test("first cluster without ACTIVE HSMs denies the pod", async () => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": `${DEGRADED_CLUSTER},${TEST_CLUSTER_ID}`,
    });
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(
      /has no ACTIVE HSM \(1 DEGRADED\)/,
    );
  });

  test("containers option limits injection, with a warning for unknown names", async () => {
    kube.put(
      makeObject("Namespace", "", NAMESPACE, {
        annotations: { "cloudhsm/containers": "app,missing" },
      }),
    );
    const webhook = await serve();
    const outcome = await webhook.admit(
      deploymentPod({ "cloudhsm/inject": "true" }),
      { namespace: NAMESPACE },
    );
    const [app, metrics] = outcome.pod.spec.containers;
    expect(envNames(app)).toContain("CLOUDHSM_HSM_IP");
    expect(envNames(metrics)).not.toContain("CLOUDHSM_HSM_IP");
    expect(envNames(outcome.pod.spec.initContainers[0])).not.toContain(
      "CLOUDHSM_HSM_IP",
    );
    expect(outcome.response.warnings.join("\n")).toMatch(/missing/);
  });

  test("config-path mounts the file with subPath", async () => {
    const webhook = await serve();
    const pod = deploymentPod(
      { "cloudhsm/inject": "true" },
      { "cloudhsm/config-path": "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg" },
    );
    const { pod: patched } = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(patched.spec.containers[0].volumeMounts).toEqual([
      {
        name: "cloudhsm-config",
        mountPath: "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
        readOnly: true,
        subPath: "cloudhsm.cfg",
      },
    ]);
    const env = Object.fromEntries(
      patched.spec.containers[0].env.map((entry: any) => [
        entry.name,
        entry.value,
      ]),
    );
    expect(env.CLOUDHSM_CONFIG_FILE).toBe(
      "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
    );
  });

  test.each([
    ["sdk3", (config: any) => expect(config.server.hostname).toBe("10.9.0.7")],
    [
      "json",
      (config: any) =>
        expect(config.clusters[0].hsms).toEqual([
          {
            hsmId: "hsm-zyxwvutsrq2",
            availabilityZone: "us-east-1b",
            eniIp: "10.9.0.7",
            state: "ACTIVE",
          },
          {
            hsmId: "hsm-zyxwvutsrq3",
            availabilityZone: "us-east-1c",
            eniIp: "10.9.0.8",
            state: "DEGRADED",
          },
        ]),
    ],
  ])("config-format %s renders its shape", async (format, check) => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": OTHER_CLUSTER,
      "cloudhsm/config-format": format,
    });
    const { pod: patched } = await webhook.admit(pod, { namespace: NAMESPACE });
    check(JSON.parse(patched.metadata.annotations["cloudhsm/config"]));
  });

  test.each([
    [
      "cloudhsm/cluster-id",
      "cluster-bad",
      /invalid cloudhsm\/cluster-id "cluster-bad" on Deployment checkout/,
    ],
    [
      "cloudhsm/config-format",
      "yaml",
      /invalid cloudhsm\/config-format "yaml" on Deployment checkout/,
    ],
    [
      "cloudhsm/config-path",
      "etc/hsm.cfg",
      /invalid cloudhsm\/config-path "etc\/hsm.cfg" on Deployment checkout/,
    ],
  ])("invalid %s is denied with its source", async (key, value, message) => {
    const webhook = await serve();
    const outcome = await webhook.admit(
      deploymentPod({ "cloudhsm/inject": "true", [key]: value }),
      { namespace: NAMESPACE },
    );
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(message);
  });

  test("unknown cluster id is denied as not found", async () => {
    const webhook = await serve();
    const pod = deploymentPod({
      "cloudhsm/inject": "true",
      "cloudhsm/cluster-id": "cluster-unknown23456",
    });
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toContain(
      "cluster cluster-unknown23456 not found in us-east-1",
    );
  });
});

describe("lookup failures", () => {
  test("403 on an owner admits with a warning", async () => {
    const webhook = await serve();
    const pod = deploymentPod({ "cloudhsm/inject": "true" });
    kube.fail("ReplicaSet", NAMESPACE, "checkout-7d9f8c6b5", "Forbidden");
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.response.patch).toBeUndefined();
    expect(outcome.response.warnings[0]).toMatch(
      /could not read the pod's owners/,
    );
    expect(
      webhook.logs.some(
        (line) => line.msg === "owner or namespace lookup failed",
      ),
    ).toBe(true);
  });

  test("403 with on-lookup-error deny rejects", async () => {
    const webhook = await serve(["--on-lookup-error=deny"]);
    const pod = deploymentPod({ "cloudhsm/inject": "true" });
    kube.fail("ReplicaSet", NAMESPACE, "checkout-7d9f8c6b5", "Forbidden");
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.code).toBe(503);
    expect(outcome.response.status.message).toMatch(/forbidden/i);
    const line = webhook.logs.find(
      (entry) =>
        entry.uid === outcome.response.uid &&
        entry.msg === "admission decision",
    );
    expect(line?.reason).toBe("lookup-failed");
  });

  test("on-lookup-error deny also rejects a pod that opts in itself", async () => {
    const webhook = await serve(["--on-lookup-error=deny"]);
    const pod = deploymentPod({}, { "cloudhsm/inject": "true" });
    kube.fail("ReplicaSet", NAMESPACE, "checkout-7d9f8c6b5", "Forbidden");
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(false);
  });

  test("owner deleted mid-rollout still injects an opted-in pod", async () => {
    const webhook = await serve();
    const pod = deploymentPod({}, { "cloudhsm/inject": "true" });
    kube.remove("ReplicaSet", NAMESPACE, "checkout-7d9f8c6b5");
    const outcome = await webhook.admit(pod, { namespace: NAMESPACE });
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.pod.metadata.labels["cloudhsm/injected"]).toBe("true");
    expect(outcome.response.warnings.join("\n")).toMatch(/were not read/);
  });
});
