// Soak test: runs `cloudhsm-webhook serve` as a child process on loopback and, for a bounded
// time, sends it concurrent admissions while it rotates the serving certificate, makes the
// CloudHSM endpoint fail and recover, changes the HSM addresses, and sends bad requests.
//
// Usage: npm run soak -- [--seconds 60] [--rate 200] [--built] [--json FILE] (--help for all)
//
// Everything runs on 127.0.0.1: the CloudHSM endpoint is a fake in this process, the AWS SDK
// gets static credentials, and no Kubernetes API is configured.
//
// The run fails (exit 1) on any of these: a valid admission fails, a response is a 5xx, a bad
// request gets an unexpected status, or the server logs an error. It also fails when one of the
// two address sets is never handed out or the last renewed certificate is not served. Last, it
// fails when the heap after a full garbage collection grows, RSS rises, or the event-loop delay
// p99 climbs past its limit, or when SIGTERM does not end the server with status 0.
import { spawn, type ChildProcess } from "node:child_process";
import { X509Certificate, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import {
  mkdir,
  mkdtemp,
  readFile,
  rename,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import {
  createServer,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import type { Agent } from "node:https";
import type { AddressInfo } from "node:net";
import { cpus, platform, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { connect as connectTls } from "node:tls";
import { parseArgs } from "node:util";
import { applyPatch, type Operation } from "rfc6902";
import {
  callWebhook,
  loopbackAgent,
  podCreateReview,
  type WebhookTarget,
} from "./lib/admission-client.js";
import type { RuntimeSnapshot } from "./lib/runtime-probe.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
  type CertificateAuthority,
  type IssuedPair,
} from "./lib/pki.js";

const CLUSTER_ID = "cluster-soaksoaksoa2";
const REGION = "us-east-1";
// Sent out of numeric order, so the webhook's sorting is checked on every pod.
const FIRST_IPS = ["10.0.12.5", "10.0.2.40", "10.0.3.7"];
const SECOND_IPS = ["10.1.0.9", "10.0.200.1"];
const DEGRADED_IP = "10.0.99.99";

const USAGE = `Usage: npm run soak -- [flags]

Flags:
  --seconds N                 run time in seconds, 5 to 3600 (default 60)
  --concurrency N             workers sending valid admissions on kept-alive connections (default 8)
  --rate N                    valid admissions per second that those workers send together, at
                              most; 0 sends as fast as the server answers (default 200)
  --rotate-seconds N          time between serving certificate renewals (default 10)
  --max-rss-mb N              allowed maximum RSS of the server, in MiB (default 512)
  --server-heap-mb N          run the server with --max-old-space-size=N, as a container memory
                              limit would bound the heap (default: Node.js decides)
  --max-heap-growth-mb N      allowed growth of the server's heap after a full garbage
                              collection, from the start to the end of the run, in MiB
                              (default 16)
  --max-loop-delay-p99-ms N   allowed p99 event-loop delay of the server, in ms (default 100)
  --built                     run dist/src/cli/main.js (npm run build first) instead of the
                              TypeScript sources through tsx
  --json FILE                 also write the figures to FILE
  --help                      print this text
`;

interface SoakOptions {
  readonly seconds: number;
  readonly concurrency: number;
  readonly rate: number;
  readonly rotateSeconds: number;
  readonly maxRssMb: number;
  readonly serverHeapMb?: number;
  readonly maxHeapGrowthMb: number;
  readonly maxLoopDelayP99Ms: number;
  readonly built: boolean;
  readonly jsonPath?: string;
}

function readOptions(argv: string[]): SoakOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: "string", default: "60" },
      concurrency: { type: "string", default: "8" },
      rate: { type: "string", default: "200" },
      "rotate-seconds": { type: "string", default: "10" },
      "max-rss-mb": { type: "string", default: "512" },
      "server-heap-mb": { type: "string" },
      "max-heap-growth-mb": { type: "string", default: "16" },
      "max-loop-delay-p99-ms": { type: "string", default: "100" },
      built: { type: "boolean", default: false },
      json: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    return undefined;
  }
  return {
    seconds: readNumber("seconds", values.seconds, 5, 3_600),
    concurrency: readNumber("concurrency", values.concurrency, 1, 64),
    rate: readNumber("rate", values.rate, 0),
    rotateSeconds: readNumber("rotate-seconds", values["rotate-seconds"], 1),
    maxRssMb: readNumber("max-rss-mb", values["max-rss-mb"], 1),
    serverHeapMb:
      values["server-heap-mb"] === undefined
        ? undefined
        : readNumber("server-heap-mb", values["server-heap-mb"], 16),
    maxHeapGrowthMb: readNumber(
      "max-heap-growth-mb",
      values["max-heap-growth-mb"],
      0,
    ),
    maxLoopDelayP99Ms: readNumber(
      "max-loop-delay-p99-ms",
      values["max-loop-delay-p99-ms"],
      1,
    ),
    built: values.built,
    jsonPath: values.json,
  };
}

