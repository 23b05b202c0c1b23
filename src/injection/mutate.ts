import { isObject, type Container, type JsonObject } from "./pod.js";

export const LABEL_INJECTED = "cloudhsm/injected";
export const ANNOTATION_CONFIG = "cloudhsm/config";
export const ANNOTATION_INJECTED_IPS = "cloudhsm/injected-ips";
export const ANNOTATION_INJECTED_AT = "cloudhsm/injected-at";

export const VOLUME_NAME = "cloudhsm-config";
export const DEFAULT_MOUNT_DIR = "/var/run/cloudhsm";
export const CONFIG_FILE_NAME = "cloudhsm.cfg";

export const ENV_CLUSTER_ID = "CLOUDHSM_CLUSTER_ID";
export const ENV_HSM_IPS = "CLOUDHSM_HSM_IPS";
export const ENV_HSM_IP = "CLOUDHSM_HSM_IP";
export const ENV_CONFIG_FILE = "CLOUDHSM_CONFIG_FILE";

const CONFIG_FIELD_PATH = `metadata.annotations['${ANNOTATION_CONFIG}']`;

/**
 * The downwardAPI volume that projects the config annotation as a file. It is written with the
 * defaults the API server fills in, so a reinvocation finds its own volume unchanged.
 *
 * This object, the config mounts and the env entries of each plan are frozen and shared by every
 * pod that receives them, because injection never changes an entry in place. The patch writer
 * encodes each frozen object once.
 */
const CONFIG_VOLUME: JsonObject = deepFreeze({
  name: VOLUME_NAME,
  downwardAPI: {
    defaultMode: 0o644,
    items: [
      {
        path: CONFIG_FILE_NAME,
        fieldRef: { apiVersion: "v1", fieldPath: CONFIG_FIELD_PATH },
      },
    ],
  },
});

function deepFreeze<T extends object>(value: T): T {
  for (const child of Object.values(value)) {
    if (typeof child === "object" && child !== null) {
      deepFreeze(child);
    }
  }
  return Object.freeze(value);
}

/** The values that injection writes for one plan, built once per plan. */
interface PlanFragments {
  readonly ipList: string;
  readonly env: ReadonlyArray<Readonly<{ name: string; value: string }>>;
  readonly target: MountTarget;
  readonly mount: JsonObject;
}

// Plans are cached by the admission handler while the HSM list is unchanged, so a busy webhook
// builds these once per refresh.
const fragmentsByPlan = new WeakMap<InjectionPlan, PlanFragments>();

function fragmentsFor(plan: InjectionPlan): PlanFragments {
  let fragments = fragmentsByPlan.get(plan);
  if (fragments !== undefined) {
    return fragments;
  }
  const ipList = plan.ips.join(",");
  const target: MountTarget = plan.configPath
    ? { mountPath: plan.configPath, subPath: CONFIG_FILE_NAME }
    : { mountPath: DEFAULT_MOUNT_DIR };
  const mount: JsonObject = {
    name: VOLUME_NAME,
    mountPath: target.mountPath,
    readOnly: true,
  };
  if (target.subPath !== undefined) {
    mount.subPath = target.subPath;
  }
  fragments = deepFreeze({
    ipList,
    env: [
      { name: ENV_CLUSTER_ID, value: plan.clusterId },
      { name: ENV_HSM_IPS, value: ipList },
      { name: ENV_HSM_IP, value: plan.ips[0] ?? "" },
      { name: ENV_CONFIG_FILE, value: configFilePath(plan) },
    ],
    target,
    mount,
  });
  fragmentsByPlan.set(plan, fragments);
  return fragments;
}

/** The injection for one pod: the outcome of discovery and option resolution. */
export interface InjectionPlan {
  /** Cluster that the CLOUDHSM_* variables describe; the first one in a multi-cluster config. */
  readonly clusterId: string;
  /** ACTIVE ENI IPs of that cluster, in numeric order. */
  readonly ips: readonly string[];
  /** Rendered config file, stored in the config annotation. */
  readonly config: string;
  /** Absolute file path for a subPath mount; the default is a directory mount. */
  readonly configPath?: string;
  /** Names of the containers and initContainers to inject; all of them when absent. */
  readonly containers?: readonly string[];
}

