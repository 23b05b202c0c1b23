/**
 * Decides whether a pod gets HSM addresses, and with which options, from the `cloudhsm/*`
 * annotations of the pod, its controlling owners and its namespace. Pure: no I/O.
 *
 * Each annotation is read from the nearest source that sets it: the pod first, then its owners
 * nearest first (ReplicaSet before Deployment, Job before CronJob), then the namespace. Only the
 * value that decides is validated, so an invalid value hidden by a nearer one does no harm.
 */

import { CONFIG_FORMATS, type ConfigFormat } from "./render.js";

export const INJECT_ANNOTATION = "cloudhsm/inject";
export const CLUSTER_ID_ANNOTATION = "cloudhsm/cluster-id";
export const REGION_ANNOTATION = "cloudhsm/region";
export const CONTAINERS_ANNOTATION = "cloudhsm/containers";
export const CONFIG_PATH_ANNOTATION = "cloudhsm/config-path";
export const CONFIG_FORMAT_ANNOTATION = "cloudhsm/config-format";

/** Every annotation key that this module reads. */
export const ANNOTATION_KEYS = [
  INJECT_ANNOTATION,
  CLUSTER_ID_ANNOTATION,
  REGION_ANNOTATION,
  CONTAINERS_ANNOTATION,
  CONFIG_PATH_ANNOTATION,
  CONFIG_FORMAT_ANNOTATION,
] as const;

export { CONFIG_FORMATS, type ConfigFormat };
export const DEFAULT_CONFIG_FORMAT: ConfigFormat = "sdk5";

/**
 * Upper bound on the entries of `cloudhsm/cluster-id`. Each cluster costs one DescribeClusters
 * call per cache refresh, so a long list from a single pod could multiply AWS traffic.
 */
export const MAX_CLUSTER_IDS = 10;

/**
 * One object whose annotations take part in the decision. `kind` is the Kubernetes kind
 * ("Pod", "ReplicaSet", "Namespace", ...). The pod's `name` may be empty, because pods created
 * with generateName have no name yet at admission.
 */
export interface AnnotationSource {
  kind: string;
  name: string;
  annotations?: Readonly<Record<string, string>> | null;
}

/** Values that apply when no source sets `cloudhsm/cluster-id` or `cloudhsm/region`. */
export interface ResolveDefaults {
  /** The webhook's `--cluster-id`. An empty string means that the webhook has no default. */
  clusterId: string;
  region: string;
}

export interface InjectionOptions {
  /** One or more cluster ids, duplicates removed, in annotation order. */
  clusterIds: string[];
  region: string;
  /**
   * Names of the containers and initContainers to inject, limited to names that the pod has.
   * Undefined means all of them. An empty array means that none of the listed names matched.
   */
  containers?: string[];
  /** Absolute, normalized path of the client configuration file, when an annotation sets it. */
  configPath?: string;
  configFormat: ConfigFormat;
}

export interface NotInjected {
  inject: false;
  /** The source that set `cloudhsm/inject: "false"`, or undefined when no source set it. */
  decidedBy?: string;
}

export interface Injected {
  inject: true;
  /** The source that set `cloudhsm/inject: "true"`, as rendered by describeSource. */
  decidedBy: string;
  options: InjectionOptions;
  /** Problems that do not reject the pod, such as container names that the pod lacks. */
  warnings: string[];
}

/** A pod to reject. `error` names the annotation, the value, its source and what is allowed. */
export interface Rejected {
  error: string;
}

export type InjectionDecision = NotInjected | Injected | Rejected;

/** Renders a source for messages: "pod", "namespace payments" or "Deployment checkout". */
export function describeSource(
  source: Pick<AnnotationSource, "kind" | "name">,
): string {
  if (source.kind === "Pod") {
    return "pod";
  }
  if (source.kind === "Namespace") {
    return `namespace ${source.name}`;
  }
  return `${source.kind} ${source.name}`;
}

/**
 * Resolves opt-in and options for one pod.
 *
 * `sources` are ordered pod first, owners nearest first, namespace last. `containerNames` lists
 * the names of the pod's containers and initContainers. Options are read and validated only when
 * the pod is injected, so a pod that does not opt in is never rejected for them.
 */
export function resolveInjection(
  sources: readonly AnnotationSource[],
  containerNames: readonly string[],
  defaults: ResolveDefaults,
): InjectionDecision {
  const injectSetting = findNearest(sources, INJECT_ANNOTATION);
  if (injectSetting === undefined) {
    return { inject: false };
  }
  const decidedBy = describeSource(injectSetting.source);
  if (injectSetting.value === "false") {
    return { inject: false, decidedBy };
  }
  if (injectSetting.value !== "true") {
    return { error: invalid(injectSetting, `expected "true" or "false"`) };
  }

  const clusterIds = resolveClusterIds(sources, defaults);
  if ("error" in clusterIds) {
    return clusterIds;
  }
  const region = resolveRegion(sources, defaults);
  if (typeof region !== "string") {
    return region;
  }
  const warnings: string[] = [];
  const containers = resolveContainers(sources, containerNames, warnings);
  if (containers !== undefined && "error" in containers) {
    return containers;
  }
  const configPath = resolveConfigPath(sources);
  if (configPath !== undefined && typeof configPath !== "string") {
    return configPath;
  }
  const configFormat = resolveConfigFormat(sources);
  if (typeof configFormat !== "string") {
    return configFormat;
  }

  const options: InjectionOptions = {
    clusterIds: clusterIds.ids,
    region,
    configFormat,
  };
  if (containers !== undefined) {
    options.containers = containers.names;
  }
  if (configPath !== undefined) {
    options.configPath = configPath;
  }
  return { inject: true, decidedBy, options, warnings };
}

