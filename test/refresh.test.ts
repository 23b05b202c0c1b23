import { performance } from "node:perf_hooks";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { HsmDirectory } from "../src/discovery/directory.js";
import { DiscoveryError } from "../src/discovery/types.js";
import { activeHsms } from "../src/injection/addresses.js";
import { buildInjectionPlan } from "../src/injection/plan.js";
import type { ConfigFormat } from "../src/injection/render.js";
import {
  RunningPodRefresher,
  type RefreshMode,
} from "../src/refresh/controller.js";
import { KubeClient } from "../src/refresh/kube.js";
import { LeaseElector, type LeaseTimings } from "../src/refresh/lease.js";
import { RefreshMetrics } from "../src/refresh/metrics.js";
import { REFRESH_LEASE_NAME } from "../src/refresh/setup.js";
import {
  FakeKubeApi,
  makeObject,
  pathOf,
  pathOfPod,
  type FakeObject,
  type FakePod,
} from "./support/fake-kube.js";
import {
  HSM_CA_FILE,
  ScriptedSource,
  capturingLogger,
  injectedPod,
  snapshotOf,
} from "./support/running-pods.js";
import { waitFor } from "./support/webhook-harness.js";

const CLUSTER = "cluster-abcdefghij2";
const OTHER_CLUSTER = "cluster-zyxwvutsr34";
const REGION = "us-east-1";
const NS = "shop";
const LEASE_NS = "cloudhsm-webhook";
const A = "10.0.1.10";
const B = "10.0.2.20";
const C = "10.0.3.30";
const D = "10.0.4.40";
const TIMINGS: LeaseTimings = {
  leaseDurationMs: 1_000,
  renewDeadlineMs: 600,
  retryPeriodMs: 100,
};
// Timers may fire a little early relative to performance.now() on a loaded machine.
const TIMER_SLACK_MS = 30;

interface Rig {
  readonly fake: FakeKubeApi;
  readonly source: ScriptedSource;
  readonly directory: HsmDirectory;
  readonly elector: LeaseElector;
  readonly refresher: RunningPodRefresher;
  readonly registry: Registry;
  readonly logs: () => Array<Record<string, unknown>>;
  /** performance.now() when this replica last became the leader. */
  leaderAt: number;
  /** Refreshes every watched cluster and waits for the passes they start. */
  refresh(): Promise<void>;
}

const rigs: Rig[] = [];
const fakes: FakeKubeApi[] = [];

afterEach(async () => {
  for (const rig of rigs.splice(0)) {
    await rig.refresher.stop();
    rig.directory.stop();
  }
  for (const fake of fakes.splice(0)) {
    await fake.close();
  }
});

async function startFake(): Promise<FakeKubeApi> {
  const fake = await FakeKubeApi.start();
  fakes.push(fake);
  return fake;
}

async function startRig(options: {
  mode: RefreshMode;
  restartIntervalMs?: number;
  fake?: FakeKubeApi;
  identity?: string;
  initialIps?: readonly string[];
  waitForLeadership?: boolean;
}): Promise<Rig> {
  const fake = options.fake ?? (await startFake());
  const { logger, lines } = capturingLogger();
  const source = new ScriptedSource();
  source.setActive(CLUSTER, options.initialIps ?? [A, B]);
  const directory = new HsmDirectory({
    source,
    refreshIntervalMs: 60_000,
    maxStalenessMs: 600_000,
    requestTimeoutMs: 2_000,
    logger,
  });
  directory.watch(CLUSTER, REGION, true);
  // Two pods per page, so every pass reads several pages.
  const kube = new KubeClient(fake.kubeConfig(), {
    requestTimeoutMs: 2_000,
    pageSize: 2,
  });
  const elector = new LeaseElector({
    kube,
    namespace: LEASE_NS,
    name: REFRESH_LEASE_NAME,
    identity: options.identity ?? "webhook-a",
    timings: TIMINGS,
    logger,
  });
  const registry = new Registry();
  const refresher = new RunningPodRefresher({
    mode: options.mode,
    directory,
    kube,
    elector,
    hsmCaFile: HSM_CA_FILE,
    restartIntervalMs: options.restartIntervalMs ?? 100,
    logger,
    metrics: new RefreshMetrics(registry),
  });
  const rig: Rig = {
    fake,
    source,
    directory,
    elector,
    refresher,
    registry,
    logs: lines,
    leaderAt: 0,
    async refresh() {
      await directory.refreshAll();
      await refresher.settled();
    },
  };
  rigs.push(rig);
  refresher.start();
  // Registered after the refresher's own listener, so it runs right after the term starts.
  elector.on("started", () => {
    rig.leaderAt = performance.now();
  });
  if (options.waitForLeadership !== false) {
    await waitFor(() => elector.isLeader(), 5_000, "leadership");
  }
  return rig;
}

