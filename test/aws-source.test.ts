// Drives the real CloudHSM v2 SDK client through AwsHsmSource against a loopback fake.
import { AsyncLocalStorage } from "node:async_hooks";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  AwsHsmSource,
  type AwsHsmSourceOptions,
} from "../src/discovery/aws-source.js";
import {
  ClusterNotFoundError,
  DiscoveryError,
} from "../src/discovery/types.js";
import {
  DESCRIBE_CLUSTERS_TARGET,
  HSM_STATES,
  JSON_1_1_CONTENT_TYPE,
  buildCluster,
  buildHsm,
  buildHsmInEachState,
  startFakeCloudHsm,
  type FakeCloudHsm,
  type FakeFaultKind,
  type WireHsm,
} from "./support/fake-cloudhsm.js";

// Keeps the SDK off the instance metadata service should a test ever fall back
// to the default credential chain.
process.env.AWS_EC2_METADATA_DISABLED = "true";

const REGION = "us-east-1";
const CLUSTER_ID = "cluster-jxhlf7644ne";
const OTHER_CLUSTER_IDS = [
  "cluster-abcdefghijk",
  "cluster-bcdefghijkl",
  "cluster-cdefghijklm",
];
const CREDENTIALS = {
  accessKeyId: "AKIDFAKECLOUDHSMTEST",
  secretAccessKey: "fake-secret-key",
};
const TIMING_SLACK_MS = 500;

let fake: FakeCloudHsm;
let wireHsms: WireHsm[];
const sources: AwsHsmSource[] = [];
const unhandledRejections: unknown[] = [];
const recordUnhandled = (reason: unknown) => unhandledRejections.push(reason);

function createSource(
  options: Partial<AwsHsmSourceOptions> = {},
): AwsHsmSource {
  const source = new AwsHsmSource({
    endpoint: fake.url,
    credentials: CREDENTIALS,
    timeoutMs: 2_000,
    maxAttempts: 1,
    ...options,
  });
  sources.push(source);
  return source;
}

async function describeFailure(
  promise: Promise<unknown>,
): Promise<DiscoveryError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(DiscoveryError);
    return error as DiscoveryError;
  }
  throw new Error("expected describe to reject, but it resolved");
}

