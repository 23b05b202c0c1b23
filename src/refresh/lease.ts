/**
 * Leader election on a coordination.k8s.io/v1 Lease, modeled on client-go's leaderelection
 * package. The holder renews the Lease every retry period. Another replica takes it over only
 * after it saw no renewal for the lease duration, measured on its own clock.
 */
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import type { Logger } from "../log.js";
import type { LeaseRecord, RefreshKube, StoredLease } from "./kube.js";

export interface LeaseTimings {
  /** How long a Lease that is not renewed keeps other replicas from taking it. */
  readonly leaseDurationMs: number;
  /** The holder stops acting when it could not renew for this long. Must be below leaseDurationMs. */
  readonly renewDeadlineMs: number;
  /** Time between two attempts to acquire or renew. */
  readonly retryPeriodMs: number;
}

/** kube-controller-manager's defaults: 15 s, 10 s and 2 s. */
export const DEFAULT_LEASE_TIMINGS: LeaseTimings = {
  leaseDurationMs: 15_000,
  renewDeadlineMs: 10_000,
  retryPeriodMs: 2_000,
};

export interface LeaseElectorOptions {
  readonly kube: Pick<
    RefreshKube,
    "readLease" | "createLease" | "replaceLease"
  >;
  readonly namespace: string;
  readonly name: string;
  /** This replica's holderIdentity, such as its pod name. */
  readonly identity: string;
  readonly timings?: LeaseTimings;
  readonly logger: Logger;
  /** Wall clock for the Lease's timestamps, in ms since the epoch. */
  readonly now?: () => number;
}

type Attempt = "leader" | "follower" | "unknown";

/**
 * Acquires and renews one Lease. Emits `started` with a signal that aborts when leadership ends,
 * and `stopped` when it ends. Leadership ends when another replica holds the Lease, when no
 * renewal succeeded within the renew deadline, or on stop().
 */