/** Serves a Deployment with a ReplicaSet, and returns the ReplicaSet to own pods. */
function deployment(
  fake: FakeKubeApi,
  name: string,
  annotations: {
    metadata?: Record<string, string>;
    template?: Record<string, string>;
  } = {},
): FakeObject {
  const object = makeObject("Deployment", NS, name, {
    annotations: annotations.metadata,
  });
  object.spec = {
    template: { metadata: { annotations: { ...annotations.template } } },
  };
  const replicaSet = makeObject("ReplicaSet", NS, `${name}-7d9f8c6b5`, {
    controller: object,
  });
  fake.put(object, replicaSet);
  return replicaSet;
}

function workload(
  fake: FakeKubeApi,
  kind: "StatefulSet" | "DaemonSet",
  name: string,
  annotations: {
    metadata?: Record<string, string>;
    template?: Record<string, string>;
  } = {},
): FakeObject {
  const object = makeObject(kind, NS, name, {
    annotations: annotations.metadata,
  });
  object.spec = {
    template: { metadata: { annotations: { ...annotations.template } } },
  };
  fake.put(object);
  return object;
}

function pod(
  name: string,
  ips: readonly string[],
  extra: {
    owner?: FakeObject;
    clusterId?: string;
    format?: ConfigFormat;
    configPath?: string;
    createdAt?: Date;
  } = {},
): FakePod {
  return injectedPod({
    namespace: NS,
    name,
    ips,
    clusterId: extra.clusterId ?? CLUSTER,
    region: REGION,
    owner: extra.owner,
    format: extra.format,
    configPath: extra.configPath,
    createdAt: extra.createdAt,
  });
}

function expectedConfig(format: ConfigFormat, ips: readonly string[]): string {
  const snapshot = snapshotOf(CLUSTER, REGION, ips);
  return buildInjectionPlan(
    { configFormat: format },
    [{ snapshot, active: activeHsms(snapshot.hsms) }],
    HSM_CA_FILE,
  ).config;
}

function workloadPatches(fake: FakeKubeApi) {
  return fake.patches.filter((patch) => patch.path.startsWith("/apis/apps/"));
}

function podPatches(fake: FakeKubeApi) {
  return fake.patches.filter((patch) => patch.path.includes("/pods/"));
}

function envOf(stored: FakePod | undefined, name: string): string | undefined {
  const containers = (stored?.spec.containers ?? []) as Array<{
    env?: Array<{ name: string; value?: string }>;
  }>;
  return containers[0]?.env?.find((entry) => entry.name === name)?.value;
}

