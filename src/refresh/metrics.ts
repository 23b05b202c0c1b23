import { Counter, Gauge, type Registry } from "prom-client";
import type { RestartKind } from "./kube.js";

const PREFIX = "cloudhsm_webhook_refresh_";

/**
 * Metric families of the running-pod refresher. They are registered on `registry` when one is
 * given, and on no registry otherwise, never on prom-client's global default registry.
 */
export class RefreshMetrics {
  readonly #stalePods: Gauge<"cluster_id">;
  readonly #podsAnnotated: Counter<"cluster_id" | "outcome">;
  readonly #workloadsRestarted: Counter<"kind" | "outcome">;
  readonly #pendingRestarts: Gauge;
  readonly #leader: Gauge;

  constructor(registry?: Registry) {
    const registers = registry === undefined ? [] : [registry];
    this.#stalePods = new Gauge({
      name: `${PREFIX}stale_pods`,
      help: "Injected pods whose CLOUDHSM_HSM_IPS contains an address that is not ACTIVE, as counted by the last refresh pass of the cluster",
      labelNames: ["cluster_id"],
      registers,
    });
    this.#podsAnnotated = new Counter({
      name: `${PREFIX}pods_annotated_total`,
      help: "Running pods whose cloudhsm/config and cloudhsm/injected-ips annotations were rewritten, by outcome",
      labelNames: ["cluster_id", "outcome"],
      registers,
    });
    this.#workloadsRestarted = new Counter({
      name: `${PREFIX}workloads_restarted_total`,
      help: "Workloads rolled with kubectl.kubernetes.io/restartedAt because their pods held addresses that are no longer ACTIVE, by kind and outcome",
      labelNames: ["kind", "outcome"],
      registers,
    });
    this.#pendingRestarts = new Gauge({
      name: `${PREFIX}pending_restarts`,
      help: "Workloads waiting for their paced restart",
      registers,
    });
    this.#leader = new Gauge({
      name: `${PREFIX}leader`,
      help: "1 while this replica is the holder of the refresher's Lease, 0 otherwise",
      registers,
    });
    this.#leader.set(0);
    this.#pendingRestarts.set(0);
  }

  setStalePods(clusterId: string, count: number): void {
    this.#stalePods.set({ cluster_id: clusterId }, count);
  }

  recordAnnotated(clusterId: string, outcome: "success" | "error"): void {
    this.#podsAnnotated.inc({ cluster_id: clusterId, outcome });
  }

  recordRestart(kind: RestartKind, outcome: "success" | "error"): void {
    this.#workloadsRestarted.inc({ kind, outcome });
  }

  setPendingRestarts(count: number): void {
    this.#pendingRestarts.set(count);
  }

  setLeader(leading: boolean): void {
    this.#leader.set(leading ? 1 : 0);
  }
}
