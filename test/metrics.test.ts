import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { callWebhook } from "../scripts/lib/admission-client.js";
import { podFromWorkload } from "../scripts/lib/workloads.js";
import { Histogram, Registry } from "prom-client";
import {
  BoundedLabel,
  OneLabelHistogram,
  OTHER_LABEL_VALUE,
  WebhookMetrics,
} from "../src/metrics.js";
import {
  buildCluster,
  buildHsm,
  startFakeCloudHsm,
  type FakeCloudHsm,
} from "./support/fake-cloudhsm.js";
import { FakeKubeApi, makeObject } from "./support/fake-kube.js";
import {
  annotatedPod,
  startHarness,
  TEST_CLUSTER_ID,
  TEST_REGION,
  waitFor,
  type Harness,
} from "./support/webhook-harness.js";

const SECOND_CLUSTER_ID = "cluster-second234567";
const MISSING_CLUSTER_ID = "cluster-missing23456";

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** Parses the Prometheus text exposition format into samples. Comments are skipped. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) {
      continue;
    }
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) {
      throw new Error(`unparsable exposition line: ${line}`);
    }
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(
      /(\w+)="((?:[^"\\]|\\.)*)"/g,
    )) {
      labels[pair[1]!] = pair[2]!;
    }
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** Returns the value of the one sample with this name whose labels include `labels`. */
function valueOf(
  samples: readonly Sample[],
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = samples.filter(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(
        ([key, value]) => sample.labels[key] === value,
      ),
  );
  if (found.length > 1) {
    throw new Error(
      `${found.length} samples of ${name} match ${JSON.stringify(labels)}`,
    );
  }
  return found[0]?.value;
}

function seriesOf(samples: readonly Sample[], name: string): Sample[] {
  return samples.filter((sample) => sample.name === name);
}

function httpGet(
  port: number,
  path: string,
  method = "GET",
): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      { host: "127.0.0.1", port, path, method, agent: false, timeout: 5_000 },
      (incoming) => {
        const chunks: Buffer[] = [];
        incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
        incoming.on("end", () =>
          resolve({
            status: incoming.statusCode ?? 0,
            contentType: String(incoming.headers["content-type"] ?? ""),
            body: Buffer.concat(chunks).toString(),
          }),
        );
        incoming.on("error", reject);
      },
    );
    outgoing.on("timeout", () =>
      outgoing.destroy(new Error(`${method} ${path} timed out after 5 s`)),
    );
    outgoing.on("error", reject);
    outgoing.end();
  });
}