export interface InjectionResult {
  /** False when the pod already carried exactly this injection. */
  readonly changed: boolean;
  readonly injectedContainers: readonly string[];
  readonly warnings: readonly string[];
}

/** The pod cannot be injected because a field has a type the Pod schema does not allow. */
export class InvalidPodError extends Error {
  override readonly name = "InvalidPodError";
}

interface MountTarget {
  readonly mountPath: string;
  readonly subPath?: string;
}

/** Returns the path at which containers find the config file under this plan. */
export function configFilePath(
  plan: Pick<InjectionPlan, "configPath">,
): string {
  return plan.configPath ?? `${DEFAULT_MOUNT_DIR}/${CONFIG_FILE_NAME}`;
}

/**
 * Injects the plan into `pod` in place. The caller passes a copy and diffs it against the
 * original, so this code never builds patch paths. Running it on its own output changes
 * nothing, which `reinvocationPolicy: IfNeeded` relies on; `cloudhsm/injected-at` moves only
 * when something else changed. A string `now` is written as the injected-at text as it is.
 */
export function injectPod(
  pod: JsonObject,
  plan: InjectionPlan,
  now: Date | string,
): InjectionResult {
  const spec = requireObject(pod.spec, "spec");
  const containers = requireContainers(
    spec.containers,
    "spec.containers",
    true,
  );
  const initContainers = requireContainers(
    spec.initContainers,
    "spec.initContainers",
    false,
  );
  const containerCount = containers.length + initContainers.length;
  if (containerCount > MAX_CONTAINERS) {
    throw new InvalidPodError(
      `pod has ${containerCount} containers and initContainers, more than the ${MAX_CONTAINERS} that cloudhsm-webhook injects`,
    );
  }
  requireShallow(pod);
  const metadata = ensureObject(pod, "metadata");
  const warnings: string[] = [];
  const { ipList, env, target, mount: configMount } = fragmentsFor(plan);

  let changed = setStringEntry(
    metadata,
    "annotations",
    ANNOTATION_CONFIG,
    plan.config,
  );
  changed =
    setStringEntry(metadata, "annotations", ANNOTATION_INJECTED_IPS, ipList) ||
    changed;
  changed =
    setStringEntry(metadata, "labels", LABEL_INJECTED, "true") || changed;

  const selected = plan.containers ? new Set(plan.containers) : undefined;

  const injectedContainers: string[] = [];
  let mounted = false;
  for (const container of [...initContainers, ...containers]) {
    const name = typeof container.name === "string" ? container.name : "";
    if (selected && !selected.has(name)) {
      continue;
    }
    injectedContainers.push(name);
    changed = setEnv(container, env) || changed;

    const mount = mountConfig(container, target, configMount);
    changed = mount.changed || changed;
    if (mount.conflict === undefined) {
      mounted = true;
    } else {
      warnings.push(
        `container "${name}" already mounts volume "${mount.conflict}" at ${target.mountPath}, ` +
          `so the CloudHSM config was not mounted there; set cloudhsm/config-path to another path`,
      );
    }
  }
  if (mounted) {
    changed = ensureConfigVolume(spec) || changed;
  }

  // Adding a missing injected-at is a change, because the handler sends no patch otherwise.
  const annotations = metadata.annotations as JsonObject;
  if (changed || typeof annotations[ANNOTATION_INJECTED_AT] !== "string") {
    changed =
      setStringEntry(
        metadata,
        "annotations",
        ANNOTATION_INJECTED_AT,
        typeof now === "string" ? now : isoTime(now),
      ) || changed;
  }
  return { changed, injectedContainers, warnings };
}

/**
 * Upper bound on containers plus initContainers. The patch grows by about 600 bytes per injected
 * container, so a pod of 190,000 minimal containers, 3.5 MB of JSON, would otherwise get a patch
 * of over 100 MB. Kubernetes sets no such limit, and real pods stay far below it.
 */
export const MAX_CONTAINERS = 256;

/**
 * Upper bound on the nesting of the pod's fields, counted from the pod. Diffing and
 * JSON.stringify recurse once per level, and the default Node.js stack overflows at a few
 * thousand levels. Fields of the Pod schema nest about a dozen levels deep at most.
 */
export const MAX_FIELD_DEPTH = 100;