function readNumber(
  name: string,
  text: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new Error(
      `invalid --${name} ${JSON.stringify(text)}: expected a number from ${min} to ${max}`,
    );
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Serving certificate in a Secret-style folder.

/**
 * A folder laid out like a mounted Secret: tls.crt and tls.key are symlinks through `..data`,
 * which each renewal points at a new timestamped folder with one atomic rename.
 */
class SecretFolder {
  #generation = 0;
  latestFingerprint = "";

  constructor(readonly path: string) {}

  async publish(pair: IssuedPair): Promise<void> {
    this.#generation += 1;
    const folder = `..soak_${String(this.#generation).padStart(4, "0")}`;
    await mkdir(join(this.path, folder));
    await writeFile(join(this.path, folder, "tls.crt"), pair.cert);
    await writeFile(join(this.path, folder, "tls.key"), pair.key);
    await symlink(folder, join(this.path, "..data_tmp"));
    await rename(join(this.path, "..data_tmp"), join(this.path, "..data"));
    if (this.#generation === 1) {
      await symlink("..data/tls.crt", join(this.path, "tls.crt"));
      await symlink("..data/tls.key", join(this.path, "tls.key"));
    }
    this.latestFingerprint = new X509Certificate(pair.cert).fingerprint256;
  }
}

// ---------------------------------------------------------------------------------------------
// Loopback CloudHSM v2 endpoint.

type AwsMode = "ok" | "throttling" | "internal-failure" | "hang" | "flap";

interface FakeAws {
  readonly url: string;
  mode: AwsMode;
  /** The ACTIVE addresses served in "ok" mode. */
  ips: readonly string[];
  readonly calls: Map<string, number>;
  close(): Promise<void>;
}

/**
 * Serves DescribeClusters in the AWS JSON 1.1 protocol. "flap" alternates between the two
 * address sets on every call, and "hang" keeps each request open until the client gives up.
 */
async function startFakeAws(): Promise<FakeAws> {
  const hungResponses = new Set<ServerResponse>();
  let flapCount = 0;
  const state: FakeAws = {
    url: "",
    mode: "ok",
    ips: FIRST_IPS,
    calls: new Map(),
    close: async () => undefined,
  };

  const sendJson = (
    response: ServerResponse,
    status: number,
    body: unknown,
    errorType?: string,
  ): void => {
    const text = JSON.stringify(body);
    response.writeHead(status, {
      "content-type": "application/x-amz-json-1.1",
      "content-length": Buffer.byteLength(text),
      "x-amzn-requestid": randomUUID(),
      ...(errorType ? { "x-amzn-errortype": errorType } : {}),
    });
    response.end(text);
  };

  const answer = (response: ServerResponse): void => {
    const mode = state.mode;
    state.calls.set(mode, (state.calls.get(mode) ?? 0) + 1);
    switch (mode) {
      case "throttling":
        sendJson(
          response,
          400,
          { __type: "ThrottlingException", message: "Rate exceeded" },
          "ThrottlingException",
        );
        return;
      case "internal-failure":
        sendJson(
          response,
          500,
          {
            __type: "CloudHsmInternalFailureException",
            message: "internal failure",
          },
          "CloudHsmInternalFailureException",
        );
        return;
      case "hang":
        hungResponses.add(response);
        response.on("close", () => hungResponses.delete(response));
        return;
      case "flap":
      case "ok": {
        flapCount += 1;
        const ips =
          mode === "flap"
            ? flapCount % 2 === 0
              ? FIRST_IPS
              : SECOND_IPS
            : state.ips;
        sendJson(response, 200, describeClustersBody(ips));
        return;
      }
    }
  };

  const server = createServer(
    (request: IncomingMessage, response: ServerResponse) => {
      request.resume();
      request.on("end", () => answer(response));
    },
  );
  await new Promise<void>((resolveListen) =>
    server.listen(0, "127.0.0.1", resolveListen),
  );
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}`,
    async close() {
      for (const response of hungResponses) {
        response.destroy();
      }
      const closed = new Promise<void>((resolveClose) =>
        server.close(() => resolveClose()),
      );
      server.closeAllConnections();
      await closed;
    },
  });
}

function describeClustersBody(ips: readonly string[]): unknown {
  const hsms = ips.map((ip, index) => ({
    HsmId: `hsm-soaksoaks${index + 2}`,
    ClusterId: CLUSTER_ID,
    AvailabilityZone: "us-east-1a",
    EniIp: ip,
    State: "ACTIVE",
  }));
  hsms.push({
    HsmId: "hsm-soaksoaksz",
    ClusterId: CLUSTER_ID,
    AvailabilityZone: "us-east-1b",
    EniIp: DEGRADED_IP,
    State: "DEGRADED",
  });
  return { Clusters: [{ ClusterId: CLUSTER_ID, State: "ACTIVE", Hsms: hsms }] };
}

function sortedIps(ips: readonly string[]): string {
  const toNumber = (ip: string) =>
    ip.split(".").reduce((total, octet) => total * 256 + Number(octet), 0);
  return [...ips]
    .sort((left, right) => toNumber(left) - toNumber(right))
    .join(",");
}

// ---------------------------------------------------------------------------------------------
// The server under test.

interface ServerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly exit: Promise<number | null>;
  /** Log lines at level error or above. */
  readonly errorLines: string[];
  readonly logLines: () => number;
}

async function startServer(
  options: SoakOptions,
  secret: SecretFolder,
  awsUrl: string,
  probeFile: string,
): Promise<ServerProcess> {
  // Paths resolve against the working directory, which npm sets to the repository root.
  const entryPoint = options.built ? "dist/src/cli/main.js" : "src/cli/main.ts";
  if (!existsSync(resolve(entryPoint))) {
    throw new Error(
      `${entryPoint} not found: run the soak from the repository root${options.built ? " after npm run build" : ""}`,
    );
  }
  // --expose-gc lets the probe run a full collection on request. Nothing else calls it.
  const preload = options.built
    ? ["--expose-gc", "--import", resolve("dist/scripts/lib/runtime-probe.js")]
    : [
        "--expose-gc",
        "--import",
        "tsx",
        "--import",
        resolve("scripts/lib/runtime-probe.ts"),
      ];
  const child = spawn(
    process.execPath,
    [
      ...preload,
      ...(options.serverHeapMb === undefined
        ? []
        : [`--max-old-space-size=${options.serverHeapMb}`]),
      resolve(entryPoint),
      "serve",
      "--host=127.0.0.1",
      "--port=0",
      "--metrics-port=0",
      `--tls-cert=${join(secret.path, "tls.crt")}`,
      `--tls-key=${join(secret.path, "tls.key")}`,
      `--cluster-id=${CLUSTER_ID}`,
      `--region=${REGION}`,
      `--aws-endpoint=${awsUrl}`,
      "--aws-timeout=1",
      "--refresh-interval=1",
      "--shutdown-delay=0.5",
      "--shutdown-timeout=10",
      "--log-level=info",
    ],
    {
      stdio: ["ignore", "pipe", "inherit"],
      // Only what the server needs: static AWS credentials and no way to reach IMDS, and no
      // KUBECONFIG or in-cluster variables, so no Kubernetes API is contacted.
      env: {
        PATH: process.env.PATH,
        AWS_ACCESS_KEY_ID: "AKIDSOAKLOOPBACK",
        AWS_SECRET_ACCESS_KEY: "soak-loopback-secret",
        AWS_EC2_METADATA_DISABLED: "true",
        SOAK_PROBE_FILE: probeFile,
      },
    },
  );
  const exit = new Promise<number | null>((resolveExit) =>
    child.once("exit", (code) => resolveExit(code)),
  );
  const errorLines: string[] = [];
  let lines = 0;
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(
      () => reject(new Error("the server did not start within 30 s")),
      30_000,
    );
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with status ${code} during start`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      lines += 1;
      let entry: { level?: number; msg?: string; port?: number };
      try {
        entry = JSON.parse(line);
      } catch {
        errorLines.push(`not JSON: ${line.slice(0, 300)}`);
        return;
      }
      if ((entry.level ?? 0) >= 50) {
        errorLines.push(line.slice(0, 500));
      }
      if (entry.msg === "cloudhsm-webhook serving") {
        clearTimeout(timer);
        resolvePort(entry.port!);
      }
    });
  });
  return { child, port, exit, errorLines, logLines: () => lines };
}

