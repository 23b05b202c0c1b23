import { isObject, type JsonObject } from "./pod.js";

const has = (object: JsonObject, key: string): boolean =>
  Object.prototype.hasOwnProperty.call(object, key);

/**
 * Returns a copy of the parts of a pod that injection writes: metadata annotations and labels,
 * spec volumes, and each container's name, env and volumeMounts. Everything else is left out,
 * so diffing two views costs the same for a 1 KB pod and a 1 MB pod with large unrelated fields.
 *
 * A view mirrors which keys exist in the pod, so a diff of two views yields paths that apply to
 * the whole pod. Maps are copied, because injection sets keys in them, and arrays are shared,
 * because injection replaces arrays instead of changing them. With `copyMaps` false the view
 * shares the pod's maps too. That suits the unchanged side of a diff, and saves the copies.
 */
export function ownedView(pod: JsonObject, copyMaps = true): JsonObject {
  const view: JsonObject = {};
  if (has(pod, "metadata")) {
    view.metadata = isObject(pod.metadata)
      ? pick(pod.metadata, ["annotations", "labels"], copyMaps ? copyMap : same)
      : pod.metadata;
  }
  if (has(pod, "spec")) {
    view.spec = isObject(pod.spec) ? specView(pod.spec) : pod.spec;
  }
  return view;
}

function specView(spec: JsonObject): JsonObject {
  const view = pick(spec, ["volumes"], same);
  for (const key of ["containers", "initContainers"]) {
    if (has(spec, key)) {
      const list = spec[key];
      view[key] = Array.isArray(list)
        ? list.map((container) =>
            isObject(container)
              ? pick(container, ["name", "env", "volumeMounts"], same)
              : container,
          )
        : list;
    }
  }
  return view;
}

function same(value: unknown): unknown {
  return value;
}

function pick(
  source: JsonObject,
  keys: readonly string[],
  copy: (value: unknown) => unknown,
): JsonObject {
  const result: JsonObject = {};
  for (const key of keys) {
    if (has(source, key)) {
      result[key] = copy(source[key]);
    }
  }
  return result;
}

/**
 * Copies a map key by key. A spread copy cost about three times as much in a loop, because V8
 * gives it a hidden class that turns slow when injection adds keys.
 */
function copyMap(value: unknown): unknown {
  if (!isObject(value)) {
    return value;
  }
  const copy: JsonObject = {};
  for (const key of Object.keys(value)) {
    if (key === "__proto__") {
      // Assignment would set the prototype, but here the key is data.
      Object.defineProperty(copy, key, {
        value: value[key],
        enumerable: true,
        writable: true,
        configurable: true,
      });
    } else {
      copy[key] = value[key];
    }
  }
  return copy;
}
