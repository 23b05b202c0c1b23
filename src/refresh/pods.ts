/**
 * Reads what the webhook wrote into a running pod, and computes the annotation update that a
 * new HSM list calls for. Pure: no I/O.
 *
 * A running pod's spec cannot change, so the CLOUDHSM_* variables keep the addresses the pod
 * was created with. Those are the pod's "given" addresses. Only the annotations, and the config
 * file that the kubelet projects from them, can be brought up to date.
 */
import {
  ANNOTATION_CONFIG,
  ANNOTATION_INJECTED_IPS,
  ENV_CLUSTER_ID,
  ENV_HSM_IPS,
  VOLUME_NAME,
  injectPod,
} from "../injection/mutate.js";
import { buildInjectionPlan } from "../injection/plan.js";
import { isObject, ownString, type JsonObject } from "../injection/pod.js";
import type { ConfigFormat, RenderedCluster } from "../injection/render.js";
import { ownedView } from "../injection/view.js";

/** Set to "true" on a workload or its pod template to let the refresher restart it. */
export const AUTO_RESTART_ANNOTATION = "cloudhsm/auto-restart";
/** The pod template annotation that `kubectl rollout restart` sets. */
export const RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt";
/** When the refresher last rewrote the config annotations of a running pod. */
export const ANNOTATION_REFRESHED_AT = "cloudhsm/refreshed-at";

/** The controller reference of a pod. */
export interface ControllerReference {
  readonly apiVersion: string;
  readonly kind: string;
  readonly name: string;
}

/** An injected pod, reduced to what the refresher reads. */
export interface InjectedPod {
  readonly namespace: string;
  readonly name: string;
  /** Milliseconds since the epoch, or undefined when the pod has no creationTimestamp. */
  readonly createdAt: number | undefined;
  readonly annotations: Readonly<Record<string, string>>;
  /** Format of the config annotation, recognized from its shape. */
  readonly format: ConfigFormat | undefined;
  /**
   * Clusters of the config, in order. The first is the one the CLOUDHSM_* variables describe.
   * An sdk3 config names no cluster, so CLOUDHSM_CLUSTER_ID supplies it.
   */
  readonly clusterIds: readonly string[];
  /** The region, which only the json config format records. */
  readonly region: string | undefined;
  /** Addresses in the containers' CLOUDHSM_HSM_IPS variables, fixed when the pod was created. */
  readonly givenIps: readonly string[];
  /** True when a container mounts the config with subPath, which the kubelet never updates. */
  readonly subPathMount: boolean;
  readonly controller: ControllerReference | undefined;
  /** The pod as listed, for the mutation code. */
  readonly object: JsonObject;
}

/** Reads an injected pod, or returns undefined when it lacks a name or namespace. */
export function readInjectedPod(object: JsonObject): InjectedPod | undefined {
  const metadata = isObject(object.metadata) ? object.metadata : {};
  const namespace = ownString(metadata, "namespace");
  const name = ownString(metadata, "name");
  if (!namespace || !name) {
    return undefined;
  }
  const annotations = stringMap(metadata.annotations);
  const config = readConfig(annotations[ANNOTATION_CONFIG]);
  const containers = podContainers(object);

  const envClusterId = containers
    .map((container) => envValue(container, ENV_CLUSTER_ID))
    .find((value) => value !== undefined && value !== "");
  let clusterIds: readonly string[] = [];
  if (config !== undefined && config.clusterIds.length > 0) {
    clusterIds = config.clusterIds;
  } else if (envClusterId !== undefined) {
    clusterIds = [envClusterId];
  }

  const givenIps = new Set<string>();
  for (const container of containers) {
    for (const ip of (envValue(container, ENV_HSM_IPS) ?? "").split(",")) {
      if (ip.trim() !== "") {
        givenIps.add(ip.trim());
      }
    }
  }

  const created = Date.parse(ownString(metadata, "creationTimestamp") ?? "");
  return {
    namespace,
    name,
    createdAt: Number.isNaN(created) ? undefined : created,
    annotations,
    format: config?.format,
    clusterIds,
    region: config?.region,
    givenIps: [...givenIps],
    subPathMount: containers.some(mountsConfigWithSubPath),
    controller: readControllerReference(metadata.ownerReferences),
    object,
  };
}

/** True when the pod's config names the cluster, in the region when the config records one. */
export function podUsesCluster(
  pod: InjectedPod,
  clusterId: string,
  region: string,
): boolean {
  return (
    pod.clusterIds.includes(clusterId) &&
    (pod.region === undefined || pod.region === region)
  );
}

/**
 * Returns the pod's given addresses that are not in `activeIps`. Only a pod whose variables
 * describe `clusterId` (its first cluster) is checked; other pods return none.
 */
