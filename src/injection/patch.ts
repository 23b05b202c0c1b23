/** One RFC 6902 operation, of the kinds that diffPods emits. */
export type PatchOperation =
  | { op: "add" | "replace"; path: string; value: unknown }
  | { op: "remove"; path: string };

/** A patch as JSON text, for an AdmissionResponse. */
export interface PatchText {
  /** The JSON array of operations, "[]" when nothing changed. */
  readonly json: string;
  readonly length: number;
  /** True when `json` contains only ASCII characters, so its UTF-8 bytes equal its characters. */
  readonly ascii: boolean;
  /** The base64 of the UTF-8 bytes of `json`, when it is already known. */
  readonly base64?: string;
}

// A buffer reused for every patch that fits. Buffer.from allocated a Buffer per patch, and in a
// loop that took longer than encoding a typical 2 KB patch.
const scratch = Buffer.allocUnsafe(64 * 1024);

/** Encodes the UTF-8 bytes of `text` as base64. Pass `ascii` true only for ASCII text. */
export function encodeBase64(text: string, ascii: boolean): string {
  // Latin-1 encoding skips UTF-8's scan, and gives the same bytes for ASCII text. A character
  // takes at most 3 UTF-8 bytes, as a surrogate pair takes 4 for its 2 characters.
  if (text.length <= scratch.length / (ascii ? 1 : 3)) {
    const size = scratch.write(text, 0, ascii ? "latin1" : "utf8");
    return scratch.toString("base64", 0, size);
  }
  return Buffer.from(text, ascii ? "latin1" : "utf8").toString("base64");
}

type Container = Record<string, unknown> | unknown[];

/** Receives the operations of a diff, in order. */
interface Sink {
  /**
   * `plain` is true when the path contains no character that JSON escapes and no character outside
   * ASCII, so it can be written between quotes as it is.
   */
  add(
    op: PatchOperation["op"],
    path: string,
    plain: boolean,
    value?: unknown,
  ): void;
}

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
  diffValue(original, mutated, "", true, {
    add(op, path, _plain, value) {
      operations.push(op === "remove" ? { op, path } : { op, path, value });
    },
  });
  return operations;
}

/**
 * Computes the same patch as diffPods, as the JSON text that JSON.stringify would write for it,
 * without building the operation objects. The admission handler sends this text.
 */
export function diffPodsToJson(original: unknown, mutated: unknown): PatchText {
  const writer = new PatchWriter();
  diffValue(original, mutated, "", true, writer);
  return writer.finish();
}

/**
 * Serializes a patch from diffPods as JSON text, the same text that JSON.stringify gives, since
 * diffPods takes its values from parsed JSON and never emits undefined.
 */
export function serializePatch(
  operations: readonly PatchOperation[],
): PatchText {
  const writer = new PatchWriter();
  for (const operation of operations) {
    writer.add(
      operation.op,
      operation.path,
      false,
      operation.op === "remove" ? undefined : operation.value,
    );
  }
  return writer.finish();
}

function diffValue(
  before: unknown,
  after: unknown,
  path: string,
  plain: boolean,
  sink: Sink,
): void {
  if (before === after) {
    return;
  }
  if (isContainer(before) && isContainer(after)) {
    const beforeIsList = Array.isArray(before);
    if (beforeIsList === Array.isArray(after)) {
      if (beforeIsList) {
        diffList(before, after as unknown[], path, plain, sink);
      } else {
        diffMap(
          before as Record<string, unknown>,
          after as Record<string, unknown>,
          path,
          plain,
          sink,
        );
      }
      return;
    }
  }
  sink.add("replace", path, plain, after);
}

function diffMap(
  before: Record<string, unknown>,
  after: Record<string, unknown>,
  path: string,
  plain: boolean,
  sink: Sink,
): void {
  for (const key of Object.keys(before)) {
    if (!hasOwn(after, key)) {
      const token = tokenFor(key);
      sink.add("remove", path + token.text, plain && token.plain);
      continue;
    }
    const value = after[key];
    if (before[key] !== value) {
      const token = tokenFor(key);
      diffValue(
        before[key],
        value,
        path + token.text,
        plain && token.plain,
        sink,
      );
    }
  }
  for (const key of Object.keys(after)) {
    if (!hasOwn(before, key)) {
      const token = tokenFor(key);
      sink.add("add", path + token.text, plain && token.plain, after[key]);
    }
  }
}

function diffList(
  before: readonly unknown[],
  after: readonly unknown[],
  path: string,
  plain: boolean,
  sink: Sink,
): void {
  // Removals go from the end, so each index still names the entry it named in `before`.
  for (let index = before.length - 1; index >= after.length; index -= 1) {
    sink.add("remove", `${path}/${index}`, plain);
  }
  const common = Math.min(before.length, after.length);
  for (let index = 0; index < common; index += 1) {
    if (before[index] !== after[index]) {
      diffValue(before[index], after[index], `${path}/${index}`, plain, sink);
    }
  }
  for (let index = before.length; index < after.length; index += 1) {
    sink.add("add", `${path}/${index}`, plain, after[index]);
  }
}

function isContainer(value: unknown): value is Container {
  return typeof value === "object" && value !== null;
}

/** A key as the path segment that names it, with its leading slash. */
interface Token {
  readonly text: string;
  /** True when isPlain(key) is true, so the segment needs no JSON escaping. */
  readonly plain: boolean;
}