async function readRssKb(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Workload.

interface Counters {
  validSent: number;
  validFailed: number;
  serverErrors: number;
  badSent: number;
  badUnexpected: number;
  newConnections: number;
  bigPods: number;
  ipSets: Map<string, number>;
  failures: string[];
  fingerprints: Set<string>;
}

function recordFailure(counters: Counters, message: string): void {
  counters.validFailed += 1;
  // The report lists the first 20, and the count includes them all.
  if (counters.failures.length < 20) {
    counters.failures.push(message);
  }
}

function soakPod(big: boolean): Record<string, any> {
  const pod: Record<string, any> = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: "payments-5f7c9d-",
      namespace: "payments",
      labels: { app: "payments" },
      annotations: { "cloudhsm/inject": "true" },
    },
    spec: {
      initContainers: [{ name: "setup", image: "busybox:1.36" }],
      containers: [
        {
          name: "app",
          image: "registry.example.com/payments:1.0",
          env: [
            { name: "MODE", value: "prod" },
            { name: "HSM_ENDPOINT", value: "$(CLOUDHSM_HSM_IP):2223" },
          ],
        },
        { name: "proxy", image: "registry.example.com/proxy:1.0" },
      ],
    },
  };
  if (big) {
    pod.metadata.annotations["example.com/blob"] = "b".repeat(512 * 1024);
  }
  return pod;
}

