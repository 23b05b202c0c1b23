/**
 * The Kubernetes API calls of the running-pod refresher, with a time limit on each request and
 * errors that name the request. Objects come back as plain JSON.
 */
import {
  ApiException,
  AppsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  PatchStrategy,
  V1MicroTime,
  setHeaderOptions,
  type ConfigurationOptions,
  type KubeConfig,
  type ObservableMiddleware,
  type V1Lease,
} from "@kubernetes/client-node";
import { abortOptions } from "../kube/abort.js";
import { LABEL_INJECTED } from "../injection/mutate.js";
import { isObject, type JsonObject } from "../injection/pod.js";

/**
 * The RBAC rules that the refresher needs on top of the base ClusterRole, in the shape of a
 * ClusterRole's `rules`. Lease rules belong in a Role in the webhook's namespace.
 * manifests/components/refresh-running grants exactly these.
 */
export const REFRESH_CLUSTER_RULES = [
  { apiGroups: [""], resources: ["pods"], verbs: ["list", "patch"] },
  { apiGroups: ["apps"], resources: ["replicasets"], verbs: ["get"] },
  {
    apiGroups: ["apps"],
    resources: ["deployments", "statefulsets", "daemonsets"],
    verbs: ["get", "patch"],
  },
] as const;
export const REFRESH_LEASE_RULES = [
  {
    apiGroups: ["coordination.k8s.io"],
    resources: ["leases"],
    verbs: ["create"],
  },
  {
    apiGroups: ["coordination.k8s.io"],
    resources: ["leases"],
    verbs: ["get", "update"],
  },
] as const;

/** The workload kinds that the refresher restarts. */
export type RestartKind = "Deployment" | "StatefulSet" | "DaemonSet";

/** The fields of a Lease's spec that leader election reads and writes. */
export interface LeaseRecord {
  readonly holderIdentity: string;
  readonly leaseDurationSeconds: number;
  /** Milliseconds since the epoch; NaN when absent. */
  readonly acquireTime: number;
  readonly renewTime: number;
  readonly leaseTransitions: number;
}

export interface StoredLease {
  readonly resourceVersion: string;
  readonly record: LeaseRecord;
}

/** A failed API request. `statusCode` is set when the API server responded. */
export class KubeRequestError extends Error {
  override readonly name = "KubeRequestError";

