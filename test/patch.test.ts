import fc from "fast-check";
import { describe, expect, it } from "vitest";

import {
  cachedLongStringLength,
  diffPods,
  diffPodsToJson,
  serializePatch,
  type PatchOperation,
} from "../src/injection/patch.js";
import { applyStrict } from "./support/apply-patch.js";

type Json = Record<string, any>;

/**
 * Generates JSON documents from the given keys and leaf values. Roots are maps, as pod views
 * are, because RFC 6902 cannot replace the root.
 */
function documents(
  key: fc.Arbitrary<string>,
  leaf: fc.Arbitrary<unknown>,
): fc.Arbitrary<Record<string, unknown>> {
  return fc.letrec<{ value: unknown; map: Record<string, unknown> }>((tie) => ({
    value: fc.oneof(
      { depthSize: "small" },
      leaf,
      fc.array(tie("value"), { maxLength: 4 }),
      tie("map"),
    ),
    map: fc
      .array(fc.tuple(key, tie("value")), { maxLength: 4 })
      .map((entries) => Object.fromEntries(entries)),
  })).map;
}

describe("diffPods", () => {
  it("emits nothing for values shared by reference", () => {
    const env = [{ name: "A", value: "1" }];
    const before = { spec: { containers: [{ name: "app", env }] } };
    const after = { spec: { containers: [{ name: "app", env }] } };

    expect(diffPods(before, after)).toEqual([]);
  });

  it("escapes ~ and / in keys", () => {
    const before = { metadata: { annotations: { "a~b": "1" } } };
    const after = {
      metadata: { annotations: { "a~b": "2", "cloudhsm/config": "x" } },
    };

    expect(diffPods(before, after)).toEqual([
      { op: "replace", path: "/metadata/annotations/a~0b", value: "2" },
      { op: "add", path: "/metadata/annotations/cloudhsm~1config", value: "x" },
    ]);
  });

  it("removes list tails from the end", () => {
    const before = { list: ["a", "b", "c", "d"] };
    const after = { list: ["a", "x"] };

    const patch = diffPods(before, after);

    expect(patch).toEqual([
      { op: "remove", path: "/list/3" },
      { op: "remove", path: "/list/2" },
      { op: "replace", path: "/list/1", value: "x" },
    ]);
    expect(applyStrict(before, patch)).toEqual(after);
  });

  it("replaces on list and map swap", () => {
    const before = { spec: { volumes: { name: "odd" } } };
    const after = { spec: { volumes: [{ name: "cloudhsm-config" }] } };

    expect(diffPods(before, after)).toEqual([
      { op: "replace", path: "/spec/volumes", value: after.spec.volumes },
    ]);
  });

  it("treats __proto__ as an ordinary key", () => {
    const before = JSON.parse('{"metadata":{"annotations":{"__proto__":"a"}}}');
    const after = JSON.parse('{"metadata":{"annotations":{"__proto__":"b"}}}');

    const patch = diffPods(before, after);

    expect(patch).toEqual([
      { op: "replace", path: "/metadata/annotations/__proto__", value: "b" },
    ]);
  });

  it("turns any document into another", () => {
    // Small key and value sets, so that the documents share structure often. No "__proto__":
    // the applying library's value copies drop it, and a test above covers it.
    const key = fc.constantFrom("a", "b", "a/b", "~", "");
    const json = documents(key, fc.constantFrom(null, true, 0, 1, "x", ""));

    fc.assert(
      fc.property(json, json, (before, after) => {
        const patch = diffPods(before, after);
        expect(applyStrict(before as Json, patch)).toEqual(after);
      }),
      { numRuns: 500 },
    );
  });

  it("writes diffPods output as JSON", () => {
    const key = fc.oneof(
      fc.constantFrom("a", "a/b", "~", 'q"', "\\", "é", "\u0001"),
      fc.string({ unit: "binary", maxLength: 6 }),
    );
    const leaf = fc.oneof(
      fc.jsonValue({ maxDepth: 1 }),
      fc.string({ unit: "binary", maxLength: 8 }),
      fc.string({ minLength: 256, maxLength: 300 }),
    );
    const map = documents(key, leaf);

    fc.assert(
      fc.property(map, map, (before, after) => {
        const operations = diffPods(before, after);
        const text = diffPodsToJson(before, after);

        expect(text.json).toBe(JSON.stringify(operations));
        expect(text.length).toBe(operations.length);
        expect(text.ascii).toBe(/^[\x00-\x7f]*$/.test(text.json));
      }),
      { numRuns: 500 },
    );
  });
});

describe("serializePatch", () => {
  const text = fc.string({ unit: "binary", maxLength: 40 });
  const value = fc.oneof(
    text,
    fc.string({ minLength: 256, maxLength: 600 }),
    fc.jsonValue({ maxDepth: 3 }),
    fc
      .dictionary(fc.string(), fc.jsonValue({ maxDepth: 2 }))
      .map((object) => Object.freeze(object)),
  );
  const operation: fc.Arbitrary<PatchOperation> = fc.oneof(
    fc.record({
      op: fc.constantFrom("add" as const, "replace" as const),
      path: text,
      value,
    }),
    fc.record({ op: fc.constant("remove" as const), path: text }),
  );

  it("writes the text that JSON.stringify writes", () => {
    fc.assert(
      fc.property(fc.array(operation, { maxLength: 12 }), (patch) => {
        const text = serializePatch(patch);

        expect(text.json).toBe(JSON.stringify(patch));
        expect(text.length).toBe(patch.length);
        expect(text.ascii).toBe(/^[\x00-\x7f]*$/.test(text.json));
      }),
      { numRuns: 500 },
    );
  });

  it("reuses frozen value JSON", () => {
    const volume = Object.freeze({ name: "cloudhsm-config", note: 'a "b"' });
    const patch: PatchOperation[] = [
      { op: "add", path: "/spec/volumes/0", value: volume },
    ];

    const first = serializePatch(patch).json;

    expect(serializePatch(patch).json).toBe(first);
    expect(first).toBe(JSON.stringify(patch));
  });

  it("caches long strings up to 16 KiB", () => {
    const before = cachedLongStringLength();
    const values = [`config ${"c".repeat(1000)}`, `env ${"e".repeat(100_000)}`];
    const patch: PatchOperation[] = values.map((value, index) => ({
      op: "add",
      path: `/metadata/annotations/key${index}`,
      value,
    }));

    const text = serializePatch(patch).json;

    expect(text).toBe(JSON.stringify(patch));
    expect(cachedLongStringLength() - before).toBe(values[0]!.length);
  });
});