/** An annotation value together with the source it came from. */
interface Setting {
  key: string;
  source: AnnotationSource;
  /** A string for well-formed input. Other types can arrive from a malformed admission request. */
  value: unknown;
}

/**
 * Finds the nearest source whose annotations contain `key` as an own property. Own-property
 * checks keep inherited names such as `__proto__` or `constructor` from counting as set.
 */
function findNearest(
  sources: readonly AnnotationSource[],
  key: string,
): Setting | undefined {
  for (const source of sources) {
    const annotations: unknown = source.annotations;
    if (annotations === null || typeof annotations !== "object") {
      continue;
    }
    if (!Object.hasOwn(annotations, key)) {
      continue;
    }
    const value: unknown = (annotations as Record<string, unknown>)[key];
    if (value === undefined) {
      continue;
    }
    return { key, source, value };
  }
  return undefined;
}

const MAX_QUOTED_LENGTH = 120;

/**
 * Renders a value for a message: strings quoted with control characters escaped, other types as
 * JSON. Long values are shortened because annotations can hold up to 256 KiB.
 */
function quote(value: unknown): string {
  if (typeof value !== "string") {
    return shorten(String(JSON.stringify(value)));
  }
  return JSON.stringify(shorten(value));
}

function shorten(text: string): string {
  return text.length > MAX_QUOTED_LENGTH
    ? `${text.slice(0, MAX_QUOTED_LENGTH)}...`
    : text;
}

function invalid(setting: Setting, detail: string): string {
  return `invalid ${setting.key} ${quote(setting.value)} on ${describeSource(setting.source)}: ${detail}`;
}

/**
 * Splits a comma-separated list and trims each entry. Returns a rejection for an empty entry in
 * a list of two or more, counting entries from 1. A value without commas becomes one trimmed
 * entry, which the caller validates like any other.
 */
function splitList(
  setting: Setting & { value: string },
  expected: string,
): string[] | Rejected {
  const entries = setting.value.split(",").map((entry) => entry.trim());
  if (entries.length === 1) {
    return entries;
  }
  const emptyIndex = entries.findIndex((entry) => entry === "");
  if (emptyIndex >= 0) {
    return {
      error: invalid(
        setting,
        `entry ${emptyIndex + 1} is empty, expected ${expected}`,
      ),
    };
  }
  return entries;
}

function isStringSetting(
  setting: Setting,
): setting is Setting & { value: string } {
  return typeof setting.value === "string";
}

// CloudHSM cluster ids are "cluster-" followed by a base32 suffix (letters and the digits 2-7).
const CLUSTER_ID_PATTERN = /^cluster-[2-7a-zA-Z]{11,16}$/;
const CLUSTER_ID_EXPECTED = "cluster-<11 to 16 characters from a-z, A-Z, 2-7>";
const CLUSTER_ID_LIST_EXPECTED = `a comma-separated list of ${CLUSTER_ID_EXPECTED}`;

function resolveClusterIds(
  sources: readonly AnnotationSource[],
  defaults: ResolveDefaults,
): { ids: string[] } | Rejected {
  const setting = findNearest(sources, CLUSTER_ID_ANNOTATION);
  if (setting === undefined) {
    if (defaults.clusterId === "") {
      return {
        error: `missing ${CLUSTER_ID_ANNOTATION}: the pod, its owners and its namespace do not set it, and the webhook has no default cluster id`,
      };
    }
    return { ids: [defaults.clusterId] };
  }
  if (!isStringSetting(setting)) {
    return { error: invalid(setting, `expected ${CLUSTER_ID_EXPECTED}`) };
  }

  const entries = splitList(setting, CLUSTER_ID_LIST_EXPECTED);
  if ("error" in entries) {
    return entries;
  }
  const [onlyEntry] = entries;
  if (entries.length === 1 && onlyEntry !== undefined) {
    if (!CLUSTER_ID_PATTERN.test(onlyEntry)) {
      return { error: invalid(setting, `expected ${CLUSTER_ID_EXPECTED}`) };
    }
    return { ids: [onlyEntry] };
  }

  const badEntry = entries.find((entry) => !CLUSTER_ID_PATTERN.test(entry));
  if (badEntry !== undefined) {
    return {
      error: invalid(
        setting,
        `entry ${quote(badEntry)} is invalid, expected ${CLUSTER_ID_EXPECTED}`,
      ),
    };
  }
  const ids = [...new Set(entries)];
  if (ids.length > MAX_CLUSTER_IDS) {
    return {
      error: invalid(
        setting,
        `expected at most ${MAX_CLUSTER_IDS} cluster ids, got ${ids.length}`,
      ),
    };
  }
  return { ids };
}