/** Describes what is wrong with the response to a valid admission, or returns undefined. */
function checkAdmission(
  pod: Record<string, any>,
  status: number,
  body: string,
  counters: Counters,
): string | undefined {
  if (status >= 500) {
    counters.serverErrors += 1;
  }
  if (status !== 200) {
    return `HTTP ${status}: ${body.slice(0, 200)}`;
  }

  const response = JSON.parse(body).response;
  if (response?.allowed !== true || response.patchType !== "JSONPatch") {
    return `not admitted with a patch: ${JSON.stringify(response?.status ?? response).slice(0, 300)}`;
  }
  const patch = JSON.parse(
    Buffer.from(response.patch, "base64").toString("utf8"),
  ) as Operation[];
  const patched = structuredClone(pod);
  const errors = applyPatch(patched, patch).filter((error) => error !== null);
  if (errors.length > 0) {
    return `patch does not apply: ${String(errors[0])}`;
  }

  const ips = patched.metadata.annotations["cloudhsm/injected-ips"] as string;
  if (ips !== sortedIps(FIRST_IPS) && ips !== sortedIps(SECOND_IPS)) {
    return `unexpected address set ${ips}`;
  }
  counters.ipSets.set(ips, (counters.ipSets.get(ips) ?? 0) + 1);

  const config = JSON.parse(patched.metadata.annotations["cloudhsm/config"]);
  const servers = config.clusters[0].cluster.servers
    .map((server: { hostname: string }) => server.hostname)
    .join(",");
  if (servers !== ips) {
    return `config lists ${servers}, annotation ${ips}`;
  }

  for (const container of [
    ...patched.spec.initContainers,
    ...patched.spec.containers,
  ]) {
    const env = new Map<string, unknown>(
      container.env.map((entry: { name: string; value: unknown }) => [
        entry.name,
        entry.value,
      ]),
    );
    if (
      env.get("CLOUDHSM_HSM_IPS") !== ips ||
      env.get("CLOUDHSM_HSM_IP") !== ips.split(",")[0]
    ) {
      return `container ${container.name} has ${String(env.get("CLOUDHSM_HSM_IPS"))}, annotation ${ips}`;
    }
  }
  return undefined;
}