export class LeaseElector extends EventEmitter<{
  started: [AbortSignal];
  stopped: [];
}> {
  readonly #options: LeaseElectorOptions;
  readonly #timings: LeaseTimings;
  readonly #now: () => number;
  #running = false;
  #timer: NodeJS.Timeout | undefined;
  #deadlineTimer: NodeJS.Timeout | undefined;
  #attempt: Promise<void> | undefined;
  #term: AbortController | undefined;
  /** performance.now() at the start of the last successful acquire or renew. */
  #renewedAt = 0;
  #observedRecord = "";
  /** performance.now() when the Lease record last changed, as this replica saw it. */
  #observedAt = 0;

  constructor(options: LeaseElectorOptions) {
    super();
    this.#options = options;
    this.#timings = options.timings ?? DEFAULT_LEASE_TIMINGS;
    this.#now = options.now ?? Date.now;
    const { leaseDurationMs, renewDeadlineMs, retryPeriodMs } = this.#timings;
    if (
      !(retryPeriodMs > 0) ||
      !(renewDeadlineMs > retryPeriodMs) ||
      !(leaseDurationMs > renewDeadlineMs)
    ) {
      throw new RangeError(
        `invalid lease timings: expected 0 < retryPeriodMs < renewDeadlineMs < leaseDurationMs, got ${retryPeriodMs}, ${renewDeadlineMs}, ${leaseDurationMs}`,
      );
    }
  }

  /** True while this replica holds the Lease and renewed it within the renew deadline. */
  isLeader(): boolean {
    return (
      this.#term !== undefined &&
      !this.#term.signal.aborted &&
      performance.now() - this.#renewedAt < this.#timings.renewDeadlineMs
    );
  }

  /** The signal of the current leadership term, or undefined when not leading. */
  get signal(): AbortSignal | undefined {
    return this.isLeader() ? this.#term?.signal : undefined;
  }

  start(): void {
    if (this.#running) {
      return;
    }
    this.#running = true;
    this.#schedule(0);
  }

  /** Stops trying, ends leadership at once, and releases a held Lease so another replica can take it. */
  async stop(): Promise<void> {
    if (!this.#running) {
      return;
    }
    this.#running = false;
    clearTimeout(this.#timer);
    await this.#attempt;
    const wasLeading = this.#term !== undefined;
    this.#stepDown("elector stopped");
    if (wasLeading) {
      await this.#release();
    }
  }

  #schedule(delayMs: number): void {
    this.#timer = setTimeout(() => {
      this.#attempt = this.#tryAcquireOrRenew().finally(() => {
        this.#attempt = undefined;
        if (this.#running) {
          this.#schedule(this.#nextDelay());
        }
      });
    }, delayMs);
    this.#timer.unref();
  }

  /** A leader renews every retry period. A waiting replica adds up to 20% jitter, so replicas do not retry in step. */
  #nextDelay(): number {
    const { retryPeriodMs } = this.#timings;
    return this.#term === undefined
      ? retryPeriodMs * (1 + Math.random() * 0.2)
      : retryPeriodMs;
  }

  async #tryAcquireOrRenew(): Promise<void> {
    const started = performance.now();
    let outcome: Attempt;
    try {
      outcome = await this.#attemptOnce(started);
    } catch (error) {
      this.#options.logger.warn(
        {
          lease: `${this.#options.namespace}/${this.#options.name}`,
          err: error instanceof Error ? error.message : String(error),
        },
        "leader election: Lease request failed",
      );
      outcome = "unknown";
    }
    if (!this.#running) {
      return;
    }
    if (outcome === "leader") {
      this.#renewedAt = started;
      this.#armDeadline();
      if (this.#term === undefined) {
        this.#term = new AbortController();
        this.#options.logger.info(
          {
            lease: `${this.#options.namespace}/${this.#options.name}`,
            identity: this.#options.identity,
          },
          "leader election: acquired the Lease",
        );
        this.emit("started", this.#term.signal);
      }
    } else if (outcome === "follower") {
      this.#stepDown("another replica holds the Lease");
    }
  }

  async #attemptOnce(started: number): Promise<Attempt> {
    const { kube, namespace, name, identity } = this.#options;
    const now = this.#now();
    const durationSeconds = Math.ceil(this.#timings.leaseDurationMs / 1000);
    const stored = await kube.readLease(namespace, name);
    if (stored === undefined) {
      const created = await kube.createLease(namespace, name, {
        holderIdentity: identity,
        leaseDurationSeconds: durationSeconds,
        acquireTime: now,
        renewTime: now,
        leaseTransitions: 0,
      });
      return created ? "leader" : "follower";
    }

    this.#observe(stored, started);
    const { record } = stored;
    const heldByOther =
      record.holderIdentity !== "" && record.holderIdentity !== identity;
    const expiresAt = this.#observedAt + record.leaseDurationSeconds * 1000;
    if (heldByOther && expiresAt > started) {
      return "follower";
    }
    const keeps = record.holderIdentity === identity;
    const next: LeaseRecord = {
      holderIdentity: identity,
      leaseDurationSeconds: durationSeconds,
      acquireTime:
        keeps && Number.isFinite(record.acquireTime) ? record.acquireTime : now,
      renewTime: now,
      leaseTransitions: keeps
        ? record.leaseTransitions
        : record.leaseTransitions + 1,
    };
    const replaced = await kube.replaceLease(
      namespace,
      name,
      stored.resourceVersion,
      next,
    );
    // A conflict means that another replica wrote the Lease after it was read. The next attempt
    // reads it again, and leadership, if held, lasts until the renew deadline.
    return replaced ? "leader" : "unknown";
  }

  /** Remembers when the Lease record last changed, on this replica's monotonic clock. */
  #observe(stored: StoredLease, at: number): void {
    const key = JSON.stringify(stored.record);
    if (key !== this.#observedRecord) {
      this.#observedRecord = key;
      this.#observedAt = at;
    }
  }

  #armDeadline(): void {
    clearTimeout(this.#deadlineTimer);
    const remaining =
      this.#renewedAt + this.#timings.renewDeadlineMs - performance.now();
    this.#deadlineTimer = setTimeout(
      () =>
        this.#stepDown("the Lease was not renewed within the renew deadline"),
      Math.max(0, remaining),
    );
    this.#deadlineTimer.unref();
  }

  #stepDown(reason: string): void {
    clearTimeout(this.#deadlineTimer);
    const term = this.#term;
    if (term === undefined) {
      return;
    }
    this.#term = undefined;
    term.abort(new Error(`leadership ended: ${reason}`));
    this.#options.logger.warn(
      {
        lease: `${this.#options.namespace}/${this.#options.name}`,
        identity: this.#options.identity,
        reason,
      },
      "leader election: stopped leading",
    );
    this.emit("stopped");
  }

  /** Clears the holder so that another replica can take over without waiting for expiry. */
  async #release(): Promise<void> {
    const { kube, namespace, name, identity, logger } = this.#options;
    try {
      const stored = await kube.readLease(namespace, name);
      if (stored === undefined || stored.record.holderIdentity !== identity) {
        return;
      }
      const now = this.#now();
      await kube.replaceLease(namespace, name, stored.resourceVersion, {
        holderIdentity: "",
        leaseDurationSeconds: 1,
        acquireTime: now,
        renewTime: now,
        leaseTransitions: stored.record.leaseTransitions,
      });
    } catch (error) {
      logger.warn(
        {
          lease: `${namespace}/${name}`,
          err: error instanceof Error ? error.message : String(error),
        },
        "leader election: releasing the Lease failed; another replica takes it after the lease duration",
      );
    }
  }
}
