/**
 * Reads the annotations of a pod's controlling owners and of its namespace from the Kubernetes
 * API, for the resolver in ../injection/resolve.ts.
 *
 * Reads are cached per object for a short TTL, and concurrent callers share one request per
 * object, so a rollout of many pods from one ReplicaSet costs one read per object in the chain.
 * Failures are never cached, so a transient 403 or timeout recovers on the next pod.
 */
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  KubeConfig,
  type V1ObjectMeta,
} from "@kubernetes/client-node";
import { abortOptions } from "./abort.js";
import NodeCache from "node-cache";
import type { AnnotationSource } from "../injection/resolve.js";

/**
 * The ClusterRole rules that the lookups need, in the shape of a ClusterRole's `rules`. Only
 * `get` is used: the webhook never lists or watches.
 */
export const REQUIRED_RBAC_RULES = [
  {
    apiGroups: ["apps"],
    resources: ["replicasets", "deployments", "statefulsets", "daemonsets"],
    verbs: ["get"],
  },
  { apiGroups: ["batch"], resources: ["jobs", "cronjobs"], verbs: ["get"] },
  { apiGroups: [""], resources: ["namespaces"], verbs: ["get"] },
] as const;

export const DEFAULT_CACHE_TTL_SECONDS = 30;
export const DEFAULT_REQUEST_TIMEOUT_MS = 2_000;
export const DEFAULT_CACHE_MAX_ENTRIES = 10_000;

/**
 * Maximum number of owners followed above the pod. The longest chain that the kinds below allow
 * is Pod -> ReplicaSet -> Deployment, so this bound only matters if the kind table grows.
 */
export const MAX_OWNER_DEPTH = 4;

export type OwnerKind =
  "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob";

/** Kinds that this module reads: the owner kinds and Namespace. */
export type LookupKind = OwnerKind | "Namespace";

interface KindInfo {
  group: "" | "apps" | "batch";
  /** Resource name as RBAC rules spell it. */
  resource: string;
}

const KIND_INFO: Record<LookupKind, KindInfo> = {
  ReplicaSet: { group: "apps", resource: "replicasets" },
  Deployment: { group: "apps", resource: "deployments" },
  StatefulSet: { group: "apps", resource: "statefulsets" },
  DaemonSet: { group: "apps", resource: "daemonsets" },
  Job: { group: "batch", resource: "jobs" },
  CronJob: { group: "batch", resource: "cronjobs" },
  Namespace: { group: "", resource: "namespaces" },
};

/**
 * The controller kinds that may own each kind, as the built-in controllers set them. A
 * controller reference to any other kind, such as an operator's custom resource, ends the chain.
 */
const CONTROLLER_KINDS: Record<"Pod" | OwnerKind, readonly OwnerKind[]> = {
  Pod: ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"],
  ReplicaSet: ["Deployment"],
  Job: ["CronJob"],
  Deployment: [],
  StatefulSet: [],
  DaemonSet: [],
  CronJob: [],
};

/** A controller reference from metadata.ownerReferences, reduced to the fields the lookup reads. */
interface ControllerReference {
  apiVersion: string;
  kind: string;
  name: string;
  /** Undefined when the reference has no uid or an empty one. */
  uid: string | undefined;
}

export type LookupFailureReason =
  "timeout" | "forbidden" | "not-found" | "error";
export type LookupOutcome = "ok" | LookupFailureReason;

/** Details of a LookupError besides its message. */
export interface LookupErrorDetails {
  reason: LookupFailureReason;
  kind: LookupKind;
  /** Undefined for cluster-scoped kinds (Namespace). */
  namespace: string | undefined;
  objectName: string;
  /** The HTTP status code, when the API server responded. */
  statusCode?: number;
  /** The `message` of the API server's Status body, when it sent one. */
  serverMessage?: string;
  cause?: unknown;
}

/**
 * A failed read of one object. `message` states what failed and what to do about it. The object's
 * name is `objectName`, because `name` is the error class name.
 */
