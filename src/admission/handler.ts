import type {
  Availability,
  CachedCluster,
  HsmDirectory,
} from "../discovery/directory.js";
import { InvalidPodError, type InjectionPlan } from "../injection/mutate.js";
import { PatchCache } from "../injection/patch-cache.js";
import type {
  InjectionDecision,
  InjectionOptions,
} from "../injection/resolve.js";
import { isObject, type JsonObject } from "../injection/pod.js";
import { buildInjectionPlan } from "../injection/plan.js";
import {
  allow,
  allowWithPatchText,
  deny,
  type AdmissionRequest,
  type AdmissionResponse,
} from "./review.js";

/** A pod left uninjected, or denied, because its owners or namespace could not be read. */
export interface LookupFailed {
  readonly inject: false;
  readonly lookupFailed: true;
  /** The rejection message under `--on-lookup-error deny`; the pod is admitted without it. */
  readonly deny?: string;
  readonly warnings: readonly string[];
}

/**
 * Picks the clusters to write into the config. The first cluster must be usable, because the
 * CLOUDHSM_* variables describe it. A further cluster of a multi-cluster config that has no
 * ACTIVE HSM is left out with a warning, so one cluster in replacement does not block pods
 * that can reach another. Any other failure applies the unavailable policy.
 */
function usableClusters(
  clusters: readonly Availability[],
):
  | { clusters: CachedCluster[]; warnings: string[] }
  | { failure: Exclude<Availability, { ok: true }> } {
  const usable: CachedCluster[] = [];
  const warnings: string[] = [];
  for (const [index, availability] of clusters.entries()) {
    if (availability.ok) {
      usable.push(availability.cluster);
    } else if (index > 0 && availability.reason === "no-active") {
      warnings.push(`${availability.message}; it was left out of the config`);
    } else {
      return { failure: availability };
    }
  }
  return { clusters: usable, warnings };
}

function isLookupFailed(decision: object): decision is LookupFailed {
  return "lookupFailed" in decision;
}

/** Decides whether and how to inject a pod; the I/O it needs (owner lookups) sits behind it. */
export type Decider = (
  pod: JsonObject,
  request: AdmissionRequest,
) => Promise<InjectionDecision | LookupFailed>;

export type UnavailablePolicy = "deny" | "allow";

export interface HandlerOptions {
  readonly directory: HsmDirectory;
  readonly decide: Decider;
  readonly hsmCaFile: string;
  readonly onUnavailable: UnavailablePolicy;
  readonly now?: () => Date;
}

/** The handler's outcome, for the decision log line and metrics. */
export type Outcome =
  "injected" | "unchanged" | "skipped" | "denied" | "unavailable";

export interface HandlerResult {
  readonly response: AdmissionResponse;
  readonly outcome: Outcome;
  readonly clusterId?: string;
  readonly ipCount?: number;
  /** A short reason for skipped and denied outcomes, safe to log. */
  readonly reason?: string;
}

// Maximum plans per cached list of the first cluster. Each combination of options needs a plan.
const PLAN_CACHE_LIMIT = 256;

/**
 * Maximum length of a cached plan key. The 256 containers that injection allows, with names of
 * the 63 characters that Kubernetes allows, and a config path give keys of about 21 KiB. A pod
 * sent before validation can name thousands of longer containers.
 */
export const MAX_PLAN_KEY_LENGTH = 32 * 1024;

const NO_FURTHER_CLUSTERS: readonly number[] = [];

/**
 * Returns the key of a plan for these options, among the plans of one list of the first
 * cluster, or undefined when the key is too long to cache. `furtherClusters` numbers the lists
 * of the other clusters.
 */
export function planKey(
  options: Pick<InjectionOptions, "configFormat" | "configPath" | "containers">,
  furtherClusters: readonly number[],
): string | undefined {
  // Most pods take the defaults, and their key is the format alone. resolveInjection accepts
  // only the words of CONFIG_FORMATS, so that key cannot collide with a JSON key, which starts
  // with "[".
  if (
    options.configPath === undefined &&
    options.containers === undefined &&
    furtherClusters.length === 0
  ) {
    return options.configFormat;
  }
  const key = JSON.stringify([
    options.configFormat,
    options.configPath ?? null,
    options.containers ?? null,
    furtherClusters,
  ]);
  return key.length <= MAX_PLAN_KEY_LENGTH ? key : undefined;
}

/**
 * Handles AdmissionRequests for pods in a fixed order of steps: filter, decide, look up HSMs,
 * render, mutate a copy, diff. Patches are cached by plan and pod view (PatchCache). It performs no I/O of its own beyond the directory and the
 * decider. Expected failures become AdmissionResponses; the server turns anything else into a
 * denial with code 500.
 */
export class AdmissionHandler {
  readonly #options: HandlerOptions;
  readonly #plans = new WeakMap<CachedCluster, Map<string, InjectionPlan>>();
  readonly #clusterNumbers = new WeakMap<CachedCluster, number>();
  readonly #patches = new PatchCache();
  #nextClusterNumber = 0;

  constructor(options: HandlerOptions) {
    this.#options = options;
  }