/** Rejects a pod with a field nested deeper than MAX_FIELD_DEPTH, naming the field. */
function requireShallow(pod: JsonObject): void {
  // Fields are named down to the second level, such as spec.containers.
  for (const key of Object.keys(pod)) {
    const value = pod[key];
    if (isObject(value)) {
      for (const child of Object.keys(value)) {
        checkDepth(value[child], 2, `${key}.${child}`);
      }
    } else {
      checkDepth(value, 1, key);
    }
  }
}

/**
 * Throws when `value`, found at `depth`, contains a field below MAX_FIELD_DEPTH. The recursion
 * stops at that bound, so it stays about 100 frames deep however deep the input nests.
 */
function checkDepth(value: unknown, depth: number, field: string): void {
  if (typeof value !== "object" || value === null) {
    return;
  }
  if (depth > MAX_FIELD_DEPTH) {
    throw new InvalidPodError(
      `pod field ${field} is nested more than ${MAX_FIELD_DEPTH} levels deep`,
    );
  }
  if (Array.isArray(value)) {
    for (const item of value) {
      checkDepth(item, depth + 1, field);
    }
    return;
  }
  for (const key of Object.keys(value)) {
    checkDepth((value as JsonObject)[key], depth + 1, field);
  }
}

function requireObject(value: unknown, field: string): JsonObject {
  if (!isObject(value)) {
    throw new InvalidPodError(`pod field ${field} is missing or not an object`);
  }
  return value;
}

function requireContainers(
  value: unknown,
  field: string,
  required: boolean,
): Container[] {
  if (value === undefined || value === null) {
    if (required) {
      throw new InvalidPodError(`pod field ${field} is missing`);
    }
    return [];
  }
  if (!Array.isArray(value) || !value.every(isObject)) {
    throw new InvalidPodError(
      `pod field ${field} must be a list of container objects`,
    );
  }
  for (const container of value as Container[]) {
    if (typeof container.name !== "string" || container.name === "") {
      throw new InvalidPodError(
        `every entry of pod field ${field} needs a name`,
      );
    }
  }
  return value as Container[];
}

/** Returns `parent[key]` as an object, creating it when missing or null. */
function ensureObject(parent: JsonObject, key: string): JsonObject {
  const value = parent[key];
  if (isObject(value)) {
    return value;
  }
  if (value !== undefined && value !== null) {
    throw new InvalidPodError(`pod field ${key} must be an object`);
  }
  const created: JsonObject = {};
  parent[key] = created;
  return created;
}

/**
 * Sets `metadata[map][key] = value` and reports whether it changed. Keys are the webhook's own
 * names, never "__proto__", so plain assignment creates an own property.
 */
function setStringEntry(
  metadata: JsonObject,
  map: string,
  key: string,
  value: string,
): boolean {
  const entries = ensureObject(metadata, map);
  if (
    Object.prototype.hasOwnProperty.call(entries, key) &&
    entries[key] === value
  ) {
    return false;
  }
  entries[key] = value;
  return true;
}

/**
 * Sets the webhook's variables and keeps every other entry where it is. A variable that already
 * exists is replaced in place, which removes stale addresses and lets entries after it refer to
 * it with `$(CLOUDHSM_HSM_IP)`. Later entries of the same name are dropped, and missing variables
 * are appended in a fixed order. No user entry moves, so the JSONPatch stays a few operations long
 * whatever the length of the list.
 */
function setEnv(container: Container, vars: PlanFragments["env"]): boolean {
  const current = container.env ?? [];
  if (!Array.isArray(current)) {
    throw new InvalidPodError(
      `env of container "${String(container.name)}" must be a list`,
    );
  }
  // One bit per entry of `vars`. There are four, so a linear search costs less than a Map and
  // a Set.
  let placed = 0;
  const next: unknown[] = [];
  let changed = false;
  for (const entry of current) {
    const index =
      isObject(entry) && typeof entry.name === "string"
        ? ownedIndex(vars, entry.name)
        : -1;
    if (index < 0) {
      next.push(entry);
    } else if ((placed & (1 << index)) !== 0) {
      changed = true;
    } else {
      placed |= 1 << index;
      const owned = vars[index]!;
      const existing = entry as JsonObject;
      const exact =
        existing.value === owned.value && Object.keys(existing).length === 2;
      next.push(exact ? entry : owned);
      changed ||= !exact;
    }
  }
  for (let index = 0; index < vars.length; index += 1) {
    if ((placed & (1 << index)) === 0) {
      next.push(vars[index]);
      changed = true;
    }
  }
  if (changed) {
    container.env = next;
  }
  return changed;
}