export class LookupError extends Error {
  override readonly name = "LookupError";
  readonly reason: LookupFailureReason;
  readonly kind: LookupKind;
  readonly namespace: string | undefined;
  readonly objectName: string;
  readonly statusCode: number | undefined;
  readonly serverMessage: string | undefined;

  constructor(message: string, details: LookupErrorDetails) {
    super(
      message,
      details.cause === undefined ? undefined : { cause: details.cause },
    );
    this.reason = details.reason;
    this.kind = details.kind;
    this.namespace = details.namespace;
    this.objectName = details.objectName;
    this.statusCode = details.statusCode;
    this.serverMessage = details.serverMessage;
  }
}

/** Counters since the lookup was created. */
export interface LookupStats {
  /** Requests sent to the API server. */
  apiReads: number;
  /** Calls served from the cache without a request. */
  cacheHits: number;
  /** Calls that joined a request already in flight for the same object. */
  sharedReads: number;
  /**
   * Failures by reason. A failed request counts once, even when several callers shared it. An
   * owner reference whose uid no longer matches counts as not-found once per call.
   */
  errors: Record<LookupFailureReason, number>;
}

export interface WorkloadLookupOptions {
  /** Seconds that an object's annotations stay cached. 0 disables the cache. Default 30. */
  cacheTtlSeconds?: number;
  /** Maximum cached objects. When full, new reads are not cached. Default 10,000. */
  cacheMaxEntries?: number;
  /** Time limit in ms for one API request, after which it is aborted. Default 2,000. */
  requestTimeoutMs?: number;
  /**
   * Called once per object per call, after the object is read or the read fails. `cacheHit` is
   * true when the call sent no request, because of the cache or a shared request in flight.
   * It runs inside the lookup, so it must not throw.
   */
  onLookup?: (
    kind: LookupKind,
    outcome: LookupOutcome,
    cacheHit: boolean,
  ) => void;
}

/** The owner chain of one pod, nearest first, and its namespace. */
export interface WorkloadAnnotations {
  owners: AnnotationSource[];
  namespace: AnnotationSource;
}

/** Cache entry for one object. */
interface CachedObject {
  uid: string | undefined;
  annotations: Readonly<Record<string, string>>;
  /** The object's controller reference, read only for kinds that can have a followed owner. */
  controllerRef: ControllerReference | undefined;
}

/** A chain that lookupCached built from cached objects, and when its first object expires. */
interface CachedChain {
  readonly expiresAt: number;
  readonly annotations: WorkloadAnnotations;
}

/** Maximum chains that lookupCached keeps. When full, the map starts empty again. */
const MAX_CACHED_CHAINS = 1024;

/**
 * Maximum length of a chain key that lookupCached keeps. Valid names, uids and API versions give keys of a
 * few hundred characters, while a pod sent to the webhook before validation can carry fields
 * of megabytes.
 */
const MAX_CHAIN_KEY_LENGTH = 1024;

interface ObjectKey {
  kind: LookupKind;
  namespace: string | undefined;
  name: string;
}

/**
 * Builds a KubeConfig from the files in `KUBECONFIG` when it is set, for running outside a
 * cluster, and otherwise from the pod's service account. Throws when neither is available.
 */
export function loadKubeConfig(): KubeConfig {
  const kubeConfig = new KubeConfig();
  if (process.env.KUBECONFIG) {
    // With KUBECONFIG set, loadFromDefault reads only the listed files (client-node 1.4).
    kubeConfig.loadFromDefault();
    return kubeConfig;
  }
  if (
    process.env.KUBERNETES_SERVICE_HOST &&
    process.env.KUBERNETES_SERVICE_PORT
  ) {
    // client-node 1.4 reads the token file again every 60 s, so token rotation is picked up.
    kubeConfig.loadFromCluster();
    return kubeConfig;
  }
  throw new Error(
    "no Kubernetes API configuration: KUBECONFIG, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset. Set KUBECONFIG to a kubeconfig file, or run the webhook in a pod.",
  );
}

