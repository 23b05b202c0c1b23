import { connect } from "node:tls";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { callWebhook } from "../scripts/lib/admission-client.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
} from "../scripts/lib/pki.js";
import { validatePod } from "./support/pod-schema.js";
import {
  annotatedPod,
  startHarness,
  staticClusters,
  TEST_CLUSTER_ID,
  type Harness,
} from "./support/webhook-harness.js";

let harness: Harness;

beforeAll(async () => {
  harness = await startHarness({ staticClusters: staticClusters() });
});

afterAll(async () => {
  await harness.close();
});

function envOf(
  pod: Record<string, any>,
  container = 0,
): Record<string, string> {
  return Object.fromEntries(
    pod.spec.containers[container].env.map((entry: any) => [
      entry.name,
      entry.value,
    ]),
  );
}

describe("TLS as kube-apiserver calls it", () => {
  test("certificate verifies for the service name", async () => {
    const reply = await callWebhook(harness.target, "/healthz");
    expect(reply.status).toBe(200);
  });

  test("wrong service name fails verification", async () => {
    await expect(
      callWebhook(
        {
          ...harness.target,
          agent: undefined,
          serverName: "other.cloudhsm-webhook.svc",
        },
        "/healthz",
      ),
    ).rejects.toThrow(/does not match|altnames/i);
  });

  test("certificate from another CA is rejected", async () => {
    const otherCa = await createCertificateAuthority("unrelated CA");
    await expect(
      callWebhook(
        { ...harness.target, agent: undefined, ca: otherCa.cert },
        "/healthz",
      ),
    ).rejects.toThrow(/self[- ]signed|unable to verify|unable to get/i);
  });

  test("TLS 1.1 handshake is refused", async () => {
    const outcome = await new Promise<string>((resolve) => {
      const socket = connect({
        host: "127.0.0.1",
        port: harness.webhook.port,
        servername: SERVICE_DNS_NAME,
        ca: harness.ca.cert,
        minVersion: "TLSv1",
        maxVersion: "TLSv1.1",
      });
      socket.once("secureConnect", () => {
        socket.destroy();
        resolve("connected");
      });
      socket.once("error", (error) => resolve(error.message));
    });
    expect(outcome).not.toBe("connected");
  });
});

describe("health endpoints", () => {
  test("healthz answers 200", async () => {
    const reply = await callWebhook(harness.target, "/healthz");
    expect(JSON.parse(reply.body)).toEqual({ status: "ok" });
  });

  test("readyz is 200 after the first lookup", async () => {
    const reply = await callWebhook(harness.target, "/readyz");
    expect(reply.status).toBe(200);
  });
});