// Pods admitted in the same millisecond share one timestamp text, because toISOString took
// about 0.6 µs in a loop on the benchmark machine.
let lastIsoMs = Number.NaN;
let lastIso = "";

/** Returns `now` as the injected-at text, an ISO 8601 time in UTC. */
export function isoTime(now: Date): string {
  const ms = now.getTime();
  if (ms !== lastIsoMs) {
    lastIso = now.toISOString();
    lastIsoMs = ms;
  }
  return lastIso;
}

function ownedIndex(vars: PlanFragments["env"], name: string): number {
  for (let index = 0; index < vars.length; index += 1) {
    if (vars[index]!.name === name) {
      return index;
    }
  }
  return -1;
}

interface MountOutcome {
  readonly changed: boolean;
  /** Name of the user volume already mounted at the target path, if any. */
  readonly conflict?: string;
}

/**
 * Leaves exactly one config mount in the container, at the target. Mounts of the config volume
 * at other paths are left from an earlier config-path and are removed. A user mount at the
 * target path wins: mounting over it would hide the user's files.
 */
function mountConfig(
  container: Container,
  target: MountTarget,
  configMount: JsonObject,
): MountOutcome {
  const current = container.volumeMounts ?? [];
  if (!Array.isArray(current)) {
    throw new InvalidPodError(
      `volumeMounts of container "${String(container.name)}" must be a list`,
    );
  }
  const isOurs = (mount: unknown): boolean =>
    isObject(mount) && mount.name === VOLUME_NAME;
  const others = current.filter((mount) => !isOurs(mount));
  const blocking = others.find(
    (mount) => isObject(mount) && samePath(mount.mountPath, target.mountPath),
  );
  if (blocking !== undefined) {
    const conflict = String((blocking as JsonObject).name);
    if (others.length !== current.length) {
      container.volumeMounts = others;
      return { changed: true, conflict };
    }
    return { changed: false, conflict };
  }

  const ours = current.filter(isOurs) as JsonObject[];
  const only = ours.length === 1 ? ours[0] : undefined;
  if (
    only !== undefined &&
    only.mountPath === target.mountPath &&
    only.readOnly === true &&
    only.subPath === target.subPath
  ) {
    return { changed: false };
  }
  container.volumeMounts = [...others, configMount];
  return { changed: true };
}

function samePath(value: unknown, path: string): boolean {
  return (
    typeof value === "string" &&
    value.replace(/\/+$/, "") === path.replace(/\/+$/, "")
  );
}

/** Leaves exactly one config volume in the pod. The name is reserved for the webhook. */
function ensureConfigVolume(spec: JsonObject): boolean {
  const current = spec.volumes ?? [];
  if (!Array.isArray(current)) {
    throw new InvalidPodError("pod field spec.volumes must be a list");
  }
  const ours = current.filter(
    (volume) => isObject(volume) && volume.name === VOLUME_NAME,
  );
  if (ours.length === 1 && isConfigVolume(ours[0])) {
    return false;
  }
  const others = current.filter(
    (volume) => !(isObject(volume) && volume.name === VOLUME_NAME),
  );
  spec.volumes = [...others, CONFIG_VOLUME];
  return true;
}

/** Accepts the config volume with or without API-server defaults filled in. */
function isConfigVolume(volume: unknown): boolean {
  if (
    !isObject(volume) ||
    Object.keys(volume).length !== 2 ||
    !isObject(volume.downwardAPI)
  ) {
    return false;
  }
  const { defaultMode, items } = volume.downwardAPI;
  if (
    (defaultMode !== undefined && defaultMode !== 0o644) ||
    !Array.isArray(items) ||
    items.length !== 1
  ) {
    return false;
  }
  const item: unknown = items[0];
  if (
    !isObject(item) ||
    item.path !== CONFIG_FILE_NAME ||
    !isObject(item.fieldRef)
  ) {
    return false;
  }
  return (
    item.fieldRef.fieldPath === CONFIG_FIELD_PATH &&
    (item.fieldRef.apiVersion === undefined ||
      item.fieldRef.apiVersion === "v1")
  );
}