async function metricValue(
  registry: Registry,
  name: string,
  labels: Record<string, string>,
): Promise<number | undefined> {
  const metric = await registry.getSingleMetric(name)?.get();
  return metric?.values.find((value) =>
    Object.entries(labels).every(
      ([key, expected]) => String(value.labels[key]) === expected,
    ),
  )?.value;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("annotate mode", () => {
  it("rewrites the config of matching running pods", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout");
    fake.putPod(
      pod("checkout-1", [A, B], { owner }),
      pod("checkout-2", [A, B], { owner }),
      pod("reports-1", [A, B], { format: "json" }),
      pod("legacy-1", [A, B], { format: "sdk3" }),
      pod("pkcs11-1", [A, B], { configPath: "/opt/cloudhsm/etc/cloudhsm.cfg" }),
      pod("elsewhere-1", [D], { clusterId: OTHER_CLUSTER }),
    );
    const rig = await startRig({ mode: "annotate", fake });

    await rig.refresh();
    expect(fake.patches, "patches after the first refresh").toEqual([]);

    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();

    const cases: Array<[string, ConfigFormat]> = [
      ["checkout-1", "sdk5"],
      ["checkout-2", "sdk5"],
      ["reports-1", "json"],
      ["legacy-1", "sdk3"],
      ["pkcs11-1", "sdk5"],
    ];
    for (const [name, format] of cases) {
      const stored = fake.pod(NS, name);
      const annotations = stored?.metadata.annotations ?? {};
      expect(annotations["cloudhsm/config"], `${name} cloudhsm/config`).toBe(
        expectedConfig(format, [A, C]),
      );
      expect(annotations["cloudhsm/injected-ips"], `${name} injected-ips`).toBe(
        `${A},${C}`,
      );
      expect(
        annotations["cloudhsm/refreshed-at"],
        `${name} refreshed-at`,
      ).toMatch(/^\d{4}-\d{2}-\d{2}T/);
      expect(envOf(stored, "CLOUDHSM_HSM_IPS"), `${name} env stays`).toBe(
        `${A},${B}`,
      );
    }
    const untouched = fake.pod(NS, "elsewhere-1")?.metadata.annotations ?? {};
    expect(untouched["cloudhsm/injected-ips"], "other cluster's pod").toBe(D);
    expect(
      untouched["cloudhsm/refreshed-at"],
      "other cluster's pod",
    ).toBeUndefined();

    const patches = podPatches(fake);
    expect(patches.map((patch) => patch.path).sort()).toEqual(
      cases.map(([name]) => pathOfPod(NS, name)).sort(),
    );
    for (const patch of patches) {
      expect(patch.contentType, patch.path).toBe(
        "application/merge-patch+json",
      );
      expect(Object.keys(patch.body as object), patch.path).toEqual([
        "metadata",
      ]);
    }
    expect(workloadPatches(fake), "workload patches in annotate mode").toEqual(
      [],
    );

    expect(
      await metricValue(
        rig.registry,
        "cloudhsm_webhook_refresh_pods_annotated_total",
        {
          cluster_id: CLUSTER,
          outcome: "success",
        },
      ),
    ).toBe(5);
    expect(
      await metricValue(rig.registry, "cloudhsm_webhook_refresh_stale_pods", {
        cluster_id: CLUSTER,
      }),
    ).toBe(5);
    const subPathLine = rig
      .logs()
      .find((line) => line.pod === "pkcs11-1" && line.subPathMount === true);
    expect(String(subPathLine?.msg), "subPath log line").toContain(
      "changes only when the pod restarts",
    );
  });

  it("skips pods with current annotations", async () => {
    const fake = await startFake();
    fake.putPod(pod("checkout-1", [A, B]), pod("checkout-2", [A, C]));
    const rig = await startRig({ mode: "annotate", fake, initialIps: [A, C] });
    await rig.refresh();
    expect(podPatches(fake).map((patch) => patch.path)).toEqual([
      pathOfPod(NS, "checkout-1"),
    ]);
    expect(
      await metricValue(rig.registry, "cloudhsm_webhook_refresh_stale_pods", {
        cluster_id: CLUSTER,
      }),
      "checkout-1 still runs with B in its environment",
    ).toBe(1);

    await rig.refresh();
    expect(podPatches(fake), "patches after an unchanged refresh").toHaveLength(
      1,
    );
  });

  it("counts failed pod patches and goes on", async () => {
    const fake = await startFake();
    fake.putPod(pod("checkout-1", [A, B]), pod("checkout-2", [A, B]));
    const rig = await startRig({ mode: "annotate", fake });
    await rig.refresh();
    fake.failPodPatches("Forbidden");
    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();
    expect(podPatches(fake)).toHaveLength(2);
    expect(
      await metricValue(
        rig.registry,
        "cloudhsm_webhook_refresh_pods_annotated_total",
        {
          cluster_id: CLUSTER,
          outcome: "error",
        },
      ),
    ).toBe(2);
    const warning = rig
      .logs()
      .find(
        (line) =>
          line.msg ===
          "updating the config annotations of a running pod failed",
      );
    expect(String(warning?.err)).toContain("HTTP 403");
  });
});