describe("POST /mutate", () => {
  test("v1 review gets a v1 JSONPatch answer", async () => {
    const pod = annotatedPod();
    const outcome = await harness.admit(pod, {
      apiVersion: "admission.k8s.io/v1",
    });
    expect(outcome.review.apiVersion).toBe("admission.k8s.io/v1");
    expect(outcome.review.kind).toBe("AdmissionReview");
    expect(outcome.response.uid).toBe(outcome.sent.request.uid);
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.response.patchType).toBe("JSONPatch");
    expect(outcome.patch.length).toBeGreaterThan(0);
  });

  test("v1beta1 review gets a v1beta1 answer", async () => {
    const outcome = await harness.admit(annotatedPod(), {
      apiVersion: "admission.k8s.io/v1beta1",
    });
    expect(outcome.review.apiVersion).toBe("admission.k8s.io/v1beta1");
    expect(outcome.response.patchType).toBe("JSONPatch");
  });

  test("patched pod carries env, config and marks", async () => {
    const { pod } = await harness.admit(annotatedPod(), { namespace: "shop" });
    validatePod(pod);

    const env = envOf(pod);
    expect(env.CLOUDHSM_CLUSTER_ID).toBe(TEST_CLUSTER_ID);
    expect(env.CLOUDHSM_HSM_IPS).toBe("10.0.2.40,10.0.12.5");
    expect(env.CLOUDHSM_HSM_IP).toBe("10.0.2.40");
    expect(env.CLOUDHSM_CONFIG_FILE).toBe("/var/run/cloudhsm/cloudhsm.cfg");
    expect(env.MODE).toBe("prod");

    expect(pod.metadata.labels["cloudhsm/injected"]).toBe("true");
    expect(pod.metadata.annotations["cloudhsm/injected-ips"]).toBe(
      "10.0.2.40,10.0.12.5",
    );
    expect(
      Date.parse(pod.metadata.annotations["cloudhsm/injected-at"]),
    ).not.toBeNaN();

    const config = JSON.parse(pod.metadata.annotations["cloudhsm/config"]);
    expect(config.clusters[0].type).toBe("hsm1");
    expect(config.clusters[0].cluster.cluster_id).toBe(TEST_CLUSTER_ID);
    expect(config.clusters[0].cluster.hsm_ca_file).toBe(
      "/opt/cloudhsm/etc/customerCA.crt",
    );
    expect(config.clusters[0].cluster.servers).toEqual([
      { hostname: "10.0.2.40", port: 2223, enable: true },
      { hostname: "10.0.12.5", port: 2223, enable: true },
    ]);
    expect(config.logging.log_type).toBe("term");

    expect(pod.spec.volumes).toContainEqual(
      expect.objectContaining({
        name: "cloudhsm-config",
        downwardAPI: expect.objectContaining({
          items: [
            {
              path: "cloudhsm.cfg",
              fieldRef: {
                apiVersion: "v1",
                fieldPath: "metadata.annotations['cloudhsm/config']",
              },
            },
          ],
        }),
      }),
    );
    expect(pod.spec.containers[0].volumeMounts).toEqual([
      {
        name: "cloudhsm-config",
        mountPath: "/var/run/cloudhsm",
        readOnly: true,
      },
    ]);
  });

  test("reinvocation on the patched pod sends no patch", async () => {
    const first = await harness.admit(annotatedPod());
    const second = await harness.admit(first.pod);
    expect(second.response.allowed).toBe(true);
    expect(second.response.patch).toBeUndefined();
    expect(second.pod).toEqual(first.pod);
  });

  test("dry run gets the same patch", async () => {
    const pod = annotatedPod();
    const normal = await harness.admit(pod);
    const dryRun = await harness.admit(pod, { dryRun: true });
    const stripTime = (value: Record<string, any>) => {
      const copy = structuredClone(value);
      delete copy.metadata.annotations["cloudhsm/injected-at"];
      return copy;
    };
    expect(stripTime(dryRun.pod)).toEqual(stripTime(normal.pod));
  });

  test("namespace comes from the request", async () => {
    const pod = annotatedPod();
    delete pod.metadata.namespace;
    const outcome = await harness.admit(pod, { namespace: "payments" });
    expect(outcome.response.allowed).toBe(true);
    const line = harness.logs.find(
      (entry) =>
        entry.uid === outcome.response.uid &&
        entry.msg === "admission decision",
    );
    expect(line?.namespace).toBe("payments");
    expect(line?.pod).toBe("checkout-7d9f8c6b5-*");
  });

  test.each([
    ["no annotation", {}],
    ["inject false", { "cloudhsm/inject": "false" }],
  ])("pod with %s passes unpatched", async (_name, annotations) => {
    const pod = annotatedPod();
    pod.metadata.annotations = annotations;
    const outcome = await harness.admit(pod);
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.response.patch).toBeUndefined();
    expect(outcome.response.patchType).toBeUndefined();
  });

  test.each([
    ["DELETE", { operation: "DELETE", object: null }],
    ["UPDATE", { operation: "UPDATE" }],
    ["CONNECT", { operation: "CONNECT", object: null }],
    [
      "a Deployment",
      {
        kind: { group: "apps", version: "v1", kind: "Deployment" },
        resource: { group: "apps", version: "v1", resource: "deployments" },
      },
    ],
    ["a null object", { object: null }],
    [
      "an ephemeral container subresource",
      { subResource: "ephemeralcontainers" },
    ],
  ])("%s passes unpatched", async (_name, change) => {
    const body = {
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      request: {
        uid: "7f0b2c4e-0000-4000-8000-00000000abcd",
        kind: { group: "", version: "v1", kind: "Pod" },
        resource: { group: "", version: "v1", resource: "pods" },
        operation: "CREATE",
        namespace: "shop",
        object: annotatedPod(),
        ...change,
      },
    };
    const reply = await callWebhook(harness.target, "/mutate", {
      body: JSON.stringify(body),
    });
    expect(reply.status).toBe(200);
    const { response } = JSON.parse(reply.body);
    expect(response.uid).toBe("7f0b2c4e-0000-4000-8000-00000000abcd");
    expect(response.allowed).toBe(true);
    expect(response.patch).toBeUndefined();
  });

  test("user mount at the mount path is kept, with a warning", async () => {
    const pod = annotatedPod({
      spec: {
        containers: [
          {
            name: "app",
            image: "registry.example.com/app:1",
            volumeMounts: [
              { name: "own-config", mountPath: "/var/run/cloudhsm" },
            ],
          },
        ],
        volumes: [{ name: "own-config", emptyDir: {} }],
      },
    });
    const outcome = await harness.admit(pod);
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.pod.spec.containers[0].volumeMounts).toEqual([
      { name: "own-config", mountPath: "/var/run/cloudhsm" },
    ]);
    expect(outcome.response.warnings).toHaveLength(1);
    expect(outcome.response.warnings[0]).toMatch(
      /already mounts volume "own-config" at \/var\/run\/cloudhsm/,
    );
    expect(envOf(outcome.pod).CLOUDHSM_HSM_IP).toBe("10.0.2.40");
  });

  test("unknown pod fields survive byte for byte", async () => {
    const pod = annotatedPod();
    pod.spec.futureField = { nested: [1, "two", { three: null }] };
    pod.spec.containers[0].futureContainerField = { keep: "me" };
    pod.status = { phase: "Pending" };
    const outcome = await harness.admit(pod);
    expect(JSON.stringify(outcome.pod.spec.futureField)).toBe(
      JSON.stringify(pod.spec.futureField),
    );
    expect(
      JSON.stringify(outcome.pod.spec.containers[0].futureContainerField),
    ).toBe('{"keep":"me"}');
    expect(outcome.pod.status).toEqual({ phase: "Pending" });
  });

  test("one decision line per admission, without env values", async () => {
    const pod = annotatedPod();
    pod.spec.containers[0].env.push({
      name: "DB_PASSWORD",
      value: "s3cr3t-value-never-logged",
    });
    const outcome = await harness.admit(pod);
    const lines = harness.logs.filter(
      (entry) => entry.uid === outcome.response.uid,
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]!.decision).toBe("injected");
    expect(lines[0]!.clusterId).toBe(TEST_CLUSTER_ID);
    expect(lines[0]!.ipCount).toBe(2);
    expect(typeof lines[0]!.durationMs).toBe("number");
    expect(harness.logText()).not.toContain("s3cr3t-value-never-logged");
    expect(harness.logText()).not.toContain('prod"');
  });
});

