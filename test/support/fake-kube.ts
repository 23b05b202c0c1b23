/**
 * A loopback stand-in for the kube-apiserver that serves GET for the objects that the workload
 * lookup reads, at the real API paths, with real-looking Status bodies for errors.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";

export type FakeKind =
  | "ReplicaSet"
  | "Deployment"
  | "StatefulSet"
  | "DaemonSet"
  | "Job"
  | "CronJob"
  | "Namespace";

interface ResourceInfo {
  group: "" | "apps" | "batch";
  plural: string;
}

const RESOURCES: Record<FakeKind, ResourceInfo> = {
  ReplicaSet: { group: "apps", plural: "replicasets" },
  Deployment: { group: "apps", plural: "deployments" },
  StatefulSet: { group: "apps", plural: "statefulsets" },
  DaemonSet: { group: "apps", plural: "daemonsets" },
  Job: { group: "batch", plural: "jobs" },
  CronJob: { group: "batch", plural: "cronjobs" },
  Namespace: { group: "", plural: "namespaces" },
};

/** The service account that Forbidden messages name, as a real API server would. */
export const FAKE_SERVICE_ACCOUNT =
  "system:serviceaccount:cloudhsm-webhook:cloudhsm-webhook";

export interface FakeOwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface FakeObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    uid: string;
    annotations?: Record<string, string>;
    ownerReferences?: FakeOwnerReference[];
  };
}

/** Returns the apiVersion that the API server reports for `kind`. */
export function apiVersionOf(kind: FakeKind): string {
  const { group } = RESOURCES[kind];
  return group === "" ? "v1" : `${group}/v1`;
}

/** Returns the kube-apiserver path of one object. `namespace` is ignored for Namespace. */
export function pathOf(
  kind: FakeKind,
  namespace: string,
  name: string,
): string {
  const { group, plural } = RESOURCES[kind];
  if (kind === "Namespace") {
    return `/api/v1/namespaces/${encodeURIComponent(name)}`;
  }
  const prefix = group === "" ? "/api/v1" : `/apis/${group}/v1`;
  return `${prefix}/namespaces/${encodeURIComponent(namespace)}/${plural}/${encodeURIComponent(name)}`;
}

/** Returns an owner reference to `owner`, as a controller sets it on the objects it creates. */
export function ownerReferenceTo(
  owner: FakeObject,
  controller = true,
): FakeOwnerReference {
  return {
    apiVersion: owner.apiVersion,
    kind: owner.kind,
    name: owner.metadata.name,
    uid: owner.metadata.uid,
    controller,
    blockOwnerDeletion: true,
  };
}

export interface ObjectSpec {
  annotations?: Record<string, string>;
  /** The controlling owner. Its reference gets `controller: true`. */
  controller?: FakeObject;
  /** Further owner references, added as given. */
  ownerReferences?: FakeOwnerReference[];
}

/** Builds an object with a fresh uid. */
export function makeObject(
  kind: FakeKind,
  namespace: string,
  name: string,
  spec: ObjectSpec = {},
): FakeObject {
  const metadata: FakeObject["metadata"] = { name, uid: randomUUID() };
  if (kind !== "Namespace") {
    metadata.namespace = namespace;
  }
  if (spec.annotations !== undefined) {
    metadata.annotations = spec.annotations;
  }
  const references = [...(spec.ownerReferences ?? [])];
  if (spec.controller !== undefined) {
    references.push(ownerReferenceTo(spec.controller));
  }
  if (references.length > 0) {
    metadata.ownerReferences = references;
  }
  return { apiVersion: apiVersionOf(kind), kind, metadata };
}

type Failure = "Forbidden" | "InternalError";

interface Route {
  object?: FakeObject;
  failure?: Failure;
  delayMs?: number;
}

export interface FakeKubeOptions {
  /** Bearer token that requests must carry. Requests without it get 401. */
  token?: string;
}

/** The fake API server. Start it with FakeKubeApi.start() and close it after the tests. */
export class FakeKubeApi {
  readonly #server: http.Server;
  readonly #token: string;
  readonly #routes = new Map<string, Route>();
  readonly #requestCounts = new Map<string, number>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #abortedRequests = 0;
  #url = "";