/** Returns a loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

beforeEach(async () => {
  wireHsms = buildHsmInEachState();
  fake = await startFakeCloudHsm({
    clusters: [buildCluster(CLUSTER_ID, wireHsms)],
  });
  unhandledRejections.length = 0;
  process.on("unhandledRejection", recordUnhandled);
});

afterEach(async () => {
  for (const source of sources.splice(0)) source.destroy();
  await fake.close();
  // Lets rejections from abandoned SDK requests surface before the check.
  await sleep(20);
  process.off("unhandledRejection", recordUnhandled);
  expect(unhandledRejections).toEqual([]);
});

describe("AwsHsmSource success", () => {
  it("returns HSMs in all five states", async () => {
    const before = Date.now();
    const snapshot = await createSource().describe(CLUSTER_ID, REGION);

    expect(snapshot.clusterId).toBe(CLUSTER_ID);
    expect(snapshot.region).toBe(REGION);
    expect(snapshot.clusterState).toBe("ACTIVE");
    expect(snapshot.hsms.map((hsm) => hsm.state)).toEqual([...HSM_STATES]);
    expect(snapshot.fetchedAt).toBeGreaterThanOrEqual(before);
    expect(snapshot.fetchedAt).toBeLessThanOrEqual(Date.now());
    expect(snapshot.hsms).toEqual(
      wireHsms.map((wire) => ({
        hsmId: wire.HsmId,
        state: wire.State,
        availabilityZone: wire.AvailabilityZone,
        eniIp: wire.EniIp,
      })),
    );
  });

  it("sends target, content type and SigV4 scope", async () => {
    await createSource().describe(CLUSTER_ID, REGION);

    expect(fake.calls).toBe(1);
    const [request] = fake.requests;
    expect(request?.method).toBe("POST");
    expect(request?.path).toBe("/");
    expect(request?.target).toBe(DESCRIBE_CLUSTERS_TARGET);
    expect(request?.contentType).toBe(JSON_1_1_CONTENT_TYPE);
    expect(request?.credentialScope?.service).toBe("cloudhsm");
    expect(request?.credentialScope?.region).toBe(REGION);
    expect(request?.credentialScope?.accessKeyId).toBe(CREDENTIALS.accessKeyId);
    expect(request?.filters).toEqual({ clusterIds: [CLUSTER_ID] });
    expect(request?.nextToken).toBeUndefined();
  });

  it("signs each region with its own scope", async () => {
    const source = createSource();
    await source.describe(CLUSTER_ID, REGION);
    await source.describe(CLUSTER_ID, "eu-west-1");
    await source.describe(CLUSTER_ID, REGION);

    const regions = fake.requests.map(
      (request) => request.credentialScope?.region,
    );
    expect(regions).toEqual([REGION, "eu-west-1", REGION]);
  });

  it("follows NextToken to a later page", async () => {
    await fake.close();
    fake = await startFakeCloudHsm({
      pageSize: 1,
      filterAfterPaging: true,
      clusters: [
        buildCluster(OTHER_CLUSTER_IDS[0]!, [buildHsm("hsm-otherabcdefg")]),
        buildCluster(CLUSTER_ID, [
          buildHsm("hsm-targetabcdef", "ACTIVE", { EniIp: "10.0.1.7" }),
        ]),
        buildCluster(OTHER_CLUSTER_IDS[1]!, [buildHsm("hsm-thirdabcdefg")]),
      ],
    });

    const snapshot = await createSource().describe(CLUSTER_ID, REGION);

    expect(snapshot.hsms).toEqual([
      {
        hsmId: "hsm-targetabcdef",
        state: "ACTIVE",
        availabilityZone: "us-east-1a",
        eniIp: "10.0.1.7",
      },
    ]);
    // The cluster is on page 2, so page 3 is never requested.
    expect(fake.calls).toBe(2);
    const [first, second] = fake.requests;
    expect(first?.nextToken).toBeUndefined();
    expect(first?.responseNextToken).toEqual(expect.any(String));
    expect(second?.nextToken).toBe(first?.responseNextToken);
    expect(second?.filters).toEqual({ clusterIds: [CLUSTER_ID] });
  });

  it("sees an HSM replaced between calls", async () => {
    const source = createSource();
    fake.setClusters([
      buildCluster(CLUSTER_ID, [
        buildHsm("hsm-oldabcdefghi", "ACTIVE", { EniIp: "10.0.2.1" }),
      ]),
    ]);
    const first = await source.describe(CLUSTER_ID, REGION);
    fake.setClusters([
      buildCluster(CLUSTER_ID, [
        buildHsm("hsm-newabcdefghi", "ACTIVE", { EniIp: "10.0.2.2" }),
      ]),
    ]);
    const second = await source.describe(CLUSTER_ID, REGION);

    expect(first.hsms.map((hsm) => hsm.eniIp)).toEqual(["10.0.2.1"]);
    expect(second.hsms.map((hsm) => hsm.eniIp)).toEqual(["10.0.2.2"]);
  });

  it("returns a cluster without HSMs", async () => {
    fake.setFault("empty-cluster", 1);
    const snapshot = await createSource().describe(CLUSTER_ID, REGION);

    expect(snapshot.hsms).toEqual([]);
    expect(snapshot.clusterState).toBe("ACTIVE");
  });

  it("marks an HSM without State as UNKNOWN", async () => {
    fake.setClusters([
      buildCluster(CLUSTER_ID, [
        buildHsm("hsm-nostateabcde", "ACTIVE", { State: undefined }),
      ]),
    ]);
    const snapshot = await createSource().describe(CLUSTER_ID, REGION);

    expect(snapshot.hsms[0]?.state).toBe("UNKNOWN");
  });

  it("waits for a delayed response", async () => {
    fake.setFault({ kind: "delay", ms: 150 }, 1);
    const started = performance.now();
    const snapshot = await createSource({ timeoutMs: 2_000 }).describe(
      CLUSTER_ID,
      REGION,
    );

    expect(snapshot.hsms).toHaveLength(5);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });

  it("returns once a hung request is released", async () => {
    fake.setFault("hang", 1);
    const pending = createSource().describe(CLUSTER_ID, REGION);
    for (let i = 0; i < 100 && fake.calls === 0; i++) await sleep(10);
    fake.releaseHungRequests();

    const snapshot = await pending;
    expect(snapshot.hsms).toHaveLength(5);
  });
});

describe("AwsHsmSource not found", () => {
  it("rejects an unknown cluster with ClusterNotFoundError", async () => {
    const error = await describeFailure(
      createSource().describe("cluster-unknownabcde", REGION),
    );

    expect(error).toBeInstanceOf(ClusterNotFoundError);
    expect(error.code).toBe("ClusterNotFound");
    expect(error.message).toContain("cluster-unknownabcde");
    expect(error.message).toContain(REGION);
    expect(fake.requests[0]?.status).toBe(200);
  });

  it("reads every page before ClusterNotFound", async () => {
    await fake.close();
    fake = await startFakeCloudHsm({
      pageSize: 1,
      filterAfterPaging: true,
      clusters: OTHER_CLUSTER_IDS.map((id) => buildCluster(id, [])),
    });

    const error = await describeFailure(
      createSource().describe(CLUSTER_ID, REGION),
    );

    expect(error).toBeInstanceOf(ClusterNotFoundError);
    expect(fake.calls).toBe(3);
    expect(fake.requests[2]?.responseNextToken).toBeUndefined();
  });

  it("fails past the page limit", async () => {
    await fake.close();
    fake = await startFakeCloudHsm({
      pageSize: 1,
      filterAfterPaging: true,
      clusters: OTHER_CLUSTER_IDS.map((id) => buildCluster(id, [])),
    });

    const error = await describeFailure(
      createSource({ maxPages: 2 }).describe(CLUSTER_ID, REGION),
    );

    expect(error).not.toBeInstanceOf(ClusterNotFoundError);
    expect(error.code).toBe("PaginationLimitExceeded");
    expect(error.message).toContain("after 2 pages");
    expect(fake.calls).toBe(2);
  });
});

describe("AwsHsmSource errors", () => {
  const cases: { fault: FakeFaultKind; code: string; words: string[] }[] = [
    {
      fault: "throttling",
      code: "ThrottlingException",
      words: ["Rate exceeded", "refresh interval"],
    },
    {
      fault: "access-denied",
      code: "CloudHsmAccessDeniedException",
      words: ["IAM role", "cloudhsm:DescribeClusters", "AWS request ID"],
    },
    {
      fault: "internal-failure",
      code: "CloudHsmInternalFailureException",
      words: ["internal failure", "transient"],
    },
    { fault: "service-unavailable", code: "Http503", words: ["HTTP 503"] },
    {
      fault: "malformed-json",
      code: "MalformedResponse",
      words: ["could not be parsed"],
    },
  ];

  for (const { fault, code, words } of cases) {
    it(`maps ${fault} to ${code}`, async () => {
      fake.setFault(fault);
      const error = await describeFailure(
        createSource({ maxAttempts: 1 }).describe(CLUSTER_ID, REGION),
      );

      expect(error.code).toBe(code);
      expect(error.message).toContain(
        `DescribeClusters for ${CLUSTER_ID} in ${REGION}`,
      );
      for (const word of words) {
        expect(error.message).toContain(word);
      }
      // maxAttempts 1 means exactly one HTTP request, with no retry.
      expect(fake.calls).toBe(1);
    });
  }

  it("recovers from one throttle by retrying", async () => {
    fake.setFault("throttling", 1);
    const snapshot = await createSource({ maxAttempts: 2 }).describe(
      CLUSTER_ID,
      REGION,
    );

    expect(snapshot.hsms).toHaveLength(5);
    expect(fake.calls).toBe(2);
    expect(fake.requests.map((request) => request.status)).toEqual([400, 200]);
  });

  it("retries without AsyncLocalStorage", async () => {
    // On Node 20 the first AsyncLocalStorage run turns on promise hooks for the whole process,
    // which slows every admission that follows.
    const run = vi.spyOn(AsyncLocalStorage.prototype, "run");
    const enterWith = vi.spyOn(AsyncLocalStorage.prototype, "enterWith");
    fake.setFault("throttling", 1);
    try {
      await createSource({ maxAttempts: 2 }).describe(CLUSTER_ID, REGION);

      expect(fake.calls).toBe(2);
      expect(run).not.toHaveBeenCalled();
      expect(enterWith).not.toHaveBeenCalled();
    } finally {
      run.mockRestore();
      enterWith.mockRestore();
    }
  });

  it("stops after maxAttempts attempts", async () => {
    fake.setFault("internal-failure");
    const error = await describeFailure(
      createSource({ maxAttempts: 3 }).describe(CLUSTER_ID, REGION),
    );

    expect(error.code).toBe("CloudHsmInternalFailureException");
    expect(fake.calls).toBe(3);
  });

  it("names the endpoint for a malformed body", async () => {
    fake.setFault("malformed-json");
    const error = await describeFailure(
      createSource().describe(CLUSTER_ID, REGION),
    );

    expect(error.message).toContain(fake.url);
  });

  it("does not retry an unparsable 502", async () => {
    fake.setFault("proxy-error-page");
    const error = await describeFailure(
      createSource({ maxAttempts: 3 }).describe(CLUSTER_ID, REGION),
    );

    expect(error.code).toBe("Http502");
    expect(error.message).toContain("could not be parsed");
    // SDK 3.332 classifies a body that fails to parse as a client error.
    expect(fake.calls).toBe(1);
  });

  it("rejects a refused connection", async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const error = await describeFailure(
      createSource({ endpoint }).describe(CLUSTER_ID, REGION),
    );

    expect(error.code).toBe("ECONNREFUSED");
    expect(error.message).toContain(endpoint);
  });

  it("rejects an invalid region without a request", async () => {
    const error = await describeFailure(
      createSource().describe(CLUSTER_ID, "us-east-1.example.com"),
    );

    expect(error.code).toBe("InvalidRegion");
    expect(fake.calls).toBe(0);
  });

  it("rejects invalid constructor options", () => {
    expect(() => new AwsHsmSource({ timeoutMs: 0 })).toThrow(RangeError);
    expect(
      () => new AwsHsmSource({ timeoutMs: 1_000, maxAttempts: 0 }),
    ).toThrow(RangeError);
    expect(
      () => new AwsHsmSource({ timeoutMs: 1_000, endpoint: "not a url" }),
    ).toThrow(RangeError);
  });
});

describe("AwsHsmSource deadline and abort", () => {
  it("ends a hung request with TimeoutError", async () => {
    fake.setFault("hang");
    const timeoutMs = 300;
    const started = performance.now();
    const error = await describeFailure(
      createSource({ timeoutMs, maxAttempts: 3 }).describe(CLUSTER_ID, REGION),
    );
    const elapsed = performance.now() - started;

    expect(error.code).toBe("TimeoutError");
    expect(error.message).toContain(`timed out after ${timeoutMs} ms`);
    expect(elapsed).toBeGreaterThanOrEqual(timeoutMs - 10);
    expect(elapsed).toBeLessThan(timeoutMs + TIMING_SLACK_MS);
    // The deadline covers retries, so the hung attempt is the only one.
    expect(fake.calls).toBe(1);
  });

  it("bounds throttle retries by the deadline", async () => {
    fake.setFault("throttling");
    const timeoutMs = 200;
    const started = performance.now();
    const error = await describeFailure(
      createSource({ timeoutMs, maxAttempts: 10 }).describe(CLUSTER_ID, REGION),
    );
    const elapsed = performance.now() - started;

    // The retry strategy stops before a backoff that would pass the deadline, so the AWS error
    // usually wins. The deadline can still fire during a request, which yields TimeoutError.
    expect(["ThrottlingException", "TimeoutError"]).toContain(error.code);
    expect(elapsed).toBeLessThan(timeoutMs + TIMING_SLACK_MS);
    expect(fake.calls).toBeLessThan(10);
  });

  it("skips a backoff that passes the deadline", async () => {
    fake.setFault({ kind: "throttling", retryAfterSeconds: 5 });
    const started = performance.now();
    const error = await describeFailure(
      createSource({ timeoutMs: 2_000, maxAttempts: 3 }).describe(
        CLUSTER_ID,
        REGION,
      ),
    );

    // Waiting 5 s would pass the 2 s deadline, so the throttle is reported at once.
    expect(error.code).toBe("ThrottlingException");
    expect(fake.calls).toBe(1);
    expect(performance.now() - started).toBeLessThan(TIMING_SLACK_MS);
  });

  it("aborts during a retry backoff", async () => {
    fake.setFault({ kind: "throttling", retryAfterSeconds: 3 });
    const controller = new AbortController();
    const started = performance.now();
    const pending = createSource({
      timeoutMs: 10_000,
      maxAttempts: 2,
    }).describe(CLUSTER_ID, REGION, controller.signal);
    for (let i = 0; i < 100 && fake.requests[0]?.status !== 400; i++) {
      await sleep(10);
    }
    // Gives the SDK time to parse the throttle and start its backoff.
    await sleep(50);
    controller.abort();
    const error = await describeFailure(pending);

    // The SDK sleeps through a backoff without watching the signal.
    expect(error.code).toBe("AbortError");
    expect(performance.now() - started).toBeLessThan(TIMING_SLACK_MS);
    expect(fake.calls).toBe(1);
  });

  it("honours the caller's abort signal", async () => {
    fake.setFault("hang");
    const controller = new AbortController();
    const started = performance.now();
    const pending = createSource({ timeoutMs: 10_000 }).describe(
      CLUSTER_ID,
      REGION,
      controller.signal,
    );
    setTimeout(() => controller.abort(), 50);
    const error = await describeFailure(pending);

    expect(error.code).toBe("AbortError");
    expect(error.message).toContain("aborted by the caller");
    expect(performance.now() - started).toBeLessThan(50 + TIMING_SLACK_MS);
  });

  it("fails a hung request when the fake closes", async () => {
    fake.setFault("hang");
    const pending = createSource({ timeoutMs: 10_000 }).describe(
      CLUSTER_ID,
      REGION,
    );
    for (let i = 0; i < 100 && fake.calls === 0; i++) await sleep(10);
    const started = performance.now();
    await fake.close();
    const error = await describeFailure(pending);

    expect(error.code).toBe("ECONNRESET");
    expect(performance.now() - started).toBeLessThan(TIMING_SLACK_MS);
  });

  it("sends nothing for an aborted signal", async () => {
    const error = await describeFailure(
      createSource().describe(CLUSTER_ID, REGION, AbortSignal.abort()),
    );

    expect(error.code).toBe("AbortError");
    expect(fake.calls).toBe(0);
  });

  it("rejects calls in flight on destroy", async () => {
    fake.setFault("hang");
    const source = createSource({ timeoutMs: 10_000 });
    const pending = source.describe(CLUSTER_ID, REGION);
    for (let i = 0; i < 100 && fake.calls === 0; i++) await sleep(10);
    source.destroy();
    const error = await describeFailure(pending);

    expect(error.code).toBe("Destroyed");
    const after = await describeFailure(source.describe(CLUSTER_ID, REGION));
    expect(after.code).toBe("Destroyed");
    expect(fake.calls).toBe(1);
  });
});

describe("AwsHsmSource onCall", () => {
  it("reports success and error codes", async () => {
    const outcomes: [string, number][] = [];
    const source = createSource({
      onCall: (outcome, ms) => outcomes.push([outcome, ms]),
    });

    await source.describe(CLUSTER_ID, REGION);
    fake.setFault("access-denied", 1);
    await describeFailure(source.describe(CLUSTER_ID, REGION));
    await describeFailure(source.describe("cluster-unknownabcde", REGION));

    expect(outcomes.map(([outcome]) => outcome)).toEqual([
      "success",
      "CloudHsmAccessDeniedException",
      "ClusterNotFound",
    ]);
    for (const [, durationMs] of outcomes) {
      expect(durationMs).toBeGreaterThanOrEqual(0);
      expect(durationMs).toBeLessThan(2_000);
    }
  });

  it("ignores a throwing onCall hook", async () => {
    const source = createSource({
      onCall: () => {
        throw new Error("metrics broke");
      },
    });
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(warning.message);
    process.on("warning", onWarning);
    try {
      const snapshot = await source.describe(CLUSTER_ID, REGION);
      expect(snapshot.hsms).toHaveLength(5);
      // Process warnings are emitted on the next tick.
      await sleep(10);
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings.some((message) => message.includes("metrics broke"))).toBe(
      true,
    );
  });
});

describe("fake CloudHSM protocol checks", () => {
  const signedHeaders = (service: string) => ({
    "content-type": JSON_1_1_CONTENT_TYPE,
    "x-amz-target": DESCRIBE_CLUSTERS_TARGET,
    authorization:
      `AWS4-HMAC-SHA256 Credential=AKIDFAKE/20240101/${REGION}/${service}/aws4_request, ` +
      "SignedHeaders=host;x-amz-date, Signature=00",
  });

  async function post(headers: Record<string, string>, body: unknown) {
    const response = await fetch(fake.url, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    return {
      status: response.status,
      body: (await response.json()) as Record<string, unknown>,
    };
  }

  it("rejects a wrong target", async () => {
    const result = await post(
      {
        ...signedHeaders("cloudhsm"),
        "x-amz-target": "BaldrApiService.DeleteCluster",
      },
      {},
    );
    expect(result.status).toBe(400);
    expect(result.body.__type).toBe("UnknownOperationException");
  });

  it("rejects a wrong content type", async () => {
    const result = await post(
      { ...signedHeaders("cloudhsm"), "content-type": "application/json" },
      {},
    );
    expect(result.status).toBe(400);
    expect(result.body.__type).toBe("SerializationException");
  });

  it("rejects a missing Authorization header", async () => {
    const { authorization: _, ...unsigned } = signedHeaders("cloudhsm");
    const result = await post(unsigned, {});
    expect(result.status).toBe(403);
    expect(result.body.__type).toBe("MissingAuthenticationTokenException");
  });

  it("rejects a scope for another service", async () => {
    const result = await post(signedHeaders("cloudhsmv2"), {});
    expect(result.status).toBe(403);
    expect(result.body.__type).toBe("InvalidSignatureException");
    expect(result.body.message).toContain("'cloudhsm'");
  });

  it("pages with MaxResults and NextToken", async () => {
    fake.setClusters(OTHER_CLUSTER_IDS.map((id) => buildCluster(id, [])));
    const headers = signedHeaders("cloudhsm");

    const first = await post(headers, { MaxResults: 2 });
    const second = await post(headers, {
      MaxResults: 2,
      NextToken: first.body.NextToken,
    });
    const filtered = await post(headers, {
      Filters: { clusterIds: [OTHER_CLUSTER_IDS[2]] },
    });
    const invalid = await post(headers, { MaxResults: 26 });

    const ids = (body: Record<string, unknown>) =>
      (body.Clusters as { ClusterId: string }[]).map(
        (cluster) => cluster.ClusterId,
      );
    expect(ids(first.body)).toEqual(OTHER_CLUSTER_IDS.slice(0, 2));
    expect(first.body.NextToken).toEqual(expect.any(String));
    expect(ids(second.body)).toEqual(OTHER_CLUSTER_IDS.slice(2));
    expect(second.body.NextToken).toBeUndefined();
    expect(ids(filtered.body)).toEqual([OTHER_CLUSTER_IDS[2]]);
    expect(invalid.status).toBe(400);
    expect(fake.calls).toBe(4);
  });

  it("returns an empty list for an unknown cluster", async () => {
    const result = await post(signedHeaders("cloudhsm"), {
      Filters: { clusterIds: ["cluster-unknownabcde"] },
    });
    expect(result.status).toBe(200);
    expect(result.body.Clusters).toEqual([]);
  });
});
