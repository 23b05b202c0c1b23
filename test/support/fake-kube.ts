/**
 * A loopback stand-in for the kube-apiserver, at the real API paths, with real-looking Status
 * bodies for errors. It serves GET for the objects that the workload lookup reads, and for the
 * running-pod refresher: paged pod lists with label selectors, merge patches on pods and
 * workloads, and Leases with resourceVersion conflicts.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
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
    labels?: Record<string, string>;
    creationTimestamp?: string;
    resourceVersion?: string;
  };
  spec?: Record<string, unknown>;
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
  readonly #pods = new Map<string, FakePod>();
  readonly #leases = new Map<string, FakeLease>();
  readonly #patches: RecordedPatch[] = [];
  readonly #leaseWrites: RecordedLeaseWrite[] = [];
  #podPatchFailure: Failure | undefined;
  #podListFailure: Failure | undefined;
  #leaseFailure: Failure | undefined;
  #resourceVersion = 1000;

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

  /** Serves `pods` in pod lists and accepts patches on them, replacing pods of the same name. */
  putPod(...pods: FakePod[]): void {
    for (const pod of pods) {
      const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
      this.#pods.set(key, structuredClone(pod));
    }
  }

  /** Removes a pod, so that patches to it get 404 and lists leave it out. */
  removePod(namespace: string, name: string): void {
    this.#pods.delete(`${namespace}/${name}`);
  }

  /** Returns the stored pod with every patch applied, or undefined. */
  pod(namespace: string, name: string): FakePod | undefined {
    const pod = this.#pods.get(`${namespace}/${name}`);
    return pod === undefined ? undefined : structuredClone(pod);
  }

  /** Returns the stored object with every patch applied, or undefined. */
  object(
    kind: FakeKind,
    namespace: string,
    name: string,
  ): FakeObject | undefined {
    const object = this.#routes.get(pathOf(kind, namespace, name))?.object;
    return object === undefined ? undefined : structuredClone(object);
  }

  /** Every PATCH received, in order, with its content type and parsed body. */
  get patches(): readonly RecordedPatch[] {
    return this.#patches;
  }

  /** Makes pod patches fail with a Forbidden or InternalError Status; undefined heals them. */
  failPodPatches(failure: Failure | undefined): void {
    this.#podPatchFailure = failure;
  }

  /** Makes pod lists fail with a Forbidden or InternalError Status; undefined heals them. */
  failPodLists(failure: Failure | undefined): void {
    this.#podListFailure = failure;
  }

  /** Makes every Lease request fail with a Forbidden or InternalError Status; undefined heals. */
  failLeases(failure: Failure | undefined): void {
    this.#leaseFailure = failure;
  }

  /** Returns the stored Lease, or undefined. */
  lease(namespace: string, name: string): FakeLease | undefined {
    const lease = this.#leases.get(`${namespace}/${name}`);
    return lease === undefined ? undefined : structuredClone(lease);
  }

  /**
   * Writes a Lease as another replica would, with a new resourceVersion, so that the next
   * update from the holder that read the old one gets 409 Conflict.
   */
  setLease(namespace: string, name: string, spec: FakeLeaseSpec): void {
    this.#leases.set(`${namespace}/${name}`, {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        namespace,
        name,
        uid: randomUUID(),
        resourceVersion: this.#nextResourceVersion(),
      },
      spec: structuredClone(spec),
    });
  }

  /** Every successful Lease create and update, in order. */
  get leaseWrites(): readonly RecordedLeaseWrite[] {
    return this.#leaseWrites;
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
    if (this.#handleExtended(request, response, path)) {
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

  /**
   * Serves pod lists, pod and workload patches, and Leases. Returns false for requests that the
   * object GET routes above serve.
   */
  #handleExtended(
    request: http.IncomingMessage,
    response: http.ServerResponse,
    path: string,
  ): boolean {
    const method = request.method ?? "GET";
    const url = new URL(request.url ?? "/", "http://fake");
    if (method === "GET" && (path === "/api/v1/pods" || POD_LIST.test(path))) {
      const namespace = POD_LIST.exec(path)?.[1];
      this.#listPods(
        url,
        namespace === undefined ? undefined : decodeURIComponent(namespace),
        response,
      );
      return true;
    }
    const podMatch = POD_PATH.exec(path);
    if (podMatch !== null && method === "PATCH") {
      void this.#withBody(request, response, (body) =>
        this.#patchPod(
          request,
          decodeURIComponent(podMatch[1]!),
          decodeURIComponent(podMatch[2]!),
          body,
          response,
        ),
      );
      return true;
    }
    const workloadMatch = WORKLOAD_PATH.exec(path);
    if (workloadMatch !== null && method === "PATCH") {
      void this.#withBody(request, response, (body) =>
        this.#patchWorkload(request, path, body, response),
      );
      return true;
    }
    const leaseMatch = LEASE_PATH.exec(path);
    if (leaseMatch !== null) {
      const namespace = decodeURIComponent(leaseMatch[1]!);
      const name =
        leaseMatch[2] === undefined
          ? undefined
          : decodeURIComponent(leaseMatch[2]);
      if (this.#leaseFailure !== undefined) {
        sendFailure(
          response,
          this.#leaseFailure,
          "leases",
          "coordination.k8s.io",
          namespace,
          name ?? "",
        );
        return true;
      }
      if (method === "GET" && name !== undefined) {
        const lease = this.#leases.get(`${namespace}/${name}`);
        if (lease === undefined) {
          sendStatus(
            response,
            404,
            "NotFound",
            `leases.coordination.k8s.io "${name}" not found`,
          );
        } else {
          sendJson(response, 200, lease);
        }
        return true;
      }
      if (method === "POST" && name === undefined) {
        void this.#withBody(request, response, (body) =>
          this.#createLease(namespace, body, response),
        );
        return true;
      }
      if (method === "PUT" && name !== undefined) {
        void this.#withBody(request, response, (body) =>
          this.#replaceLease(namespace, name, body, response),
        );
        return true;
      }
    }
    return false;
  }

  #listPods(
    url: URL,
    namespace: string | undefined,
    response: http.ServerResponse,
  ): void {
    if (this.#podListFailure !== undefined) {
      sendFailure(
        response,
        this.#podListFailure,
        "pods",
        "",
        namespace ?? "",
        "",
      );
      return;
    }
    let selector;
    try {
      selector = parseSelector(url.searchParams.get("labelSelector") ?? "");
    } catch (error) {
      sendStatus(response, 400, "BadRequest", (error as Error).message);
      return;
    }
    const matching = [...this.#pods.values()]
      .filter(
        (pod) =>
          namespace === undefined || pod.metadata.namespace === namespace,
      )
      .filter((pod) => selector(pod.metadata.labels ?? {}))
      .sort((left, right) =>
        `${left.metadata.namespace}/${left.metadata.name}`.localeCompare(
          `${right.metadata.namespace}/${right.metadata.name}`,
        ),
      );
    const token = url.searchParams.get("continue");
    const offset =
      token === null || token === ""
        ? 0
        : Number(Buffer.from(token, "base64url").toString("utf8"));
    if (!Number.isInteger(offset) || offset < 0) {
      sendStatus(
        response,
        410,
        "Expired",
        "The provided continue parameter is too old",
      );
      return;
    }
    const limitText = url.searchParams.get("limit");
    const limit = limitText === null ? matching.length : Number(limitText);
    const items = matching.slice(offset, offset + limit);
    const end = offset + items.length;
    const metadata: Record<string, unknown> = {
      resourceVersion: String(this.#resourceVersion),
    };
    if (end < matching.length) {
      metadata.continue = Buffer.from(String(end)).toString("base64url");
    }
    sendJson(response, 200, {
      apiVersion: "v1",
      kind: "PodList",
      metadata,
      items,
    });
  }

  #patchPod(
    request: http.IncomingMessage,
    namespace: string,
    name: string,
    body: unknown,
    response: http.ServerResponse,
  ): void {
    const contentType = request.headers["content-type"] ?? "";
    this.#patches.push({
      path: pathOfPod(namespace, name),
      contentType,
      body,
      receivedAt: performance.now(),
    });
    if (this.#podPatchFailure !== undefined) {
      sendFailure(response, this.#podPatchFailure, "pods", "", namespace, name);
      return;
    }
    const pod = this.#pods.get(`${namespace}/${name}`);
    if (pod === undefined) {
      sendStatus(response, 404, "NotFound", `pods "${name}" not found`);
      return;
    }
    if (!MERGE_PATCH_TYPES.has(contentType)) {
      sendStatus(
        response,
        415,
        "UnsupportedMediaType",
        `the body of the request was in an unknown format - accepted media types include: ${[...MERGE_PATCH_TYPES].join(", ")}`,
      );
      return;
    }
    const patched = mergePatch(pod, body) as FakePod;
    patched.metadata.resourceVersion = this.#nextResourceVersion();
    this.#pods.set(`${namespace}/${name}`, patched);
    sendJson(response, 200, patched);
  }

  #patchWorkload(
    request: http.IncomingMessage,
    path: string,
    body: unknown,
    response: http.ServerResponse,
  ): void {
    const contentType = request.headers["content-type"] ?? "";
    this.#patches.push({
      path,
      contentType,
      body,
      receivedAt: performance.now(),
    });
    const route = this.#routes.get(path);
    if (route?.object === undefined) {
      sendStatus(
        response,
        404,
        "NotFound",
        "the server could not find the requested resource",
      );
      return;
    }
    if (!MERGE_PATCH_TYPES.has(contentType)) {
      sendStatus(
        response,
        415,
        "UnsupportedMediaType",
        `the body of the request was in an unknown format - accepted media types include: ${[...MERGE_PATCH_TYPES].join(", ")}`,
      );
      return;
    }
    route.object = mergePatch(route.object, body) as FakeObject;
    sendJson(response, 200, route.object);
  }

  #createLease(
    namespace: string,
    body: unknown,
    response: http.ServerResponse,
  ): void {
    const lease = body as FakeLease;
    const name = lease?.metadata?.name ?? "";
    const invalid = invalidLease(lease);
    if (invalid !== undefined) {
      sendStatus(response, 400, "BadRequest", invalid);
      return;
    }
    const key = `${namespace}/${name}`;
    if (this.#leases.has(key)) {
      sendStatus(
        response,
        409,
        "AlreadyExists",
        `leases.coordination.k8s.io "${name}" already exists`,
      );
      return;
    }
    const stored: FakeLease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        namespace,
        name,
        uid: randomUUID(),
        resourceVersion: this.#nextResourceVersion(),
      },
      spec: lease.spec,
    };
    this.#leases.set(key, stored);
    this.#leaseWrites.push({
      operation: "create",
      spec: structuredClone(stored.spec),
    });
    sendJson(response, 201, stored);
  }

  #replaceLease(
    namespace: string,
    name: string,
    body: unknown,
    response: http.ServerResponse,
  ): void {
    const lease = body as FakeLease;
    const invalid = invalidLease(lease);
    if (invalid !== undefined) {
      sendStatus(response, 400, "BadRequest", invalid);
      return;
    }
    const key = `${namespace}/${name}`;
    const existing = this.#leases.get(key);
    if (existing === undefined) {
      sendStatus(
        response,
        404,
        "NotFound",
        `leases.coordination.k8s.io "${name}" not found`,
      );
      return;
    }
    if (lease.metadata.resourceVersion !== existing.metadata.resourceVersion) {
      sendStatus(
        response,
        409,
        "Conflict",
        `Operation cannot be fulfilled on leases.coordination.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
      return;
    }
    const stored: FakeLease = {
      ...existing,
      metadata: {
        ...existing.metadata,
        resourceVersion: this.#nextResourceVersion(),
      },
      spec: lease.spec,
    };
    this.#leases.set(key, stored);
    this.#leaseWrites.push({
      operation: "update",
      spec: structuredClone(stored.spec),
    });
    sendJson(response, 200, stored);
  }

  /** Reads a JSON request body, and responds with 400 when it does not parse. */
  async #withBody(
    request: http.IncomingMessage,
    response: http.ServerResponse,
    handle: (body: unknown) => void,
  ): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) {
      chunks.push(chunk as Buffer);
    }
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      sendStatus(response, 400, "BadRequest", "the request body is not JSON");
      return;
    }
    handle(body);
  }

  #nextResourceVersion(): string {
    this.#resourceVersion += 1;
    return String(this.#resourceVersion);
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

/** A pod as the fake serves it in lists. */
export interface FakePod {
  apiVersion: "v1";
  kind: "Pod";
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: FakeOwnerReference[];
    creationTimestamp?: string;
    resourceVersion?: string;
  };
  spec: Record<string, unknown>;
}

export interface FakeLeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface FakeLease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion: string;
  };
  spec: FakeLeaseSpec;
}

export interface RecordedPatch {
  readonly path: string;
  readonly contentType: string;
  readonly body: unknown;
  /** performance.now() when the request arrived. */
  readonly receivedAt: number;
}

export interface RecordedLeaseWrite {
  readonly operation: "create" | "update";
  readonly spec: FakeLeaseSpec;
}

/** Returns the kube-apiserver path of a pod. */
export function pathOfPod(namespace: string, name: string): string {
  return `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`;
}

const POD_LIST = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/;
const POD_PATH = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/;
const WORKLOAD_PATH =
  /^\/apis\/apps\/v1\/namespaces\/[^/]+\/(?:deployments|statefulsets|daemonsets|replicasets)\/[^/]+$/;
const LEASE_PATH =
  /^\/apis\/coordination\.k8s\.io\/v1\/namespaces\/([^/]+)\/leases(?:\/([^/]+))?$/;

/** Patch types whose semantics, for the maps that the tests patch, are a JSON merge patch. */
const MERGE_PATCH_TYPES = new Set([
  "application/merge-patch+json",
  "application/strategic-merge-patch+json",
]);

// metav1.MicroTime is parsed with the layout 2006-01-02T15:04:05.000000Z07:00, which requires
// exactly six fraction digits.
const MICRO_TIME =
  /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$/;

function invalidLease(lease: FakeLease | undefined): string | undefined {
  if (lease?.metadata?.name === undefined || lease.spec === undefined) {
    return "Lease needs metadata.name and spec";
  }
  for (const field of ["acquireTime", "renewTime"] as const) {
    const value = lease.spec[field];
    if (value !== undefined && !MICRO_TIME.test(value)) {
      return `Lease in version "v1" cannot be handled as a Lease: parsing time "${value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse`;
    }
  }
  return undefined;
}