/**
 * Reads owner chains and namespaces with `get` requests, caching each object's annotations.
 * Call close() on shutdown to stop the cache's cleanup timer.
 */
export class WorkloadLookup {
  readonly #apps: AppsV1Api;
  readonly #batch: BatchV1Api;
  readonly #core: CoreV1Api;
  readonly #cache: NodeCache;
  readonly #cacheTtlSeconds: number;
  readonly #requestTimeoutMs: number;
  readonly #onLookup: WorkloadLookupOptions["onLookup"];
  readonly #inFlight = new Map<string, Promise<CachedObject>>();
  /**
   * Results of lookupCached by namespace and controller reference. A hit costs one map read, where
   * building the chain again costs a cache read per object.
   */
  readonly #chains = new Map<string, CachedChain>();
  readonly #stats: LookupStats = {
    apiReads: 0,
    cacheHits: 0,
    sharedReads: 0,
    errors: { timeout: 0, forbidden: 0, "not-found": 0, error: 0 },
  };

  constructor(kubeConfig: KubeConfig, options: WorkloadLookupOptions = {}) {
    this.#apps = kubeConfig.makeApiClient(AppsV1Api);
    this.#batch = kubeConfig.makeApiClient(BatchV1Api);
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#cacheTtlSeconds =
      options.cacheTtlSeconds ?? DEFAULT_CACHE_TTL_SECONDS;
    this.#requestTimeoutMs =
      options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#onLookup = options.onLookup;
    if (!(this.#cacheTtlSeconds >= 0) || !(this.#requestTimeoutMs > 0)) {
      throw new RangeError(
        `invalid lookup options: cacheTtlSeconds must be >= 0 and requestTimeoutMs > 0, got ${this.#cacheTtlSeconds} and ${this.#requestTimeoutMs}`,
      );
    }
    this.#cache = new NodeCache({
      stdTTL: this.#cacheTtlSeconds,
      // Expired entries are dropped on read anyway. The periodic sweep only frees memory.
      checkperiod: Math.max(this.#cacheTtlSeconds, 1),
      // Entries are frozen and shared, so copying them on every read would only cost time.
      useClones: false,
      maxKeys: options.cacheMaxEntries ?? DEFAULT_CACHE_MAX_ENTRIES,
    });
  }

  /** Builds a lookup from loadKubeConfig(), for production use. */
  static fromEnvironment(options?: WorkloadLookupOptions): WorkloadLookup {
    return new WorkloadLookup(loadKubeConfig(), options);
  }

  /**
   * Reads the owner chain of a pod in `namespace` and the namespace itself, in parallel.
   * Rejects with LookupError when any read fails.
   */
  async lookup(
    namespace: string,
    ownerReferences: unknown,
  ): Promise<WorkloadAnnotations> {
    const [owners, namespaceSource] = await Promise.all([
      this.ownerChain(namespace, ownerReferences),
      this.namespaceSource(namespace),
    ]);
    return { owners, namespace: namespaceSource };
  }

  /**
   * Returns what lookup() would return when every object it needs is cached, and undefined
   * otherwise, without a promise. Almost every pod of a busy cluster is served from the cache,
   * and the promises of the asynchronous path cost more than the cache reads themselves.
   */
  lookupCached(
    namespace: string,
    ownerReferences: unknown,
  ): WorkloadAnnotations | undefined {
    if (namespace === "") {
      return undefined;
    }
    const reference = findControllerReference(ownerReferences);
    // Every field but the last is prefixed with its length, so two different references never
    // share a key. JSON.stringify gave the same guarantee, at about 2 µs per admission under load.
    const chainKey =
      reference === undefined
        ? `${namespace.length}:${namespace}`
        : `${namespace.length}:${namespace}${reference.apiVersion.length}:${reference.apiVersion}` +
          `${reference.kind.length}:${reference.kind}${reference.name.length}:${reference.name}` +
          `:${reference.uid ?? ""}`;
    const now = Date.now();
    let chain = this.#chains.get(chainKey);
    if (chain === undefined || chain.expiresAt <= now) {
      chain = this.#readCachedChain(namespace, reference);
      if (chain === undefined) {
        return undefined;
      }
      if (chainKey.length > MAX_CHAIN_KEY_LENGTH) {
        return this.#countHits(chain);
      }
      if (this.#chains.size >= MAX_CACHED_CHAINS) {
        this.#chains.clear();
      }
      this.#chains.set(chainKey, chain);
    }
    return this.#countHits(chain);
  }

  /** Counts the cache hits of a chain that lookupCached returns, and returns its annotations. */
  #countHits(chain: CachedChain): WorkloadAnnotations {
    for (const owner of chain.annotations.owners) {
      this.#recordCacheHit(owner.kind as LookupKind);
    }
    this.#recordCacheHit("Namespace");
    return chain.annotations;
  }

  /** Number of chains that lookupCached keeps. */
  get keptChains(): number {
    return this.#chains.size;
  }

  /** Builds the chain of lookupCached from the object cache, or returns undefined on a miss. */
  #readCachedChain(
    namespace: string,
    first: ControllerReference | undefined,
  ): CachedChain | undefined {
    const owners: AnnotationSource[] = [];
    const keys: string[] = [];
    let childKind: "Pod" | OwnerKind = "Pod";
    let reference = first;
    while (reference !== undefined && owners.length < MAX_OWNER_DEPTH) {
      const kind = followedKind(childKind, reference);
      if (kind === undefined) {
        break;
      }
      const key: ObjectKey = { kind, namespace, name: reference.name };
      const object = this.#cached(key, reference.uid);
      if (object === undefined) {
        return undefined;
      }
      keys.push(cacheKeyOf(key));
      owners.push({
        kind,
        name: reference.name,
        annotations: object.annotations,
      });
      childKind = kind;
      reference = object.controllerRef;
    }
    const namespaceKey: ObjectKey = {
      kind: "Namespace",
      namespace: undefined,
      name: namespace,
    };
    const namespaceObject = this.#cached(namespaceKey);
    if (namespaceObject === undefined) {
      return undefined;
    }
    keys.push(cacheKeyOf(namespaceKey));
    // The chain is valid until the first of its objects expires from the object cache.
    let expiresAt = Number.POSITIVE_INFINITY;
    for (const key of keys) {
      const ttl = this.#cache.getTtl(key);
      if (ttl === undefined) {
        return undefined;
      }
      if (ttl > 0) {
        expiresAt = Math.min(expiresAt, ttl);
      }
    }
    return {
      expiresAt,
      annotations: {
        owners,
        namespace: {
          kind: "Namespace",
          name: namespace,
          annotations: namespaceObject.annotations,
        },
      },
    };
  }

  /**
   * Follows controller references up from a pod, nearest owner first. Non-controller references
   * are ignored, and a controller of a kind that CONTROLLER_KINDS does not allow ends the chain.
   */
  async ownerChain(
    namespace: string,
    ownerReferences: unknown,
  ): Promise<AnnotationSource[]> {
    const chain: AnnotationSource[] = [];
    let childKind: "Pod" | OwnerKind = "Pod";
    let reference = findControllerReference(ownerReferences);
    while (reference !== undefined && chain.length < MAX_OWNER_DEPTH) {
      const kind = followedKind(childKind, reference);
      if (kind === undefined) {
        break;
      }
      const object = await this.#get(
        { kind, namespace, name: reference.name },
        reference.uid,
      );
      chain.push({
        kind,
        name: reference.name,
        annotations: object.annotations,
      });
      childKind = kind;
      reference = object.controllerRef;
    }
    return chain;
  }

  /** Reads a namespace's annotations. Rejects with LookupError when the read fails. */
  async namespaceSource(namespace: string): Promise<AnnotationSource> {
    const object = await this.#get({
      kind: "Namespace",
      namespace: undefined,
      name: namespace,
    });
    return {
      kind: "Namespace",
      name: namespace,
      annotations: object.annotations,
    };
  }

  /** A copy of the counters. */
  get stats(): LookupStats {
    return { ...this.#stats, errors: { ...this.#stats.errors } };
  }

  /** Drops every cached object, so that the next calls read from the API server. */
  clearCache(): void {
    this.#cache.flushAll();
    this.#chains.clear();
  }

  /** Stops the cache's cleanup timer. Requests in flight still complete. */
  close(): void {
    this.#cache.close();
  }

  /**
   * Returns the object from the cache, from a request in flight or from a new request. With
   * `expectedUid`, a cached object of another uid is read again, because the object may have
   * been deleted and re-created under the same name since it was cached.
   */
  async #get(key: ObjectKey, expectedUid?: string): Promise<CachedObject> {
    if (key.namespace === "" || key.name === "") {
      throw emptyNamespaceError(key.kind);
    }
    const cached = this.#cached(key, expectedUid);
    if (cached !== undefined) {
      this.#recordCacheHit(key.kind);
      return cached;
    }
    const cacheKey = cacheKeyOf(key);

    let pending = this.#inFlight.get(cacheKey);
    const shared = pending !== undefined;
    if (pending === undefined) {
      pending = this.#readAndCache(key, cacheKey);
      this.#inFlight.set(cacheKey, pending);
      const request = pending;
      const forget = () => {
        if (this.#inFlight.get(cacheKey) === request) {
          this.#inFlight.delete(cacheKey);
        }
      };
      request.then(forget, forget);
    } else {
      this.#stats.sharedReads += 1;
    }

    let object: CachedObject;
    try {
      object = await pending;
    } catch (error) {
      const reason = error instanceof LookupError ? error.reason : "error";
      this.#onLookup?.(key.kind, reason, shared);
      throw error;
    }
    if (!uidMatches(object, expectedUid)) {
      const error = replacedError(key, expectedUid, object.uid);
      this.#stats.errors["not-found"] += 1;
      this.#onLookup?.(key.kind, "not-found", shared);
      throw error;
    }
    this.#onLookup?.(key.kind, "ok", shared);
    return object;
  }

  /** Returns the cached object when it is there and has the expected uid. */
  #cached(key: ObjectKey, expectedUid?: string): CachedObject | undefined {
    if (key.name === "") {
      return undefined;
    }
    const cached = this.#cache.get<CachedObject>(cacheKeyOf(key));
    return cached !== undefined && uidMatches(cached, expectedUid)
      ? cached
      : undefined;
  }

  #recordCacheHit(kind: LookupKind): void {
    this.#stats.cacheHits += 1;
    this.#onLookup?.(kind, "ok", true);
  }

  async #readAndCache(key: ObjectKey, cacheKey: string): Promise<CachedObject> {
    const object = await this.#read(key);
    if (this.#cacheTtlSeconds > 0) {
      // A kept chain may contain the object this read replaces, so none is kept any longer.
      this.#chains.clear();
      try {
        this.#cache.set(cacheKey, object);
      } catch {
        // node-cache throws ECACHEFULL at maxKeys. The object is still returned, but not
        // cached, so a full cache costs extra reads but does not fail the lookup.
      }
    }
    return object;
  }

  /** Sends one `get` request with a time limit and converts failures to LookupError. */
  async #read(key: ObjectKey): Promise<CachedObject> {
    this.#stats.apiReads += 1;
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(timeoutError(key, this.#requestTimeoutMs));
      }, this.#requestTimeoutMs);
    });

    try {
      // The race also bounds time spent before the request is sent, such as loading
      // credentials, which the abort signal cannot interrupt.
      const metadata = await Promise.race([
        this.#send(key, controller.signal),
        timeout,
      ]);
      return toCachedObject(key.kind, metadata);
    } catch (error) {
      const lookupError =
        error instanceof LookupError
          ? error
          : controller.signal.aborted
            ? timeoutError(key, this.#requestTimeoutMs)
            : toLookupError(key, error);
      this.#stats.errors[lookupError.reason] += 1;
      throw lookupError;
    } finally {
      clearTimeout(timer);
    }
  }

  async #send(
    key: ObjectKey,
    signal: AbortSignal,
  ): Promise<V1ObjectMeta | undefined> {
    const options = abortOptions(signal);
    const name = key.name;
    const namespace = key.namespace ?? "";
    switch (key.kind) {
      case "ReplicaSet":
        return (
          await this.#apps.readNamespacedReplicaSet(
            { name, namespace },
            options,
          )
        ).metadata;
      case "Deployment":
        return (
          await this.#apps.readNamespacedDeployment(
            { name, namespace },
            options,
          )
        ).metadata;
      case "StatefulSet":
        return (
          await this.#apps.readNamespacedStatefulSet(
            { name, namespace },
            options,
          )
        ).metadata;
      case "DaemonSet":
        return (
          await this.#apps.readNamespacedDaemonSet({ name, namespace }, options)
        ).metadata;
      case "Job":
        return (
          await this.#batch.readNamespacedJob({ name, namespace }, options)
        ).metadata;
      case "CronJob":
        return (
          await this.#batch.readNamespacedCronJob({ name, namespace }, options)
        ).metadata;
      case "Namespace":
        return (await this.#core.readNamespace({ name }, options)).metadata;
    }
  }
}

