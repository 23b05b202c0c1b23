import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { KubeConfig } from "@kubernetes/client-node";
import type { Registry } from "prom-client";
import { ConfigError } from "../config.js";
import { loadKubeConfig } from "../kube/lookup.js";
import type { Logger } from "../log.js";
import {
  RunningPodRefresher,
  type RefreshDirectory,
  type RefreshMode,
} from "./controller.js";
import { KubeClient } from "./kube.js";
import { LeaseElector, type LeaseTimings } from "./lease.js";
import { RefreshMetrics } from "./metrics.js";

/** Name of the Lease that elects the acting replica, in the webhook's namespace. */
export const REFRESH_LEASE_NAME = "cloudhsm-webhook-refresh-running";
/** Namespace used when neither POD_NAMESPACE nor the service account names one. */
export const DEFAULT_NAMESPACE = "cloudhsm-webhook";
const SERVICE_ACCOUNT_NAMESPACE_FILE =
  "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
// Bounds one API request of the refresher. A list page of 500 pods and a Lease update both
// fit well within it, and it stays below the 10 s renew deadline.
const REQUEST_TIMEOUT_MS = 5_000;

export interface RefresherSetup {
  readonly mode: RefreshMode;
  readonly directory: RefreshDirectory;
  readonly hsmCaFile: string;
  readonly restartIntervalMs: number;
  readonly logger: Logger;
  /** The registry to add the refresher's metrics to. */
  readonly registry?: Registry;
  /** API access; by default loadKubeConfig(): KUBECONFIG, or the in-cluster service account. */
  readonly kubeConfig?: KubeConfig;
  /** holderIdentity; by default POD_NAME, else the host name. */
  readonly identity?: string;
  /** Namespace of the Lease; by default POD_NAMESPACE, else the service account's namespace. */
  readonly namespace?: string;
  readonly timings?: LeaseTimings;
  readonly requestTimeoutMs?: number;
}

/**
 * Builds the running-pod refresher and its leader election. Throws ConfigError when there is no
 * Kubernetes API configuration, because the refresher cannot work without one.
 */
export function createRunningPodRefresher(
  setup: RefresherSetup,
): RunningPodRefresher {
  let kubeConfig = setup.kubeConfig;
  if (kubeConfig === undefined) {
    try {
      kubeConfig = loadKubeConfig();
    } catch (error) {
      throw new ConfigError(
        `--refresh-running=${setup.mode} needs the Kubernetes API: ${(error as Error).message}`,
      );
    }
  }
  const kube = new KubeClient(kubeConfig, {
    requestTimeoutMs: setup.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
  });
  const namespace = setup.namespace ?? leaseNamespace();
  const identity = setup.identity ?? (process.env.POD_NAME || hostname());
  const elector = new LeaseElector({
    kube,
    namespace,
    name: REFRESH_LEASE_NAME,
    identity,
    timings: setup.timings,
    logger: setup.logger,
  });
  return new RunningPodRefresher({
    mode: setup.mode,
    directory: setup.directory,
    kube,
    elector,
    hsmCaFile: setup.hsmCaFile,
    restartIntervalMs: setup.restartIntervalMs,
    logger: setup.logger,
    metrics: new RefreshMetrics(setup.registry),
  });
}

function leaseNamespace(): string {
  if (process.env.POD_NAMESPACE) {
    return process.env.POD_NAMESPACE;
  }
  try {
    return (
      readFileSync(SERVICE_ACCOUNT_NAMESPACE_FILE, "utf8").trim() ||
      DEFAULT_NAMESPACE
    );
  } catch {
    return DEFAULT_NAMESPACE;
  }
}
