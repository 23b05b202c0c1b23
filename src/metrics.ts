/**
 * Prometheus metrics of one webhook, in a registry of its own so that several webhooks can run
 * in one process, and the plain-HTTP server that exposes them at GET /metrics.
 *
 * Every label has a bounded set of values: results, reasons, error codes, object kinds and HTTP
 * status codes. Cluster ids appear only for clusters that DescribeClusters found, so a pod that
 * names a made-up cluster adds no series. Pod names and uids are never labels.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
  type Metric,
} from "prom-client";
import type { HandlerResult } from "./admission/handler.js";
import type { HsmDirectory, RefreshEvent } from "./discovery/directory.js";
import type { LookupKind, LookupOutcome } from "./kube/lookup.js";
import type { Logger } from "./log.js";
import type { AdmissionObserver } from "./server/app.js";

export const METRIC_PREFIX = "cloudhsm_webhook_";

/**
 * Buckets of the admission latency histogram, in seconds. A warm-cache admission takes well
 * under a millisecond, and a cold-cache one waits for DescribeClusters up to --aws-timeout.
 */
export const ADMISSION_BUCKETS_SECONDS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
  0.5, 1, 2.5, 5, 10,
];

/** Buckets of the DescribeClusters latency histogram, in seconds, up to a slow retried call. */
export const DESCRIBE_BUCKETS_SECONDS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** The label value that replaces values past a label's limit. */
export const OTHER_LABEL_VALUE = "other";

/**
 * Keeps a label's set of values bounded: the first `max` distinct values pass through, and
 * every later new value becomes "other".
 */
export class BoundedLabel {
  readonly #seen = new Set<string>();

  constructor(readonly max: number) {}

  value(raw: string): string {
    if (this.#seen.has(raw)) {
      return raw;
    }
    if (this.#seen.size >= this.max) {
      return OTHER_LABEL_VALUE;
    }
    this.#seen.add(raw);
    return raw;
  }
}

/** Returns the `result` label of an admission: the handler's outcome, or "error" for a fault. */
export function admissionResult(result: HandlerResult | undefined): string {
  return result?.outcome ?? "error";
}

/** Returns the `reason` label of an admission: the handler's reason, "none", or "internal-error". */
export function admissionReason(result: HandlerResult | undefined): string {
  if (result === undefined) {
    return "internal-error";
  }
  return result.reason ?? "none";
}

interface TrackedCluster {
  readonly clusterId: string;
  readonly region: string;
}

/** The metric families of one webhook and the hooks that feed them. */
export class WebhookMetrics {
  readonly registry = new Registry();
  readonly #now: () => number;
  /** Admissions not yet added to the admissions counter. See the observer. */
  readonly #pendingAdmissions = new PendingCounts<"result" | "reason">();
  readonly #admissionSeconds: OneLabelHistogram;
  readonly #describeCalls: Counter<"outcome">;
  readonly #describeSeconds: Histogram<"outcome">;
  readonly #setChanges: Counter<"cluster_id" | "region">;
  readonly #lookups: Counter<"kind" | "outcome" | "cache_hit">;
  /** Lookups not yet added to #lookups. See recordLookup. */
  readonly #pendingLookups = new PendingCounts<
    "kind" | "outcome" | "cache_hit"
  >();
  readonly #certificateReloads: Counter<"outcome">;
  readonly #malformedRequests: Counter<"status_code">;
  readonly #reasons = new BoundedLabel(32);
  readonly #describeOutcomes = new BoundedLabel(32);
  readonly #statusCodes = new BoundedLabel(32);
  /** Clusters with at least one successful DescribeClusters, by "region/clusterId". */
  readonly #clusters = new Map<string, TrackedCluster>();
  #directory: HsmDirectory | undefined;