describe("restart mode", () => {
  it("restarts only stale workloads that opt in", async () => {
    const fake = await startFake();
    const created = new Date(Date.now() - 3_600_000);
    const checkout = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    const search = deployment(fake, "search", {
      template: { "cloudhsm/auto-restart": "true" },
    });
    const billing = deployment(fake, "billing", {
      metadata: { "cloudhsm/auto-restart": "true" },
      template: {
        "kubectl.kubernetes.io/restartedAt": new Date(
          created.getTime() + 60_000,
        ).toISOString(),
      },
    });
    const ledger = workload(fake, "StatefulSet", "ledger");
    const agent = workload(fake, "DaemonSet", "agent", {
      template: { "cloudhsm/auto-restart": "true" },
    });
    const job = makeObject("Job", NS, "migrate", {});
    fake.put(job);
    fake.putPod(
      pod("checkout-1", [A, B], { owner: checkout, createdAt: created }),
      pod("checkout-2", [A, B], { owner: checkout, createdAt: created }),
      pod("search-1", [A], { owner: search, createdAt: created }),
      pod("billing-1", [A, B], { owner: billing, createdAt: created }),
      pod("ledger-0", [A, B], { owner: ledger, createdAt: created }),
      pod("agent-x1", [A, B], { owner: agent, createdAt: created }),
      pod("migrate-1", [A, B], { owner: job, createdAt: created }),
    );
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 100,
    });
    await rig.refresh();

    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();
    await delay(300);

    const patches = workloadPatches(fake);
    expect(patches.map((patch) => patch.path)).toEqual([
      pathOf("DaemonSet", NS, "agent"),
      pathOf("Deployment", NS, "checkout"),
    ]);
    for (const patch of patches) {
      expect(patch.contentType, patch.path).toBe(
        "application/strategic-merge-patch+json",
      );
      const restartedAt = (
        patch.body as {
          spec: {
            template: { metadata: { annotations: Record<string, string> } };
          };
        }
      ).spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"];
      expect(restartedAt, patch.path).toMatch(
        /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/,
      );
    }
    const stored = fake.object("Deployment", NS, "checkout")?.spec as {
      template: { metadata: { annotations: Record<string, string> } };
    };
    expect(
      stored.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"],
    ).toBeDefined();
    const messages = rig.logs().map((line) => `${line.name} ${line.msg}`);
    expect(messages).toContain(
      'ledger workload holds removed addresses but is not restarted: it does not set cloudhsm/auto-restart: "true"',
    );
    expect(messages).toContain(
      "billing workload not restarted: a restart requested after its pods were created is rolling them",
    );
    expect(
      await metricValue(
        rig.registry,
        "cloudhsm_webhook_refresh_workloads_restarted_total",
        { kind: "Deployment", outcome: "success" },
      ),
    ).toBe(1);
    expect(
      await metricValue(
        rig.registry,
        "cloudhsm_webhook_refresh_workloads_restarted_total",
        { kind: "DaemonSet", outcome: "success" },
      ),
    ).toBe(1);
    expect(rig.refresher.pendingRestarts()).toEqual([]);
  });

  it("retries a failed pass on the next refresh", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    fake.putPod(pod("checkout-1", [A, B], { owner }));
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 50,
    });
    await rig.refresh();

    fake.failPodLists("Forbidden");
    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();
    expect(fake.patches, "patches while pods cannot be listed").toEqual([]);
    const warning = rig
      .logs()
      .find((line) =>
        String(line.msg).startsWith("refresh of running pods failed"),
      );
    expect(String(warning?.err)).toContain("HTTP 403");

    // The next refresh finds the same set, so only the failed pass makes it act.
    fake.failPodLists(undefined);
    await rig.refresh();
    expect(podPatches(fake).map((patch) => patch.path)).toEqual([
      pathOfPod(NS, "checkout-1"),
    ]);
    expect(workloadPatches(fake).map((patch) => patch.path)).toEqual([
      pathOf("Deployment", NS, "checkout"),
    ]);
  });

  it("restarts one workload per interval", async () => {
    const fake = await startFake();
    const intervalMs = 250;
    for (const name of ["alpha", "bravo", "charlie"]) {
      const owner = deployment(fake, name, {
        metadata: { "cloudhsm/auto-restart": "true" },
      });
      fake.putPod(pod(`${name}-1`, [A, B], { owner }));
    }
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: intervalMs,
    });
    await rig.refresh();
    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();

    const times = workloadPatches(fake).map((patch) => patch.receivedAt);
    expect(times).toHaveLength(3);
    expect(
      times[0]! - rig.leaderAt,
      "first restart waits one interval after gaining the Lease",
    ).toBeGreaterThanOrEqual(intervalMs - TIMER_SLACK_MS);
    for (let index = 1; index < times.length; index += 1) {
      expect(
        times[index]! - times[index - 1]!,
        `gap before restart ${index + 1}`,
      ).toBeGreaterThanOrEqual(intervalMs - TIMER_SLACK_MS);
    }
  });

  it("restarts nothing when no HSM is ACTIVE", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    fake.putPod(pod("checkout-1", [A, B], { owner }));
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 50,
    });
    await rig.refresh();

    rig.source.setActive(CLUSTER, []);
    await rig.refresh();
    await delay(200);

    expect(fake.patches).toEqual([]);
    const warning = rig
      .logs()
      .find((line) => String(line.msg).startsWith("cluster has no ACTIVE HSM"));
    expect(warning, "warning for the empty set").toBeDefined();
  });

  it("restarts nothing while DescribeClusters fails", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    fake.putPod(pod("checkout-1", [A, B], { owner }));
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 1_000,
    });
    await rig.refresh();

    rig.source.fail(
      CLUSTER,
      new DiscoveryError("throttled", "ThrottlingException"),
    );
    await rig.refresh();
    expect(fake.patches, "after a failed refresh").toEqual([]);

    // A change queues the restart, and a failure before its turn keeps it waiting.
    rig.source.setActive(CLUSTER, [A, C]);
    await rig.directory.refreshAll();
    await waitFor(
      () => rig.refresher.pendingRestarts().length === 1,
      3_000,
      "the queued restart",
    );
    rig.source.fail(
      CLUSTER,
      new DiscoveryError("throttled", "ThrottlingException"),
    );
    await rig.directory.refreshAll();
    await delay(1_200);
    expect(
      workloadPatches(fake),
      "restarts while DescribeClusters fails",
    ).toEqual([]);
    expect(rig.refresher.pendingRestarts()).toEqual([
      "Deployment shop/checkout",
    ]);

    rig.source.setActive(CLUSTER, [A, C]);
    await rig.refresh();
    expect(workloadPatches(fake).map((patch) => patch.path)).toEqual([
      pathOf("Deployment", NS, "checkout"),
    ]);
  });

  it("drops a restart when addresses return", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    fake.putPod(pod("checkout-1", [A, B], { owner }));
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 1_000,
    });
    await rig.refresh();

    rig.source.setActive(CLUSTER, [A]);
    await rig.directory.refreshAll();
    await waitFor(
      () => rig.refresher.pendingRestarts().length === 1,
      3_000,
      "the queued restart",
    );
    rig.source.setActive(CLUSTER, [A, B]);
    await rig.refresh();
    expect(workloadPatches(fake)).toEqual([]);
    expect(rig.refresher.pendingRestarts()).toEqual([]);
  });

  it("restarts nothing for the baseline after start", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    // The pods were created before a change that happened while no webhook watched.
    fake.putPod(
      pod("checkout-1", [A, B], { owner }),
      pod("checkout-2", [A, B], { owner }),
    );
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 50,
      initialIps: [A, C],
    });

    await rig.refresh();
    await delay(200);
    expect(podPatches(fake), "the baseline pass annotates").toHaveLength(2);
    expect(workloadPatches(fake), "the baseline pass restarts nothing").toEqual(
      [],
    );

    // Adding an address removes none, and no pod was created with C, which is removed next.
    rig.source.setActive(CLUSTER, [A, C, D]);
    await rig.refresh();
    rig.source.setActive(CLUSTER, [A, D]);
    await rig.refresh();
    await delay(200);
    expect(workloadPatches(fake)).toEqual([]);
    expect(
      await metricValue(rig.registry, "cloudhsm_webhook_refresh_stale_pods", {
        cluster_id: CLUSTER,
      }),
    ).toBe(2);
  });
});

