/**
 * Loose JSON views of the pod fields the webhook reads and writes. Pods stay plain parsed JSON end
 * to end, so fields this code does not know survive untouched.
 */
export type JsonObject = Record<string, unknown>;

export interface EnvVar extends JsonObject {
  name?: unknown;
}

export interface VolumeMount extends JsonObject {
  name?: unknown;
  mountPath?: unknown;
}

export interface Container extends JsonObject {
  name?: unknown;
  env?: unknown;
  volumeMounts?: unknown;
}

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Reads an own string property, so keys such as `__proto__` never resolve to inherited values. */
export function ownString(object: unknown, key: string): string | undefined {
  if (!isObject(object) || !Object.prototype.hasOwnProperty.call(object, key)) {
    return undefined;
  }
  const value = object[key];
  return typeof value === "string" ? value : undefined;
}

/** Reads the pod's annotations as a plain map, or undefined when it has none. */
export function podAnnotations(
  pod: unknown,
): Readonly<Record<string, unknown>> | undefined {
  const metadata = isObject(pod) ? pod.metadata : undefined;
  const annotations = isObject(metadata) ? metadata.annotations : undefined;
  return isObject(annotations) ? annotations : undefined;
}

// Kubernetes object names have at most 253 characters, but the API server validates the name
// only after mutating admission, so a longer one can reach the webhook.
const MAX_DISPLAY_NAME_LENGTH = 253;

/**
 * Returns a name for logs and messages: the pod's name, or its generateName prefix followed by
 * `*`. Names longer than Kubernetes allows are cut and end in `...`.
 */
export function podDisplayName(pod: unknown): string {
  const metadata = isObject(pod) ? pod.metadata : undefined;
  const name =
    ownString(metadata, "name") ??
    `${ownString(metadata, "generateName") ?? ""}*`;
  return name.length > MAX_DISPLAY_NAME_LENGTH
    ? `${name.slice(0, MAX_DISPLAY_NAME_LENGTH)}...`
    : name;
}
