import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import {
  ConfigError,
  SERVE_FLAGS,
  readFlags,
  readServeConfig,
} from "../src/config.js";
import { startWebhook, type RunningWebhook } from "../src/cli/serve.js";
import { REFRESH_LEASE_NAME } from "../src/refresh/setup.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
} from "../scripts/lib/pki.js";
import { FakeKubeApi } from "./support/fake-kube.js";
import { injectedPod } from "./support/running-pods.js";
import {
  TEST_CLUSTER_ID,
  TEST_REGION,
  staticClusters,
  waitFor,
} from "./support/webhook-harness.js";

const LEASE_NS = "cloudhsm-webhook";
const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) {
    await cleanup();
  }
});

async function serveArgs(extra: readonly string[]): Promise<{
  args: string[];
  hsmsFile: string;
}> {
  const folder = await mkdtemp(join(tmpdir(), "cloudhsm-refresh-"));
  cleanups.push(() => rm(folder, { recursive: true, force: true }));
  const ca = await createCertificateAuthority();
  const serving = await ca.issue([SERVICE_DNS_NAME]);
  await writeFile(join(folder, "tls.crt"), serving.cert);
  await writeFile(join(folder, "tls.key"), serving.key);
  const hsmsFile = join(folder, "hsms.json");
  await writeFile(hsmsFile, JSON.stringify(staticClusters()));
  return {
    hsmsFile,
    args: [
      "--host=127.0.0.1",
      "--port=0",
      "--metrics-port=0",
      `--tls-cert=${join(folder, "tls.crt")}`,
      `--tls-key=${join(folder, "tls.key")}`,
      `--cluster-id=${TEST_CLUSTER_ID}`,
      `--region=${TEST_REGION}`,
      `--static-hsms=${hsmsFile}`,
      ...extra,
    ],
  };
}

describe("serve --refresh-running", () => {
  it("annotates pods after a list change", async () => {
    const fake = await FakeKubeApi.start();
    cleanups.push(() => fake.close());
    fake.putPod(
      injectedPod({
        namespace: "shop",
        name: "checkout-1",
        ips: ["10.0.2.40", "10.0.12.5"],
        clusterId: TEST_CLUSTER_ID,
        region: TEST_REGION,
      }),
    );
    const { args, hsmsFile } = await serveArgs([
      "--refresh-running=annotate",
      "--restart-interval=1",
    ]);
    const config = readServeConfig(readFlags(SERVE_FLAGS, args, {}).values);
    expect(config.refreshRunning).toBe("annotate");
    expect(config.restartIntervalMs).toBe(1_000);
    const webhook: RunningWebhook = await startWebhook(config, {
      logger: pino({ level: "silent" }),
      refresher: {
        kubeConfig: fake.kubeConfig(),
        identity: "cloudhsm-webhook-5d8c7-abcde",
        namespace: LEASE_NS,
        timings: {
          leaseDurationMs: 1_000,
          renewDeadlineMs: 600,
          retryPeriodMs: 100,
        },
      },
    });
    let closed = false;
    cleanups.push(async () => {
      if (!closed) {
        await webhook.close();
      }
    });
    expect(webhook.refresher).toBeDefined();
    // A create and a renewal mean that the elector has started its term.
    await waitFor(
      () =>
        webhook.readiness.ready() &&
        fake.leaseWrites.length >= 2 &&
        fake.lease(LEASE_NS, REFRESH_LEASE_NAME)?.spec.holderIdentity ===
          "cloudhsm-webhook-5d8c7-abcde",
      5_000,
      "the first refresh and the Lease",
    );

    await writeFile(
      hsmsFile,
      JSON.stringify(staticClusters(["10.0.2.40", "10.0.3.30"])),
    );
    // refreshAll returns at once while the background refresh runs, so it is called until the
    // change is seen.
    await waitFor(
      async () => {
        await webhook.directory.refreshAll();
        return (
          fake.pod("shop", "checkout-1")?.metadata.annotations?.[
            "cloudhsm/injected-ips"
          ] === "10.0.2.40,10.0.3.30"
        );
      },
      5_000,
      "the pod's annotations",
    );
    const text = await webhook.metrics.registry.metrics();
    expect(text).toContain(
      `cloudhsm_webhook_refresh_pods_annotated_total{cluster_id="${TEST_CLUSTER_ID}",outcome="success"} 1`,
    );
    expect(text).toContain("cloudhsm_webhook_refresh_leader 1");

    await webhook.close();
    closed = true;
    expect(
      fake.lease(LEASE_NS, REFRESH_LEASE_NAME)?.spec.holderIdentity,
      "the Lease is released on close",
    ).toBe("");
  });

  it("is off by default", async () => {
    const { args } = await serveArgs([]);
    const config = readServeConfig(readFlags(SERVE_FLAGS, args, {}).values);
    expect(config.refreshRunning).toBe("off");
    expect(config.restartIntervalMs).toBe(60_000);
    const webhook = await startWebhook(config, {
      logger: pino({ level: "silent" }),
    });
    cleanups.push(() => webhook.close());
    expect(webhook.refresher).toBeUndefined();
    expect(await webhook.metrics.registry.metrics()).not.toContain(
      "cloudhsm_webhook_refresh_",
    );
  });

  it("fails to start without API access", async () => {
    const { args } = await serveArgs(["--refresh-running=restart"]);
    const config = readServeConfig(readFlags(SERVE_FLAGS, args, {}).values);
    const started = startWebhook(config, { logger: pino({ level: "silent" }) });
    await expect(started).rejects.toThrow(ConfigError);
    await expect(started).rejects.toThrow(
      /^--refresh-running=restart needs the Kubernetes API: no Kubernetes API configuration/,
    );
  });

  it.each([
    [
      ["--refresh-running=always"],
      'invalid --refresh-running "always": expected one of off, annotate, restart',
    ],
    [
      ["--restart-interval=0"],
      'invalid --restart-interval "0": expected a positive number of seconds',
    ],
  ])("rejects %j", async (extra, message) => {
    const { args } = await serveArgs(extra);
    expect(() =>
      readServeConfig(readFlags(SERVE_FLAGS, args, {}).values),
    ).toThrow(message);
  });
});
