import { randomUUID } from "node:crypto";
import { request, Agent } from "node:https";
import type { LookupFunction } from "node:net";

/** The address and trust settings of a webhook, as kube-apiserver reaches it through a Service. */
export interface WebhookTarget {
  readonly port: number;
  /** PEM CA bundle, as in the webhook configuration's caBundle. */
  readonly ca: string;
  /** The Service DNS name that the certificate must carry; it resolves to 127.0.0.1 here. */
  readonly serverName: string;
  /** Reused connection pool; kube-apiserver keeps connections alive between admissions. */
  readonly agent?: Agent;
}

export interface HttpReply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

// Resolves every name to loopback, so the client checks the certificate against the Service
// name while the traffic never leaves this machine.
const loopbackLookup: LookupFunction = (_hostname, options, callback) => {
  if (typeof options === "object" && options.all) {
    (
      callback as unknown as (
        error: null,
        addresses: { address: string; family: number }[],
      ) => void
    )(null, [{ address: "127.0.0.1", family: 4 }]);
    return;
  }
  callback(null, "127.0.0.1", 4);
};

/** Creates a keep-alive agent that resolves every name to 127.0.0.1. */
export function loopbackAgent(): Agent {
  return new Agent({ keepAlive: true, maxSockets: 16, lookup: loopbackLookup });
}

/** Sends one HTTPS request to the webhook and verifies its certificate against the CA and name. */
export function callWebhook(
  target: WebhookTarget,
  path: string,
  options: {
    method?: string;
    body?: string | Buffer;
    contentType?: string;
    timeoutMs?: number;
  } = {},
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const body = options.body;
    const headers: Record<string, string | number> = {};
    if (body !== undefined) {
      headers["content-type"] = options.contentType ?? "application/json";
      headers["content-length"] = Buffer.byteLength(body);
    }
    const outgoing = request(
      {
        host: target.serverName,
        port: target.port,
        path,
        method: options.method ?? (body === undefined ? "GET" : "POST"),
        headers,
        ca: target.ca,
        servername: target.serverName,
        lookup: loopbackLookup,
        agent: target.agent ?? false,
        minVersion: "TLSv1.2",
        timeout: options.timeoutMs ?? 10_000,
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
        incoming.on("error", reject);
      },
    );
    outgoing.on("timeout", () =>
      outgoing.destroy(new Error(`request to ${path} timed out`)),
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

/** Wraps a pod in an AdmissionReview for CREATE, as kube-apiserver sends it. */
export function podCreateReview(
  pod: unknown,
  options: {
    namespace: string;
    apiVersion?: string;
    uid?: string;
    dryRun?: boolean;
  },
): Record<string, unknown> {
  return {
    apiVersion: options.apiVersion ?? "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: options.uid ?? randomUUID(),
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      requestKind: { group: "", version: "v1", kind: "Pod" },
      requestResource: { group: "", version: "v1", resource: "pods" },
      namespace: options.namespace,
      operation: "CREATE",
      userInfo: {
        username: "system:serviceaccount:kube-system:replicaset-controller",
        groups: ["system:serviceaccounts"],
      },
      object: pod,
      oldObject: null,
      dryRun: options.dryRun ?? false,
      options: { apiVersion: "meta.k8s.io/v1", kind: "CreateOptions" },
    },
  };
}