  constructor(
    message: string,
    readonly statusCode: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The API calls that the refresher and its leader election make. */
export interface RefreshKube {
  /** Lists pods labeled cloudhsm/injected=true in every namespace, page by page. */
  listInjectedPods(signal?: AbortSignal): AsyncGenerator<JsonObject[]>;
  /** Sets annotations on a pod with a JSON merge patch. */
  annotatePod(
    namespace: string,
    name: string,
    annotations: Readonly<Record<string, string>>,
    signal?: AbortSignal,
  ): Promise<void>;
  readReplicaSet(
    namespace: string,
    name: string,
    signal?: AbortSignal,
  ): Promise<JsonObject>;
  readWorkload(
    kind: RestartKind,
    namespace: string,
    name: string,
    signal?: AbortSignal,
  ): Promise<JsonObject>;
  /** Sets kubectl.kubernetes.io/restartedAt on the pod template, as `kubectl rollout restart` does. */
  restartWorkload(
    kind: RestartKind,
    namespace: string,
    name: string,
    restartedAt: string,
    signal?: AbortSignal,
  ): Promise<void>;
  /** Returns undefined when the Lease does not exist. */
  readLease(namespace: string, name: string): Promise<StoredLease | undefined>;
  /** Returns false when another replica created the Lease first. */
  createLease(
    namespace: string,
    name: string,
    record: LeaseRecord,
  ): Promise<boolean>;
  /** Returns false when the Lease changed since `resourceVersion` was read. */
  replaceLease(
    namespace: string,
    name: string,
    resourceVersion: string,
    record: LeaseRecord,
  ): Promise<boolean>;
}

export interface KubeClientOptions {
  /** Time limit in ms for one request. */
  readonly requestTimeoutMs: number;
  /** Pods per list page. */
  readonly pageSize?: number;
  /** Maximum list pages per pass, so that a server that keeps returning `continue` is bounded. */
  readonly maxPages?: number;
}

const DEFAULT_PAGE_SIZE = 500;
const DEFAULT_MAX_PAGES = 1_000;

/** Implements RefreshKube with @kubernetes/client-node 1.4. */
export class KubeClient implements RefreshKube {
  readonly #core: CoreV1Api;
  readonly #apps: AppsV1Api;
  readonly #coordination: CoordinationV1Api;
  readonly #options: Required<KubeClientOptions>;

  constructor(kubeConfig: KubeConfig, options: KubeClientOptions) {
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#apps = kubeConfig.makeApiClient(AppsV1Api);
    this.#coordination = kubeConfig.makeApiClient(CoordinationV1Api);
    this.#options = {
      pageSize: DEFAULT_PAGE_SIZE,
      maxPages: DEFAULT_MAX_PAGES,
      ...options,
    };
  }

  async *listInjectedPods(signal?: AbortSignal): AsyncGenerator<JsonObject[]> {
    let token: string | undefined;
    for (let page = 1; page <= this.#options.maxPages; page += 1) {
      const list = await this.#call(
        `list pods -l ${LABEL_INJECTED}=true`,
        signal,
        (options) =>
          this.#core.listPodForAllNamespaces(
            {
              labelSelector: `${LABEL_INJECTED}=true`,
              limit: this.#options.pageSize,
              _continue: token,
            },
            options,
          ),
      );
      yield (list.items ?? []).map(toJson);
      token = list.metadata?._continue || undefined;
      if (token === undefined) {
        return;
      }
    }
    throw new KubeRequestError(
      `list pods -l ${LABEL_INJECTED}=true still returned a continue token after ${this.#options.maxPages} pages`,
      undefined,
    );
  }

  async annotatePod(
    namespace: string,
    name: string,
    annotations: Readonly<Record<string, string>>,
    signal?: AbortSignal,
  ): Promise<void> {
    await this.#call(`patch pod ${namespace}/${name}`, signal, (options) =>
      this.#core.patchNamespacedPod(
        { namespace, name, body: { metadata: { annotations } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch, options),
      ),
    );
  }

  async readReplicaSet(
    namespace: string,
    name: string,
    signal?: AbortSignal,
  ): Promise<JsonObject> {
    return toJson(
      await this.#call(
        `get replicaset ${namespace}/${name}`,
        signal,
        (options) =>
          this.#apps.readNamespacedReplicaSet({ namespace, name }, options),
      ),
    );
  }

  async readWorkload(
    kind: RestartKind,
    namespace: string,
    name: string,
    signal?: AbortSignal,
  ): Promise<JsonObject> {
    const request = { namespace, name };
    const description = `get ${kind.toLowerCase()} ${namespace}/${name}`;
    switch (kind) {
      case "Deployment":
        return toJson(
          await this.#call(description, signal, (options) =>
            this.#apps.readNamespacedDeployment(request, options),
          ),
        );
      case "StatefulSet":
        return toJson(
          await this.#call(description, signal, (options) =>
            this.#apps.readNamespacedStatefulSet(request, options),
          ),
        );
      case "DaemonSet":
        return toJson(
          await this.#call(description, signal, (options) =>
            this.#apps.readNamespacedDaemonSet(request, options),
          ),
        );
    }
  }

  async restartWorkload(
    kind: RestartKind,
    namespace: string,
    name: string,
    restartedAt: string,
    signal?: AbortSignal,
  ): Promise<void> {
    // The same strategic merge patch that `kubectl rollout restart` sends.
    const body = {
      spec: {
        template: {
          metadata: {
            annotations: { "kubectl.kubernetes.io/restartedAt": restartedAt },
          },
        },
      },
    };
    const request = { namespace, name, body };
    const description = `patch ${kind.toLowerCase()} ${namespace}/${name}`;
    const strategic = (options: ConfigurationOptions<ObservableMiddleware>) =>
      setHeaderOptions(
        "Content-Type",
        PatchStrategy.StrategicMergePatch,
        options,
      );
    switch (kind) {
      case "Deployment":
        await this.#call(description, signal, (options) =>
          this.#apps.patchNamespacedDeployment(request, strategic(options)),
        );
        return;
      case "StatefulSet":
        await this.#call(description, signal, (options) =>
          this.#apps.patchNamespacedStatefulSet(request, strategic(options)),
        );
        return;
      case "DaemonSet":
        await this.#call(description, signal, (options) =>
          this.#apps.patchNamespacedDaemonSet(request, strategic(options)),
        );
        return;
    }
  }

  async readLease(
    namespace: string,
    name: string,
  ): Promise<StoredLease | undefined> {
    try {
      const lease = await this.#call(
        `get lease ${namespace}/${name}`,
        undefined,
        (options) =>
          this.#coordination.readNamespacedLease({ namespace, name }, options),
      );
      return {
        resourceVersion: lease.metadata?.resourceVersion ?? "",
        record: readLeaseRecord(lease),
      };
    } catch (error) {
      if (error instanceof KubeRequestError && error.statusCode === 404) {
        return undefined;
      }
      throw error;
    }
  }

  async createLease(
    namespace: string,
    name: string,
    record: LeaseRecord,
  ): Promise<boolean> {
    try {
      await this.#call(
        `create lease ${namespace}/${name}`,
        undefined,
        (options) =>
          this.#coordination.createNamespacedLease(
            { namespace, body: leaseBody(namespace, name, undefined, record) },
            options,
          ),
      );
      return true;
    } catch (error) {
      if (error instanceof KubeRequestError && error.statusCode === 409) {
        return false;
      }
      throw error;
    }
  }

  async replaceLease(
    namespace: string,
    name: string,
    resourceVersion: string,
    record: LeaseRecord,
  ): Promise<boolean> {
    try {
      await this.#call(
        `update lease ${namespace}/${name}`,
        undefined,
        (options) =>
          this.#coordination.replaceNamespacedLease(
            {
              namespace,
              name,
              body: leaseBody(namespace, name, resourceVersion, record),
            },
            options,
          ),
      );
      return true;
    } catch (error) {
      if (error instanceof KubeRequestError && error.statusCode === 409) {
        return false;
      }
      throw error;
    }
  }

  /**
   * Sends one request with an abort signal and a time limit, and turns failures into
   * KubeRequestError. The race also bounds time spent before the request is sent.
   */
  async #call<T>(
    description: string,
    signal: AbortSignal | undefined,
    send: (options: ConfigurationOptions<ObservableMiddleware>) => Promise<T>,
  ): Promise<T> {
    const controller = new AbortController();
    const timeoutMs = this.#options.requestTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(
          new KubeRequestError(
            `${description} failed: timed out after ${timeoutMs} ms`,
            undefined,
          ),
        );
      }, timeoutMs);
    });
    try {
      if (signal?.aborted) {
        throw new KubeRequestError(`${description} was aborted`, undefined);
      }
      return await Promise.race([
        send(abortOptions(controller.signal)),
        deadline,
      ]);
    } catch (error) {
      if (error instanceof KubeRequestError) {
        throw error;
      }
      throw toRequestError(description, error, signal?.aborted === true);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }
}

