import { afterEach, describe, expect, test } from "vitest";
import {
  buildCluster,
  buildHsm,
  buildHsmInEachState,
  startFakeCloudHsm,
  type FakeCloudHsm,
  type FakeFault,
} from "./support/fake-cloudhsm.js";
import {
  annotatedPod,
  startHarness,
  TEST_CLUSTER_ID,
  waitFor,
  type Harness,
} from "./support/webhook-harness.js";

const open: Array<{ close(): Promise<void> }> = [];

afterEach(async () => {
  while (open.length > 0) {
    await open.pop()!.close();
  }
});

async function start(
  clusters: Parameters<typeof startFakeCloudHsm>[0],
  args: string[] = [],
  fault?: FakeFault,
): Promise<{ aws: FakeCloudHsm; harness: Harness }> {
  const aws = await startFakeCloudHsm(clusters);
  open.push(aws);
  if (fault !== undefined) {
    aws.setFault(fault);
  }
  const harness = await startHarness({
    awsEndpoint: aws.url,
    args: ["--aws-timeout=1", ...args],
  });
  open.push(harness);
  return { aws, harness };
}

function describeCalls(aws: FakeCloudHsm): number {
  return aws.requests.filter(
    (request) => request.target === "BaldrApiService.DescribeClusters",
  ).length;
}

function ipsOf(pod: Record<string, any>): string {
  return pod.spec.containers[0].env.find(
    (entry: any) => entry.name === "CLOUDHSM_HSM_IPS",
  ).value;
}

describe("discovery through the real AWS SDK", () => {
  test("only ACTIVE HSMs of all five states are injected", async () => {
    const hsms = buildHsmInEachState("hsm-abcdefghij");
    const { harness } = await start({
      clusters: [buildCluster(TEST_CLUSTER_ID, hsms)],
    });
    const active = hsms.find((hsm) => hsm.State === "ACTIVE")!;
    const { pod } = await harness.admit(annotatedPod());
    expect(ipsOf(pod)).toBe(active.EniIp);
  });

  test("second page of DescribeClusters is followed", async () => {
    const others = ["cluster-otherone2345", "cluster-othertwo2345"].map((id) =>
      buildCluster(id, [buildHsm("hsm-othersaaaaa2")]),
    );
    const target = buildCluster(TEST_CLUSTER_ID, [
      buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.5.5" }),
    ]);
    const { aws, harness } = await start({
      clusters: [...others, target],
      pageSize: 2,
      filterAfterPaging: true,
    });
    const { pod } = await harness.admit(annotatedPod());
    expect(ipsOf(pod)).toBe("10.0.5.5");
    const tokens = aws.requests.map((request) => request.nextToken);
    expect(tokens).toContain(undefined);
    expect(tokens.some((token) => typeof token === "string")).toBe(true);
    expect(aws.requests[0]!.filters).toEqual({ clusterIds: [TEST_CLUSTER_ID] });
  });

  test("requests are signed for the cloudhsm service", async () => {
    const { aws, harness } = await start({
      clusters: [buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")])],
    });
    await harness.admit(annotatedPod());
    const scope = aws.requests[0]!.credentialScope!;
    expect(scope.service).toBe("cloudhsm");
    expect(scope.region).toBe("us-east-1");
  });

  test("admissions make no DescribeClusters call while cached", async () => {
    const { aws, harness } = await start({
      clusters: [buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")])],
    });
    await waitFor(
      () => harness.webhook.readiness.ready(),
      5_000,
      "the first refresh",
    );
    const before = describeCalls(aws);
    for (let index = 0; index < 25; index += 1) {
      await harness.admit(annotatedPod());
    }
    expect(describeCalls(aws)).toBe(before);
  });

  test("concurrent cold admissions share one call", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
        ],
      },
      [],
      { kind: "delay", ms: 300 },
    );
    const outcomes = await Promise.all(
      Array.from({ length: 10 }, () => harness.admit(annotatedPod())),
    );
    expect(outcomes.every((outcome) => outcome.response.allowed)).toBe(true);
    expect(describeCalls(aws)).toBe(1);
  });

  test("replaced HSM reaches new pods within two intervals", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [
            buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.1.10" }),
          ]),
        ],
      },
      ["--refresh-interval=0.3", "--max-staleness=60"],
    );
    expect(ipsOf((await harness.admit(annotatedPod())).pod)).toBe("10.0.1.10");
    aws.setClusters([
      buildCluster(TEST_CLUSTER_ID, [
        buildHsm("hsm-abcdefghij3", "ACTIVE", { EniIp: "10.0.1.20" }),
      ]),
    ]);
    const replacedAt = Date.now();
    await waitFor(
      async () =>
        ipsOf((await harness.admit(annotatedPod())).pod) === "10.0.1.20",
      2_000,
      "the new address",
    );
    expect(Date.now() - replacedAt).toBeLessThanOrEqual(2 * 300 + 250);
  });
});

