import { isObject, ownString, type JsonObject } from "../injection/pod.js";
import {
  INJECT_ANNOTATION,
  resolveInjection,
  type AnnotationSource,
  type InjectionDecision,
  type ResolveDefaults,
} from "../injection/resolve.js";
import type { Decider } from "./handler.js";

/** Reads the annotations of a pod's owners and namespace from the API server. */
export interface ChainReader {
  read(
    namespace: string,
    ownerReferences: unknown,
  ): Promise<{ owners: AnnotationSource[]; namespace: AnnotationSource }>;
}

/** Builds the source list entry for the pod itself. Only string-valued annotations take part. */
export function podSource(pod: JsonObject): AnnotationSource {
  const metadata = isObject(pod.metadata) ? pod.metadata : {};
  const annotations: Record<string, string> = {};
  if (isObject(metadata.annotations)) {
    for (const [key, value] of Object.entries(metadata.annotations)) {
      if (typeof value === "string") {
        Object.defineProperty(annotations, key, { value, enumerable: true });
      }
    }
  }
  return { kind: "Pod", name: ownString(metadata, "name") ?? "", annotations };
}

/** Lists the names of the pod's containers and initContainers. */
export function containerNames(pod: JsonObject): string[] {
  const spec = isObject(pod.spec) ? pod.spec : {};
  const names: string[] = [];
  for (const key of ["initContainers", "containers"]) {
    const list = spec[key];
    if (Array.isArray(list)) {
      for (const container of list) {
        const name = ownString(container, "name");
        if (name !== undefined) {
          names.push(name);
        }
      }
    }
  }
  return names;
}

/** Decides from the pod's own annotations alone, for offline use and when no API server is set. */
export function podDecider(defaults: ResolveDefaults): Decider {
  return async (pod) =>
    resolveInjection([podSource(pod)], containerNames(pod), defaults);
}

export type { InjectionDecision };
export { INJECT_ANNOTATION };
