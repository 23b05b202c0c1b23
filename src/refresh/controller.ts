/**
 * Brings running injected pods up to date when a cluster's set of ACTIVE addresses changes.
 *
 * - annotate: rewrites `cloudhsm/config` and `cloudhsm/injected-ips` on the running pods that
 *   use the cluster. The kubelet then rewrites the projected cloudhsm.cfg of a directory mount
 *   in place. A subPath mount (cloudhsm/config-path) keeps its file until the pod restarts.
 * - restart: also rolls, one at a time, the Deployments, StatefulSets and DaemonSets that set
 *   `cloudhsm/auto-restart: "true"` and whose pods were created with an address that the
 *   change removed.
 *
 * Only the replica that holds the Lease acts. A pass starts on a successful refresh whose set
 * changed, and on the first successful refresh of each cluster after this replica became the
 * leader. That first pass only annotates, unless the set changed. A pass that fails runs again
 * at the next successful refresh. Nothing happens when the new set is empty or when
 * DescribeClusters failed.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { performance } from "node:perf_hooks";
import type {
  CachedCluster,
  HsmDirectory,
  RefreshEvent,
} from "../discovery/directory.js";
import { InvalidPodError } from "../injection/mutate.js";
import { isObject } from "../injection/pod.js";
import type { RenderedCluster } from "../injection/render.js";
import { RepeatLimiter, type Logger } from "../log.js";
import {
  KubeRequestError,
  type RefreshKube,
  type RestartKind,
} from "./kube.js";
import type { LeaseElector } from "./lease.js";
import type { RefreshMetrics } from "./metrics.js";
import {
  AUTO_RESTART_ANNOTATION,
  RESTARTED_AT_ANNOTATION,
  annotationUpdate,
  podUsesCluster,
  readControllerReference,
  readInjectedPod,
  staleAddresses,
  stringMap,
  type InjectedPod,
} from "./pods.js";

export type RefreshMode = "annotate" | "restart";

/** The parts of HsmDirectory that the refresher uses. */
export type RefreshDirectory = Pick<
  HsmDirectory,
  "on" | "off" | "peek" | "availability" | "lastError"
>;

export interface RefresherOptions {
  readonly mode: RefreshMode;
  readonly directory: RefreshDirectory;
  readonly kube: RefreshKube;
  /** Started and stopped by the refresher. */
  readonly elector: LeaseElector;
  /** --hsm-ca-file, written into rendered configs. */
  readonly hsmCaFile: string;
  /** Minimum time between two workload restarts, and from gaining the Lease to the first one. */
  readonly restartIntervalMs: number;
  readonly logger: Logger;
  readonly metrics?: RefreshMetrics;
  readonly now?: () => Date;
}

/** A workload waiting for its paced restart. */
interface RestartJob {
  readonly kind: RestartKind;
  readonly namespace: string;
  readonly name: string;
  readonly clusterId: string;
  readonly region: string;
  /** Removed addresses that its pods were created with. */
  readonly staleIps: Set<string>;
  /** Creation time of its newest pod with a removed address, in ms since the epoch. */
  newestPodCreatedAt: number | undefined;
}

// A drain handles at most this many sleeps and restarts before it returns. The next refresh
// event starts another drain.
const MAX_DRAIN_ROUNDS = 10_000;

/** Watches the directory's refresh events and updates running pods while holding the Lease. */
export class RunningPodRefresher {
  readonly #options: RefresherOptions;
  readonly #now: () => Date;
  readonly #stopped = new AbortController();
  readonly #queue = new Map<string, RestartJob>();
  readonly #reconciled = new Set<string>();
  readonly #annotateErrors = new RepeatLimiter(60_000);
  readonly #passErrors = new RepeatLimiter(600_000);
  /** Removed addresses of clusters whose last pass failed, by "region/clusterId". */
  readonly #failedPasses = new Map<string, Set<string>>();
  #term: AbortSignal | undefined;
  #passes: Promise<void> = Promise.resolve();
  #drain: Promise<void> | undefined;
  /** performance.now() at the end of the last restart request, or when the Lease was gained. */
  #lastRestartAt = 0;

  readonly #onRefresh = (event: RefreshEvent): void =>
    this.#handleRefresh(event);
  readonly #onStarted = (signal: AbortSignal): void => this.#startTerm(signal);
  readonly #onStopped = (): void => this.#endTerm();

