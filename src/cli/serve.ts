import { AdmissionHandler, type Decider } from "../admission/handler.js";
import { chainDecider, podDecider } from "../admission/decide.js";
import {
  SERVE_FLAGS,
  formatFlagHelp,
  readFlags,
  readServeConfig,
  type DiscoveryConfig,
  type ServeConfig,
} from "../config.js";
import { AwsHsmSource } from "../discovery/aws-source.js";
import { HsmDirectory } from "../discovery/directory.js";
import { StaticHsmSource } from "../discovery/static-source.js";
import type { HsmSource } from "../discovery/types.js";
import { WorkloadLookup } from "../kube/lookup.js";
import { createServerLogger, type Logger } from "../log.js";
import {
  WebhookMetrics,
  startMetricsServer,
  type MetricsServer,
} from "../metrics.js";
import type { RunningPodRefresher } from "../refresh/controller.js";
import {
  createRunningPodRefresher,
  type RefresherSetup,
} from "../refresh/setup.js";
import { buildApp, type ReadinessState } from "../server/app.js";
import { CertificateReloader, loadKeyPair } from "../server/tls.js";

export const SERVE_USAGE = `Usage: cloudhsm-webhook serve [flags]

Serves the mutating admission webhook over HTTPS. Flags fall back to the environment
variable shown, then to the default.

Flags:
${formatFlagHelp(SERVE_FLAGS)}
`;

/** A running webhook, for tests and the CLI. */
export interface RunningWebhook {
  readonly port: number;
  readonly directory: HsmDirectory;
  readonly readiness: ReadinessState;
  readonly metrics: WebhookMetrics;
  /** The running-pod refresher, or undefined under --refresh-running=off. */
  readonly refresher: RunningPodRefresher | undefined;
  /** The port of GET /metrics, or undefined when --metrics-port is 0. */
  readonly metricsPort: number | undefined;
  /** Stops accepting requests, lets in-flight ones finish, and releases timers. */
  close(): Promise<void>;
}

/** Builds the HSM source: the static file when given, AWS otherwise. */
export function createSource(
  config: DiscoveryConfig,
  hooks: { onCall?: (outcome: string, durationMs: number) => void } = {},
): HsmSource {
  if (config.staticHsms !== undefined) {
    return new StaticHsmSource(config.staticHsms);
  }
  return new AwsHsmSource({
    endpoint: config.awsEndpoint,
    timeoutMs: config.awsTimeoutMs,
    onCall: hooks.onCall,
  });
}

/**
 * Connects to the API server for owner and namespace lookups: in-cluster config, or KUBECONFIG
 * outside a cluster. Without either, only pod annotations opt pods in, and a warning is logged.
 */
function createLookup(
  config: ServeConfig,
  logger: Logger,
  metrics: WebhookMetrics,
): WorkloadLookup | undefined {
  try {
    return WorkloadLookup.fromEnvironment({
      cacheTtlSeconds: config.lookupCacheTtlMs / 1000,
      requestTimeoutMs: config.lookupTimeoutMs,
      onLookup: (kind, outcome, cacheHit) =>
        metrics.recordLookup(kind, outcome, cacheHit),
    });
  } catch (error) {
    logger.warn(
      { err: (error as Error).message },
      "no Kubernetes API access: only pod annotations can opt pods in",
    );
    return undefined;
  }
}

