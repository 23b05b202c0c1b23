import {
  ANNOTATION_CONFIG,
  ANNOTATION_INJECTED_AT,
  ANNOTATION_INJECTED_IPS,
  ENV_CLUSTER_ID,
  ENV_CONFIG_FILE,
  ENV_HSM_IP,
  ENV_HSM_IPS,
  LABEL_INJECTED,
  VOLUME_NAME,
  injectPod,
  type InjectionPlan,
  type InjectionResult,
} from "../../src/injection/mutate.js";
import {
  diffPods,
  diffPodsToJson,
  type PatchOperation,
  type PatchText,
} from "../../src/injection/patch.js";
import { isObject, type JsonObject } from "../../src/injection/pod.js";
import { ownedView } from "../../src/injection/view.js";
import { applyStrict } from "./apply-patch.js";
import { validatePod } from "./pod-schema.js";

export const OWNED_ENV_NAMES = [
  ENV_CLUSTER_ID,
  ENV_HSM_IPS,
  ENV_HSM_IP,
  ENV_CONFIG_FILE,
];

export interface InjectionRun {
  readonly result: InjectionResult;
  readonly patch: PatchOperation[];
  /** The original pod with the patch applied. */
  readonly pod: JsonObject;
}

/**
 * Runs injection as AdmissionHandler does: injects into one ownedView copy, diffs it against
 * another, then applies the patch to the whole original pod with rfc6902 and validates the
 * result against the Pod schema. The original pod is left unchanged.
 */
export function runInjection(
  original: JsonObject,
  plan: InjectionPlan,
  now: Date,
): InjectionRun {
  const before = ownedView(original, false);
  const after = ownedView(original);
  const result = injectPod(after, plan, now);
  const patch = diffPods(before, after);
  const pod = applyStrict(original, patch);
  validatePod(pod);
  return { result, patch, pod };
}

/**
 * Injects without PatchCache: into one ownedView copy, diffed as JSON text against another. The
 * pod is left unchanged. Returns what PatchCache.inject returns for the same arguments.
 */
export function injectUncached(
  pod: JsonObject,
  plan: InjectionPlan,
  now: Date,
): { patch: PatchText | undefined; warnings: readonly string[] } {
  const before = ownedView(pod, false);
  const after = ownedView(pod);
  const result = injectPod(after, plan, now);
  return {
    patch: result.changed ? diffPodsToJson(before, after) : undefined,
    warnings: result.warnings,
  };
}

/**
 * Returns a deep copy of the pod without the fields the webhook writes. Maps and lists that are
 * null or left empty by the removal are removed as well, because the API server treats them as
 * absent. A pod then compares equal to its injected copy.
 */
export function stripOwned(pod: JsonObject): JsonObject {
  const copy = JSON.parse(JSON.stringify(pod)) as JsonObject;
  if (copy.metadata === null) {
    delete copy.metadata;
  }
  if (isObject(copy.metadata)) {
    const metadata = copy.metadata;
    deleteKeys(metadata, "annotations", [
      ANNOTATION_CONFIG,
      ANNOTATION_INJECTED_IPS,
      ANNOTATION_INJECTED_AT,
    ]);
    deleteKeys(metadata, "labels", [LABEL_INJECTED]);
    if (Object.keys(metadata).length === 0) {
      delete copy.metadata;
    }
  }
  if (isObject(copy.spec)) {
    const spec = copy.spec;
    filterList(spec, "volumes", (volume) => nameOf(volume) !== VOLUME_NAME);
    for (const key of ["containers", "initContainers"]) {
      const list = spec[key];
      if (!Array.isArray(list)) {
        continue;
      }
      for (const container of list) {
        if (!isObject(container)) {
          continue;
        }
        filterList(
          container,
          "env",
          (entry) => !OWNED_ENV_NAMES.includes(nameOf(entry) ?? ""),
        );
        filterList(
          container,
          "volumeMounts",
          (mount) => nameOf(mount) !== VOLUME_NAME,
        );
      }
    }
  }
  return copy;
}

function nameOf(value: unknown): string | undefined {
  return isObject(value) && typeof value.name === "string"
    ? value.name
    : undefined;
}

function deleteKeys(
  parent: JsonObject,
  mapKey: string,
  keys: readonly string[],
): void {
  const map = parent[mapKey];
  if (map === null) {
    delete parent[mapKey];
  }
  if (!isObject(map)) {
    return;
  }
  for (const key of keys) {
    delete map[key];
  }
  if (Object.keys(map).length === 0) {
    delete parent[mapKey];
  }
}

function filterList(
  parent: JsonObject,
  key: string,
  keep: (entry: unknown) => boolean,
): void {
  const list = parent[key];
  if (list === null) {
    delete parent[key];
  }
  if (!Array.isArray(list)) {
    return;
  }
  const remaining = list.filter(keep);
  if (remaining.length === 0) {
    delete parent[key];
  } else {
    parent[key] = remaining;
  }
}
