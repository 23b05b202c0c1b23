// Hostile and odd input against the real server on loopback TLS: malformed HTTP and JSON,
// slow and vanishing clients, valid but unusual pods, prototype keys, and secrets in requests.
// test/webhook.test.ts covers the common malformed bodies (invalid JSON, empty body, an array,
// {}, missing request or uid, wrong apiVersion, 413, 415); this file adds the rest.
import { readFile } from "node:fs/promises";
import { request } from "node:https";
import { connect as connectTcp } from "node:net";
import { join } from "node:path";
import { connect as connectTls, type TLSSocket } from "node:tls";
import { gzipSync } from "node:zlib";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { chainDecider } from "../src/admission/decide.js";
import type { AdmissionHandler } from "../src/admission/handler.js";
import { MAX_CONTAINERS } from "../src/injection/mutate.js";
import { buildApp, BODY_LIMIT_BYTES } from "../src/server/app.js";
import {
  callWebhook,
  podCreateReview,
  type HttpReply,
} from "../scripts/lib/admission-client.js";
import { SERVICE_DNS_NAME } from "../scripts/lib/pki.js";
import { applyStrict, decodePatch } from "./support/apply-patch.js";
import { validatePod } from "./support/pod-schema.js";
import {
  annotatedPod,
  startHarness,
  staticClusters,
  TEST_CLUSTER_ID,
  TEST_REGION,
  type Harness,
} from "./support/webhook-harness.js";

/** Pods in this namespace opt in through the namespace, whatever their own annotations set. */
const OPTED_IN_NAMESPACE = "opted-in";

let harness: Harness;

beforeAll(async () => {
  const decide = chainDecider({
    reader: {
      read: async (namespace) => {
        const annotations: Record<string, string> = {};
        if (namespace === OPTED_IN_NAMESPACE) {
          annotations["cloudhsm/inject"] = "true";
        }
        return {
          owners: [],
          namespace: { kind: "Namespace", name: namespace, annotations },
        };
      },
    },
    defaults: { clusterId: TEST_CLUSTER_ID, region: TEST_REGION },
    onLookupError: "allow",
    logger: pino({ level: "silent" }),
  });
  harness = await startHarness({ staticClusters: staticClusters(), decide });
});

afterAll(async () => {
  await harness.close();
});

function post(body: string | Buffer, contentType?: string): Promise<HttpReply> {
  return callWebhook(harness.target, "/mutate", { body, contentType });
}

/** Wraps fields in an AdmissionReview envelope, as JSON text. */
function reviewText(request: Record<string, unknown>): string {
  return JSON.stringify({
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request,
  });
}

function createReviewText(pod: unknown, namespace = "default"): string {
  return JSON.stringify(podCreateReview(pod, { namespace }));
}

/** Sends a review and returns its AdmissionResponse. Any HTTP status but 200 fails the test. */
async function respond(body: string | Buffer): Promise<Record<string, any>> {
  const reply = await post(body);
  expect(reply.status).toBe(200);
  return JSON.parse(reply.body).response;
}

/** Admits `pod` in the opted-in namespace and returns the response and the patched pod. */
async function admitOptedIn(pod: Record<string, any>) {
  const response = await respond(createReviewText(pod, OPTED_IN_NAMESPACE));
  const patch = response.patch === undefined ? [] : decodePatch(response);
  return { response, patch, pod: applyStrict(pod, patch) };
}

function envNames(container: Record<string, any>): string[] {
  return (container.env ?? []).map((entry: any) => entry.name);
}

function openTls(): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connectTls(
      {
        host: "127.0.0.1",
        port: harness.webhook.port,
        servername: SERVICE_DNS_NAME,
        ca: harness.ca.cert,
      },
      () => resolve(socket),
    );
    socket.once("error", reject);
  });
}

/**
 * Writes raw bytes on a new TLS connection and collects what comes back until the server closes
 * the connection or `waitMs` passes. `halfClose` ends the client's side after the write.
 */
async function exchangeRaw(
  payload: string | Buffer,
  options: { halfClose?: boolean; waitMs?: number } = {},
): Promise<{ text: string; closed: boolean }> {
  const socket = await openTls();
  return new Promise((resolve) => {
    let text = "";
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ text, closed: false });
    }, options.waitMs ?? 3_000);
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
    if (options.halfClose) {
      socket.end(payload);
    } else {
      socket.write(payload);
    }
  });
}

