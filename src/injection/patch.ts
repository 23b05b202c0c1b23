/** One RFC 6902 operation, of the kinds that diffPods emits. */
export type PatchOperation =
  | { op: "add" | "replace"; path: string; value: unknown }
  | { op: "remove"; path: string };

type Container = Record<string, unknown> | unknown[];

const hasOwn = (object: object, key: string): boolean =>
  Object.prototype.hasOwnProperty.call(object, key);

/**
 * Computes the JSONPatch that turns `original` into `mutated`, where both are views of one pod
 * (see view.ts) and `mutated` went through injection. Diffing a mutated copy, rather than
 * writing operations by hand, handles absent parents, array indexes and `~0`/`~1` escaping.
 *
 * Two values that are the same object are equal without a look inside. Injection keeps every
 * entry it leaves alone by reference, so the diff visits only what injection touched, and a
 * 1 MB pod costs no more than a small one. Lists are diffed index by index.
 *
 * The operations hold references into `mutated`, not copies, so the caller serializes or
 * applies them before changing `mutated` again.
 */
export function diffPods(
  original: unknown,
  mutated: unknown,
): PatchOperation[] {
  const operations: PatchOperation[] = [];
  diffValue(original, mutated, "", true, operations);
  return operations;
}

// Operations whose path diffPods built from tokens that JSON writes unescaped, so that
// serializePatch need not scan the path again.
const plainPaths = new WeakSet<PatchOperation>();

function emit(
  operation: PatchOperation,
  plain: boolean,
  operations: PatchOperation[],
): void {
  if (plain) {
    plainPaths.add(operation);
  }
  operations.push(operation);
}

function diffValue(
  before: unknown,
  after: unknown,
  path: string,
  plain: boolean,
  operations: PatchOperation[],
): void {
  if (before === after) {
    return;
  }
  if (isContainer(before) && isContainer(after)) {
    const beforeIsList = Array.isArray(before);
    if (beforeIsList === Array.isArray(after)) {
      if (beforeIsList) {
        diffList(before, after as unknown[], path, plain, operations);
      } else {
        diffMap(
          before as Record<string, unknown>,
          after as Record<string, unknown>,
          path,
          plain,
          operations,
        );
      }
      return;
    }
  }
  emit({ op: "replace", path, value: after }, plain, operations);
}

function diffMap(
  before: Record<string, unknown>,
  after: Record<string, unknown>,
  path: string,
  plain: boolean,
  operations: PatchOperation[],
): void {
  for (const key of Object.keys(before)) {
    if (!hasOwn(after, key)) {
      emit(
        { op: "remove", path: `${path}/${escapeToken(key)}` },
        plain && !NEEDS_ESCAPE.test(key),
        operations,
      );
      continue;
    }
    const value = after[key];
    if (before[key] !== value) {
      diffValue(
        before[key],
        value,
        `${path}/${escapeToken(key)}`,
        plain && !NEEDS_ESCAPE.test(key),
        operations,
      );
    }
  }
  for (const key of Object.keys(after)) {
    if (!hasOwn(before, key)) {
      emit(
        { op: "add", path: `${path}/${escapeToken(key)}`, value: after[key] },
        plain && !NEEDS_ESCAPE.test(key),
        operations,
      );
    }
  }
}

function diffList(
  before: readonly unknown[],
  after: readonly unknown[],
  path: string,
  plain: boolean,
  operations: PatchOperation[],
): void {
  // Removals go from the end, so each index still names the entry it named in `before`.
  for (let index = before.length - 1; index >= after.length; index -= 1) {
    emit({ op: "remove", path: `${path}/${index}` }, plain, operations);
  }
  const common = Math.min(before.length, after.length);
  for (let index = 0; index < common; index += 1) {
    if (before[index] !== after[index]) {
      diffValue(
        before[index],
        after[index],
        `${path}/${index}`,
        plain,
        operations,
      );
    }
  }
  for (let index = before.length; index < after.length; index += 1) {
    emit(
      { op: "add", path: `${path}/${index}`, value: after[index] },
      plain,
      operations,
    );
  }
}

function isContainer(value: unknown): value is Container {
  return typeof value === "object" && value !== null;
}

const TOKEN_ESCAPES = /[~/]/;

/** Escapes one key as an RFC 6901 reference token. */
function escapeToken(key: string): string {
  if (!TOKEN_ESCAPES.test(key)) {
    return key;
  }
  return key.replace(/~/g, "~0").replace(/\//g, "~1");
}

// JSON text of frozen values, which injection shares between pods: the config volume, the config
// mount and the webhook's env entries of each plan. Keyed weakly, so an old plan's entries go
// when the plan does.
const frozenJson = new WeakMap<object, string>();

// JSON text of long strings, such as the rendered config, which every patch of a plan carries.
// Bounded, because the keys are held strongly.
const longStringJson = new Map<string, string>();
const LONG_STRING_LENGTH = 256;
const LONG_STRING_CACHE_LIMIT = 64;

// Characters that JSON.stringify escapes in a string: quote, backslash, controls and surrogates.
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/**
 * Serializes a patch from diffPods as JSON text, the same text that JSON.stringify gives, since
 * diffPods takes its values from parsed JSON and never emits undefined. On Node 20
 * JSON.stringify costs about 5 µs for a typical pod's ten operations, a large share of an
 * admission, so the values that repeat from pod to pod are encoded once and reused.
 */
export function serializePatch(operations: readonly PatchOperation[]): string {
  let text = "[";
  for (let index = 0; index < operations.length; index += 1) {
    const operation = operations[index]!;
    if (index > 0) {
      text += ",";
    }
    const path = plainPaths.has(operation)
      ? `"${operation.path}"`
      : stringJson(operation.path);
    text += `{"op":"${operation.op}","path":${path}`;
    if (operation.op !== "remove") {
      text += `,"value":${valueJson(operation.value)}`;
    }
    text += "}";
  }
  return `${text}]`;
}

function valueJson(value: unknown): string {
  if (typeof value === "string") {
    if (value.length < LONG_STRING_LENGTH) {
      return stringJson(value);
    }
    let text = longStringJson.get(value);
    if (text === undefined) {
      text = JSON.stringify(value);
      if (longStringJson.size >= LONG_STRING_CACHE_LIMIT) {
        longStringJson.clear();
      }
      longStringJson.set(value, text);
    }
    return text;
  }
  if (typeof value === "object" && value !== null && Object.isFrozen(value)) {
    let text = frozenJson.get(value);
    if (text === undefined) {
      text = JSON.stringify(value);
      frozenJson.set(value, text);
    }
    return text;
  }
  return JSON.stringify(value);
}

function stringJson(value: string): string {
  return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : `"${value}"`;
}
