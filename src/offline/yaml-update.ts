/**
 * Brings a node of a parsed YAML document to a new value while keeping the nodes whose values
 * stay the same, so that their comments, quoting and layout survive.
 */
import { isDeepStrictEqual } from "node:util";
import {
  Scalar,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  visit,
  type Document,
  type Node,
  type Pair,
  type YAMLMap,
  type YAMLSeq,
} from "yaml";
import { isObject } from "../injection/pod.js";

/** A key in a YAML map or an index in a YAML sequence, from the document root. */
export type NodePath = ReadonlyArray<string | number>;

/** Error for a YAML node that cannot be changed in place. */
export class YamlUpdateError extends Error {
  override readonly name = "YamlUpdateError";
}

/**
 * Throws YamlUpdateError when the subtree at `path` is or contains an alias or an anchor, or has
 * a `<<` merge key. A change could then reach other parts of the document that share a node, or
 * miss keys that only the merge provides.
 */
export function assertEditable(document: Document, path: NodePath): void {
  const root = nodeAt(document, path);
  if (isAlias(root)) {
    throw new YamlUpdateError(
      "the pod template is a YAML alias: replace it with a copy of the anchored mapping to inject it",
    );
  }
  if (!isMap(root) && !isSeq(root)) {
    return;
  }
  const rejectAnchor = (node: { anchor?: string }): void => {
    if (node.anchor !== undefined) {
      throw new YamlUpdateError(
        `the pod template contains the YAML anchor &${node.anchor}, which aliases elsewhere may share: remove the anchor to inject it`,
      );
    }
  };
  rejectAnchor(root);
  visit(root, {
    Alias() {
      throw new YamlUpdateError(
        "the pod template contains YAML aliases: replace them with copies of the anchored nodes to inject it",
      );
    },
    Map(_key, map) {
      rejectAnchor(map);
    },
    Seq(_key, seq) {
      rejectAnchor(seq);
    },
    Scalar(_key, scalar) {
      rejectAnchor(scalar);
    },
    Pair(_key, pair) {
      // With YAML 1.1 merge keys on, the parser stores `<<` as a symbol value.
      if (
        isScalar(pair.key) &&
        (typeof pair.key.value === "symbol" || pair.key.value === "<<")
      ) {
        throw new YamlUpdateError(
          "the pod template contains a YAML merge key (<<): write the merged keys out to inject it",
        );
      }
    },
  });
}

/**
 * Sets the node at `path`, which must be a map, to `value`. Keys are removed, added at the end or
 * updated in place. A sequence first reuses the nodes of unchanged entries, then updates map
 * entries with the same `name` in place. So a comment stays with its env variable, container or
 * volume when the list is reordered.
 */
export function updateMapNode(
  document: Document,
  path: NodePath,
  value: Record<string, unknown>,
): void {
  const node = nodeAt(document, path);
  if (!isMap(node)) {
    throw new YamlUpdateError(`no YAML map at ${path.join(".") || "the root"}`);
  }
  updateMap(document, node, value);
}

function updateNode(
  document: Document,
  node: unknown,
  value: unknown,
): unknown {
  if (isMap(node) && isObject(value)) {
    updateMap(document, node, value);
    return node;
  }
  if (isSeq(node) && Array.isArray(value)) {
    updateSeq(document, node, value);
    return node;
  }
  if (isScalar(node) && isScalarValue(value)) {
    if (node.value !== value) {
      const sameType = typeof node.value === typeof value;
      node.value = value;
      node.type = sameType ? keptScalarType(node.type, value) : undefined;
    }
    return node;
  }
  return createStyledNode(document, value);
}

