import { EventEmitter } from "node:events";
import NodeCache from "node-cache";
import { activeHsms, summarizeStates } from "../injection/addresses.js";
import type { Logger } from "../log.js";
import {
  ClusterNotFoundError,
  DiscoveryError,
  type ClusterSnapshot,
  type Hsm,
  type HsmSource,
} from "./types.js";

export interface DirectoryOptions {
  readonly source: HsmSource;
  /** Time between background DescribeClusters calls for each cluster in use. */
  readonly refreshIntervalMs: number;
  /** How long the last good list is served while refreshes fail. */
  readonly maxStalenessMs: number;
  /** Bound on a DescribeClusters call that an admission waits for, when the cache is cold. */
  readonly requestTimeoutMs: number;
  /** How long "cluster not found" is remembered, so a typo in an annotation cannot hammer AWS. */
  readonly notFoundTtlMs?: number;
  /** Clusters that no admission asked for in this long are no longer refreshed. */
  readonly idleMs?: number;
  readonly logger: Logger;
  readonly now?: () => number;
}

/** A cluster's list at one moment, with its ACTIVE HSMs sorted once per refresh. */
export interface CachedCluster {
  readonly snapshot: ClusterSnapshot;
  readonly active: readonly Hsm[];
  readonly ips: readonly string[];
}

export type Availability =
  | {
      readonly ok: true;
      readonly cluster: CachedCluster;
      readonly ageMs: number;
    }
  | {
      readonly ok: false;
      readonly reason: "not-found" | "unavailable" | "no-active";
      /** A sentence for the pod's creator and the logs, naming cluster, region and cause. */
      readonly message: string;
    };

/** Emitted after every DescribeClusters attempt, for logs, metrics and the running-pod refresher. */
export interface RefreshEvent {
  readonly clusterId: string;
  readonly region: string;
  /** "success", or the error code of the failed call. */
  readonly outcome: string;
  readonly durationMs: number;
  readonly background: boolean;
  /** True when the set of ACTIVE IPs differs from the previous successful response. */
  readonly changed: boolean;
  readonly previous?: CachedCluster;
  readonly current?: CachedCluster;
}

interface Watched {
  readonly clusterId: string;
  readonly region: string;
  lastUsed: number;
  readonly pinned: boolean;
}

const DEFAULT_NOT_FOUND_TTL_MS = 30_000;
const DEFAULT_IDLE_MS = 3_600_000;

/**
 * Keeps the HSM list of every cluster in use, per region and cluster id. Admissions read the
 * cache and do not wait on AWS while it contains a usable list, because a timer refreshes it in
 * the background. At most one DescribeClusters call per cluster is in flight, and concurrent
 * admissions on a cold cache share it.
 */
export class HsmDirectory extends EventEmitter<{ refresh: [RefreshEvent] }> {
  readonly #options: DirectoryOptions;
  readonly #now: () => number;
  readonly #clusters: NodeCache;
  readonly #notFound: NodeCache;
  readonly #inFlight = new Map<string, Promise<CachedCluster>>();
  readonly #watched = new Map<string, Watched>();
  readonly #lastError = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;