describe("leader election", () => {
  it("records holder, duration and renewals", async () => {
    const rig = await startRig({
      mode: "annotate",
      identity: "webhook-7c9d-x2",
    });
    const first = rig.fake.lease(LEASE_NS, REFRESH_LEASE_NAME);
    expect(first?.spec.holderIdentity).toBe("webhook-7c9d-x2");
    expect(first?.spec.leaseDurationSeconds).toBe(1);
    expect(first?.spec.renewTime).toMatch(/\.\d{6}Z$/);
    await waitFor(
      () => rig.fake.leaseWrites.length >= 3,
      3_000,
      "two renewals",
    );
    const writes = rig.fake.leaseWrites;
    expect(writes[0]?.operation).toBe("create");
    expect(writes[1]?.operation).toBe("update");
    expect(Date.parse(writes[2]!.spec.renewTime!)).toBeGreaterThan(
      Date.parse(writes[0]!.spec.renewTime!),
    );
    expect(
      await metricValue(rig.registry, "cloudhsm_webhook_refresh_leader", {}),
    ).toBe(1);
  });

  it("elects one replica, hands over on stop", async () => {
    const fake = await startFake();
    fake.putPod(pod("checkout-1", [A, B]));
    const first = await startRig({
      mode: "annotate",
      fake,
      identity: "webhook-a",
    });
    const second = await startRig({
      mode: "annotate",
      fake,
      identity: "webhook-b",
      waitForLeadership: false,
    });
    await delay(400);
    expect(first.elector.isLeader()).toBe(true);
    expect(second.elector.isLeader()).toBe(false);

    // The follower refreshes and observes the change, but does not act on it.
    second.source.setActive(CLUSTER, [A]);
    await second.refresh();
    second.source.setActive(CLUSTER, [A, C]);
    await second.refresh();
    expect(fake.patches).toEqual([]);

    await first.refresher.stop();
    rigs.splice(rigs.indexOf(first), 1);
    first.directory.stop();
    expect(fake.lease(LEASE_NS, REFRESH_LEASE_NAME)?.spec.holderIdentity).toBe(
      "",
    );
    await waitFor(
      () => second.elector.isLeader(),
      2_000,
      "the second replica to lead",
    );
    expect(
      fake.lease(LEASE_NS, REFRESH_LEASE_NAME)?.spec.leaseTransitions,
    ).toBe(1);
  });

  it("stops restarting when the Lease is lost", async () => {
    const fake = await startFake();
    const owner = deployment(fake, "checkout", {
      metadata: { "cloudhsm/auto-restart": "true" },
    });
    fake.putPod(pod("checkout-1", [A, B], { owner }));
    const rig = await startRig({
      mode: "restart",
      fake,
      restartIntervalMs: 1_000,
    });
    await rig.refresh();
    rig.source.setActive(CLUSTER, [A, C]);
    await rig.directory.refreshAll();
    await waitFor(
      () => rig.refresher.pendingRestarts().length === 1,
      3_000,
      "the queued restart",
    );

    const renewTime = new Date().toISOString().replace("Z", "000Z");
    fake.setLease(LEASE_NS, REFRESH_LEASE_NAME, {
      holderIdentity: "webhook-b",
      leaseDurationSeconds: 30,
      acquireTime: renewTime,
      renewTime,
      leaseTransitions: 4,
    });
    const takenAt = performance.now();
    await waitFor(() => !rig.elector.isLeader(), 1_000, "leadership to end");
    expect(
      performance.now() - takenAt,
      "stops at the next renewal, before the renew deadline",
    ).toBeLessThan(TIMINGS.renewDeadlineMs - 100);
    expect(
      rig.refresher.pendingRestarts(),
      "queue after losing the Lease",
    ).toEqual([]);
    await delay(1_200);
    expect(workloadPatches(fake)).toEqual([]);
    expect(
      await metricValue(rig.registry, "cloudhsm_webhook_refresh_leader", {}),
    ).toBe(0);

    const annotatedBefore = podPatches(fake).length;
    rig.source.setActive(CLUSTER, [A, D]);
    await rig.refresh();
    expect(podPatches(fake).length, "pod patches as a follower").toBe(
      annotatedBefore,
    );
  });

  it("ends leadership at the renew deadline", async () => {
    const rig = await startRig({ mode: "annotate" });
    rig.fake.failLeases("InternalError");
    const failedAt = performance.now();
    await waitFor(() => !rig.elector.isLeader(), 2_000, "leadership to end");
    expect(performance.now() - failedAt).toBeLessThan(
      TIMINGS.renewDeadlineMs + 300,
    );
    rig.fake.failLeases(undefined);
    await waitFor(() => rig.elector.isLeader(), 3_000, "leadership to return");
  });
});