  constructor(options: RefresherOptions) {
    if (!(options.restartIntervalMs > 0)) {
      throw new RangeError(
        `restartIntervalMs must be positive, got ${options.restartIntervalMs}`,
      );
    }
    this.#options = options;
    this.#now = options.now ?? (() => new Date());
  }

  start(): void {
    const { directory, elector } = this.#options;
    directory.on("refresh", this.#onRefresh);
    elector.on("started", this.#onStarted);
    elector.on("stopped", this.#onStopped);
    elector.start();
  }

  /** Stops acting at once, releases the Lease, and waits for the work in flight to end. */
  async stop(): Promise<void> {
    const { directory, elector } = this.#options;
    directory.off("refresh", this.#onRefresh);
    this.#stopped.abort(new Error("refresher stopped"));
    await elector.stop();
    elector.off("started", this.#onStarted);
    elector.off("stopped", this.#onStopped);
    await this.#passes;
    await this.#drain;
  }

  /** Waits for the queued passes and the restart drain to finish, for tests. */
  async settled(): Promise<void> {
    await this.#passes;
    await this.#drain;
  }

  /** Workloads waiting for a restart, as "Kind namespace/name". */
  pendingRestarts(): string[] {
    return [...this.#queue.values()].map(
      (job) => `${job.kind} ${job.namespace}/${job.name}`,
    );
  }

  #startTerm(signal: AbortSignal): void {
    this.#term = AbortSignal.any([signal, this.#stopped.signal]);
    this.#reconciled.clear();
    this.#failedPasses.clear();
    // Pacing starts with the term, so a new leader never restarts at once.
    this.#lastRestartAt = performance.now();
    this.#options.metrics?.setLeader(true);
  }

  #endTerm(): void {
    this.#term = undefined;
    this.#queue.clear();
    this.#options.metrics?.setLeader(false);
    this.#options.metrics?.setPendingRestarts(0);
  }

  #leading(): AbortSignal | undefined {
    const term = this.#term;
    if (
      term === undefined ||
      term.aborted ||
      !this.#options.elector.isLeader()
    ) {
      return undefined;
    }
    return term;
  }

  #handleRefresh(event: RefreshEvent): void {
    if (event.outcome !== "success" || event.current === undefined) {
      return;
    }
    const term = this.#leading();
    if (term === undefined) {
      return;
    }
    const key = `${event.region}/${event.clusterId}`;
    const first = !this.#reconciled.has(key);
    const retry = this.#failedPasses.get(key);
    if (!event.changed && !first && retry === undefined) {
      // A success can unblock restarts that waited for a working DescribeClusters.
      this.#pump();
      return;
    }
    this.#reconciled.add(key);
    this.#failedPasses.delete(key);

    const current = event.current;
    const removed = new Set<string>(retry);
    if (this.#options.mode === "restart" && event.changed) {
      for (const ip of event.previous?.ips ?? []) {
        removed.add(ip);
      }
    }
    for (const ip of current.ips) {
      removed.delete(ip);
    }
    this.#passes = this.#passes
      .then(() => this.#pass(event, current, [...removed], term))
      .catch((error: unknown) => {
        if (term.aborted) {
          // Leadership ended or the refresher stopped, which aborted the pass's requests.
          return;
        }
        // The next successful refresh of the cluster runs the pass again.
        this.#failedPasses.set(key, removed);
        const suppressed = this.#passErrors.admit(`${key}|${errorText(error)}`);
        if (suppressed !== undefined) {
          this.#options.logger.warn(
            {
              clusterId: event.clusterId,
              region: event.region,
              err: errorText(error),
              suppressedRepeats: suppressed,
            },
            "refresh of running pods failed; the next refresh of the cluster retries",
          );
        }
      });
  }

  async #pass(
    event: RefreshEvent,
    current: CachedCluster,
    removed: readonly string[],
    term: AbortSignal,
  ): Promise<void> {
    const { clusterId, region } = event;
    const { logger, kube, metrics } = this.#options;
    if (term.aborted) {
      return;
    }
    if (current.ips.length === 0) {
      logger.warn(
        { clusterId, region },
        "cluster has no ACTIVE HSM: running pods keep their config and no workload is restarted",
      );
      return;
    }
    const counts = { matched: 0, stale: 0, annotated: 0, failed: 0 };
    const toRestart: InjectedPod[] = [];

    for await (const page of kube.listInjectedPods(term)) {
      for (const object of page) {
        if (term.aborted) {
          return;
        }
        const pod = readInjectedPod(object);
        if (pod === undefined || !podUsesCluster(pod, clusterId, region)) {
          continue;
        }
        counts.matched += 1;
        const stale = staleAddresses(pod, clusterId, current.ips);
        if (stale.length > 0) {
          counts.stale += 1;
        }
        const outcome = await this.#annotate(pod, event, current, term);
        if (outcome === "annotated") {
          counts.annotated += 1;
        } else if (outcome === "failed") {
          counts.failed += 1;
        }
        if (stale.some((ip) => removed.includes(ip))) {
          toRestart.push(pod);
        }
      }
    }
    metrics?.setStalePods(clusterId, counts.stale);
    logger.info(
      {
        clusterId,
        region,
        changed: event.changed,
        ips: current.ips.join(","),
        pods: counts.matched,
        stalePods: counts.stale,
        annotated: counts.annotated,
        failed: counts.failed,
        restartCandidates: toRestart.length,
      },
      "refreshed running pods",
    );
    if (toRestart.length > 0) {
      await this.#enqueue(toRestart, event, removed, term);
      this.#pump();
    }
  }

  async #annotate(
    pod: InjectedPod,
    event: RefreshEvent,
    current: CachedCluster,
    term: AbortSignal,
  ): Promise<"annotated" | "unchanged" | "skipped" | "failed"> {
    const { logger, kube, metrics, hsmCaFile } = this.#options;
    const clusters = await this.#clustersOf(pod, event, current);
    if (clusters === undefined) {
      return "skipped";
    }
    let update;
    try {
      update = annotationUpdate(pod, clusters, hsmCaFile, this.#now());
    } catch (error) {
      if (error instanceof InvalidPodError) {
        logger.warn(
          { namespace: pod.namespace, pod: pod.name, err: error.message },
          "running pod cannot be read for a config update",
        );
        return "skipped";
      }
      throw error;
    }
    if (update === undefined) {
      return "unchanged";
    }
    if (this.#leading() === undefined) {
      return "skipped";
    }
    try {
      await kube.annotatePod(pod.namespace, pod.name, update, term);
    } catch (error) {
      if (error instanceof KubeRequestError && error.statusCode === 404) {
        return "skipped";
      }
      metrics?.recordAnnotated(event.clusterId, "error");
      const status =
        error instanceof KubeRequestError ? error.statusCode : undefined;
      const suppressed = this.#annotateErrors.admit(`${status}`);
      if (suppressed !== undefined) {
        logger.warn(
          {
            namespace: pod.namespace,
            pod: pod.name,
            err: errorText(error),
            suppressedRepeats: suppressed,
          },
          "updating the config annotations of a running pod failed",
        );
      }
      return "failed";
    }
    metrics?.recordAnnotated(event.clusterId, "success");
    logger.debug(
      {
        namespace: pod.namespace,
        pod: pod.name,
        ips: update["cloudhsm/injected-ips"],
        subPathMount: pod.subPathMount,
      },
      pod.subPathMount
        ? "updated the config annotations; the subPath-mounted file changes only when the pod restarts"
        : "updated the config annotations; the kubelet rewrites the mounted file",
    );
    return "annotated";
  }

  /** Returns the pod's clusters in config order, or undefined when one has no usable list. */
  async #clustersOf(
    pod: InjectedPod,
    event: RefreshEvent,
    current: CachedCluster,
  ): Promise<RenderedCluster[] | undefined> {
    const clusters: RenderedCluster[] = [];
    for (const clusterId of pod.clusterIds) {
      if (clusterId === event.clusterId) {
        clusters.push(current);
        continue;
      }
      const availability = await this.#options.directory.availability(
        clusterId,
        event.region,
      );
      if (!availability.ok) {
        this.#options.logger.debug(
          { namespace: pod.namespace, pod: pod.name, clusterId },
          `running pod left unchanged: ${availability.message}`,
        );
        return undefined;
      }
      clusters.push(availability.cluster);
    }
    return clusters;
  }

  /** Resolves the pods' restartable owners and queues each owner once. */
  async #enqueue(
    pods: readonly InjectedPod[],
    event: RefreshEvent,
    removed: readonly string[],
    term: AbortSignal,
  ): Promise<void> {
    const deployments = new Map<string, string | undefined>();
    for (const pod of pods) {
      if (term.aborted) {
        return;
      }
      const target = await this.#restartTarget(pod, deployments, term);
      if (target === undefined) {
        this.#options.logger.debug(
          { namespace: pod.namespace, pod: pod.name },
          "pod with a removed address has no Deployment, StatefulSet or DaemonSet to restart",
        );
        continue;
      }
      const key = `${target.kind}/${target.namespace}/${target.name}`;
      const job = this.#queue.get(key) ?? {
        ...target,
        clusterId: event.clusterId,
        region: event.region,
        staleIps: new Set<string>(),
        newestPodCreatedAt: undefined,
      };
      for (const ip of pod.givenIps) {
        if (removed.includes(ip)) {
          job.staleIps.add(ip);
        }
      }
      if (
        pod.createdAt !== undefined &&
        (job.newestPodCreatedAt === undefined ||
          pod.createdAt > job.newestPodCreatedAt)
      ) {
        job.newestPodCreatedAt = pod.createdAt;
      }
      this.#queue.set(key, job);
    }
    this.#options.metrics?.setPendingRestarts(this.#queue.size);
  }

  /**
   * Returns the workload that `kubectl rollout restart` would roll for this pod: its
   * StatefulSet or DaemonSet, or the Deployment above its ReplicaSet.
   */
  async #restartTarget(
    pod: InjectedPod,
    deployments: Map<string, string | undefined>,
    term: AbortSignal,
  ): Promise<
    { kind: RestartKind; namespace: string; name: string } | undefined
  > {
    const owner = pod.controller;
    if (owner === undefined || !owner.apiVersion.startsWith("apps/")) {
      return undefined;
    }
    const { namespace } = pod;
    if (owner.kind === "StatefulSet" || owner.kind === "DaemonSet") {
      return { kind: owner.kind, namespace, name: owner.name };
    }
    if (owner.kind !== "ReplicaSet") {
      return undefined;
    }
    const cacheKey = `${namespace}/${owner.name}`;
    if (!deployments.has(cacheKey)) {
      deployments.set(
        cacheKey,
        await this.#deploymentOf(namespace, owner.name, term),
      );
    }
    const name = deployments.get(cacheKey);
    return name === undefined
      ? undefined
      : { kind: "Deployment", namespace, name };
  }

  async #deploymentOf(
    namespace: string,
    replicaSet: string,
    term: AbortSignal,
  ): Promise<string | undefined> {
    let object;
    try {
      object = await this.#options.kube.readReplicaSet(
        namespace,
        replicaSet,
        term,
      );
    } catch (error) {
      if (!(error instanceof KubeRequestError && error.statusCode === 404)) {
        this.#options.logger.warn(
          { namespace, replicaSet, err: errorText(error) },
          "reading the ReplicaSet of a pod with a removed address failed; its Deployment is not restarted",
        );
      }
      return undefined;
    }
    const metadata = isObject(object.metadata) ? object.metadata : {};
    const owner = readControllerReference(metadata.ownerReferences);
    return owner?.kind === "Deployment" && owner.apiVersion.startsWith("apps/")
      ? owner.name
      : undefined;
  }

  /** Starts draining the restart queue unless a drain is running. */
  #pump(): void {
    if (this.#drain !== undefined || this.#queue.size === 0) {
      return;
    }
    this.#drain = this.#drainQueue()
      .catch((error: unknown) => {
        this.#options.logger.warn(
          { err: errorText(error) },
          "restarting workloads failed; the next refresh retries",
        );
      })
      .finally(() => {
        this.#drain = undefined;
      });
  }

  /**
   * Restarts queued workloads one at a time, at least restartIntervalMs apart. Returns when the
   * queue is empty, when leadership ends, or when the last refresh of every queued workload's
   * cluster failed. A later refresh event then calls #pump again.
   */
  async #drainQueue(): Promise<void> {
    const interval = this.#options.restartIntervalMs;
    for (let round = 0; round < MAX_DRAIN_ROUNDS; round += 1) {
      const term = this.#leading();
      if (term === undefined || this.#queue.size === 0) {
        return;
      }
      const wait = this.#lastRestartAt + interval - performance.now();
      if (wait > 0) {
        try {
          await sleep(wait, undefined, { signal: term, ref: false });
        } catch {
          return;
        }
        continue;
      }
      const job = this.#nextEligibleJob();
      if (job === undefined) {
        return;
      }
      this.#queue.delete(`${job.kind}/${job.namespace}/${job.name}`);
      this.#options.metrics?.setPendingRestarts(this.#queue.size);
      await this.#restart(job, term);
    }
  }

  /**
   * Returns the first queued job whose cluster's last DescribeClusters succeeded with ACTIVE
   * HSMs. Drops jobs whose removed addresses are all ACTIVE again.
   */
  #nextEligibleJob(): RestartJob | undefined {
    const { directory, logger } = this.#options;
    for (const [key, job] of this.#queue) {
      if (directory.lastError(job.clusterId, job.region) !== undefined) {
        continue;
      }
      const latest = directory.peek(job.clusterId, job.region);
      if (latest === undefined || latest.ips.length === 0) {
        continue;
      }
      if ([...job.staleIps].every((ip) => latest.ips.includes(ip))) {
        this.#queue.delete(key);
        logger.info(
          { kind: job.kind, namespace: job.namespace, name: job.name },
          "workload not restarted: its pods' addresses are ACTIVE again",
        );
        continue;
      }
      return job;
    }
    this.#options.metrics?.setPendingRestarts(this.#queue.size);
    return undefined;
  }

  async #restart(job: RestartJob, term: AbortSignal): Promise<void> {
    const { kube, logger, metrics } = this.#options;
    const target = { kind: job.kind, namespace: job.namespace, name: job.name };
    let workload;
    try {
      workload = await kube.readWorkload(
        job.kind,
        job.namespace,
        job.name,
        term,
      );
    } catch (error) {
      if (!(error instanceof KubeRequestError && error.statusCode === 404)) {
        metrics?.recordRestart(job.kind, "error");
        logger.warn(
          { ...target, err: errorText(error) },
          "reading a workload to restart failed; it is not restarted",
        );
      }
      return;
    }
    const metadata = isObject(workload.metadata) ? workload.metadata : {};
    const template = isObject(workload.spec)
      ? workload.spec.template
      : undefined;
    const templateMetadata = isObject(template) ? template.metadata : undefined;
    const templateAnnotations = stringMap(
      isObject(templateMetadata) ? templateMetadata.annotations : undefined,
    );
    const annotations = stringMap(metadata.annotations);
    const autoRestart =
      templateAnnotations[AUTO_RESTART_ANNOTATION] ??
      annotations[AUTO_RESTART_ANNOTATION];
    if (autoRestart !== "true") {
      logger.info(
        { ...target, staleIps: [...job.staleIps].join(",") },
        `workload holds removed addresses but is not restarted: it does not set ${AUTO_RESTART_ANNOTATION}: "true"`,
      );
      return;
    }
    const restartedAt = Date.parse(
      templateAnnotations[RESTARTED_AT_ANNOTATION] ?? "",
    );
    if (
      job.newestPodCreatedAt !== undefined &&
      restartedAt >= job.newestPodCreatedAt
    ) {
      logger.info(
        target,
        "workload not restarted: a restart requested after its pods were created is rolling them",
      );
      return;
    }
    if (this.#leading() === undefined) {
      return;
    }

    const value = this.#now()
      .toISOString()
      .replace(/\.\d{3}Z$/, "Z");
    try {
      await kube.restartWorkload(
        job.kind,
        job.namespace,
        job.name,
        value,
        term,
      );
    } catch (error) {
      metrics?.recordRestart(job.kind, "error");
      logger.warn(
        { ...target, err: errorText(error) },
        "restarting a workload failed",
      );
      return;
    } finally {
      // The interval counts from the end of the request, so two restarts never overlap.
      this.#lastRestartAt = performance.now();
    }
    metrics?.recordRestart(job.kind, "success");
    logger.info(
      {
        ...target,
        clusterId: job.clusterId,
        staleIps: [...job.staleIps].join(","),
        restartedAt: value,
        nextRestartInSeconds: this.#options.restartIntervalMs / 1000,
      },
      "restarted a workload whose pods hold addresses that are no longer ACTIVE",
    );
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