/** Returns a port that was free a moment ago on 127.0.0.1. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (typeof address !== "object" || address === null) {
    throw new Error("no port assigned");
  }
  return address.port;
}

async function scrape(harness: Harness): Promise<Sample[]> {
  const port = harness.webhook.metricsPort;
  if (port === undefined) {
    throw new Error("the webhook serves no metrics");
  }
  const reply = await httpGet(port, "/metrics");
  expect(reply.status).toBe(200);
  return parseExposition(reply.body);
}

const PREFIX = "cloudhsm_webhook_";
const clusterA = { cluster_id: TEST_CLUSTER_ID, region: TEST_REGION };
const clusterB = { cluster_id: SECOND_CLUSTER_ID, region: TEST_REGION };

describe("metrics and logs after a mixed run", () => {
  let aws: FakeCloudHsm;
  let harness: Harness;
  let samples: Sample[];
  let injectedUid: string;

  beforeAll(async () => {
    aws = await startFakeCloudHsm({
      clusters: [
        buildCluster(TEST_CLUSTER_ID, [
          buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.12.5" }),
          buildHsm("hsm-abcdefghij3", "ACTIVE", { EniIp: "10.0.2.40" }),
          buildHsm("hsm-abcdefghij4", "DEGRADED", { EniIp: "10.0.30.3" }),
        ]),
        buildCluster(SECOND_CLUSTER_ID, [
          buildHsm("hsm-secondaaaa2", "ACTIVE", { EniIp: "10.1.0.7" }),
        ]),
      ],
    });
    harness = await startHarness({
      awsEndpoint: aws.url,
      args: ["--aws-timeout=2", `--metrics-port=${await freePort()}`],
    });
    await waitFor(
      () => harness.webhook.readiness.ready(),
      5_000,
      "the first refresh",
    );

    const injected = await harness.admit(annotatedPod());
    injectedUid = injected.response.uid;
    await harness.admit(injected.pod);
    const plain = annotatedPod();
    plain.metadata.annotations = {};
    await harness.admit(plain);
    await harness.admit(
      annotatedPod({ annotations: { "cloudhsm/config-format": "xml" } }),
    );
    await harness.admit(
      annotatedPod({
        annotations: { "cloudhsm/cluster-id": MISSING_CLUSTER_ID },
      }),
    );
    aws.setFault("access-denied", 1);
    await harness.admit(
      annotatedPod({
        annotations: { "cloudhsm/cluster-id": SECOND_CLUSTER_ID },
      }),
    );
    for (let index = 0; index < 3; index += 1) {
      await callWebhook(harness.target, "/mutate", { body: "{not json" });
    }

    // One HSM is replaced, so the next refresh of cluster A changes its address set.
    aws.setClusters([
      buildCluster(TEST_CLUSTER_ID, [
        buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.12.5" }),
        buildHsm("hsm-abcdefghij5", "ACTIVE", { EniIp: "10.0.3.9" }),
      ]),
      buildCluster(SECOND_CLUSTER_ID, [
        buildHsm("hsm-secondaaaa2", "ACTIVE", { EniIp: "10.1.0.7" }),
      ]),
    ]);
    await harness.webhook.directory.refreshAll();

    const renewed = await harness.ca.issue([
      "cloudhsm-webhook.cloudhsm-webhook.svc",
    ]);
    await writeFile(join(harness.folder, "tls.key"), renewed.key);
    await writeFile(join(harness.folder, "tls.crt"), renewed.cert);
    await waitFor(
      async () =>
        valueOf(await scrape(harness), `${PREFIX}certificate_reloads_total`, {
          outcome: "success",
        }) === 1,
      5_000,
      "the certificate reload metric",
    );
    samples = await scrape(harness);
  });

  afterAll(async () => {
    await harness?.close();
    await aws?.close();
  });

  test("endpoint serves the text format", async () => {
    const reply = await httpGet(harness.webhook.metricsPort!, "/metrics");
    expect(reply.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(reply.body).toContain(`# TYPE ${PREFIX}admissions_total counter`);
  });

  test("other paths and methods rejected", async () => {
    const port = harness.webhook.metricsPort!;
    expect((await httpGet(port, "/")).status).toBe(404);
    expect((await httpGet(port, "/mutate")).status).toBe(404);
    expect((await httpGet(port, "/metrics", "POST")).status).toBe(405);
  });

  test("admissions counted by result and reason", () => {
    const name = `${PREFIX}admissions_total`;
    expect(valueOf(samples, name, { result: "injected", reason: "none" })).toBe(
      1,
    );
    expect(
      valueOf(samples, name, { result: "unchanged", reason: "none" }),
    ).toBe(1);
    expect(
      valueOf(samples, name, { result: "skipped", reason: "not-opted-in" }),
    ).toBe(1);
    expect(
      valueOf(samples, name, {
        result: "denied",
        reason: "invalid-annotation",
      }),
    ).toBe(1);
    expect(
      valueOf(samples, name, { result: "denied", reason: "not-found" }),
    ).toBe(1);
    expect(
      valueOf(samples, name, { result: "unavailable", reason: "unavailable" }),
    ).toBe(1);
    expect(seriesOf(samples, name)).toHaveLength(6);
  });

  test("admission latency has sub-millisecond buckets", () => {
    const name = `${PREFIX}admission_duration_seconds`;
    expect(valueOf(samples, `${name}_count`, { result: "injected" })).toBe(1);
    expect(valueOf(samples, `${name}_count`, { result: "denied" })).toBe(2);
    const bounds = seriesOf(samples, `${name}_bucket`)
      .filter((sample) => sample.labels.result === "injected")
      .map((sample) => sample.labels.le);
    expect(bounds).toContain("0.0001");
    expect(bounds).toContain("0.0005");
    expect(bounds).toContain("1");
    expect(
      valueOf(samples, `${name}_bucket`, { result: "injected", le: "+Inf" }),
    ).toBe(1);
    expect(
      valueOf(samples, `${name}_sum`, { result: "injected" }),
    ).toBeLessThan(1);
  });

  test("DescribeClusters calls counted by outcome", () => {
    const name = `${PREFIX}describe_clusters_calls_total`;
    // The first refresh, then refreshAll of clusters A and B.
    expect(valueOf(samples, name, { outcome: "success" })).toBe(3);
    // The admission that named the missing cluster. A cluster AWS does not know is no longer
    // watched, so refreshAll does not call for it again.
    expect(valueOf(samples, name, { outcome: "ClusterNotFound" })).toBe(1);
    expect(
      valueOf(samples, name, { outcome: "CloudHsmAccessDeniedException" }),
    ).toBe(1);
    const histogram = `${PREFIX}describe_clusters_duration_seconds`;
    expect(valueOf(samples, `${histogram}_count`, { outcome: "success" })).toBe(
      3,
    );
    expect(valueOf(samples, `${histogram}_count`, { outcome: "error" })).toBe(
      2,
    );
  });

  test("fake endpoint saw the counted calls", () => {
    const describes = aws.requests.filter(
      (entry) => entry.target === "BaldrApiService.DescribeClusters",
    );
    expect(describes).toHaveLength(5);
  });

  test("active HSMs per found cluster", () => {
    const name = `${PREFIX}active_hsms`;
    expect(valueOf(samples, name, clusterA)).toBe(2);
    expect(valueOf(samples, name, clusterB)).toBe(1);
    expect(seriesOf(samples, name)).toHaveLength(2);
  });

  test("list age per found cluster", () => {
    const name = `${PREFIX}hsm_list_age_seconds`;
    const age = valueOf(samples, name, clusterA);
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(10);
    expect(seriesOf(samples, name)).toHaveLength(2);
  });

  test("address set changes per cluster", () => {
    const name = `${PREFIX}hsm_set_changes_total`;
    expect(valueOf(samples, name, clusterA)).toBe(1);
    expect(valueOf(samples, name, clusterB)).toBe(0);
  });

  test("missing cluster adds no series", () => {
    const text = samples
      .map((sample) => JSON.stringify(sample.labels))
      .join("\n");
    expect(text).not.toContain(MISSING_CLUSTER_ID);
  });

  test("malformed requests counted by status", () => {
    expect(
      valueOf(samples, `${PREFIX}malformed_requests_total`, {
        status_code: "400",
      }),
    ).toBe(3);
  });

  test("certificate reloads counted", () => {
    expect(
      valueOf(samples, `${PREFIX}certificate_reloads_total`, {
        outcome: "success",
      }),
    ).toBe(1);
  });

  test("default process metrics present", () => {
    expect(valueOf(samples, "process_cpu_user_seconds_total")).toBeGreaterThan(
      0,
    );
    expect(valueOf(samples, "process_resident_memory_bytes")).toBeGreaterThan(
      0,
    );
    expect(valueOf(samples, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
  });

  test("no pod names or uids in labels", () => {
    const labels = samples
      .flatMap((sample) => Object.values(sample.labels))
      .join("\n");
    expect(labels).not.toContain(injectedUid);
    expect(labels).not.toContain("checkout");
  });

  test("decision line carries the required fields", () => {
    const line = harness.logs.find(
      (entry) =>
        entry.msg === "admission decision" && entry.uid === injectedUid,
    );
    expect(line).toBeDefined();
    expect(line!.namespace).toBe("default");
    expect(line!.pod).toBe("checkout-7d9f8c6b5-*");
    expect(line!.decision).toBe("injected");
    expect(line!.clusterId).toBe(TEST_CLUSTER_ID);
    expect(line!.ipCount).toBe(2);
    expect(typeof line!.durationMs).toBe("number");
    expect(line!.level).toBe(30);
  });

  test("every admission has one decision line", () => {
    const decisions = harness.logs.filter(
      (entry) => entry.msg === "admission decision",
    );
    expect(decisions).toHaveLength(6);
    for (const line of decisions) {
      expect(typeof line.uid).toBe("string");
      expect(typeof line.decision).toBe("string");
      expect(typeof line.durationMs).toBe("number");
    }
  });

  test("refresh lines carry outcome, count and change", () => {
    const refreshes = harness.logs.filter(
      (entry) =>
        entry.msg === "DescribeClusters refreshed the HSM list" &&
        entry.clusterId === TEST_CLUSTER_ID,
    );
    expect(refreshes).toHaveLength(2);
    const last = refreshes[1]!;
    expect(last.outcome).toBe("success");
    expect(typeof last.durationMs).toBe("number");
    expect(last.hsmCount).toBe(2);
    expect(last.activeCount).toBe(2);
    expect(last.changed).toBe(true);
    expect(refreshes[0]!.changed).toBe(false);
  });

  test("failed refresh logs a warning with the code", () => {
    const failed = harness.logs.filter(
      (entry) => entry.msg === "DescribeClusters failed",
    );
    const outcomes = failed.map((entry) => entry.outcome).sort();
    expect(outcomes).toEqual([
      "CloudHsmAccessDeniedException",
      "ClusterNotFound",
    ]);
    for (const line of failed) {
      expect(line.level).toBe(40);
      expect(typeof line.err).toBe("string");
      expect(typeof line.durationMs).toBe("number");
    }
  });

  test("repeated malformed requests log once", () => {
    const warnings = harness.logs.filter(
      (entry) => entry.msg === "rejected a malformed request",
    );
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.statusCode).toBe(400);
    expect(warnings[0]!.level).toBe(40);
  });
});

describe("owner and namespace lookup metrics", () => {
  let kube: FakeKubeApi;
  let harness: Harness;
  let configFolder: string;
  const savedKubeconfig = process.env.KUBECONFIG;

  beforeAll(async () => {
    kube = await FakeKubeApi.start();
    const deployment = makeObject("Deployment", "shop", "checkout-web", {
      annotations: { "cloudhsm/inject": "true" },
    });
    const replicaSet = makeObject("ReplicaSet", "shop", "checkout-web-5d8f7", {
      controller: deployment,
    });
    kube.put(makeObject("Namespace", "", "shop"), deployment, replicaSet);
    // The webhook reads KUBECONFIG when it starts, as it would outside a cluster.
    configFolder = await mkdtemp(
      join(tmpdir(), "cloudhsm-webhook-kubeconfig-"),
    );
    const configPath = join(configFolder, "config.json");
    await writeFile(configPath, kube.kubeConfig().exportConfig());
    process.env.KUBECONFIG = configPath;
    try {
      harness = await startHarness({
        staticClusters: {
          Clusters: [
            buildCluster(TEST_CLUSTER_ID, [
              buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.12.5" }),
            ]),
          ],
        },
        args: [`--metrics-port=${await freePort()}`],
      });
    } finally {
      if (savedKubeconfig === undefined) {
        delete process.env.KUBECONFIG;
      } else {
        process.env.KUBECONFIG = savedKubeconfig;
      }
    }
    const { pod } = podFromWorkload({
      kind: "Deployment",
      metadata: { name: "checkout-web", namespace: "shop" },
      spec: {
        template: {
          metadata: {},
          spec: { containers: [{ name: "web", image: "example/web:1" }] },
        },
      },
    });
    const metadata = pod.metadata as Record<string, any>;
    metadata.ownerReferences[0].name = replicaSet.metadata.name;
    metadata.ownerReferences[0].uid = replicaSet.metadata.uid;
    for (let index = 0; index < 3; index += 1) {
      const outcome = await harness.admit(pod, { namespace: "shop" });
      expect(outcome.patch.length).toBeGreaterThan(0);
    }
  });

  afterAll(async () => {
    await harness?.close();
    await kube?.close();
    await rm(configFolder, { recursive: true, force: true });
  });

  test("first read misses, later reads hit", async () => {
    const samples = await scrape(harness);
    const name = `${PREFIX}kube_lookups_total`;
    for (const kind of ["ReplicaSet", "Deployment", "Namespace"]) {
      expect(
        valueOf(samples, name, { kind, outcome: "ok", cache_hit: "false" }),
      ).toBe(1);
      expect(
        valueOf(samples, name, { kind, outcome: "ok", cache_hit: "true" }),
      ).toBe(2);
    }
    expect(kube.totalRequests).toBe(3);
  });
});

describe("WebhookMetrics", () => {
  test("two instances register in one process", async () => {
    const first = new WebhookMetrics();
    const second = new WebhookMetrics();
    first.observer.admission?.(undefined, 0.001);
    const firstText = await first.registry.metrics();
    const secondText = await second.registry.metrics();
    expect(firstText).toContain(
      'cloudhsm_webhook_admissions_total{result="error",reason="internal-error"} 1',
    );
    expect(secondText).not.toContain('result="error"');
  });

  test("unknown error codes stay bounded", async () => {
    const metrics = new WebhookMetrics();
    for (let index = 0; index < 100; index += 1) {
      metrics.recordDescribeClusters(`Code${index}`, 5);
    }
    const samples = parseExposition(await metrics.registry.metrics());
    const series = seriesOf(samples, `${PREFIX}describe_clusters_calls_total`);
    expect(series).toHaveLength(33);
    expect(
      valueOf(samples, `${PREFIX}describe_clusters_calls_total`, {
        outcome: OTHER_LABEL_VALUE,
      }),
    ).toBe(68);
  });

  test("bounded label passes known values", () => {
    const label = new BoundedLabel(2);
    expect(label.value("a")).toBe("a");
    expect(label.value("b")).toBe("b");
    expect(label.value("c")).toBe(OTHER_LABEL_VALUE);
    expect(label.value("a")).toBe("a");
  });

  test("metrics port 0 serves nothing", async () => {
    const harness = await startHarness({
      staticClusters: {
        Clusters: [
          buildCluster(TEST_CLUSTER_ID, [
            buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.12.5" }),
          ]),
        ],
      },
    });
    try {
      expect(harness.webhook.metricsPort).toBeUndefined();
    } finally {
      await harness.close();
    }
  });
});

describe("OneLabelHistogram", () => {
  test("renders as prom-client's Histogram", async () => {
    const buckets = [0.001, 0.01, 0.1];
    const ours = new Registry();
    const theirs = new Registry();
    const fast = new OneLabelHistogram(
      { name: "h_seconds", help: "Help text", labelName: "result", buckets },
      ours,
    );
    const reference = new Histogram({
      name: "h_seconds",
      help: "Help text",
      labelNames: ["result"],
      buckets,
      registers: [theirs],
    });
    // Values below, on and above the bounds, in two series.
    const observations: Array<[string, number]> = [
      ["injected", 0.0005],
      ["injected", 0.001],
      ["injected", 0.05],
      ["skipped", 0.1],
      ["skipped", 2.5],
      ["injected", 0],
    ];

    for (const [result, value] of observations) {
      fast.observe(result, value);
      reference.observe({ result }, value);
    }

    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  test("starts empty after reset", async () => {
    const registry = new Registry();
    const fast = new OneLabelHistogram(
      { name: "r_seconds", help: "Help", labelName: "result", buckets: [1] },
      registry,
    );
    fast.observe("injected", 0.5);

    registry.resetMetrics();

    expect(await registry.metrics()).toBe(
      "# HELP r_seconds Help\n# TYPE r_seconds histogram\n",
    );
  });
});