/** Starts the webhook with a parsed configuration. */
export async function startWebhook(
  config: ServeConfig,
  overrides: {
    decide?: Decider;
    lookup?: WorkloadLookup;
    logger?: ReturnType<typeof createServerLogger>;
    /** API access, Lease identity and timings of the refresher, for tests. */
    refresher?: Partial<
      Pick<RefresherSetup, "kubeConfig" | "identity" | "namespace" | "timings">
    >;
  } = {},
): Promise<RunningWebhook> {
  const logger = overrides.logger ?? createServerLogger(config.logLevel);
  const tls = await loadKeyPair(config.tlsCert, config.tlsKey);

  const metrics = new WebhookMetrics();
  const source = createSource(config, {
    onCall: (outcome, durationMs) =>
      metrics.recordDescribeClusters(outcome, durationMs),
  });
  const directory = new HsmDirectory({
    source,
    refreshIntervalMs: config.refreshIntervalMs,
    maxStalenessMs: config.maxStalenessMs,
    requestTimeoutMs: config.awsTimeoutMs,
    logger,
  });
  directory.watch(config.clusterId, config.region, true);
  metrics.watchDirectory(directory);

  let ready = false;
  directory.on("refresh", (event) => {
    if (
      event.outcome === "success" &&
      event.clusterId === config.clusterId &&
      event.region === config.region
    ) {
      ready = true;
    }
  });
  const readiness: ReadinessState = { ready: () => ready, draining: false };

  // Built before listening, so a missing API configuration fails the start.
  let refresher: RunningPodRefresher | undefined;
  try {
    refresher =
      config.refreshRunning === "off"
        ? undefined
        : createRunningPodRefresher({
            mode: config.refreshRunning,
            directory,
            hsmCaFile: config.hsmCaFile,
            restartIntervalMs: config.restartIntervalMs,
            logger,
            registry: metrics.registry,
            ...overrides.refresher,
          });
  } catch (error) {
    directory.stop();
    throw error;
  }

  const lookup = overrides.decide
    ? undefined
    : (overrides.lookup ?? createLookup(config, logger, metrics));
  const defaults = { clusterId: config.clusterId, region: config.region };
  const decide =
    overrides.decide ??
    (lookup
      ? chainDecider({
          reader: {
            read: (namespace, owners) => lookup.lookup(namespace, owners),
            readCached: (namespace, owners) =>
              lookup.lookupCached(namespace, owners),
          },
          defaults,
          onLookupError: config.onLookupError,
          logger,
        })
      : podDecider(defaults));
  const handler = new AdmissionHandler({
    directory,
    decide,
    hsmCaFile: config.hsmCaFile,
    onUnavailable: config.onUnavailable,
  });
  const app = buildApp({
    handler,
    tls,
    readiness,
    logger,
    observer: metrics.observer,
  });
  const reloader = new CertificateReloader(
    {
      certPath: config.tlsCert,
      keyPath: config.tlsKey,
      target: app.server,
      logger,
      onReload: (outcome) => metrics.recordCertificateReload(outcome),
    },
    tls,
  );

  await app.listen({ port: config.port, host: config.host });
  let metricsServer: MetricsServer | undefined;
  if (config.metricsPort !== 0) {
    try {
      metricsServer = await startMetricsServer(metrics.registry, {
        host: config.host,
        port: config.metricsPort,
        logger,
      });
    } catch (error) {
      // Usually EADDRINUSE. Nothing has started yet except the HTTPS listener and the caches.
      await app.close();
      directory.stop();
      lookup?.close();
      throw error;
    }
  }
  directory.start();
  reloader.start();
  refresher?.start();
  const address = app.server.address();
  const port =
    typeof address === "object" && address !== null
      ? address.port
      : config.port;
  logger.info(
    {
      port,
      clusterId: config.clusterId,
      region: config.region,
      source: config.staticHsms ? "static" : "aws",
      metricsPort: metricsServer?.port ?? null,
    },
    "cloudhsm-webhook serving",
  );

  return {
    port,
    directory,
    readiness,
    metrics,
    metricsPort: metricsServer?.port,
    refresher,
    async close() {
      readiness.draining = true;
      reloader.stop();
      await Promise.all([
        app.close(),
        metricsServer?.close(),
        refresher?.stop(),
      ]);
      directory.stop();
      lookup?.close();
      if (source instanceof AwsHsmSource) {
        source.destroy();
      }
    },
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs `serve` until SIGTERM or SIGINT. On the signal, /readyz turns 503 at once. After
 * --shutdown-delay the listener closes, in-flight requests finish, and the process exits 0.
 * Past --shutdown-timeout it exits 1.
 */
export async function runServe(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<number> {
  const { values, help } = readFlags(SERVE_FLAGS, argv, env);
  if (help) {
    process.stdout.write(SERVE_USAGE);
    return 0;
  }
  const config = readServeConfig(values);
  const logger = createServerLogger(config.logLevel);

  // Handlers stay installed until exit, because a signal without one would end the process at
  // once and lose the log lines still buffered. Before the server serves, there is nothing to
  // drain, so a signal exits as soon as the log is written.
  let onSignal = (signal: NodeJS.Signals): void => {
    logger.info({ signal }, "stopping before the server started");
    logger.flush(() => process.exit(0));
    setTimeout(() => process.exit(0), LOG_FLUSH_WAIT_MS);
  };
  const handleSignal = (signal: NodeJS.Signals): void => onSignal(signal);
  process.on("SIGTERM", handleSignal);
  process.on("SIGINT", handleSignal);

  const webhook = await startWebhook(config, { logger });

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) {
        return;
      }
      stopping = true;
      webhook.readiness.draining = true;
      logger.info(
        { signal, shutdownDelayMs: config.shutdownDelayMs },
        "shutting down: readiness is now 503, finishing in-flight requests",
      );
      const forced = setTimeout(() => {
        logger.error(
          { timeoutMs: config.shutdownTimeoutMs },
          "shutdown timed out with requests in flight",
        );
        // Open connections would keep the process alive past the grace period. The log is
        // flushed first, because a synchronous flush at exit can drop a batch that stdout
        // rejected.
        logger.flush(() => process.exit(1));
        setTimeout(() => process.exit(1), LOG_FLUSH_WAIT_MS);
      }, config.shutdownTimeoutMs);
      forced.unref();
      // Requests keep arriving until every API server has dropped the endpoint, so the listener
      // stays open for the delay, then closes and waits for what is in flight.
      delay(config.shutdownDelayMs)
        .then(() => webhook.close())
        .then(
          () => {
            clearTimeout(forced);
            logger.info("shutdown complete");
            resolve(0);
          },
          (error: unknown) => {
            clearTimeout(forced);
            logger.error({ err: (error as Error).message }, "shutdown failed");
            resolve(1);
          },
        );
    };
    onSignal = stop;
  });
}

/** How long a forced exit waits for the log to be written. */
const LOG_FLUSH_WAIT_MS = 2_000;