  private constructor(options: FakeKubeOptions) {
    this.#token = options.token ?? "fake-token";
    this.#server = http.createServer((request, response) =>
      this.#handle(request, response),
    );
  }

  static async start(options: FakeKubeOptions = {}): Promise<FakeKubeApi> {
    const api = new FakeKubeApi(options);
    await new Promise<void>((resolve, reject) => {
      api.#server.once("error", reject);
      api.#server.listen(0, "127.0.0.1", () => resolve());
    });
    const { port } = api.#server.address() as AddressInfo;
    api.#url = `http://127.0.0.1:${port}`;
    return api;
  }

  get url(): string {
    return this.#url;
  }

  /**
   * Builds a KubeConfig for this server. client-node 1.4 refuses plain http unless the cluster entry
   * sets skipTLSVerify, so it is set here although no TLS is involved.
   */
  kubeConfig(token = this.#token): KubeConfig {
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromOptions({
      clusters: [{ name: "fake", server: this.#url, skipTLSVerify: true }],
      users: [{ name: "fake-user", token }],
      contexts: [{ name: "fake", cluster: "fake", user: "fake-user" }],
      currentContext: "fake",
    });
    return kubeConfig;
  }

  /** Serves `objects`, replacing any earlier object or failure at the same paths. */
  put(...objects: FakeObject[]): void {
    for (const object of objects) {
      const path = this.#pathOfObject(object);
      this.#routes.set(path, {
        ...this.#routes.get(path),
        object,
        failure: undefined,
      });
    }
  }

  /** Removes an object, so that its path responds with a 404 NotFound Status. */
  remove(kind: FakeKind, namespace: string, name: string): void {
    const route = this.#routes.get(pathOf(kind, namespace, name));
    if (route !== undefined) {
      delete route.object;
    }
  }

  /** Makes the object's path respond with a Forbidden (403) or InternalError (500) Status. */
  fail(
    kind: FakeKind,
    namespace: string,
    name: string,
    failure: Failure,
  ): void {
    const path = pathOf(kind, namespace, name);
    this.#routes.set(path, { ...this.#routes.get(path), failure });
  }

  /** Removes a failure set with fail(). */
  heal(kind: FakeKind, namespace: string, name: string): void {
    const route = this.#routes.get(pathOf(kind, namespace, name));
    if (route !== undefined) {
      delete route.failure;
    }
  }

  /** Delays every response on the object's path by `delayMs`. 0 removes the delay. */
  delay(
    kind: FakeKind,
    namespace: string,
    name: string,
    delayMs: number,
  ): void {
    const path = pathOf(kind, namespace, name);
    this.#routes.set(path, { ...this.#routes.get(path), delayMs });
  }

  /** GET requests received for one object. */
  requests(kind: FakeKind, namespace: string, name: string): number {
    return this.#requestCounts.get(pathOf(kind, namespace, name)) ?? 0;
  }

  /** Requests received on every path. */
  get totalRequests(): number {
    let total = 0;
    for (const count of this.#requestCounts.values()) {
      total += count;
    }
    return total;
  }

  /** Requests that the client closed before the response was sent. */
  get abortedRequests(): number {
    return this.#abortedRequests;
  }

  /** Counts per path, for failure messages. */
  requestCounts(): Record<string, number> {
    return Object.fromEntries(this.#requestCounts);
  }

  resetCounts(): void {
    this.#requestCounts.clear();
    this.#abortedRequests = 0;
  }

  async close(): Promise<void> {
    for (const timer of this.#timers) {
      clearTimeout(timer);
    }
    this.#timers.clear();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #pathOfObject(object: FakeObject): string {
    const kind = object.kind as FakeKind;
    if (!(kind in RESOURCES)) {
      throw new Error(`fake API server does not serve kind ${object.kind}`);
    }
    return pathOf(kind, object.metadata.namespace ?? "", object.metadata.name);
  }

  #handle(request: http.IncomingMessage, response: http.ServerResponse): void {
    const path = new URL(request.url ?? "/", "http://fake").pathname;
    this.#requestCounts.set(path, (this.#requestCounts.get(path) ?? 0) + 1);

    if (request.headers.authorization !== `Bearer ${this.#token}`) {
      sendStatus(response, 401, "Unauthorized", "Unauthorized");
      return;
    }
    if (request.method !== "GET") {
      sendStatus(
        response,
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
      );
      return;
    }

    const route = this.#routes.get(path);
    const delayMs = route?.delayMs ?? 0;
    if (delayMs <= 0) {
      this.#answer(path, route, response);
      return;
    }
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#answer(path, route, response);
    }, delayMs);
    this.#timers.add(timer);
    response.on("close", () => {
      if (!response.writableFinished) {
        this.#abortedRequests += 1;
        clearTimeout(timer);
        this.#timers.delete(timer);
      }
    });
  }

  #answer(
    path: string,
    route: Route | undefined,
    response: http.ServerResponse,
  ): void {
    const target = parsePath(path);
    if (target === undefined) {
      sendStatus(
        response,
        404,
        "NotFound",
        "the server could not find the requested resource",
      );
      return;
    }
    const { group, plural } = RESOURCES[target.kind];
    const qualified = group === "" ? plural : `${plural}.${group}`;
    const details = {
      name: target.name,
      group: group === "" ? undefined : group,
      kind: plural,
    };

    if (route?.failure === "Forbidden") {
      const namespace =
        target.kind === "Namespace" ? target.name : target.namespace;
      const message =
        `${qualified} "${target.name}" is forbidden: User "${FAKE_SERVICE_ACCOUNT}" cannot get resource ` +
        `"${plural}" in API group "${group}" in the namespace "${namespace}"`;
      sendStatus(response, 403, "Forbidden", message, details);
      return;
    }
    if (route?.failure === "InternalError") {
      const message = "Internal error occurred: etcdserver: request timed out";
      sendStatus(response, 500, "InternalError", message, details);
      return;
    }
    if (route?.object === undefined) {
      sendStatus(
        response,
        404,
        "NotFound",
        `${qualified} "${target.name}" not found`,
        details,
      );
      return;
    }
    sendJson(response, 200, route.object);
  }
}