// Two-letter partition prefix, one or two words, then a number: us-east-1, us-gov-west-1,
// eu-central-2, us-isob-east-1. The shape check catches typos. It does not prove that the
// region exists, and an unknown region fails later at the AWS call.
const REGION_PATTERN = /^[a-z]{2}(?:-[a-z]+){1,2}-[1-9][0-9]?$/;

function resolveRegion(
  sources: readonly AnnotationSource[],
  defaults: ResolveDefaults,
): string | Rejected {
  const setting = findNearest(sources, REGION_ANNOTATION);
  if (setting === undefined) {
    return defaults.region;
  }
  if (!isStringSetting(setting) || !REGION_PATTERN.test(setting.value)) {
    return {
      error: invalid(
        setting,
        "expected an AWS region such as us-east-1, us-gov-west-1 or eu-central-2",
      ),
    };
  }
  return setting.value;
}

// Container names are RFC 1123 labels, as the Kubernetes API validates them.
const CONTAINER_NAME_PATTERN = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;
const CONTAINERS_EXPECTED =
  'a comma-separated list of container names (lowercase letters, digits and "-", at most 63 characters)';

/**
 * Returns the listed names that the pod has, or undefined when no source sets the annotation.
 * Names that the pod lacks add a warning, because a typo should not block a rollout.
 */
function resolveContainers(
  sources: readonly AnnotationSource[],
  containerNames: readonly string[],
  warnings: string[],
): { names: string[] } | Rejected | undefined {
  const setting = findNearest(sources, CONTAINERS_ANNOTATION);
  if (setting === undefined) {
    return undefined;
  }
  if (!isStringSetting(setting)) {
    return { error: invalid(setting, `expected ${CONTAINERS_EXPECTED}`) };
  }
  const entries = splitList(setting, CONTAINERS_EXPECTED);
  if ("error" in entries) {
    return entries;
  }
  const badEntry = entries.find((entry) => !CONTAINER_NAME_PATTERN.test(entry));
  if (badEntry !== undefined) {
    const detail =
      entries.length === 1
        ? `expected ${CONTAINERS_EXPECTED}`
        : `entry ${quote(badEntry)} is invalid, expected ${CONTAINERS_EXPECTED}`;
    return { error: invalid(setting, detail) };
  }

  const known = new Set(containerNames);
  const where = describeSource(setting.source);
  const names: string[] = [];
  for (const name of new Set(entries)) {
    if (known.has(name)) {
      names.push(name);
    } else {
      warnings.push(
        `${CONTAINERS_ANNOTATION} on ${where} names "${name}", but the pod has no container or initContainer of that name`,
      );
    }
  }
  if (names.length === 0) {
    warnings.push(
      `${CONTAINERS_ANNOTATION} on ${where} matches no container of the pod, so no container gets HSM addresses`,
    );
  }
  return { names };
}

// Linux's PATH_MAX. The check counts UTF-16 code units, not bytes, so it is only an upper bound.
const MAX_CONFIG_PATH_LENGTH = 4096;
const CONTROL_CHARACTER_PATTERN = /[\u0000-\u001f\u007f]/;
const CONFIG_PATH_EXPECTED =
  'expected an absolute, normalized file path such as /opt/cloudhsm/etc/cloudhsm-pkcs11.cfg, without ".", ".." or empty segments, a trailing slash or control characters';

function resolveConfigPath(
  sources: readonly AnnotationSource[],
): string | Rejected | undefined {
  const setting = findNearest(sources, CONFIG_PATH_ANNOTATION);
  if (setting === undefined) {
    return undefined;
  }
  if (!isStringSetting(setting) || !isNormalizedAbsolutePath(setting.value)) {
    return { error: invalid(setting, CONFIG_PATH_EXPECTED) };
  }
  return setting.value;
}

function isNormalizedAbsolutePath(path: string): boolean {
  if (!path.startsWith("/") || path.length > MAX_CONFIG_PATH_LENGTH) {
    return false;
  }
  if (CONTROL_CHARACTER_PATTERN.test(path)) {
    return false;
  }
  // "/" itself splits into one empty segment, so the root directory is rejected as well.
  const segments = path.slice(1).split("/");
  return segments.every(
    (segment) => segment !== "" && segment !== "." && segment !== "..",
  );
}

function resolveConfigFormat(
  sources: readonly AnnotationSource[],
): ConfigFormat | Rejected {
  const setting = findNearest(sources, CONFIG_FORMAT_ANNOTATION);
  if (setting === undefined) {
    return DEFAULT_CONFIG_FORMAT;
  }
  const format = CONFIG_FORMATS.find(
    (candidate) => candidate === setting.value,
  );
  if (format === undefined) {
    return { error: invalid(setting, "expected sdk5, sdk3 or json") };
  }
  return format;
}