describe("malformed requests", () => {
  test.each([
    ["invalid JSON", "{not json", 400, /JSON/i],
    ["an empty body", "", 400, /empty/i],
    ["a JSON array", "[]", 400, /JSON object/],
    ["an empty object", "{}", 400, /apiVersion/],
    [
      "a missing request",
      JSON.stringify({
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
      }),
      400,
      /no request/,
    ],
    [
      "a missing uid",
      JSON.stringify({
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        request: {},
      }),
      400,
      /no uid/,
    ],
    [
      "a wrong apiVersion",
      JSON.stringify({
        apiVersion: "admission.k8s.io/v2",
        kind: "AdmissionReview",
        request: { uid: "x" },
      }),
      400,
      /apiVersion/,
    ],
  ])("%s gets a clear 4xx", async (_name, body, status, message) => {
    const reply = await callWebhook(harness.target, "/mutate", { body });
    expect(reply.status).toBe(status);
    expect(JSON.parse(reply.body).message).toMatch(message);
  });

  test("wrong content type gets 415", async () => {
    const reply = await callWebhook(harness.target, "/mutate", {
      body: "x=1",
      contentType: "application/x-www-form-urlencoded",
    });
    expect(reply.status).toBe(415);
  });

  test("body over the limit gets 413", async () => {
    const reply = await callWebhook(harness.target, "/mutate", {
      body: `{"pad":"${"x".repeat(7 * 1024 * 1024)}"}`,
    });
    expect(reply.status).toBe(413);
  });

  test("a 3 MiB pod is accepted", async () => {
    const pod = annotatedPod();
    pod.metadata.annotations["example.com/blob"] = "y".repeat(3 * 1024 * 1024);
    const outcome = await harness.admit(pod);
    expect(outcome.response.allowed).toBe(true);
    expect(outcome.patch.length).toBeGreaterThan(0);
  });

  test("server keeps serving after bad requests", async () => {
    const reply = await callWebhook(harness.target, "/healthz");
    expect(reply.status).toBe(200);
  });
});