  constructor(options: DirectoryOptions) {
    super();
    this.#options = options;
    this.#now = options.now ?? Date.now;
    // Entries expire max-staleness after their last successful refresh, which is exactly the
    // point at which an old list may no longer be handed to pods.
    this.#clusters = new NodeCache({
      stdTTL: options.maxStalenessMs / 1000,
      checkperiod: 60,
      useClones: false,
    });
    this.#notFound = new NodeCache({
      stdTTL: (options.notFoundTtlMs ?? DEFAULT_NOT_FOUND_TTL_MS) / 1000,
      checkperiod: 60,
      useClones: false,
    });
  }

  /**
   * Returns the cluster's usable list, calling DescribeClusters only when nothing usable is
   * cached. Never rejects: every failure becomes an `ok: false` availability.
   */
  async availability(clusterId: string, region: string): Promise<Availability> {
    const key = cacheKey(clusterId, region);
    // A cluster id that AWS does not know is not watched, so a typo in an annotation costs one
    // DescribeClusters call per not-found period instead of one per refresh tick.
    if (this.#notFound.has(key)) {
      return notFound(clusterId, region);
    }
    this.watch(clusterId, region, false);

    const cached = this.#clusters.get<CachedCluster>(key);
    if (cached) {
      return this.#usable(cached);
    }

    try {
      const fresh = await withDeadline(
        this.#fetch(clusterId, region, false),
        this.#options.requestTimeoutMs,
        `DescribeClusters did not answer within ${this.#options.requestTimeoutMs} ms`,
      );
      return this.#usable(fresh);
    } catch (error) {
      if (error instanceof ClusterNotFoundError) {
        return notFound(clusterId, region);
      }
      return {
        ok: false,
        reason: "unavailable",
        message: `no HSM list for cluster ${clusterId} in ${region}: ${errorText(error)}`,
      };
    }
  }

  /** Returns the cached list without calling AWS, or undefined when none is usable. */
  peek(clusterId: string, region: string): CachedCluster | undefined {
    return this.#clusters.get<CachedCluster>(cacheKey(clusterId, region));
  }

  /** Adds a cluster to the background refresh. Pinned clusters are never dropped as idle. */
  watch(clusterId: string, region: string, pinned: boolean): void {
    const key = cacheKey(clusterId, region);
    const existing = this.#watched.get(key);
    if (existing) {
      existing.lastUsed = this.#now();
      return;
    }
    this.#watched.set(key, {
      clusterId,
      region,
      lastUsed: this.#now(),
      pinned,
    });
  }

  /** Starts the refresh timer and the first refresh of every watched cluster. */
  start(): void {
    if (this.#timer) {
      return;
    }
    this.#timer = setInterval(
      () => void this.refreshAll(),
      this.#options.refreshIntervalMs,
    );
    this.#timer.unref();
    void this.refreshAll();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#clusters.close();
    this.#notFound.close();
  }

  /**
   * Refreshes every watched cluster once. Failures keep the previous list, which node-cache
   * drops when it grows older than max-staleness.
   */
  async refreshAll(): Promise<void> {
    if (this.#ticking) {
      return;
    }
    this.#ticking = true;
    try {
      const idleBefore =
        this.#now() - (this.#options.idleMs ?? DEFAULT_IDLE_MS);
      const refreshes: Array<Promise<unknown>> = [];
      for (const [key, watched] of this.#watched) {
        if (!watched.pinned && watched.lastUsed < idleBefore) {
          this.#watched.delete(key);
          continue;
        }
        // Errors are logged and emitted inside #fetch; a failed refresh keeps the old list.
        refreshes.push(
          this.#fetch(watched.clusterId, watched.region, true).catch(
            () => undefined,
          ),
        );
      }
      await Promise.all(refreshes);
    } finally {
      this.#ticking = false;
    }
  }

  /** Describes the last refresh failure of a cluster, or undefined after a success. */
  lastError(clusterId: string, region: string): string | undefined {
    return this.#lastError.get(cacheKey(clusterId, region));
  }

  #usable(cluster: CachedCluster): Availability {
    const { snapshot } = cluster;
    if (cluster.ips.length === 0) {
      return {
        ok: false,
        reason: "no-active",
        message:
          `cluster ${snapshot.clusterId} in ${snapshot.region} has no ACTIVE HSM ` +
          `(${summarizeStates(snapshot.hsms)})`,
      };
    }
    return { ok: true, cluster, ageMs: this.#now() - snapshot.fetchedAt };
  }

  #fetch(
    clusterId: string,
    region: string,
    background: boolean,
  ): Promise<CachedCluster> {
    const key = cacheKey(clusterId, region);
    const running = this.#inFlight.get(key);
    if (running) {
      return running;
    }
    const call = this.#describe(clusterId, region, background).finally(() => {
      this.#inFlight.delete(key);
    });
    this.#inFlight.set(key, call);
    return call;
  }

  async #describe(
    clusterId: string,
    region: string,
    background: boolean,
  ): Promise<CachedCluster> {
    const key = cacheKey(clusterId, region);
    const started = this.#now();
    const previous = this.#clusters.get<CachedCluster>(key);
    const { logger } = this.#options;
    try {
      const snapshot = await this.#options.source.describe(clusterId, region);
      const current = toCached(snapshot);
      const changed =
        previous !== undefined &&
        previous.ips.join(",") !== current.ips.join(",");
      this.#clusters.set(key, current);
      this.#notFound.del(key);
      this.#lastError.delete(key);
      const durationMs = this.#now() - started;
      logger.info(
        {
          clusterId,
          region,
          outcome: "success",
          durationMs,
          hsmCount: snapshot.hsms.length,
          activeCount: current.ips.length,
          changed,
          // The first list of a cluster has nothing to compare with, so changed is false.
          initial: previous === undefined,
        },
        "DescribeClusters refreshed the HSM list",
      );
      this.emit("refresh", {
        clusterId,
        region,
        outcome: "success",
        durationMs,
        background,
        changed,
        previous,
        current,
      });
      return current;
    } catch (error) {
      const outcome = error instanceof DiscoveryError ? error.code : "Error";
      const durationMs = this.#now() - started;
      if (error instanceof ClusterNotFoundError) {
        // A deleted cluster has no HSMs to serve, so the old list goes too.
        this.#clusters.del(key);
        this.#notFound.set(key, true);
        if (this.#watched.get(key)?.pinned === false) {
          this.#watched.delete(key);
        }
      }
      this.#lastError.set(key, errorText(error));
      logger.warn(
        {
          clusterId,
          region,
          outcome,
          durationMs,
          cachedListAgeMs: previous
            ? this.#now() - previous.snapshot.fetchedAt
            : null,
          err: errorText(error),
        },
        previous && !(error instanceof ClusterNotFoundError)
          ? "DescribeClusters failed; serving the last good HSM list"
          : "DescribeClusters failed",
      );
      this.emit("refresh", {
        clusterId,
        region,
        outcome,
        durationMs,
        background,
        changed: false,
        previous,
      });
      throw error;
    }
  }
}

function cacheKey(clusterId: string, region: string): string {
  return `${region}/${clusterId}`;
}

function toCached(snapshot: ClusterSnapshot): CachedCluster {
  const active = activeHsms(snapshot.hsms);
  return { snapshot, active, ips: active.map((hsm) => hsm.eniIp!) };
}

function notFound(clusterId: string, region: string): Availability {
  return {
    ok: false,
    reason: "not-found",
    message: `cluster ${clusterId} not found in ${region}: check the cloudhsm/cluster-id annotation or --cluster-id`,
  };
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Waits for `promise` at most `ms`; the promise itself goes on and fills the cache when it ends. */
function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  message: string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new DiscoveryError(message, "TimeoutError")),
      ms,
    );
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