  async handle(request: AdmissionRequest): Promise<HandlerResult> {
    const { uid } = request;
    const skipReason = this.#skipReason(request);
    if (skipReason) {
      return { response: allow(uid), outcome: "skipped", reason: skipReason };
    }
    const pod = request.object as JsonObject;

    const decision = await this.#options.decide(pod, request);
    if ("error" in decision) {
      return {
        response: deny(uid, decision.error, 400),
        outcome: "denied",
        reason: "invalid-annotation",
      };
    }
    if (isLookupFailed(decision)) {
      if (decision.deny !== undefined) {
        // 503, because the API server or its permissions failed, not the pod's creator.
        return {
          response: deny(uid, decision.deny, 503),
          outcome: "denied",
          reason: "lookup-failed",
        };
      }
      return {
        response: allow(uid, decision.warnings),
        outcome: "skipped",
        reason: "lookup-failed",
      };
    }
    if (!decision.inject) {
      return {
        response: allow(uid),
        outcome: "skipped",
        reason: "not-opted-in",
      };
    }
    const { options } = decision;

    const clusters = await this.#lookUp(options);
    const usable = usableClusters(clusters);
    if ("failure" in usable) {
      return this.#unavailable(uid, options, usable.failure, decision.warnings);
    }
    const cached = usable.clusters;

    const plan = this.#plan(options, cached);
    let injection;
    try {
      injection = this.#patches.inject(pod, plan, this.#now());
    } catch (error) {
      if (error instanceof InvalidPodError) {
        return {
          response: deny(
            uid,
            `cannot inject CloudHSM config: ${error.message}`,
            400,
          ),
          outcome: "denied",
          reason: "invalid-pod",
        };
      }
      throw error;
    }

    const { patch } = injection;
    const warnings = [
      ...decision.warnings,
      ...usable.warnings,
      ...injection.warnings,
    ];
    return {
      response:
        patch === undefined
          ? allow(uid, warnings)
          : allowWithPatchText(uid, patch, warnings),
      outcome: (patch?.length ?? 0) > 0 ? "injected" : "unchanged",
      clusterId: plan.clusterId,
      ipCount: plan.ips.length,
    };
  }

  /** Returns why a request is not a pod creation the webhook acts on, or undefined. */
  #skipReason(request: AdmissionRequest): string | undefined {
    if (request.operation !== "CREATE") {
      return "not-create";
    }
    const isPod =
      (request.kind?.kind === "Pod" && (request.kind.group ?? "") === "") ||
      (request.resource?.resource === "pods" &&
        (request.resource.group ?? "") === "");
    if (!isPod || (request.subResource ?? "") !== "") {
      return "not-pod";
    }
    if (!isObject(request.object)) {
      return "no-object";
    }
    return undefined;
  }

  #lookUp(options: InjectionOptions): Promise<Availability[]> {
    const { directory } = this.#options;
    return Promise.all(
      options.clusterIds.map((clusterId) =>
        directory.availability(clusterId, options.region),
      ),
    );
  }

  #unavailable(
    uid: string,
    options: InjectionOptions,
    failure: Exclude<Availability, { ok: true }>,
    warnings: readonly string[],
  ): HandlerResult {
    const clusterId = options.clusterIds[0];
    if (failure.reason === "not-found") {
      return {
        response: deny(uid, failure.message, 400, warnings),
        outcome: "denied",
        reason: failure.reason,
        clusterId,
      };
    }
    if (this.#options.onUnavailable === "allow") {
      const warning = `pod admitted without CloudHSM addresses: ${failure.message}`;
      return {
        response: allow(uid, [...warnings, warning]),
        outcome: "unavailable",
        reason: failure.reason,
        clusterId,
      };
    }
    // A 503 signals the creating controller that a retry can succeed once AWS responds again.
    const message = `pod rejected because no CloudHSM addresses are available: ${failure.message}`;
    return {
      response: deny(uid, message, 503, warnings),
      outcome: "unavailable",
      reason: failure.reason,
      clusterId,
    };
  }

  /**
   * Returns the plan for these options and clusters, reusing it while the cluster lists behind
   * it are unchanged, so a busy webhook renders each config once per refresh and not once per
   * pod. Cached lists are replaced by new objects on every refresh, so their identity shows
   * whether a plan is current.
   */
  #plan(
    options: InjectionOptions,
    clusters: readonly CachedCluster[],
  ): InjectionPlan {
    const [first, ...rest] = clusters;
    let plans = this.#plans.get(first!);
    if (plans === undefined) {
      plans = new Map();
      this.#plans.set(first!, plans);
    }
    const key = planKey(
      options,
      rest.length === 0
        ? NO_FURTHER_CLUSTERS
        : rest.map((cluster) => this.#clusterNumber(cluster)),
    );
    if (key === undefined) {
      return buildInjectionPlan(options, clusters, this.#options.hsmCaFile);
    }
    let plan = plans.get(key);
    if (plan === undefined) {
      plan = buildInjectionPlan(options, clusters, this.#options.hsmCaFile);
      if (plans.size >= PLAN_CACHE_LIMIT) {
        plans.clear();
      }
      plans.set(key, plan);
    }
    return plan;
  }

  /** Numbers each cached list object, so that a plan key can name further clusters by identity. */
  #clusterNumber(cluster: CachedCluster): number {
    let number = this.#clusterNumbers.get(cluster);
    if (number === undefined) {
      this.#nextClusterNumber += 1;
      number = this.#nextClusterNumber;
      this.#clusterNumbers.set(cluster, number);
    }
    return number;
  }

  #now(): Date {
    return this.#options.now ? this.#options.now() : new Date();
  }
}
