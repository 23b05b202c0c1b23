// AWS faults seen through the whole webhook, for the cases that test/discovery.test.ts (faults
// on a cold cache, a 5xx on a warm cache) and test/aws-source.test.ts (error mapping in the
// source alone) leave out.
import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import type { RefreshEvent } from "../src/discovery/directory.js";
import {
  buildCluster,
  buildHsm,
  startFakeCloudHsm,
  type FakeCloudHsm,
  type FakeFault,
  type WireHsm,
} from "./support/fake-cloudhsm.js";
import {
  annotatedPod,
  startHarness,
  TEST_CLUSTER_ID,
  TEST_REGION,
  waitFor,
  type Harness,
} from "./support/webhook-harness.js";

const run = promisify(execFile);

const open: Array<{ close(): Promise<void> }> = [];

afterEach(async () => {
  while (open.length > 0) {
    await open.pop()!.close();
  }
});

function activeHsms(ips: readonly string[]): WireHsm[] {
  return ips.map((ip, index) =>
    buildHsm(`hsm-abcdefghij${index + 2}`, "ACTIVE", { EniIp: ip }),
  );
}

async function start(
  hsms: WireHsm[],
  args: string[] = [],
): Promise<{ aws: FakeCloudHsm; harness: Harness }> {
  const aws = await startFakeCloudHsm({
    clusters: [buildCluster(TEST_CLUSTER_ID, hsms)],
  });
  const harness = await startHarness({
    awsEndpoint: aws.url,
    args: ["--aws-timeout=1", ...args],
  });
  // Closed in reverse order: the webhook first, then the fake it calls.
  open.push(aws, harness);
  return { aws, harness };
}