describe("AWS failures", () => {
  const faults: Array<[string, FakeFault, RegExp]> = [
    ["throttling", "throttling", /ThrottlingException/],
    ["access denied", "access-denied", /AccessDenied/],
    ["a 5xx", "internal-failure", /InternalFailure|500/],
    ["a hang", "hang", /timed out|did not answer|deadline/i],
  ];

  test.each(faults)(
    "%s on a cold cache denies the pod",
    async (_name, fault, cause) => {
      const { harness } = await start(
        {
          clusters: [
            buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
          ],
        },
        [],
        fault,
      );
      const outcome = await harness.admit(annotatedPod());
      expect(outcome.response.allowed).toBe(false);
      expect(outcome.response.status.code).toBe(503);
      expect(outcome.response.status.message).toContain(TEST_CLUSTER_ID);
      expect(outcome.response.status.message).toContain("us-east-1");
      expect(outcome.response.status.message).toMatch(cause);
    },
  );

  test("cold failure with allow admits with a warning", async () => {
    const { harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
        ],
      },
      ["--on-unavailable=allow"],
      "access-denied",
    );
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.response.patch).toBeUndefined();
    expect(outcome.response.warnings[0]).toMatch(/without CloudHSM addresses/);
  });

  test("failure on a warm cache serves the last good list", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [
            buildHsm("hsm-abcdefghij2", "ACTIVE", { EniIp: "10.0.3.3" }),
          ]),
        ],
      },
      ["--refresh-interval=0.2", "--max-staleness=60"],
    );
    await waitFor(
      () => harness.webhook.readiness.ready(),
      5_000,
      "the first refresh",
    );
    aws.setFault("internal-failure");
    const servingStale = () =>
      harness.logs.some(
        (line) =>
          line.msg ===
          "DescribeClusters failed; serving the last good HSM list",
      );
    await waitFor(servingStale, 5_000, "a failed refresh");
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(true);
    expect(ipsOf(outcome.pod)).toBe("10.0.3.3");
  });

  test("list older than max-staleness is not served", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
        ],
      },
      ["--refresh-interval=0.2", "--max-staleness=0.6"],
    );
    await waitFor(
      () => harness.webhook.readiness.ready(),
      5_000,
      "the first refresh",
    );
    aws.setFault("access-denied");
    await waitFor(
      () =>
        harness.webhook.directory.peek(TEST_CLUSTER_ID, "us-east-1") ===
        undefined,
      5_000,
      "the list to expire",
    );
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(/AccessDenied/);
  });

  test("cluster without ACTIVE HSMs denies with the states", async () => {
    const { harness } = await start({
      clusters: [
        buildCluster(TEST_CLUSTER_ID, [
          buildHsm("hsm-abcdefghij2", "DEGRADED"),
          buildHsm("hsm-abcdefghij3", "DEGRADED"),
        ]),
      ],
    });
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(
      /no ACTIVE HSM \(2 DEGRADED\)/,
    );
  });

  test("empty cluster denies the pod", async () => {
    const { harness } = await start({
      clusters: [buildCluster(TEST_CLUSTER_ID, [])],
    });
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(false);
    expect(outcome.response.status.message).toMatch(/has no HSMs/);
  });

  test("unknown annotated cluster is not refreshed", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
        ],
      },
      ["--refresh-interval=0.2"],
    );
    const typo = "cluster-typotypotypo2";
    const outcome = await harness.admit(
      annotatedPod({ annotations: { "cloudhsm/cluster-id": typo } }),
    );
    expect(outcome.response.allowed).toBe(false);
    const callsFor = () =>
      aws.requests.filter(
        (request) => request.filters?.clusterIds?.[0] === typo,
      ).length;
    const after = callsFor();
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(callsFor()).toBe(after);
  });

  test("unknown cluster is denied and cached", async () => {
    const { aws, harness } = await start({
      clusters: [
        buildCluster("cluster-otherone2345", [buildHsm("hsm-abcdefghij2")]),
      ],
    });
    const first = await harness.admit(annotatedPod());
    expect(first.response.allowed).toBe(false);
    expect(first.response.status.message).toContain(
      `cluster ${TEST_CLUSTER_ID} not found in us-east-1`,
    );
    const calls = describeCalls(aws);
    await harness.admit(annotatedPod());
    expect(describeCalls(aws)).toBe(calls);
  });

  test("readyz stays 503 until the first success", async () => {
    const { aws, harness } = await start(
      {
        clusters: [
          buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
        ],
      },
      ["--refresh-interval=0.2"],
      "service-unavailable",
    );
    expect(harness.webhook.readiness.ready()).toBe(false);
    aws.clearFaults();
    await waitFor(() => harness.webhook.readiness.ready(), 5_000, "readiness");
    expect(harness.webhook.readiness.ready()).toBe(true);
  });
});