function toRequestError(
  description: string,
  error: unknown,
  aborted: boolean,
): KubeRequestError {
  if (aborted) {
    return new KubeRequestError(`${description} was aborted`, undefined, {
      cause: error,
    });
  }
  if (error instanceof ApiException) {
    const detail = statusMessage(error.body);
    return new KubeRequestError(
      `${description} failed: HTTP ${error.code}${detail === undefined ? "" : `: ${detail}`}`,
      error.code,
      { cause: error },
    );
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new KubeRequestError(`${description} failed: ${detail}`, undefined, {
    cause: error,
  });
}

/** Reads `message` from a Kubernetes Status body, which client-node 1.4 passes as a string. */
function statusMessage(body: unknown): string | undefined {
  let parsed: unknown = body;
  if (typeof body === "string") {
    try {
      parsed = JSON.parse(body);
    } catch {
      return undefined;
    }
  }
  return isObject(parsed) && typeof parsed.message === "string"
    ? parsed.message
    : undefined;
}

/** Converts a typed client-node object to plain JSON, with Dates as RFC 3339 strings. */
function toJson(object: unknown): JsonObject {
  const json: unknown = JSON.parse(JSON.stringify(object ?? {}));
  return isObject(json) ? json : {};
}

function leaseBody(
  namespace: string,
  name: string,
  resourceVersion: string | undefined,
  record: LeaseRecord,
): V1Lease {
  return {
    apiVersion: "coordination.k8s.io/v1",
    kind: "Lease",
    metadata: {
      namespace,
      name,
      ...(resourceVersion === undefined ? {} : { resourceVersion }),
    },
    spec: {
      holderIdentity: record.holderIdentity,
      leaseDurationSeconds: record.leaseDurationSeconds,
      leaseTransitions: record.leaseTransitions,
      // MicroTime fields must carry six fraction digits; V1MicroTime serializes that way.
      acquireTime: new V1MicroTime(record.acquireTime),
      renewTime: new V1MicroTime(record.renewTime),
    },
  };
}

/**
 * Reads a Lease's spec. client-node 1.4 leaves MicroTime fields as the strings the server
 * sent, although its types declare Dates, so both are accepted.
 */
function readLeaseRecord(lease: V1Lease): LeaseRecord {
  const spec = lease.spec ?? {};
  return {
    holderIdentity: spec.holderIdentity ?? "",
    leaseDurationSeconds: spec.leaseDurationSeconds ?? 0,
    acquireTime: timeOf(spec.acquireTime),
    renewTime: timeOf(spec.renewTime),
    leaseTransitions: spec.leaseTransitions ?? 0,
  };
}

function timeOf(value: unknown): number {
  if (value instanceof Date) {
    return value.getTime();
  }
  return typeof value === "string" ? Date.parse(value) : Number.NaN;
}
