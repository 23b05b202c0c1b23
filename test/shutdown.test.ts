import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  callWebhook,
  loopbackAgent,
  podCreateReview,
  type WebhookTarget,
} from "../scripts/lib/admission-client.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
} from "../scripts/lib/pki.js";
import {
  buildCluster,
  buildHsm,
  startFakeCloudHsm,
  type FakeCloudHsm,
} from "./support/fake-cloudhsm.js";
import {
  annotatedPod,
  TEST_CLUSTER_ID,
  waitFor,
} from "./support/webhook-harness.js";
import { serveArguments } from "./support/serve-process.js";

const SLOW_CLUSTER = "cluster-slowslowslow2";
let folder: string;
let aws: FakeCloudHsm;
let child: ChildProcess;
let target: WebhookTarget;
let exit: Promise<number | null>;
/** Every line that the process wrote to stdout, its log, parsed. */
const logLines: Array<Record<string, any>> = [];
/** Resolves when stdout closes, after the last line. */
let stdoutClosed: Promise<void>;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-shutdown-"));
  const ca = await createCertificateAuthority();
  const pair = await ca.issue([SERVICE_DNS_NAME]);
  await writeFile(join(folder, "tls.crt"), pair.cert);
  await writeFile(join(folder, "tls.key"), pair.key);
  aws = await startFakeCloudHsm({
    clusters: [
      buildCluster(TEST_CLUSTER_ID, [buildHsm("hsm-abcdefghij2")]),
      buildCluster(SLOW_CLUSTER, [buildHsm("hsm-slowslowslo2")]),
    ],
  });

  // The real CLI in its own process, so the signal handling is the one that ships.
  child = spawn(
    process.execPath,
    serveArguments(folder, [
      `--cluster-id=${TEST_CLUSTER_ID}`,
      "--region=us-east-1",
      `--aws-endpoint=${aws.url}`,
      "--shutdown-delay=1",
      "--shutdown-timeout=10",
    ]),
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: {
        PATH: process.env.PATH,
        AWS_ACCESS_KEY_ID: "AKIDLOOPBACKTEST",
        AWS_SECRET_ACCESS_KEY: "loopback-test-secret",
        AWS_EC2_METADATA_DISABLED: "true",
      },
    },
  );
  exit = new Promise((resolveExit) =>
    child.once("exit", (code) => resolveExit(code)),
  );
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(
      () => reject(new Error("serve did not start within 15 s")),
      15_000,
    );
    const lines = createInterface({ input: child.stdout! });
    stdoutClosed = new Promise((closed) => lines.once("close", closed));
    lines.on("line", (line) => {
      logLines.push(JSON.parse(line));
      if (line.includes('"msg":"cloudhsm-webhook serving"')) {
        clearTimeout(timer);
        resolvePort(JSON.parse(line).port as number);
      }
    });
  });
  target = {
    port,
    ca: ca.cert,
    serverName: SERVICE_DNS_NAME,
    agent: loopbackAgent(),
  };
  await waitFor(
    async () => (await callWebhook(target, "/readyz")).status === 200,
    10_000,
    "readiness",
  );
});

afterAll(async () => {
  child.kill("SIGKILL");
  target.agent?.destroy();
  await aws.close();
  await rm(folder, { recursive: true, force: true });
});

const decisionFor = (uid: string) =>
  logLines.find(
    (line) => line.msg === "admission decision" && line.uid === uid,
  );

test("quiet server flushes decision lines", async () => {
  // The server collects log lines into a buffer, so a quiet server must still write them out.
  const uid = "4b1c9f0e-0000-4000-8000-00000000a001";
  const reply = await callWebhook(target, "/mutate", {
    body: JSON.stringify(
      podCreateReview(annotatedPod(), { namespace: "shop", uid }),
    ),
  });
  expect(reply.status).toBe(200);
  await waitFor(() => decisionFor(uid) !== undefined, 3_000, "the line");
  expect(decisionFor(uid)).toMatchObject({
    decision: "injected",
    clusterId: TEST_CLUSTER_ID,
    ipCount: 1,
  });
});

test("repeated SIGTERM drains and exits 0", async () => {
  // A pod for a cluster not yet cached waits on a DescribeClusters call that the fake delays.
  aws.setFault({ kind: "delay", ms: 1_500 }, 1);
  const pod = annotatedPod({
    annotations: { "cloudhsm/cluster-id": SLOW_CLUSTER },
  });
  const uid = "4b1c9f0e-0000-4000-8000-00000000a002";
  const inFlight = callWebhook(target, "/mutate", {
    body: JSON.stringify(podCreateReview(pod, { namespace: "shop", uid })),
  });
  await waitFor(
    () =>
      aws.requests.some(
        (request) => request.filters?.clusterIds?.[0] === SLOW_CLUSTER,
      ),
    5_000,
    "the slow call",
  );

  const signalledAt = Date.now();
  child.kill("SIGTERM");
  await new Promise((wait) => setTimeout(wait, 200));
  const readiness = await callWebhook(
    { ...target, agent: undefined },
    "/readyz",
  );
  expect(readiness.status).toBe(503);
  // A second signal, as an impatient operator or a runtime sends it, must not cut the drain short.
  child.kill("SIGTERM");

  const reply = await inFlight;
  expect(reply.status).toBe(200);
  const { response } = JSON.parse(reply.body);
  expect(response.allowed).toBe(true);
  expect(response.patchType).toBe("JSONPatch");

  expect(await exit).toBe(0);
  expect(Date.now() - signalledAt).toBeLessThan(10_000);

  // Lines still in the log buffer at exit are written, the last decision included.
  await stdoutClosed;
  expect(decisionFor(uid)).toMatchObject({ clusterId: SLOW_CLUSTER });
  expect(logLines.at(-1)?.msg).toBe("shutdown complete");
});