/**
 * Returns the entry with `controller: true`, or undefined when there is none or it lacks a
 * string kind, apiVersion or non-empty name. The pod's references arrive before API validation,
 * so they are read as untyped JSON, with own-property checks.
 */
function findControllerReference(
  references: unknown,
): ControllerReference | undefined {
  if (!Array.isArray(references)) {
    return undefined;
  }
  // The API server allows at most one controller reference per object.
  const entry: unknown = references.find(
    (reference: unknown) => ownField(reference, "controller") === true,
  );
  const apiVersion = ownField(entry, "apiVersion");
  const kind = ownField(entry, "kind");
  const name = ownField(entry, "name");
  const uid = ownField(entry, "uid");
  if (
    typeof apiVersion !== "string" ||
    typeof kind !== "string" ||
    typeof name !== "string" ||
    name === ""
  ) {
    return undefined;
  }
  return Object.freeze({
    apiVersion,
    kind,
    name,
    uid: typeof uid === "string" && uid !== "" ? uid : undefined,
  });
}

function ownField(value: unknown, key: string): unknown {
  if (
    value === null ||
    typeof value !== "object" ||
    !Object.hasOwn(value, key)
  ) {
    return undefined;
  }
  return (value as Record<string, unknown>)[key];
}

/** Returns the kind to read for `reference`, or undefined when the chain ends at it. */
function followedKind(
  childKind: "Pod" | OwnerKind,
  reference: ControllerReference,
): OwnerKind | undefined {
  const kind = CONTROLLER_KINDS[childKind].find(
    (candidate) => candidate === reference.kind,
  );
  if (kind === undefined) {
    return undefined;
  }
  // Match the API group and not the version, so that a reference written with an older version
  // of the same group is still followed. Another group's kind of the same name is not.
  const apiVersion = reference.apiVersion;
  const group = apiVersion.includes("/")
    ? apiVersion.slice(0, apiVersion.indexOf("/"))
    : "";
  return group === KIND_INFO[kind].group ? kind : undefined;
}