function updateMap(
  document: Document,
  map: YAMLMap,
  value: Record<string, unknown>,
): void {
  // toJS turns every key into a string, so keys are compared as strings here too.
  const pairs = new Map<string, Pair>();
  for (const pair of map.items) {
    pairs.set(keyText(pair.key), pair);
  }
  map.items = map.items.filter((pair) =>
    Object.hasOwn(value, keyText(pair.key)),
  );
  for (const [key, child] of Object.entries(value)) {
    const pair = pairs.get(key);
    if (pair === undefined) {
      addPair(map, key, createStyledNode(document, child));
    } else {
      pair.value = updateNode(document, pair.value, child);
    }
  }
}

/**
 * Adds a key at the end of the map, except `metadata`, which goes before `spec` as Kubernetes
 * manifests order them.
 */
function addPair(map: YAMLMap, key: string, node: Node): void {
  map.set(key, node);
  if (key !== "metadata") {
    return;
  }
  const specIndex = map.items.findIndex((pair) => keyText(pair.key) === "spec");
  if (specIndex >= 0) {
    const added = map.items.pop()!;
    map.items.splice(specIndex, 0, added);
  }
}

function keyText(key: unknown): string {
  return String(isScalar(key) ? key.value : key);
}

function updateSeq(
  document: Document,
  seq: YAMLSeq,
  values: readonly unknown[],
): void {
  const candidates = seq.items.map((item) => ({
    item,
    value:
      isMap(item) || isSeq(item) || isScalar(item) ? item.toJS(document) : item,
    used: false,
  }));
  if (
    candidates.length === values.length &&
    candidates.every((candidate, index) =>
      isDeepStrictEqual(candidate.value, values[index]),
    )
  ) {
    return;
  }
  const chosen: Array<(typeof candidates)[number] | undefined> = values.map(
    (value) => {
      const match = candidates.find(
        (candidate) =>
          !candidate.used && isDeepStrictEqual(candidate.value, value),
      );
      if (match !== undefined) {
        match.used = true;
      }
      return match;
    },
  );
  values.forEach((value, index) => {
    if (chosen[index] !== undefined) {
      return;
    }
    const name = nameOf(value);
    const match =
      name === undefined
        ? undefined
        : candidates.find(
            (candidate) =>
              !candidate.used &&
              isMap(candidate.item) &&
              nameOf(candidate.value) === name,
          );
    if (match !== undefined) {
      match.used = true;
      chosen[index] = match;
    }
  });
  seq.items = values.map((value, index) => {
    const match = chosen[index];
    return match === undefined
      ? createStyledNode(document, value)
      : updateNode(document, match.item, value);
  });
}

/** Creates a block-style node, with multi-line strings as literal blocks (`|`). */
function createStyledNode(document: Document, value: unknown): Node {
  const node = document.createNode(value) as Node;
  if (isScalar(node)) {
    node.type = keptScalarType(undefined, node.value);
    return node;
  }
  visit(node, {
    Scalar(_key, scalar) {
      scalar.type = keptScalarType(undefined, scalar.value);
    },
  });
  return node;
}

/** Keeps a scalar's quoting unless the new value needs a block or no longer fits one. */
function keptScalarType(
  type: Scalar.Type | undefined,
  value: unknown,
): Scalar.Type | undefined {
  if (typeof value === "string" && value.includes("\n")) {
    return Scalar.BLOCK_LITERAL;
  }
  return type === Scalar.BLOCK_LITERAL || type === Scalar.BLOCK_FOLDED
    ? undefined
    : type;
}

function isScalarValue(value: unknown): boolean {
  return (
    value === null ||
    typeof value === "string" ||
    typeof value === "number" ||
    typeof value === "boolean"
  );
}

function nameOf(value: unknown): string | undefined {
  return isObject(value) && typeof value.name === "string"
    ? value.name
    : undefined;
}

/** Returns the node at `path`, or undefined when a segment is missing. */
export function nodeAt(document: Document, path: NodePath): unknown {
  let node: unknown = document.contents;
  for (const segment of path) {
    if (isMap(node)) {
      node = node.get(segment, true);
    } else if (isSeq(node)) {
      node = node.get(Number(segment), true);
    } else {
      return undefined;
    }
  }
  return node;
}
