import { randomBytes } from "node:crypto";
import {
  ANNOTATION_INJECTED_AT,
  injectPod,
  isoTime,
  type InjectionPlan,
} from "./mutate.js";
import { diffPodsToJson, encodeBase64, type PatchText } from "./patch.js";
import { isObject, type JsonObject } from "./pod.js";
import { ownedView } from "./view.js";

/** The outcome of injecting one pod: its patch, or none when the pod already had the plan. */
export interface Injection {
  readonly patch: PatchText | undefined;
  readonly warnings: readonly string[];
}

/** Bounds of a PatchCache. When either total is reached, the cache starts empty again. */
export interface PatchCacheLimits {
  /** Maximum cached patches, over all plans. */
  readonly entries: number;
  /** Maximum characters of keys and patch text, over all entries. */
  readonly characters: number;
  /** Maximum length of a view, in characters of its JSON text, whose patch is cached. */
  readonly viewLength: number;
}

export const DEFAULT_PATCH_CACHE_LIMITS: PatchCacheLimits = {
  entries: 256,
  characters: 4 * 1024 * 1024,
  viewLength: 8192,
};

// Views of valid pods nest about eight levels deep, by estimate. A deeper one is not cached,
// which also keeps JSON.stringify far from the stack limit before injection checks the depth and
// rejects the pod.
const MAX_CACHED_DEPTH = 32;

/** A cached patch, with the text split where the injected-at time goes. */
interface Entry {
  readonly head: string;
  /** Text after the time, or undefined when the patch does not set the time. */
  readonly tail: string | undefined;
  readonly length: number;
  readonly ascii: boolean;
  readonly changed: boolean;
  readonly warnings: readonly string[];
  /** The base64 of the text around the time, for ASCII patches. */
  readonly base64?: Base64Parts;
}

/**
 * An ASCII patch as base64 in three parts. Base64 turns each 3 bytes into 4 characters, so the
 * parts before and after the time, cut at multiples of 3 bytes, are encoded once, and each use
 * encodes only the few bytes around the time.
 */
interface Base64Parts {
  /** The base64 of the head up to its last multiple of 3 bytes. */
  readonly before: string;
  /** The rest of the head, 0 to 2 characters. */
  readonly headRest: string;
  /** The start of the tail that, after a 24-character time, completes a multiple of 3 bytes. */
  readonly tailStart: string;
  /** The base64 of the rest of the tail. */
  readonly after: string;
}

/** Splits an ASCII patch for Base64Parts, for times whose length is a multiple of 3. */
function base64Parts(head: string, tail: string): Base64Parts {
  const headCut = head.length - (head.length % 3);
  const tailCut = Math.min(tail.length, (3 - (head.length % 3)) % 3);
  return {
    before: encodeBase64(head.slice(0, headCut), true),
    headRest: head.slice(headCut),
    tailStart: tail.slice(0, tailCut),
    after: encodeBase64(tail.slice(tailCut), true),
  };
}

/**
 * Injects pods and caches each patch by plan and by the JSON text of the pod's view (view.ts).
 * The view contains everything that injection reads, so two pods with the same view text get
 * the same patch, apart from the injected-at time. Pods of one ReplicaSet share their template,
 * so a rollout of many pods computes its patch once.
 *
 * A missed pod is injected with a placeholder in place of the time. The placeholder is random
 * per process, so no pod can contain it, and the cached text is split around it. Each use puts
 * the current time there, which gives the text that injecting at that time gives.
 */
export class PatchCache {
  readonly #limits: PatchCacheLimits;
  // Placeholder text for the injected-at time: base64url, so JSON writes it unescaped.
  readonly #placeholder = randomBytes(24).toString("base64url");
  #entries = new WeakMap<InjectionPlan, Map<string, Entry>>();
  #count = 0;
  #characters = 0;

  constructor(limits: PatchCacheLimits = DEFAULT_PATCH_CACHE_LIMITS) {
    this.#limits = limits;
  }

  /** Number of cached patches. */
  get size(): number {
    return this.#count;
  }

  /**
   * Injects `plan` into `pod` as injectPod and diffPodsToJson do, with `now` as the injected-at
   * time. Leaves `pod` unchanged and throws what injectPod throws.
   */
  inject(pod: JsonObject, plan: InjectionPlan, now: Date): Injection {
    const original = ownedView(pod, false);
    const key = this.#key(original);
    if (key === undefined) {
      return injectAndDiff(original, ownedView(pod), plan, isoTime(now));
    }
    let entries = this.#entries.get(plan);
    let entry = entries?.get(key);
    if (entry === undefined) {
      entry = this.#compute(original, ownedView(pod), plan);
      if (entry === undefined) {
        return injectAndDiff(original, ownedView(pod), plan, isoTime(now));
      }
      const characters =
        key.length + entry.head.length + (entry.tail?.length ?? 0);
      if (characters > this.#limits.characters) {
        return use(entry, isoTime(now));
      }
      if (
        this.#count >= this.#limits.entries ||
        this.#characters + characters > this.#limits.characters
      ) {
        this.#entries = new WeakMap();
        this.#count = 0;
        this.#characters = 0;
        entries = undefined;
      }
      if (entries === undefined) {
        entries = new Map();
        this.#entries.set(plan, entries);
      }
      entries.set(key, entry);
      this.#count += 1;
      this.#characters += characters;
    }
    return use(entry, isoTime(now));
  }