export function staleAddresses(
  pod: InjectedPod,
  clusterId: string,
  activeIps: readonly string[],
): string[] {
  if (pod.clusterIds[0] !== clusterId) {
    return [];
  }
  const active = new Set(activeIps);
  return pod.givenIps.filter((ip) => !active.has(ip));
}

/**
 * Computes the annotations that bring the pod's config up to date with `clusters`, given in
 * the order of `pod.clusterIds`. The values come from injectPod on a copy of the pod, so they
 * match what the webhook writes into a new pod. Returns undefined when nothing changes or the
 * config format is unknown. Throws InvalidPodError for a pod that injection cannot read.
 */
export function annotationUpdate(
  pod: InjectedPod,
  clusters: readonly RenderedCluster[],
  hsmCaFile: string,
  now: Date,
): Record<string, string> | undefined {
  if (pod.format === undefined || clusters.length === 0) {
    return undefined;
  }
  const plan = buildInjectionPlan(
    { configFormat: pod.format },
    clusters,
    hsmCaFile,
  );
  const view = ownedView(pod.object);
  injectPod(view, plan, now);
  const written = stringMap(
    isObject(view.metadata) ? view.metadata.annotations : {},
  );

  const update: Record<string, string> = {};
  for (const key of [ANNOTATION_CONFIG, ANNOTATION_INJECTED_IPS]) {
    const value = written[key];
    if (value !== undefined && value !== pod.annotations[key]) {
      update[key] = value;
    }
  }
  if (Object.keys(update).length === 0) {
    return undefined;
  }
  update[ANNOTATION_REFRESHED_AT] = now.toISOString();
  return update;
}

interface ConfigSummary {
  readonly format: ConfigFormat;
  readonly clusterIds: string[];
  readonly region?: string;
}

/** Recognizes a config annotation written by renderConfig, or returns undefined. */
export function readConfig(
  text: string | undefined,
): ConfigSummary | undefined {
  if (text === undefined) {
    return undefined;
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(document)) {
    return undefined;
  }

  if (isObject(document.server)) {
    return { format: "sdk3", clusterIds: [] };
  }
  const clusters = Array.isArray(document.clusters)
    ? document.clusters
    : undefined;
  if (clusters === undefined || clusters.length === 0) {
    return undefined;
  }

  const sdk5Ids = clusters.map((entry) =>
    isObject(entry) ? ownString(entry.cluster, "cluster_id") : undefined,
  );
  if (sdk5Ids.every((id) => id !== undefined)) {
    return { format: "sdk5", clusterIds: sdk5Ids as string[] };
  }
  const jsonIds = clusters.map((entry) => ownString(entry, "clusterId"));
  if (jsonIds.every((id) => id !== undefined)) {
    return {
      format: "json",
      clusterIds: jsonIds as string[],
      region: ownString(clusters[0], "region"),
    };
  }
  return undefined;
}

function podContainers(pod: JsonObject): JsonObject[] {
  const spec = isObject(pod.spec) ? pod.spec : {};
  const containers: JsonObject[] = [];
  for (const key of ["initContainers", "containers"]) {
    const list = spec[key];
    if (Array.isArray(list)) {
      containers.push(...list.filter(isObject));
    }
  }
  return containers;
}

function envValue(container: JsonObject, name: string): string | undefined {
  const env = Array.isArray(container.env) ? container.env : [];
  const entry: unknown = env.find(
    (candidate: unknown) => ownString(candidate, "name") === name,
  );
  return ownString(entry, "value");
}

function mountsConfigWithSubPath(container: JsonObject): boolean {
  const mounts = Array.isArray(container.volumeMounts)
    ? container.volumeMounts
    : [];
  return mounts.some(
    (mount: unknown) =>
      ownString(mount, "name") === VOLUME_NAME &&
      (ownString(mount, "subPath") ?? "") !== "",
  );
}

/** Returns the entry of `ownerReferences` that has `controller: true`, if it is complete. */
export function readControllerReference(
  references: unknown,
): ControllerReference | undefined {
  if (!Array.isArray(references)) {
    return undefined;
  }
  const entry: unknown = references.find(
    (reference: unknown) =>
      isObject(reference) && reference.controller === true,
  );
  const apiVersion = ownString(entry, "apiVersion");
  const kind = ownString(entry, "kind");
  const name = ownString(entry, "name");
  if (!apiVersion || !kind || !name) {
    return undefined;
  }
  return { apiVersion, kind, name };
}

/** Copies the string-valued entries of a map into a null-prototype record. */
export function stringMap(value: unknown): Record<string, string> {
  const result = Object.create(null) as Record<string, string>;
  if (isObject(value)) {
    for (const [key, entry] of Object.entries(value)) {
      if (typeof entry === "string") {
        result[key] = entry;
      }
    }
  }
  return result;
}