function cacheKeyOf(key: ObjectKey): string {
  return `${key.kind}/${key.namespace ?? ""}/${key.name}`;
}

function uidMatches(
  object: CachedObject,
  expectedUid: string | undefined,
): boolean {
  return (
    expectedUid === undefined ||
    object.uid === undefined ||
    object.uid === expectedUid
  );
}

/**
 * Copies what the lookup needs out of an object's metadata. Annotations go into a frozen
 * null-prototype record, so keys such as `__proto__` stay plain data.
 */
function toCachedObject(
  kind: LookupKind,
  metadata: V1ObjectMeta | undefined,
): CachedObject {
  const annotations = Object.create(null) as Record<string, string>;
  const source: unknown = metadata?.annotations;
  if (source !== null && typeof source === "object") {
    for (const [key, value] of Object.entries(source)) {
      if (typeof value === "string") {
        annotations[key] = value;
      }
    }
  }
  const canHaveOwner =
    kind !== "Namespace" && CONTROLLER_KINDS[kind].length > 0;
  const controllerRef = canHaveOwner
    ? findControllerReference(metadata?.ownerReferences)
    : undefined;
  return Object.freeze({
    uid: metadata?.uid,
    annotations: Object.freeze(annotations),
    controllerRef,
  });
}

function describeKey(key: ObjectKey): string {
  const path =
    key.namespace === undefined ? key.name : `${key.namespace}/${key.name}`;
  return `get ${key.kind} ${path}`;
}