/** Resolves with the next refresh event that matches, or rejects after `timeoutMs`. */
function nextRefresh(
  harness: Harness,
  matches: (event: RefreshEvent) => boolean,
  timeoutMs = 5_000,
): Promise<RefreshEvent> {
  const { directory } = harness.webhook;
  return new Promise((resolveEvent, reject) => {
    const timer = setTimeout(() => {
      directory.off("refresh", listener);
      reject(new Error(`no matching refresh event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (event: RefreshEvent): void => {
      if (matches(event)) {
        clearTimeout(timer);
        directory.off("refresh", listener);
        resolveEvent(event);
      }
    };
    directory.on("refresh", listener);
  });
}

function envValue(container: Record<string, any>, name: string): unknown {
  return container.env.find((entry: any) => entry.name === name)?.value;
}

describe("faults on a cold cache", () => {
  test("answer slower than the timeout is denied in time", async () => {
    const { aws, harness } = await start(activeHsms(["10.0.4.4"]), [
      "--refresh-interval=0.2",
    ]);
    aws.setFault({ kind: "delay", ms: 2_500 });
    const startedAt = Date.now();
    const outcome = await harness.admit(annotatedPod());
    const elapsedMs = Date.now() - startedAt;

    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.code).toBe(503);
    expect(outcome.response.status.message).toMatch(/timed out|did not answer/);
    // --aws-timeout=1 bounds the wait, well before the delayed response.
    expect(elapsedMs).toBeLessThan(2_000);

    aws.clearFaults();
    await waitFor(() => harness.webhook.readiness.ready(), 5_000, "recovery");
    const recovered = await harness.admit(annotatedPod());
    expect(envValue(recovered.pod.spec.containers[0], "CLOUDHSM_HSM_IPS")).toBe(
      "10.0.4.4",
    );
  });

  test.each<[string, FakeFault, RegExp]>([
    ["malformed JSON", "malformed-json", /could not be parsed/],
    ["an empty 503", "service-unavailable", /Http503|HTTP 503/],
    ["a proxy error page", "proxy-error-page", /proxy or error page/],
  ])("%s is denied with the cause", async (_name, fault, cause) => {
    const { aws, harness } = await start(activeHsms(["10.0.4.4"]));
    aws.setFault(fault);
    const outcome = await harness.admit(annotatedPod());

    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.code).toBe(503);
    expect(outcome.response.status.message).toContain(TEST_CLUSTER_ID);
    expect(outcome.response.status.message).toMatch(cause);
  });
});

describe("faults on a warm cache", () => {
  const GOOD_IP = "10.0.7.7";
  let aws: FakeCloudHsm;
  let harness: Harness;

  beforeAll(async () => {
    aws = await startFakeCloudHsm({
      clusters: [buildCluster(TEST_CLUSTER_ID, activeHsms([GOOD_IP]))],
    });
    harness = await startHarness({
      awsEndpoint: aws.url,
      args: ["--aws-timeout=1", "--refresh-interval=0.2", "--max-staleness=60"],
    });
    await waitFor(() => harness.webhook.readiness.ready(), 5_000, "warm-up");
  });

  afterAll(async () => {
    await harness.close();
    await aws.close();
  });

  afterEach(async () => {
    aws.clearFaults();
    aws.setClusters([buildCluster(TEST_CLUSTER_ID, activeHsms([GOOD_IP]))]);
    await nextRefresh(harness, (event) => event.outcome === "success");
  });

  test.each<[string, FakeFault, string]>([
    ["throttling", "throttling", "ThrottlingException"],
    ["access denied", "access-denied", "CloudHsmAccessDeniedException"],
    ["an empty 503", "service-unavailable", "Http503"],
    ["a proxy error page", "proxy-error-page", "Http502"],
    ["malformed JSON", "malformed-json", "MalformedResponse"],
    ["a hang", "hang", "TimeoutError"],
  ])("%s keeps serving the last good list", async (_name, fault, code) => {
    aws.setFault(fault);
    const failed = await nextRefresh(
      harness,
      (event) => event.outcome === code,
    );
    expect(failed.previous?.ips).toEqual([GOOD_IP]);

    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(true);
    expect(envValue(outcome.pod.spec.containers[0], "CLOUDHSM_HSM_IPS")).toBe(
      GOOD_IP,
    );
    expect(harness.webhook.readiness.ready()).toBe(true);
    const warning = harness.logs.find(
      (line) =>
        line.outcome === code &&
        line.msg === "DescribeClusters failed; serving the last good HSM list",
    );
    expect(warning).toBeDefined();
  });

  test("all HSMs DEGRADED replaces the good list", async () => {
    aws.setClusters([
      buildCluster(TEST_CLUSTER_ID, [
        buildHsm("hsm-abcdefghij2", "DEGRADED", { EniIp: GOOD_IP }),
        buildHsm("hsm-abcdefghij3", "DEGRADED"),
      ]),
    ]);
    await nextRefresh(
      harness,
      (event) => event.outcome === "success" && event.current?.ips.length === 0,
    );

    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.code).toBe(503);
    expect(outcome.response.status.message).toMatch(
      /no ACTIVE HSM \(2 DEGRADED\)/,
    );
  });

  test("empty cluster answer replaces the good list", async () => {
    aws.setFault("empty-cluster");
    await nextRefresh(
      harness,
      (event) =>
        event.outcome === "success" &&
        event.current?.snapshot.hsms.length === 0,
    );

    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(/has no HSMs/);
  });

  test("logs carry no AWS credentials", () => {
    const text = harness.logText();
    expect(text.length).toBeGreaterThan(0);
    expect(text).not.toContain(process.env.AWS_SECRET_ACCESS_KEY);
    expect(text).not.toContain(process.env.AWS_ACCESS_KEY_ID);
  });
});

describe("addresses that flap between refreshes", () => {
  // Listed out of numeric order on the wire, with a DEGRADED HSM that must never be injected.
  const FIRST = ["10.0.12.5", "10.0.2.40", "10.0.3.7"];
  const SECOND = ["10.1.0.9", "10.0.200.1"];
  const FIRST_SORTED = "10.0.2.40,10.0.3.7,10.0.12.5";
  const SECOND_SORTED = "10.0.200.1,10.1.0.9";

  function clusterWith(ips: readonly string[]) {
    return buildCluster(TEST_CLUSTER_ID, [
      ...activeHsms(ips),
      buildHsm("hsm-abcdefghijz", "DEGRADED", { EniIp: "10.0.99.99" }),
    ]);
  }

  test("every pod gets one whole sorted set", async () => {
    const { aws, harness } = await start(clusterWith(FIRST).Hsms!, [
      "--refresh-interval=0.05",
      "--max-staleness=60",
    ]);
    await waitFor(() => harness.webhook.readiness.ready(), 5_000, "warm-up");
    let changes = 0;
    harness.webhook.directory.on("refresh", (event) => {
      if (event.changed) {
        changes += 1;
      }
    });
    let flip = false;
    const flipper = setInterval(() => {
      flip = !flip;
      aws.setClusters([clusterWith(flip ? SECOND : FIRST)]);
    }, 30);

    const pod = annotatedPod({
      spec: {
        initContainers: [{ name: "setup", image: "busybox:1.36" }],
        containers: [
          { name: "app", image: "registry.example.com/app:1" },
          { name: "sidecar", image: "registry.example.com/proxy:1" },
        ],
      },
    });
    const seen = new Map<string, number>();
    const problems: string[] = [];
    const stopAt = Date.now() + 1_500;
    const worker = async () => {
      for (let index = 0; index < 200 && Date.now() < stopAt; index += 1) {
        const { pod: patched } = await harness.admit(pod);
        const annotations = patched.metadata.annotations;
        const ips = annotations["cloudhsm/injected-ips"] as string;
        seen.set(ips, (seen.get(ips) ?? 0) + 1);
        if (ips !== FIRST_SORTED && ips !== SECOND_SORTED) {
          problems.push(`unexpected set ${ips}`);
        }
        const config = JSON.parse(annotations["cloudhsm/config"]);
        const servers = config.clusters[0].cluster.servers.map(
          (server: any) => server.hostname,
        );
        if (servers.join(",") !== ips) {
          problems.push(`config ${servers.join(",")} against ${ips}`);
        }
        const containers = [
          ...patched.spec.initContainers,
          ...patched.spec.containers,
        ];
        for (const container of containers) {
          const listed = envValue(container, "CLOUDHSM_HSM_IPS");
          const first = envValue(container, "CLOUDHSM_HSM_IP");
          if (listed !== ips || first !== ips.split(",")[0]) {
            problems.push(`${container.name}: env ${listed}/${first}`);
          }
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: 6 }, () => worker()));
    } finally {
      clearInterval(flipper);
    }

    expect(problems).toEqual([]);
    // Both sets were handed out, so the check above saw the flapping.
    expect([...seen.keys()].sort()).toEqual([FIRST_SORTED, SECOND_SORTED]);
    expect(changes).toBeGreaterThanOrEqual(2);
  });
});

describe("unhandled rejections", () => {
  const hook = resolve("test/support/fail-on-unhandled.ts");
  // Node's own default would also fail the process, so warn mode leaves the hook as the only
  // thing that can turn the rejection into a failure.
  const script = "Promise.reject(new Error('rejection-probe'))";
  const common = ["--unhandled-rejections=warn", "--import", "tsx"];

  test("setup hook is installed here", () => {
    expect(process.listenerCount("unhandledRejection")).toBeGreaterThan(0);
  });

  test("setup hook fails the process", async () => {
    const withHook = await run(
      process.execPath,
      [...common, "--import", hook, "-e", script],
      { timeout: 15_000 },
    ).then(
      () => ({ code: 0, stderr: "" }),
      (error: { code?: number; stderr?: string }) => ({
        code: error.code ?? -1,
        stderr: error.stderr ?? "",
      }),
    );
    expect(withHook.code).not.toBe(0);
    expect(withHook.stderr).toContain("rejection-probe");

    // The same script without the hook exits 0, so the hook made the difference.
    await expect(
      run(process.execPath, [...common, "-e", script], { timeout: 15_000 }),
    ).resolves.toBeDefined();
  });
});