  /** `now` returns milliseconds since the epoch, like Date.now, for the list age gauge. */
  constructor(options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    const registers = [this.registry];

    const pendingAdmissions = this.#pendingAdmissions;
    new Counter({
      name: `${METRIC_PREFIX}admissions_total`,
      help: "Admission responses sent, by result and reason",
      labelNames: ["result", "reason"],
      registers,
      collect() {
        pendingAdmissions.addTo(this);
      },
    });
    this.#admissionSeconds = new OneLabelHistogram(
      {
        name: `${METRIC_PREFIX}admission_duration_seconds`,
        help: "Time from a parsed AdmissionReview to its response, in seconds",
        labelName: "result",
        buckets: ADMISSION_BUCKETS_SECONDS,
      },
      this.registry,
    );
    this.#describeCalls = new Counter({
      name: `${METRIC_PREFIX}describe_clusters_calls_total`,
      help: "DescribeClusters lookups of one cluster by outcome: success or the error code. The pages and retries of a lookup count once",
      labelNames: ["outcome"],
      registers,
    });
    this.#describeSeconds = new Histogram({
      name: `${METRIC_PREFIX}describe_clusters_duration_seconds`,
      help: "Duration of DescribeClusters lookups, pages and retries included, in seconds",
      labelNames: ["outcome"],
      buckets: DESCRIBE_BUCKETS_SECONDS,
      registers,
    });
    this.#setChanges = new Counter({
      name: `${METRIC_PREFIX}hsm_set_changes_total`,
      help: "Refreshes whose set of ACTIVE HSM addresses differed from the previous list",
      labelNames: ["cluster_id", "region"],
      registers,
    });
    const pendingLookups = this.#pendingLookups;
    this.#lookups = new Counter({
      name: `${METRIC_PREFIX}kube_lookups_total`,
      help: "Owner and namespace reads by kind and outcome. cache_hit is true when the read sent no API request",
      labelNames: ["kind", "outcome", "cache_hit"],
      registers,
      collect() {
        pendingLookups.addTo(this);
      },
    });
    this.#certificateReloads = new Counter({
      name: `${METRIC_PREFIX}certificate_reloads_total`,
      help: "Serving certificate reloads after a file change, by outcome. A failure that repeats with the same error counts once",
      labelNames: ["outcome"],
      registers,
    });
    this.#malformedRequests = new Counter({
      name: `${METRIC_PREFIX}malformed_requests_total`,
      help: "Requests rejected with a 4xx status before they reached the admission handler",
      labelNames: ["status_code"],
      registers,
    });

    // The gauges read the directory's cache at scrape time, so they show it as it is then.
    const clusters = this.#clusters;
    const peek = (cluster: TrackedCluster) =>
      this.#directory?.peek(cluster.clusterId, cluster.region);
    const now = this.#now;
    new Gauge({
      name: `${METRIC_PREFIX}active_hsms`,
      help: "ACTIVE HSMs with an address in the cached list. Absent while no usable list is cached",
      labelNames: ["cluster_id", "region"],
      registers,
      collect() {
        this.reset();
        for (const cluster of clusters.values()) {
          const cached = peek(cluster);
          if (cached !== undefined) {
            this.set(labelsOf(cluster), cached.ips.length);
          }
        }
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}hsm_list_age_seconds`,
      help: "Age of the cached HSM list in seconds. Absent while no usable list is cached",
      labelNames: ["cluster_id", "region"],
      registers,
      collect() {
        this.reset();
        for (const cluster of clusters.values()) {
          const cached = peek(cluster);
          if (cached !== undefined) {
            const ageMs = now() - cached.snapshot.fetchedAt;
            this.set(labelsOf(cluster), Math.max(0, ageMs) / 1000);
          }
        }
      },
    });

    collectDefaultMetrics({ register: this.registry });
  }

  /** Hooks for the HTTPS server in ./server/app.ts. */
  readonly observer: AdmissionObserver = {
    admission: (result, seconds) => {
      // prom-client's inc and observe took about 1 µs per admission in a loop, so admissions
      // are counted in PendingCounts and a OneLabelHistogram.
      const label = admissionResult(result);
      const reason = this.#reasons.value(admissionReason(result));
      this.#pendingAdmissions.add(`${label}|${reason}`, () => ({
        result: label,
        reason,
      }));
      this.#admissionSeconds.observe(label, seconds);
    },
    badRequest: (statusCode) => {
      this.#malformedRequests.inc({
        status_code: this.#statusCodes.value(String(statusCode)),
      });
    },
  };

  /** Records one DescribeClusters lookup, in the shape of AwsHsmSource's onCall hook. */
  recordDescribeClusters(outcome: string, durationMs: number): void {
    this.#describeCalls.inc({ outcome: this.#describeOutcomes.value(outcome) });
    this.#describeSeconds.observe(
      { outcome: outcome === "success" ? "success" : "error" },
      durationMs / 1000,
    );
  }

  /** Records one owner or namespace read, in the shape of WorkloadLookup's onLookup hook. */
  recordLookup(
    kind: LookupKind,
    outcome: LookupOutcome,
    cacheHit: boolean,
  ): void {
    // Each pod makes about three lookups, and prom-client hashes the labels of every inc.
    const key =
      outcome === "ok" && cacheHit ? kind : `${kind}|${outcome}|${cacheHit}`;
    this.#pendingLookups.add(key, () => ({
      kind,
      outcome,
      cache_hit: String(cacheHit),
    }));
  }

  /** Records one certificate reload, in the shape of CertificateReloader's onReload hook. */
  recordCertificateReload(outcome: "success" | "error"): void {
    this.#certificateReloads.inc({ outcome });
  }

  /**
   * Follows the directory's refresh events for the set-change counter, and reads its cache for
   * the per-cluster gauges. Returns a function that stops following the events.
   */
  watchDirectory(directory: HsmDirectory): () => void {
    this.#directory = directory;
    const listener = (event: RefreshEvent) => this.#onRefresh(event);
    directory.on("refresh", listener);
    return () => {
      directory.off("refresh", listener);
    };
  }

  #onRefresh(event: RefreshEvent): void {
    if (event.outcome !== "success") {
      return;
    }
    const cluster = { clusterId: event.clusterId, region: event.region };
    const key = `${cluster.region}/${cluster.clusterId}`;
    if (!this.#clusters.has(key)) {
      this.#clusters.set(key, cluster);
      // Start the counter at 0, so that rate() and increase() see the first change.
      this.#setChanges.inc(labelsOf(cluster), 0);
    }
    if (event.changed) {
      this.#setChanges.inc(labelsOf(cluster));
    }
  }
}

/**
 * Counts of a prom-client Counter, by label values, that are added to it when it is collected.
 * prom-client's inc validates and hashes the labels on every call.
 */
class PendingCounts<L extends string> {
  readonly #counts = new Map<
    string,
    { labels: Record<L, string>; count: number }
  >();

  /** Counts one event. `key` names the label values, and `labels` builds them on first use. */
  add(key: string, labels: () => Record<L, string>): void {
    const pending = this.#counts.get(key);
    if (pending === undefined) {
      this.#counts.set(key, { labels: labels(), count: 1 });
    } else {
      pending.count += 1;
    }
  }

  /** Adds the counts to `counter` and sets them to zero. */
  addTo(counter: Counter<L>): void {
    for (const pending of this.#counts.values()) {
      if (pending.count > 0) {
        counter.inc(pending.labels, pending.count);
        pending.count = 0;
      }
    }
  }
}

/** One sample of a OneLabelHistogram, as prom-client's registry reads it. */
interface HistogramValue {
  labels: Record<string, string | number>;
  sharedLabels: Record<string, string>;
  value: number;
  metricName: string;
}

/** The counts of one series of a OneLabelHistogram. */
interface HistogramSeries {
  /** Observations per bucket, not cumulative, with the last entry for those above every bound. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/**
 * A histogram with one label, registered in a prom-client Registry and rendered as prom-client's
 * Histogram renders, which a test checks. An observation is an array update, where prom-client's
 * Histogram validates and hashes its labels on every observation.
 */
export class OneLabelHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = "histogram" as const;
  readonly aggregator = "sum" as const;
  readonly #labelName: string;
  readonly #buckets: readonly number[];
  readonly #series = new Map<string, HistogramSeries>();

  constructor(
    options: {
      name: string;
      help: string;
      labelName: string;
      /** Upper bounds in increasing order. */
      buckets: readonly number[];
    },
    registry: Registry,
  ) {
    this.name = options.name;
    this.help = options.help;
    this.#labelName = options.labelName;
    this.#buckets = options.buckets;
    registry.registerMetric(this as unknown as Metric);
  }

  observe(labelValue: string, value: number): void {
    let series = this.#series.get(labelValue);
    if (series === undefined) {
      series = {
        counts: new Float64Array(this.#buckets.length + 1),
        sum: 0,
        count: 0,
      };
      this.#series.set(labelValue, series);
    }
    let index = 0;
    while (index < this.#buckets.length && value > this.#buckets[index]!) {
      index += 1;
    }
    series.counts[index]! += 1;
    series.sum += value;
    series.count += 1;
  }

  /** Returns the series in the shape of prom-client's Histogram.get, for the registry. */
  get(): Promise<{
    name: string;
    help: string;
    type: "histogram";
    values: HistogramValue[];
    aggregator: "sum";
  }> {
    const values: HistogramValue[] = [];
    const bucketName = `${this.name}_bucket`;
    for (const [labelValue, series] of this.#series) {
      const sharedLabels = { [this.#labelName]: labelValue };
      let cumulative = 0;
      this.#buckets.forEach((bound, index) => {
        cumulative += series.counts[index]!;
        values.push({
          labels: { le: bound },
          sharedLabels,
          value: cumulative,
          metricName: bucketName,
        });
      });
      values.push(
        {
          labels: { le: "+Inf" },
          sharedLabels,
          value: series.count,
          metricName: bucketName,
        },
        {
          labels: {},
          sharedLabels,
          value: series.sum,
          metricName: `${this.name}_sum`,
        },
        {
          labels: {},
          sharedLabels,
          value: series.count,
          metricName: `${this.name}_count`,
        },
      );
    }
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: this.aggregator,
    });
  }

  reset(): void {
    this.#series.clear();
  }
}

function labelsOf(cluster: TrackedCluster): {
  cluster_id: string;
  region: string;
} {
  return { cluster_id: cluster.clusterId, region: cluster.region };
}

/** A running /metrics listener. */
export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Serves GET /metrics over plain HTTP on `host` and `port`, so that a scraper needs no webhook
 * certificate. Port 0 picks a free port. The caller decides whether to start the server at all.
 */
export async function startMetricsServer(
  registry: Registry,
  options: { host: string; port: number; logger: Logger },
): Promise<MetricsServer> {
  const { logger } = options;
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    if (path !== "/metrics") {
      response.writeHead(404, { "content-type": "text/plain" });
      response.end("not found; metrics are at /metrics\n");
      return;
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD" });
      response.end();
      return;
    }
    registry.metrics().then(
      (text) => {
        response.writeHead(200, { "content-type": registry.contentType });
        response.end(request.method === "HEAD" ? undefined : text);
      },
      (error: unknown) => {
        logger.warn(
          { err: error instanceof Error ? error.message : String(error) },
          "collecting metrics failed",
        );
        response.writeHead(500, { "content-type": "text/plain" });
        response.end("collecting metrics failed; see the webhook logs\n");
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (error) => {
    logger.warn(
      { err: error.message, port: options.port },
      "metrics listener failed",
    );
  });
  const { port } = server.address() as AddressInfo;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