  /**
   * Returns the view's JSON text, or undefined when the view is too large or deep to cache, or
   * contains a number that JSON cannot write.
   */
  #key(view: JsonObject): string | undefined {
    // A pod that carries an injected-at time may carry this very millisecond's. Injecting at that
    // time leaves the annotation alone, while the placeholder would replace it with equal text.
    const metadata = view.metadata;
    if (
      isObject(metadata) &&
      isObject(metadata.annotations) &&
      Object.prototype.hasOwnProperty.call(
        metadata.annotations,
        ANNOTATION_INJECTED_AT,
      )
    ) {
      return undefined;
    }
    // Sized before JSON.stringify, so a 1 MB pod is not serialized only to be turned away.
    if (remainingLength(view, 0, this.#limits.viewLength) < 0) {
      return undefined;
    }
    const key = JSON.stringify(view);
    return key.length <= this.#limits.viewLength ? key : undefined;
  }

  /** Injects with the placeholder time, or returns undefined when its text cannot be split. */
  #compute(
    original: JsonObject,
    mutated: JsonObject,
    plan: InjectionPlan,
  ): Entry | undefined {
    const placeholder = this.#placeholder;
    const { patch, warnings } = injectAndDiff(
      original,
      mutated,
      plan,
      placeholder,
    );
    if (patch === undefined) {
      return {
        head: "",
        tail: undefined,
        length: 0,
        ascii: true,
        changed: false,
        warnings,
      };
    }
    let head = patch.json;
    let tail: string | undefined;
    const at = head.indexOf(placeholder);
    if (at >= 0) {
      const end = at + placeholder.length;
      if (head.includes(placeholder, end)) {
        return undefined;
      }
      tail = head.slice(end);
      head = head.slice(0, at);
    }
    return {
      head,
      tail,
      length: patch.length,
      ascii: patch.ascii,
      changed: true,
      warnings,
      base64:
        patch.ascii && tail !== undefined ? base64Parts(head, tail) : undefined,
    };
  }
}

function use(entry: Entry, time: string): Injection {
  if (!entry.changed) {
    return { patch: undefined, warnings: entry.warnings };
  }
  const json =
    entry.tail === undefined ? entry.head : entry.head + time + entry.tail;
  return {
    patch: {
      json,
      length: entry.length,
      ascii: entry.ascii,
      base64: base64Of(entry, time),
    },
    warnings: entry.warnings,
  };
}

/** Returns the base64 of the entry's text with `time`, from its parts when they fit the time. */
function base64Of(entry: Entry, time: string): string | undefined {
  const parts = entry.base64;
  if (parts === undefined) {
    return undefined;
  }
  const middle = parts.headRest + time + parts.tailStart;
  // Only a middle of a multiple of 3 bytes ends where `after` starts, unless nothing follows.
  if (middle.length % 3 !== 0 && parts.after !== "") {
    return undefined;
  }
  return parts.before + encodeBase64(middle, true) + parts.after;
}

function injectAndDiff(
  original: JsonObject,
  mutated: JsonObject,
  plan: InjectionPlan,
  time: string,
): Injection {
  const result = injectPod(mutated, plan, time);
  return {
    patch: result.changed ? diffPodsToJson(original, mutated) : undefined,
    warnings: result.warnings,
  };
}

/**
 * Subtracts an estimate of the JSON length of `value` from `budget` and returns what is left.
 * Returns a negative number as soon as the budget or MAX_CACHED_DEPTH is exceeded, and for a
 * number that is not finite.
 */
function remainingLength(
  value: unknown,
  depth: number,
  budget: number,
): number {
  if (typeof value === "string") {
    return budget - value.length - 2;
  }
  if (typeof value === "number" && !Number.isFinite(value)) {
    // JSON.parse reads 1e400 as Infinity, and JSON.stringify writes it as null, so the key would
    // not tell the pod from one with null there.
    return -1;
  }
  if (typeof value !== "object" || value === null) {
    // Numbers, booleans and null: at most the 24 characters of a long number.
    return budget - 24;
  }
  if (depth >= MAX_CACHED_DEPTH) {
    return -1;
  }
  let left = budget - 2;
  if (Array.isArray(value)) {
    for (const item of value) {
      left = remainingLength(item, depth + 1, left - 1);
      if (left < 0) {
        return left;
      }
    }
    return left;
  }
  for (const key of Object.keys(value)) {
    left = remainingLength(
      (value as JsonObject)[key],
      depth + 1,
      left - key.length - 4,
    );
    if (left < 0) {
      return left;
    }
  }
  return left;
}