/** Posts with extra request headers, which callWebhook does not send. */
function postWithHeaders(
  body: string,
  headers: Record<string, string>,
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        host: "127.0.0.1",
        port: harness.webhook.port,
        path: "/mutate",
        method: "POST",
        servername: SERVICE_DNS_NAME,
        ca: harness.ca.cert,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          ...headers,
        },
        timeout: 10_000,
      },
      (incoming) => {
        const chunks: Buffer[] = [];
        incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
        incoming.on("end", () =>
          resolve({
            status: incoming.statusCode ?? 0,
            headers: incoming.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

/** Builds a list nested `depth` levels deep, as JSON text, without recursion. */
function nestedListText(depth: number): string {
  return "[".repeat(depth) + "]".repeat(depth);
}

describe("malformed requests", () => {
  test.each([
    [
      "a wrong kind",
      JSON.stringify({
        apiVersion: "admission.k8s.io/v1",
        kind: "ConversionReview",
        request: { uid: "u" },
      }),
      /unsupported kind "ConversionReview": expected AdmissionReview/,
    ],
    ["JSON null", "null", /must be a JSON object/],
    ["a JSON number", "42", /must be a JSON object/],
    ["a JSON string", '"AdmissionReview"', /must be a JSON object/],
    ["a request list", reviewText([] as never), /no request object/],
    ["a null request", reviewText(null as never), /no request object/],
    ["an empty uid", reviewText({ uid: "" }), /no uid/],
    ["a numeric uid", reviewText({ uid: 42 }), /no uid/],
    [
      "a numeric apiVersion",
      '{"apiVersion":1,"kind":"AdmissionReview"}',
      /unsupported apiVersion 1/,
    ],
    [
      "a deeply nested apiVersion",
      `{"apiVersion":${nestedListText(10_000)}}`,
      /unsupported apiVersion \(a list\)/,
    ],
    [
      "a deeply nested kind",
      `{"apiVersion":"admission.k8s.io/v1","kind":${nestedListText(10_000)}}`,
      /unsupported kind \(a list\)/,
    ],
    [
      "invalid UTF-8 between tokens",
      Buffer.from([0x7b, 0xff, 0xfe, 0x7d]),
      /not valid JSON/,
    ],
    ["a gzip body", gzipSync(createReviewText(annotatedPod())), /not valid/],
  ])("%s gets 400 naming it", async (_name, body, message) => {
    const reply = await post(body);
    expect(reply.status).toBe(400);
    expect(JSON.parse(reply.body).message).toMatch(message);
  });

  test("long apiVersion is shortened in the message", async () => {
    const apiVersion = "v".repeat(1024 * 1024);
    const reply = await post(
      JSON.stringify({ apiVersion, kind: "AdmissionReview" }),
    );
    expect(reply.status).toBe(400);
    const { message } = JSON.parse(reply.body);
    expect(message).toMatch(/unsupported apiVersion "v+\.\.\. \(1048578/);
    expect(message.length).toBeLessThan(300);
    const longest = Math.max(
      ...harness
        .logText()
        .split("\n")
        .map((line) => line.length),
    );
    expect(longest).toBeLessThan(10_000);
  });

  test("invalid UTF-8 inside a string is admitted", async () => {
    const pod = annotatedPod({ annotations: { "example.com/note": "AAAA" } });
    const body = Buffer.from(createReviewText(pod));
    const at = body.indexOf("AAAA");
    body[at] = 0xff;
    body[at + 1] = 0xc0;
    const response = await respond(body);
    expect(response.allowed).toBe(true);
    expect(response.patchType).toBe("JSONPatch");
  });

  test("duplicate keys: the last one wins", async () => {
    const reply = await post(
      '{"apiVersion":"admission.k8s.io/v2","apiVersion":"admission.k8s.io/v1",' +
        '"kind":"AdmissionReview","request":{"uid":"first","uid":"second","operation":"DELETE"}}',
    );
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).response).toEqual({
      uid: "second",
      allowed: true,
    });
  });

  test("numbers out of range leave user fields alone", async () => {
    const pod = annotatedPod({
      spec: {
        containers: [{ name: "app", image: "registry.example.com/app:1" }],
        volumes: [{ name: "data", emptyDir: {}, huge: 0 }],
        futureCount: 0,
      },
    });
    // JSON.stringify cannot write these numbers, so they go into the text afterwards.
    const body = createReviewText(pod)
      .replace('"huge":0', '"huge":1e999')
      .replace(
        '"futureCount":0',
        '"futureCount":123456789012345678901234567890',
      );
    const response = await respond(body);
    expect(response.allowed).toBe(true);
    const paths = decodePatch(response).map((operation: any) => operation.path);
    expect(paths).toContain("/spec/volumes/1");
    expect(paths.filter((path) => path.startsWith("/spec/volumes/0"))).toEqual(
      [],
    );
    expect(paths.filter((path) => path.includes("futureCount"))).toEqual([]);
  });

  test.each([
    ["GET", "/mutate"],
    ["PUT", "/mutate"],
    ["DELETE", "/mutate"],
    ["GET", "/"],
    ["POST", "/mutate/extra"],
    ["GET", "/metrics"],
  ])("%s %s gets 404", async (method, path) => {
    const reply = await callWebhook(harness.target, path, {
      method,
      body: method === "GET" ? undefined : "{}",
    });
    expect(reply.status).toBe(404);
    expect(JSON.parse(reply.body).message).toContain(`${method}:${path}`);
  });

  test("charset parameter is accepted", async () => {
    const reply = await post(
      createReviewText(annotatedPod()),
      "application/json; charset=utf-8",
    );
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).response.allowed).toBe(true);
  });

  test("missing content type gets 415", async () => {
    const reply = await exchangeRaw(
      "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    expect(reply.text).toMatch(/^HTTP\/1\.1 415 /);
  });

  test("body just under the limit is accepted", async () => {
    const pod = annotatedPod();
    const envelope = createReviewText(pod).length;
    pod.metadata.annotations["example.com/blob"] = "y".repeat(
      BODY_LIMIT_BYTES - envelope - 1024,
    );
    const response = await respond(createReviewText(pod));
    expect(response.allowed).toBe(true);
    expect(response.patchType).toBe("JSONPatch");
  });

  test("body one byte over the limit gets 413", async () => {
    const reply = await post(" ".repeat(BODY_LIMIT_BYTES + 1));
    expect(reply.status).toBe(413);
  });

  test("chunked body over the limit gets 413", async () => {
    const reply = await new Promise<HttpReply>((resolve, reject) => {
      const outgoing = request(
        {
          host: "127.0.0.1",
          port: harness.webhook.port,
          path: "/mutate",
          method: "POST",
          servername: SERVICE_DNS_NAME,
          ca: harness.ca.cert,
          headers: {
            "content-type": "application/json",
            "transfer-encoding": "chunked",
          },
        },
        (incoming) => {
          const chunks: Buffer[] = [];
          incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
          incoming.on("end", () =>
            resolve({
              status: incoming.statusCode ?? 0,
              headers: incoming.headers,
              body: Buffer.concat(chunks).toString(),
            }),
          );
        },
      );
      // The server may close the connection once the limit is passed.
      outgoing.on("error", reject);
      const chunk = "x".repeat(1024 * 1024);
      outgoing.write('{"pad":"');
      for (let index = 0; index < 7; index += 1) {
        outgoing.write(chunk);
      }
      outgoing.end('"}');
    });
    expect(reply.status).toBe(413);
  });

  test.each([
    [
      "a body shorter than its Content-Length",
      'POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"apiVersion":',
    ],
    [
      "an invalid chunk size",
      "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    ],
    [
      "both Content-Length and chunked",
      "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
    [
      "a non-numeric Content-Length",
      "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
    ],
    ["binary garbage", Buffer.from([0, 1, 2, 0xff, 13, 10, 13, 10])],
  ])("%s gets 400 and a closed connection", async (_name, payload) => {
    const reply = await exchangeRaw(payload, { halfClose: true });
    expect(reply.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(reply.closed).toBe(true);
  });

  test("framing errors name the problem", async () => {
    const reply = await exchangeRaw(
      "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
      { halfClose: true },
    );
    const body = reply.text.slice(reply.text.indexOf("\r\n\r\n") + 4);
    expect(JSON.parse(body).message).toMatch(/chunk/i);
  });

  test("huge headers get 431", async () => {
    const reply = await exchangeRaw(
      `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ${"a".repeat(70_000)}\r\n\r\n`,
    );
    expect(reply.text).toMatch(/^HTTP\/1\.1 431 /);
  });

  test("client that leaves mid-body does no harm", async () => {
    const errorsBefore = harness.logs.filter((line) => line.level >= 50);
    for (let index = 0; index < 20; index += 1) {
      const socket = await openTls();
      socket.on("error", () => undefined);
      socket.write(
        'POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"apiVersion":',
      );
      socket.destroy();
    }
    const outcome = await harness.admit(annotatedPod());
    expect(outcome.response.allowed).toBe(true);
    const errorsAfter = harness.logs.filter((line) => line.level >= 50);
    expect(errorsAfter).toEqual(errorsBefore);
  });

  test("slow clients do not delay admissions", async () => {
    const slow: TLSSocket[] = [];
    try {
      for (let index = 0; index < 40; index += 1) {
        const headersOnly = await openTls();
        headersOnly.on("error", () => undefined);
        headersOnly.write("POST /mutate HTTP/1.1\r\nHost: x\r\n");
        const partialBody = await openTls();
        partialBody.on("error", () => undefined);
        partialBody.write(
          `POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{"pad":"${"x".repeat(100_000)}`,
        );
        slow.push(headersOnly, partialBody);
      }
      const startedAt = Date.now();
      const outcomes = await Promise.all(
        Array.from({ length: 20 }, () => harness.admit(annotatedPod())),
      );
      expect(outcomes.every((outcome) => outcome.response.allowed)).toBe(true);
      expect(Date.now() - startedAt).toBeLessThan(3_000);
    } finally {
      for (const socket of slow) {
        socket.destroy();
      }
    }
  });

  // A client that sends headers and part of a body must not hold the connection and up to
  // 6 MiB of buffered body with no time limit.
  test("unfinished body has a time limit", async () => {
    const [cert, key] = await Promise.all([
      readFile(join(harness.folder, "tls.crt"), "utf8"),
      readFile(join(harness.folder, "tls.key"), "utf8"),
    ]);
    const app = buildApp({
      handler: {} as AdmissionHandler,
      tls: { cert, key },
      readiness: { ready: () => true, draining: false },
      logger: pino({ level: "silent" }),
    });
    try {
      await app.ready();
      // kube-apiserver gives up on a webhook after at most 30 seconds.
      expect(app.server.requestTimeout).toBeGreaterThan(0);
      expect(app.server.requestTimeout).toBeLessThanOrEqual(30_000);
    } finally {
      await app.close();
    }
  });
});

describe("odd but valid objects", () => {
  test.each([
    ["spec missing", { metadata: {} }, /pod field spec is missing/],
    ["spec a string", { spec: "x" }, /pod field spec is missing or not/],
    [
      "containers an object",
      { spec: { containers: { app: {} } } },
      /spec\.containers must be a list/,
    ],
    [
      "containers without names",
      { spec: { containers: [{ image: "busybox:1.36" }] } },
      /spec\.containers needs a name/,
    ],
    [
      "a container that is a string",
      { spec: { containers: ["app"] } },
      /spec\.containers must be a list of container objects/,
    ],
    [
      "env an object",
      { spec: { containers: [{ name: "app", env: { A: "1" } }] } },
      /env of container "app" must be a list/,
    ],
    [
      "volumes a string",
      { spec: { containers: [{ name: "app" }], volumes: "x" } },
      /spec\.volumes must be a list/,
    ],
    [
      "metadata a string",
      { metadata: "x", spec: { containers: [{ name: "app" }] } },
      /metadata must be an object/,
    ],
  ])("%s is denied with a reason", async (_name, pod, reason) => {
    const { response, patch } = await admitOptedIn(pod);
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(400);
    expect(response.status.message).toMatch(reason);
    expect(patch).toEqual([]);
  });

  test("null metadata is replaced", async () => {
    const { response, pod } = await admitOptedIn({
      metadata: null,
      spec: { containers: [{ name: "app", image: "busybox:1.36" }] },
    });
    expect(response.allowed).toBe(true);
    expect(pod.metadata.labels["cloudhsm/injected"]).toBe("true");
    validatePod({ apiVersion: "v1", kind: "Pod", ...pod });
  });

  test("null annotations and labels are replaced", async () => {
    const { response, pod } = await admitOptedIn({
      metadata: { name: "odd", annotations: null, labels: null },
      spec: { containers: [{ name: "app", image: "busybox:1.36" }] },
    });
    expect(response.allowed).toBe(true);
    expect(pod.metadata.annotations["cloudhsm/injected-ips"]).toBe(
      "10.0.2.40,10.0.12.5",
    );
    expect(pod.metadata.labels).toEqual({ "cloudhsm/injected": "true" });
  });

  test.each([
    ["no object key", { operation: "CREATE", object: undefined }],
    ["no operation", { operation: undefined }],
    ["a lowercase operation", { operation: "create" }],
    ["the status subresource", { subResource: "status" }],
    ["no kind or resource", { kind: undefined, resource: undefined }],
    [
      "a DELETE with only oldObject",
      { operation: "DELETE", object: undefined, oldObject: annotatedPod() },
    ],
  ])("request with %s passes unpatched", async (_name, change) => {
    const body = podCreateReview(annotatedPod(), {
      namespace: OPTED_IN_NAMESPACE,
    });
    Object.assign(body.request as object, change);
    const response = await respond(JSON.stringify(body));
    expect(response.allowed).toBe(true);
    expect(response.patch).toBeUndefined();
  });

  test("10,000 levels in an unrelated field", async () => {
    const body = createReviewText(annotatedPod()).replace(
      '"spec":{',
      `"spec":{"futureField":${nestedListText(10_000)},`,
    );
    const response = await respond(body);
    expect(response.allowed).toBe(true);
    expect(response.patchType).toBe("JSONPatch");
    const health = await callWebhook(harness.target, "/healthz");
    expect(health.status).toBe(200);
  });

  test.each([
    ["an env entry", '{"name":"MODE"', '{"extra":DEEP,"name":"MODE"'],
    [
      "a volume",
      '"containers":[',
      '"volumes":[{"name":"v","x":DEEP}],"containers":[',
    ],
    [
      "an annotation",
      '"annotations":{',
      '"annotations":{"example.com/x":DEEP,',
    ],
  ])("10,000 levels in %s are denied", async (_name, anchor, replacement) => {
    const body = createReviewText(annotatedPod()).replace(
      anchor,
      replacement.replace("DEEP", nestedListText(10_000)),
    );
    const response = await respond(body);
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(400);
    expect(response.status.message).toMatch(
      /is nested more than 100 levels deep/,
    );
  });

  test("prototype keys stay plain data", async () => {
    const prototypeNames = Object.getOwnPropertyNames(Object.prototype).sort();
    const objectNames = Object.getOwnPropertyNames(Object).sort();
    const pod =
      '{"metadata":{"name":"proto",' +
      '"annotations":{"__proto__":"a","constructor":"b","prototype":"c","cloudhsm/inject":"true"},' +
      '"labels":{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}}}},' +
      '"spec":{"__proto__":{"polluted":"yes"},"containers":[{"name":"app","env":[' +
      '{"name":"__proto__","value":"x"},{"name":"constructor","value":"y"},{"name":"prototype","value":"z"}]}]}}';
    const body =
      '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",' +
      '"__proto__":{"polluted":"yes"},"request":{"__proto__":{"uid":"inherited","polluted":"yes"},' +
      `"uid":"proto-uid","operation":"CREATE","kind":{"group":"","version":"v1","kind":"Pod"},"object":${pod}}}`;
    const response = await respond(body);

    expect(response.uid).toBe("proto-uid");
    expect(response.allowed).toBe(true);
    const patched = applyStrict(JSON.parse(pod), decodePatch(response));
    const annotations = patched.metadata.annotations;
    expect(Object.getPrototypeOf(annotations)).toBe(Object.prototype);
    expect(Object.hasOwn(annotations, "__proto__")).toBe(true);
    expect(annotations.constructor).toBe("b");
    expect(annotations["cloudhsm/injected-ips"]).toBe("10.0.2.40,10.0.12.5");
    expect(envNames(patched.spec.containers[0])).toEqual([
      "__proto__",
      "constructor",
      "prototype",
      "CLOUDHSM_CLUSTER_ID",
      "CLOUDHSM_HSM_IPS",
      "CLOUDHSM_HSM_IP",
      "CLOUDHSM_CONFIG_FILE",
    ]);
    // The server runs in this process, so its prototypes are the ones checked here.
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(
      prototypeNames,
    );
    expect(Object.getOwnPropertyNames(Object).sort()).toEqual(objectNames);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype.constructor).toBe(Object);
    expect(Object.getPrototypeOf({})).toBe(Object.prototype);
  });

  test("thousands of env entries keep their order", async () => {
    const env = Array.from({ length: 3_000 }, (_, index) => ({
      name: `VAR_${index}`,
      value: `value-${index}`,
    }));
    const pod = annotatedPod({
      spec: {
        containers: ["app", "worker", "proxy"].map((name) => ({
          name,
          image: "registry.example.com/app:1",
          env,
        })),
      },
    });
    const startedAt = Date.now();
    const { response, pod: patched } = await admitOptedIn(pod);
    expect(Date.now() - startedAt).toBeLessThan(3_000);
    expect(response.allowed).toBe(true);
    for (const container of patched.spec.containers) {
      const names = envNames(container);
      expect(names).toHaveLength(3_004);
      expect(names.slice(-2)).toEqual([
        "CLOUDHSM_HSM_IP",
        "CLOUDHSM_CONFIG_FILE",
      ]);
      expect(container.env.slice(0, 3_000)).toEqual(env);
    }
  });

  // The CLOUDHSM_* variables are appended or replaced in place, so no user entry moves and the
  // patch does not grow with the env list.
  test("env-heavy pod gets a small patch", async () => {
    const env = Array.from({ length: 20_000 }, (_, index) => ({
      name: `VAR_${index}`,
      value: `value-${index}`,
    }));
    const body = createReviewText(
      annotatedPod({ spec: { containers: [{ name: "app", env }] } }),
    );
    const reply = await post(body);
    expect(reply.status).toBe(200);
    expect(reply.body.length).toBeLessThan(20_000);
  });

  test("pod at the container limit is injected", async () => {
    const pod = annotatedPod({
      spec: {
        containers: Array.from({ length: MAX_CONTAINERS }, (_, index) => ({
          name: `c${index}`,
          image: "busybox:1.36",
        })),
      },
    });
    const { response, pod: patched } = await admitOptedIn(pod);
    expect(response.allowed).toBe(true);
    expect(envNames(patched.spec.containers[MAX_CONTAINERS - 1])).toContain(
      "CLOUDHSM_HSM_IPS",
    );
  });

  test("pod over the container limit is denied", async () => {
    const containers = Array.from({ length: 190_000 }, (_, index) => ({
      name: `c${index}`,
    }));
    const reply = await post(
      createReviewText(annotatedPod({ spec: { containers } })),
    );
    expect(reply.status).toBe(200);
    // Before the limit, this pod got a patch of over 100 MB.
    expect(reply.body.length).toBeLessThan(2_000);
    const { response } = JSON.parse(reply.body);
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(400);
    expect(response.status.message).toMatch(
      /pod has 190000 containers and initContainers, more than the 256/,
    );
  });

  test("boolean cloudhsm/inject is ignored", async () => {
    const pod = annotatedPod();
    pod.metadata.annotations["cloudhsm/inject"] = true;
    const response = await respond(createReviewText(pod));
    expect(response.allowed).toBe(true);
    expect(response.patch).toBeUndefined();
  });

  test("non-string annotations stay as they are", async () => {
    const pod = annotatedPod();
    pod.metadata.annotations["example.com/count"] = 3;
    pod.metadata.annotations["example.com/map"] = { nested: [1, null] };
    const { response, pod: patched } = await admitOptedIn(pod);
    expect(response.allowed).toBe(true);
    expect(patched.metadata.annotations["example.com/count"]).toBe(3);
    expect(patched.metadata.annotations["example.com/map"]).toEqual({
      nested: [1, null],
    });
  });

  test.each(["TRUE", "yes", " true", "", "1", "true\n", "\u0000"])(
    "cloudhsm/inject %j is denied with the value",
    async (value) => {
      const pod = annotatedPod({ annotations: { "cloudhsm/inject": value } });
      const response = await respond(createReviewText(pod));
      expect(response.allowed).toBe(false);
      expect(response.status.code).toBe(400);
      expect(response.status.message).toContain(
        `invalid cloudhsm/inject ${JSON.stringify(value)} on pod`,
      );
    },
  );

  test("long generateName is shortened in the log", async () => {
    const pod = annotatedPod();
    pod.metadata.generateName = `${"g".repeat(100_000)}-`;
    const outcome = await harness.admit(pod);
    const line = harness.logs.find(
      (entry) =>
        entry.uid === outcome.response.uid &&
        entry.msg === "admission decision",
    );
    expect(line?.pod).toBe(`${"g".repeat(253)}...`);
  });
});

describe("transport security", () => {
  test("plain HTTP to the TLS port gets no HTTP answer", async () => {
    const answer = await new Promise<string>((resolve) => {
      const socket = connectTcp(harness.webhook.port, "127.0.0.1", () => {
        socket.write(
          "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
      });
      let received = "";
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
      });
      socket.on("error", () => undefined);
      socket.on("close", () => resolve(received));
      setTimeout(() => socket.destroy(), 3_000);
    });
    expect(answer).not.toMatch(/HTTP\/1\.[01] /);
  });

  test.each(["TLSv1.2", "TLSv1.3"] as const)(
    "%s handshake succeeds",
    async (version) => {
      const protocol = await new Promise<string | null>((resolve, reject) => {
        const socket = connectTls(
          {
            host: "127.0.0.1",
            port: harness.webhook.port,
            servername: SERVICE_DNS_NAME,
            ca: harness.ca.cert,
            minVersion: version,
            maxVersion: version,
          },
          () => {
            resolve(socket.getProtocol());
            socket.destroy();
          },
        );
        socket.once("error", reject);
      });
      expect(protocol).toBe(version);
    },
  );
});

describe("secrets in requests", () => {
  test("no env value, secret ref or token is logged", async () => {
    const secrets = {
      envValue: "hsm-pin-7f3a9c2e-never-logged",
      secretName: "db-credentials-4b2e81d6",
      secretKey: "password-91d0c7aa",
      configMapName: "hsm-settings-5c8e0f13",
      token: "eyJhbGciOiJSUzI1NiJ9.bearer-0c1d2e3f-never-logged",
      badBody: "malformed-body-secret-6a7b8c9d",
    };
    const pod = annotatedPod({
      spec: {
        containers: [
          {
            name: "app",
            image: "registry.example.com/app:1",
            env: [
              { name: "HSM_PIN", value: secrets.envValue },
              {
                name: "DB_PASSWORD",
                valueFrom: {
                  secretKeyRef: {
                    name: secrets.secretName,
                    key: secrets.secretKey,
                  },
                },
              },
              {
                name: "SETTINGS",
                valueFrom: {
                  configMapKeyRef: { name: secrets.configMapName, key: "a" },
                },
              },
            ],
          },
        ],
      },
    });
    const authorization = { authorization: `Bearer ${secrets.token}` };

    const injected = await postWithHeaders(
      createReviewText(pod),
      authorization,
    );
    expect(JSON.parse(injected.body).response.patchType).toBe("JSONPatch");
    const denied = annotatedPod({ annotations: { "cloudhsm/inject": "yes" } });
    denied.spec.containers[0].env.push({
      name: "HSM_PIN",
      value: secrets.envValue,
    });
    const rejection = await postWithHeaders(
      createReviewText(denied),
      authorization,
    );
    expect(JSON.parse(rejection.body).response.allowed).toBe(false);
    const malformed = await postWithHeaders(
      `{"request":{"object":{"env":[{"value":"${secrets.badBody}"`,
      authorization,
    );
    expect(malformed.status).toBe(400);

    const text = harness.logText();
    const decisions = harness.logs.filter(
      (line) => line.msg === "admission decision",
    );
    expect(decisions.length).toBeGreaterThan(0);
    for (const value of Object.values(secrets)) {
      expect(text).not.toContain(value);
    }
  });
});
