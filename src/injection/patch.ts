import fastJsonPatch from "fast-json-patch";

/** One RFC 6902 operation, as fast-json-patch emits it. */
export type PatchOperation = fastJsonPatch.Operation;

/**
 * Computes the JSONPatch that turns `original` into `mutated`. Diffing a mutated copy, rather
 * than writing operations by hand, handles absent parents, array indexes and `~0`/`~1` escaping.
 * fast-json-patch diffs lists index by index, so an env entry that moves down is rewritten key
 * by key: its value is unchanged, though its keys may come out in another order.
 */
export function diffPods(
  original: unknown,
  mutated: unknown,
): PatchOperation[] {
  return fastJsonPatch.compare(original as object, mutated as object);
}