interface ParsedPath {
  kind: FakeKind;
  namespace: string;
  name: string;
}

const KIND_BY_ROUTE = new Map<string, FakeKind>(
  (Object.entries(RESOURCES) as [FakeKind, ResourceInfo][]).map(
    ([kind, info]) => [`${info.group}/${info.plural}`, kind],
  ),
);

function parsePath(path: string): ParsedPath | undefined {
  const namespaceMatch = /^\/api\/v1\/namespaces\/([^/]+)$/.exec(path);
  if (namespaceMatch?.[1] !== undefined) {
    const name = decodeURIComponent(namespaceMatch[1]);
    return { kind: "Namespace", namespace: "", name };
  }
  const groupMatch =
    /^\/apis\/(apps|batch)\/v1\/namespaces\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(
      path,
    );
  if (groupMatch === null) {
    return undefined;
  }
  const [, group, namespace, plural, name] = groupMatch;
  const kind = KIND_BY_ROUTE.get(`${group}/${plural}`);
  if (kind === undefined || namespace === undefined || name === undefined) {
    return undefined;
  }
  return {
    kind,
    namespace: decodeURIComponent(namespace),
    name: decodeURIComponent(name),
  };
}

function sendJson(
  response: http.ServerResponse,
  code: number,
  body: unknown,
): void {
  const text = JSON.stringify(body);
  response.writeHead(code, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  response.end(text);
}

/** Sends a metav1.Status body, the shape that the API server uses for every error. */
function sendStatus(
  response: http.ServerResponse,
  code: number,
  reason: string,
  message: string,
  details?: { name: string; group: string | undefined; kind: string },
): void {
  const status: Record<string, unknown> = {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    code,
  };
  if (details !== undefined) {
    status.details = details;
  }
  sendJson(response, code, status);
}