// Segments of the keys that injection touches, which are the same few for every pod. The cache is
// bounded in count and key length, because pods choose their own annotation keys.
const tokens = new Map<string, Token>();
const TOKEN_CACHE_LIMIT = 1024;
const TOKEN_CACHE_KEY_LENGTH = 128;

function tokenFor(key: string): Token {
  let token = tokens.get(key);
  if (token === undefined) {
    token = { text: `/${escapeToken(key)}`, plain: isPlain(key) };
    if (key.length <= TOKEN_CACHE_KEY_LENGTH) {
      if (tokens.size >= TOKEN_CACHE_LIMIT) {
        tokens.clear();
      }
      tokens.set(key, token);
    }
  }
  return token;
}

const TOKEN_ESCAPES = /[~/]/;

/** Escapes one key as an RFC 6901 reference token. */
function escapeToken(key: string): string {
  if (!TOKEN_ESCAPES.test(key)) {
    return key;
  }
  return key.replace(/~/g, "~0").replace(/\//g, "~1");
}

// Characters that JSON.stringify escapes in a string (quote, backslash, controls, surrogates),
// and every other character outside ASCII.
const NOT_PLAIN = /["\\\u0000-\u001f\u007f-\uffff]/;

function isPlain(text: string): boolean {
  return !NOT_PLAIN.test(text);
}

/** JSON text of a value, and whether that text is ASCII. */
interface Encoded {
  readonly json: string;
  readonly ascii: boolean;
}

// JSON text of frozen values, which injection shares between pods: the config volume, the config
// mount and the webhook's env entries of each plan. Keyed weakly, so an old plan's entries go
// when the plan does.
const frozenJson = new WeakMap<object, Encoded>();

// JSON text of long strings, such as the rendered config, which every patch of a plan carries.
// Bounded in count and in string length, because the keys are held strongly and a user's env
// value can reach the patch too. A config lists a few servers per cluster and stays far below
// the length bound.
const longStringJson = new Map<string, Encoded>();
const LONG_STRING_LENGTH = 256;
const LONG_STRING_CACHE_LIMIT = 64;
const LONG_STRING_CACHE_MAX_LENGTH = 16 * 1024;

/** Returns the characters of the strings whose JSON text is cached, for tests. */
export function cachedLongStringLength(): number {
  let total = 0;
  for (const key of longStringJson.keys()) {
    total += key.length;
  }
  return total;
}

const NON_ASCII = /[^\u0000-\u007f]/;

function encode(value: unknown): Encoded {
  const json = JSON.stringify(value);
  return { json, ascii: !NON_ASCII.test(json) };
}

/**
 * Writes operations as JSON text. On Node 20, JSON.stringify took about 8 µs for a typical pod's
 * ten operations in a loop on the benchmark machine, a large share of an admission. So values
 * that repeat from pod to pod are encoded once and reused, and paths that need no escaping are
 * written as they are.
 *
 * The text is built by appending, and V8 keeps the pieces as a tree until the characters are read.
 * Encoding the tree for the response copies each piece once. In a loop, that took less than half
 * the time of joining an array of pieces first.
 */
class PatchWriter implements Sink {
  #text = "[";
  #length = 0;
  #ascii = true;

  add(
    op: PatchOperation["op"],
    path: string,
    plain: boolean,
    value?: unknown,
  ): void {
    this.#text += this.#length > 0 ? OPENERS_AFTER_FIRST[op] : OPENERS[op];
    this.#length += 1;
    if (plain) {
      this.#text += `"${path}"`;
    } else {
      this.#append(encode(path));
    }
    if (op !== "remove") {
      this.#text += VALUE_KEY;
      this.#value(value);
    }
    this.#text += "}";
  }

  finish(): PatchText {
    return {
      json: `${this.#text}]`,
      length: this.#length,
      ascii: this.#ascii,
    };
  }

  #append(encoded: Encoded): void {
    this.#text += encoded.json;
    this.#ascii &&= encoded.ascii;
  }

  #value(value: unknown): void {
    if (typeof value === "string") {
      if (value.length < LONG_STRING_LENGTH) {
        if (isPlain(value)) {
          this.#text += `"${value}"`;
        } else {
          this.#append(encode(value));
        }
        return;
      }
      if (value.length > LONG_STRING_CACHE_MAX_LENGTH) {
        this.#append(encode(value));
        return;
      }
      let encoded = longStringJson.get(value);
      if (encoded === undefined) {
        encoded = encode(value);
        if (longStringJson.size >= LONG_STRING_CACHE_LIMIT) {
          longStringJson.clear();
        }
        longStringJson.set(value, encoded);
      }
      this.#append(encoded);
      return;
    }
    if (typeof value === "object" && value !== null && Object.isFrozen(value)) {
      let encoded = frozenJson.get(value);
      if (encoded === undefined) {
        encoded = encode(value);
        frozenJson.set(value, encoded);
      }
      this.#append(encoded);
      return;
    }
    this.#append(encode(value));
  }
}

const OPENERS: Readonly<Record<PatchOperation["op"], string>> = {
  add: '{"op":"add","path":',
  replace: '{"op":"replace","path":',
  remove: '{"op":"remove","path":',
};
const OPENERS_AFTER_FIRST: Readonly<Record<PatchOperation["op"], string>> = {
  add: `,${OPENERS.add}`,
  replace: `,${OPENERS.replace}`,
  remove: `,${OPENERS.remove}`,
};
const VALUE_KEY = ',"value":';