function rbacHint(kind: LookupKind): string {
  const { group, resource } = KIND_INFO[kind];
  const groupText = group === "" ? "the core API group" : `API group ${group}`;
  return `Grant the webhook's ClusterRole get on ${resource} in ${groupText}.`;
}

function keyDetails(key: ObjectKey) {
  return { kind: key.kind, namespace: key.namespace, objectName: key.name };
}

function timeoutError(key: ObjectKey, timeoutMs: number): LookupError {
  return new LookupError(
    `${describeKey(key)} failed: timed out after ${timeoutMs} ms`,
    {
      ...keyDetails(key),
      reason: "timeout",
    },
  );
}

/**
 * Rejects an empty namespace before a request is built, because the client would send
 * GET /api/v1/namespaces/, which lists every namespace instead of reading one.
 */
function emptyNamespaceError(kind: LookupKind): LookupError {
  return new LookupError(`get ${kind} failed: the pod's namespace is empty`, {
    kind,
    namespace: undefined,
    objectName: "",
    reason: "error",
  });
}

function replacedError(
  key: ObjectKey,
  expectedUid: string | undefined,
  actualUid: string | undefined,
): LookupError {
  return new LookupError(
    `${describeKey(key)} failed: not found. The reference names uid ${expectedUid}, but the object of that name has uid ${actualUid}, so the owner was deleted and re-created.`,
    { ...keyDetails(key), reason: "not-found" },
  );
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
  if (parsed !== null && typeof parsed === "object" && "message" in parsed) {
    const message = (parsed as { message: unknown }).message;
    return typeof message === "string" ? message : undefined;
  }
  return undefined;
}

function toLookupError(key: ObjectKey, error: unknown): LookupError {
  const operation = describeKey(key);
  if (error instanceof ApiException) {
    const code = error.code;
    const serverMessage = statusMessage(error.body);
    const make = (reason: LookupFailureReason, message: string) =>
      new LookupError(message, {
        ...keyDetails(key),
        reason,
        statusCode: code,
        serverMessage,
        cause: error,
      });
    if (code === 403) {
      return make(
        "forbidden",
        `${operation} failed: forbidden. ${rbacHint(key.kind)}`,
      );
    }
    if (code === 404) {
      const hint =
        key.kind === "Namespace"
          ? ""
          : " The owner may have been deleted while the pod was being created.";
      return make("not-found", `${operation} failed: not found.${hint}`);
    }
    if (code === 401) {
      return make(
        "error",
        `${operation} failed: unauthorized (HTTP 401). Check the webhook's service account token.`,
      );
    }
    const detail = serverMessage === undefined ? "" : `: ${serverMessage}`;
    return make("error", `${operation} failed: HTTP ${code}${detail}`);
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new LookupError(`${operation} failed: ${detail}`, {
    ...keyDetails(key),
    reason: "error",
    cause: error,
  });
}