/** Applies an RFC 7386 JSON merge patch and returns the result. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) {
    return structuredClone(patch);
  }
  const result: Record<string, unknown> =
    target !== null && typeof target === "object" && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      delete result[key];
    } else {
      result[key] = mergePatch(result[key], value);
    }
  }
  return result;
}

/** Parses equality (`a=b`, `a==b`), inequality (`a!=b`) and existence (`a`) requirements. */
function parseSelector(
  text: string,
): (labels: Record<string, string>) => boolean {
  const requirements = text
    .split(",")
    .filter((part) => part.trim() !== "")
    .map((part) => {
      const match = /^\s*([\w./-]+)\s*(==|=|!=)?\s*([\w./-]*)\s*$/.exec(part);
      if (match === null) {
        throw new Error(`unable to parse requirement: ${part}`);
      }
      const [, key, operator, value] = match;
      return (labels: Record<string, string>) =>
        operator === undefined
          ? Object.hasOwn(labels, key!)
          : operator === "!="
            ? labels[key!] !== value
            : labels[key!] === value;
    });
  return (labels) => requirements.every((requirement) => requirement(labels));
}

function sendFailure(
  response: http.ServerResponse,
  failure: Failure,
  plural: string,
  group: string,
  namespace: string,
  name: string,
): void {
  const qualified = group === "" ? plural : `${plural}.${group}`;
  if (failure === "Forbidden") {
    sendStatus(
      response,
      403,
      "Forbidden",
      `${qualified} "${name}" is forbidden: User "${FAKE_SERVICE_ACCOUNT}" cannot access resource "${plural}" in API group "${group}" in the namespace "${namespace}"`,
    );
    return;
  }
  sendStatus(
    response,
    500,
    "InternalError",
    "Internal error occurred: etcdserver: request timed out",
  );
}