/**
 * Spaces requests evenly, at most `perSecond` across all workers that share it. 0 means no limit.
 */
class Pacer {
  #next = 0;

  constructor(private readonly perSecond: number) {}

  async wait(): Promise<void> {
    if (this.perSecond === 0) {
      return;
    }
    const now = Date.now();
    const slot = Math.max(this.#next, now);
    this.#next = slot + 1_000 / this.perSecond;
    await sleep(slot - now);
  }
}

async function validWorker(
  target: WebhookTarget,
  counters: Counters,
  pacer: Pacer,
  running: () => boolean,
): Promise<void> {
  for (let index = 0; running() && index < 10_000_000; index += 1) {
    await pacer.wait();
    if (!running()) {
      return;
    }
    const big = index % 50 === 49;
    const pod = soakPod(big);
    counters.validSent += 1;
    if (big) {
      counters.bigPods += 1;
    }
    try {
      const reply = await callWebhook(target, "/mutate", {
        body: JSON.stringify(podCreateReview(pod, { namespace: "payments" })),
        timeoutMs: 10_000,
      });
      const problem = checkAdmission(pod, reply.status, reply.body, counters);
      if (problem) {
        recordFailure(counters, problem);
      }
    } catch (error) {
      recordFailure(counters, `request failed: ${(error as Error).message}`);
    }
  }
}

/** Connects anew for each request, as after a renewal, and records the served certificate. */
async function newConnectionWorker(
  target: WebhookTarget,
  counters: Counters,
  running: () => boolean,
): Promise<void> {
  for (let index = 0; running() && index < 1_000_000; index += 1) {
    counters.newConnections += 1;
    try {
      counters.fingerprints.add(await servedFingerprint(target));
      const pod = soakPod(false);
      counters.validSent += 1;
      const reply = await callWebhook(
        { ...target, agent: undefined },
        "/mutate",
        {
          body: JSON.stringify(podCreateReview(pod, { namespace: "payments" })),
          timeoutMs: 10_000,
        },
      );
      const problem = checkAdmission(pod, reply.status, reply.body, counters);
      if (problem) {
        recordFailure(counters, problem);
      }
    } catch (error) {
      recordFailure(
        counters,
        `new connection failed: ${(error as Error).message}`,
      );
    }
    await sleep(20);
  }
}

function servedFingerprint(target: WebhookTarget): Promise<string> {
  return new Promise((resolveFingerprint, reject) => {
    const socket = connectTls(
      {
        host: "127.0.0.1",
        port: target.port,
        servername: target.serverName,
        ca: target.ca,
      },
      () => {
        const fingerprint = socket.getPeerCertificate().fingerprint256;
        socket.end();
        resolveFingerprint(fingerprint);
      },
    );
    socket.setTimeout(5_000, () =>
      socket.destroy(new Error("TLS handshake timed out")),
    );
    socket.once("error", reject);
  });
}

interface BadRequest {
  readonly name: string;
  readonly status: number;
  send(target: WebhookTarget): Promise<number>;
}

function badBody(
  name: string,
  status: number,
  body: string,
  contentType?: string,
  method?: string,
): BadRequest {
  return {
    name,
    status,
    send: async (target) =>
      (await callWebhook(target, "/mutate", { body, contentType, method }))
        .status,
  };
}

const BAD_REQUESTS: readonly BadRequest[] = [
  badBody("invalid JSON", 400, "{not json"),
  badBody("empty body", 400, ""),
  badBody("JSON array", 400, "[]"),
  badBody("empty object", 400, "{}"),
  badBody(
    "no uid",
    400,
    '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}',
  ),
  badBody(
    "wrong kind",
    400,
    '{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"x"}}',
  ),
  badBody(
    "nested apiVersion",
    400,
    `{"apiVersion":${"[".repeat(5_000)}${"]".repeat(5_000)}}`,
  ),
  badBody("form body", 415, "a=1", "application/x-www-form-urlencoded"),
  badBody("PUT", 404, "{}", "application/json", "PUT"),
  {
    name: "GET /mutate",
    status: 404,
    send: async (target) => (await callWebhook(target, "/mutate")).status,
  },
  {
    name: "disconnect mid-body",
    status: 0,
    send: (target) =>
      new Promise((resolveSend) => {
        const socket = connectTls(
          {
            host: "127.0.0.1",
            port: target.port,
            servername: target.serverName,
            ca: target.ca,
          },
          () => {
            socket.write(
              'POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"apiVersion":',
            );
            socket.destroy();
            resolveSend(0);
          },
        );
        socket.once("error", () => resolveSend(0));
      }),
  },
];

async function badRequestWorker(
  target: WebhookTarget,
  counters: Counters,
  running: () => boolean,
): Promise<void> {
  for (let index = 0; running() && index < 1_000_000; index += 1) {
    const bad = BAD_REQUESTS[index % BAD_REQUESTS.length]!;
    counters.badSent += 1;
    try {
      const status = await bad.send({ ...target, agent: undefined });
      if (status >= 500) {
        counters.serverErrors += 1;
      }
      if (status !== bad.status) {
        counters.badUnexpected += 1;
        counters.failures.push(
          `${bad.name}: HTTP ${status}, expected ${bad.status}`,
        );
      }
    } catch (error) {
      counters.badUnexpected += 1;
      counters.failures.push(`${bad.name}: ${(error as Error).message}`);
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------
// Phases and report.

/** CloudHSM endpoint behaviour for each part of the run, from a fraction of the run on. */
const AWS_PHASES: ReadonlyArray<{
  readonly from: number;
  readonly mode: AwsMode;
  readonly ips?: readonly string[];
}> = [
  { from: 0, mode: "ok", ips: FIRST_IPS },
  { from: 0.15, mode: "throttling" },
  { from: 0.25, mode: "hang" },
  { from: 0.35, mode: "ok", ips: SECOND_IPS },
  { from: 0.45, mode: "flap" },
  { from: 0.6, mode: "internal-failure" },
  { from: 0.7, mode: "ok", ips: FIRST_IPS },
];

/** Returns the index of the last phase that has started at `elapsed`, a fraction of the run. */
function currentPhase(elapsed: number): number {
  let current = 0;
  AWS_PHASES.forEach((entry, index) => {
    if (elapsed >= entry.from) {
      current = index;
    }
  });
  return current;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolveSleep) => setTimeout(resolveSleep, ms));
}

function maxOf(values: readonly number[]): number {
  return values.reduce((max, value) => Math.max(max, value), 0);
}

function mib(kb: number): number {
  return Math.round((kb / 1024) * 10) / 10;
}

async function main(): Promise<number> {
  const options = readOptions(process.argv.slice(2));
  if (options === undefined) {
    process.stdout.write(USAGE);
    return 0;
  }
  const folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-soak-"));
  const secret = new SecretFolder(join(folder, "secret"));
  await mkdir(secret.path);
  const probeFile = join(folder, "runtime-probe.json");
  let aws: FakeAws | undefined;
  let server: ServerProcess | undefined;
  let agent: Agent | undefined;
  try {
    const ca: CertificateAuthority = await createCertificateAuthority(
      "cloudhsm-webhook soak CA",
    );
    await secret.publish(await ca.issue([SERVICE_DNS_NAME]));
    aws = await startFakeAws();
    server = await startServer(options, secret, aws.url, probeFile);
    agent = loopbackAgent();
    const target: WebhookTarget = {
      port: server.port,
      ca: ca.cert,
      serverName: SERVICE_DNS_NAME,
      agent,
    };
    await waitForReady(target);
    const heapAtStart = await collectGarbage(probeFile, 1);
    // Start-up work is not what this run measures.
    await writeFile(`${probeFile}.reset`, "");

    const counters: Counters = {
      validSent: 0,
      validFailed: 0,
      serverErrors: 0,
      badSent: 0,
      badUnexpected: 0,
      newConnections: 0,
      bigPods: 0,
      ipSets: new Map(),
      failures: [],
      fingerprints: new Set(),
    };
    const durationMs = options.seconds * 1_000;
    const startedAt = Date.now();
    const deadline = startedAt + durationMs;
    const running = () => Date.now() < deadline;
    const rssKb: number[] = [];
    const heapUsedMiB: number[] = [];
    let rotations = 0;

    const pacer = new Pacer(options.rate);
    const workers = [
      ...Array.from({ length: options.concurrency }, () =>
        validWorker(target, counters, pacer, running),
      ),
      newConnectionWorker(target, counters, running),
      badRequestWorker(target, counters, running),
    ];
    const pid = server.child.pid!;
    let nextRotation = startedAt + options.rotateSeconds * 1_000;
    let phase = -1;
    for (let tick = 0; running() && tick < 100_000; tick += 1) {
      const elapsed = (Date.now() - startedAt) / durationMs;
      const current = currentPhase(elapsed);
      if (current !== phase) {
        phase = current;
        const entry = AWS_PHASES[current]!;
        aws.mode = entry.mode;
        if (entry.ips) {
          aws.ips = entry.ips;
        }
        process.stderr.write(
          `soak: ${Math.round((Date.now() - startedAt) / 1000)} s: CloudHSM endpoint ${entry.mode}\n`,
        );
      }
      if (Date.now() >= nextRotation) {
        await secret.publish(await ca.issue([SERVICE_DNS_NAME]));
        rotations += 1;
        nextRotation += options.rotateSeconds * 1_000;
      }
      const rss = await readRssKb(pid);
      if (rss !== undefined) {
        rssKb.push(rss);
      }
      const snapshot = await readProbe(probeFile);
      if (snapshot !== undefined) {
        heapUsedMiB.push(snapshot.heapUsedMiB);
      }
      await sleep(1_000);
    }
    await Promise.all(workers);
    const elapsedSeconds = (Date.now() - startedAt) / 1000;

    // A connection made now must get the last renewed certificate.
    let latestServed = false;
    for (let attempt = 0; attempt < 40 && !latestServed; attempt += 1) {
      latestServed =
        (await servedFingerprint(target)) === secret.latestFingerprint;
      if (!latestServed) {
        await sleep(250);
      }
    }

    // The probe writes once a second, so this waits for a write after the run ended.
    await sleep(1_200);
    const runtime = await readProbe(probeFile);
    const heapAtEnd = await collectGarbage(probeFile, 2);
    const heapGrowthMiB =
      heapAtStart !== undefined && heapAtEnd !== undefined
        ? Math.round((heapAtEnd - heapAtStart) * 10) / 10
        : undefined;
    agent.destroy();
    server.child.kill("SIGTERM");
    const exitCode = await Promise.race([
      server.exit,
      sleep(15_000).then(() => "timeout" as const),
    ]);

    const maxRssKb = maxOf(rssKb);
    const figures = {
      date: new Date().toISOString(),
      command: `npm run soak -- ${process.argv.slice(2).join(" ")}`.trim(),
      machine: {
        cores: cpus().length,
        cpuModel: cpus()[0]?.model ?? "unknown",
        memoryMiB: Math.round(totalmem() / 1024 / 1024),
        os: `${platform()} ${release()}`,
        node: process.version,
        server: options.built ? "dist (built)" : "sources through tsx",
        serverHeapMb: options.serverHeapMb ?? "Node.js default",
      },
      durationSeconds: Math.round(elapsedSeconds * 10) / 10,
      concurrency: options.concurrency,
      ratePerSecond: options.rate,
      validAdmissions: counters.validSent,
      validAdmissionsPerSecond: Math.round(counters.validSent / elapsedSeconds),
      validFailed: counters.validFailed,
      bigPods: counters.bigPods,
      serverErrors: counters.serverErrors,
      badRequests: counters.badSent,
      badUnexpected: counters.badUnexpected,
      ipSets: Object.fromEntries(counters.ipSets),
      certificateRenewals: rotations,
      certificatesSeen: counters.fingerprints.size,
      latestCertificateServed: latestServed,
      awsCalls: Object.fromEntries(aws.calls),
      serverLogLines: server.logLines(),
      serverErrorLines: server.errorLines.length,
      rssMiB: {
        start: mib(rssKb[0] ?? 0),
        end: mib(rssKb.at(-1) ?? 0),
        max: mib(maxRssKb),
        samples: rssKb.map(mib),
      },
      heapUsedMiB: {
        start: heapUsedMiB[0] ?? 0,
        end: heapUsedMiB.at(-1) ?? 0,
        max: maxOf(heapUsedMiB),
        afterFullGcStart: heapAtStart,
        afterFullGcEnd: heapAtEnd,
        samples: heapUsedMiB,
      },
      loopDelayMs: runtime && {
        samples: runtime.samples,
        p50: runtime.p50Ms,
        p99: runtime.p99Ms,
        max: runtime.maxMs,
      },
      exitStatusAfterSigterm: exitCode,
    };

    const checks: Array<[string, boolean]> = [
      ["no valid admission failed", counters.validFailed === 0],
      ["no 5xx response", counters.serverErrors === 0],
      [
        "every bad request got its expected status",
        counters.badUnexpected === 0,
      ],
      ["the server logged no error", server.errorLines.length === 0],
      ["both address sets were handed out", counters.ipSets.size === 2],
      [
        "renewed certificates were served",
        rotations === 0 || (latestServed && counters.fingerprints.size >= 2),
      ],
      [
        `RSS stayed at most ${options.maxRssMb} MiB`,
        maxRssKb <= options.maxRssMb * 1024,
      ],
      [
        `heap after a full GC grew at most ${options.maxHeapGrowthMb} MiB`,
        heapGrowthMiB !== undefined && heapGrowthMiB <= options.maxHeapGrowthMb,
      ],
      [
        `event-loop delay p99 at most ${options.maxLoopDelayP99Ms} ms`,
        runtime !== undefined && runtime.p99Ms <= options.maxLoopDelayP99Ms,
      ],
      ["SIGTERM ended the server with status 0", exitCode === 0],
    ];

    process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
    for (const failure of counters.failures.slice(0, 20)) {
      process.stdout.write(`failure: ${failure}\n`);
    }
    for (const line of server.errorLines.slice(0, 20)) {
      process.stdout.write(`server error: ${line}\n`);
    }
    for (const [name, passed] of checks) {
      process.stdout.write(`${passed ? "PASS" : "FAIL"}  ${name}\n`);
    }
    if (options.jsonPath) {
      await writeFile(
        options.jsonPath,
        `${JSON.stringify({ ...figures, checks: Object.fromEntries(checks) }, null, 2)}\n`,
      );
    }
    return checks.every(([, passed]) => passed) ? 0 : 1;
  } finally {
    agent?.destroy();
    if (server && server.child.exitCode === null) {
      server.child.kill("SIGKILL");
    }
    await aws?.close();
    await rm(folder, { recursive: true, force: true });
  }
}

async function waitForReady(target: WebhookTarget): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt += 1) {
    try {
      if ((await callWebhook(target, "/readyz")).status === 200) {
        return;
      }
    } catch {
      // The listener may not accept connections yet.
    }
    await sleep(100);
  }
  throw new Error("the server did not become ready within 20 s");
}

/**
 * Asks the probe for a full garbage collection and returns the heap in use after it, in MiB, or
 * undefined when the probe does not respond within 5 seconds.
 */
async function collectGarbage(
  probeFile: string,
  expectedRuns: number,
): Promise<number | undefined> {
  await writeFile(`${probeFile}.gc`, "");
  for (let attempt = 0; attempt < 50; attempt += 1) {
    await sleep(100);
    const snapshot = await readProbe(probeFile);
    if (snapshot !== undefined && snapshot.gcRuns >= expectedRuns) {
      return snapshot.heapAfterGcMiB;
    }
  }
  return undefined;
}

async function readProbe(path: string): Promise<RuntimeSnapshot | undefined> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as RuntimeSnapshot;
  } catch {
    return undefined;
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`soak: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
