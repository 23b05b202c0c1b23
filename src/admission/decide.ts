import { isObject, ownString, type JsonObject } from "../injection/pod.js";
import {
  INJECT_ANNOTATION,
  resolveInjection,
  type AnnotationSource,
  type InjectionDecision,
  type ResolveDefaults,
} from "../injection/resolve.js";
import type { Logger } from "../log.js";
import { RepeatLimiter } from "../log.js";
import type { Decider, LookupFailed } from "./handler.js";

/** Reads the annotations of a pod's owners and namespace from the API server. */
export interface ChainReader {
  read(namespace: string, ownerReferences: unknown): Promise<AnnotationChain>;
  /** Returns the chain without I/O when the reader has it cached, and undefined otherwise. */
  readCached?(
    namespace: string,
    ownerReferences: unknown,
  ): AnnotationChain | undefined;
}

export interface AnnotationChain {
  owners: AnnotationSource[];
  namespace: AnnotationSource;
}

/** Builds the source list entry for the pod itself. Only string-valued annotations take part. */
export function podSource(pod: JsonObject): AnnotationSource {
  const metadata = isObject(pod.metadata) ? pod.metadata : {};
  const annotations: Record<string, string> = {};
  if (isObject(metadata.annotations)) {
    for (const [key, value] of Object.entries(metadata.annotations)) {
      if (typeof value !== "string") {
        continue;
      }
      if (key === "__proto__") {
        // Assignment would set the prototype, but here the key is data.
        Object.defineProperty(annotations, key, { value, enumerable: true });
      } else {
        annotations[key] = value;
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

export interface ChainDeciderOptions {
  readonly reader: ChainReader;
  readonly defaults: ResolveDefaults;
  /** Policy when the owners or the namespace cannot be read: allow with a warning, or deny. */
  readonly onLookupError: "allow" | "deny";
  readonly logger: Logger;
  /** Called once per failed lookup, for metrics. */
  readonly onLookupFailure?: (error: unknown) => void;
}

/**
 * Decides from the pod, its controlling owners and its namespace. A pod that sets
 * `cloudhsm/inject: "false"` itself costs no API read.
 *
 * When the owners or the namespace cannot be read:
 * - a pod that opts in itself is injected with its own options and a warning, or rejected
 *   under `--on-lookup-error deny`, because owner options such as cluster-id are unknown;
 * - any other pod is admitted uninjected with a warning, or rejected under
 *   `--on-lookup-error deny`.
 */
export function chainDecider(options: ChainDeciderOptions): Decider {
  const repeats = new RepeatLimiter(60_000);
  return async (pod, request) => {
    const own = podSource(pod);
    const names = containerNames(pod);
    const ownSetting = own.annotations?.[INJECT_ANNOTATION];
    if (ownSetting === "false") {
      return resolveInjection([own], names, options.defaults);
    }

    const metadata = isObject(pod.metadata) ? pod.metadata : {};
    const namespace =
      request.namespace ?? ownString(metadata, "namespace") ?? "";
    let chain;
    try {
      chain =
        options.reader.readCached?.(namespace, metadata.ownerReferences) ??
        (await options.reader.read(namespace, metadata.ownerReferences));
    } catch (error) {
      options.onLookupFailure?.(error);
      const cause = error instanceof Error ? error.message : String(error);
      const suppressed = repeats.admit(`${namespace}|${cause}`);
      if (suppressed !== undefined) {
        options.logger.warn(
          {
            uid: request.uid,
            namespace,
            err: cause,
            suppressedRepeats: suppressed,
          },
          "owner or namespace lookup failed",
        );
      }
      return lookupFailure(own, names, options, cause);
    }
    return resolveInjection(
      [own, ...chain.owners, chain.namespace],
      names,
      options.defaults,
    );
  };
}

function lookupFailure(
  own: AnnotationSource,
  names: readonly string[],
  options: ChainDeciderOptions,
  cause: string,
): InjectionDecision | LookupFailed {
  const optsInItself = own.annotations?.[INJECT_ANNOTATION] === "true";
  if (options.onLookupError === "deny") {
    return {
      inject: false,
      lookupFailed: true,
      deny: `cloudhsm-webhook could not read the pod's owners or namespace (${cause}); retry, or grant the webhook get on them`,
      warnings: [],
    };
  }
  if (optsInItself) {
    const decision = resolveInjection([own], names, options.defaults);
    if ("error" in decision || !decision.inject) {
      return decision;
    }
    const warning = `options on the pod's owners and namespace were not read (${cause}); injected with the pod's own options`;
    return { ...decision, warnings: [...decision.warnings, warning] };
  }
  return {
    inject: false,
    lookupFailed: true,
    warnings: [
      `cloudhsm-webhook could not read the pod's owners or namespace (${cause}); the pod was admitted without CloudHSM addresses`,
    ],
  };
}

export type { InjectionDecision };
export { INJECT_ANNOTATION };
