import { describe, expect, it } from "vitest";

import {
  ANNOTATION_INJECTED_AT,
  InvalidPodError,
  type InjectionPlan,
} from "../src/injection/mutate.js";
import { PatchCache } from "../src/injection/patch-cache.js";
import type { JsonObject } from "../src/injection/pod.js";
import { ownedView } from "../src/injection/view.js";
import { applyStrict } from "./support/apply-patch.js";
import { injectUncached } from "./support/inject-pod.js";

const NOW = new Date("2026-03-01T10:00:00.000Z");
const LATER = new Date("2026-03-01T10:00:07.250Z");

const PLAN: InjectionPlan = {
  clusterId: "cluster-abcdefghijk",
  ips: ["10.0.1.10", "10.0.2.10"],
  config: '{\n  "clusters": []\n}\n',
};
const OTHER_PLAN: InjectionPlan = { ...PLAN, ips: ["10.0.3.30"] };

function pod(annotations?: JsonObject): JsonObject {
  const metadata: JsonObject = { generateName: "web-5d8f-" };
  if (annotations !== undefined) {
    metadata.annotations = annotations;
  }
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata,
    spec: {
      containers: [
        {
          name: "web",
          image: "registry.example.com/web:1.0",
          env: [{ name: "CLOUDHSM_HSM_IP", value: "10.0.9.9" }],
          volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
        },
      ],
      volumes: [{ name: "tmp", emptyDir: {} }],
    },
  };
}

function uncachedJson(
  source: JsonObject,
  plan: InjectionPlan,
  now: Date,
): string | undefined {
  return injectUncached(source, plan, now).patch?.json;
}

function injectedAt(source: JsonObject, json: string): unknown {
  const patched = applyStrict(source, JSON.parse(json));
  return (patched.metadata as JsonObject).annotations;
}

describe("PatchCache", () => {
  it("reuses a patch with the new time", () => {
    const cache = new PatchCache();

    const first = cache.inject(pod({ "cloudhsm/inject": "true" }), PLAN, NOW);
    const second = cache.inject(
      pod({ "cloudhsm/inject": "true" }),
      PLAN,
      LATER,
    );

    expect(cache.size).toBe(1);
    expect(first.patch?.json).toBe(
      uncachedJson(pod({ "cloudhsm/inject": "true" }), PLAN, NOW),
    );
    expect(second.patch?.json).toBe(
      uncachedJson(pod({ "cloudhsm/inject": "true" }), PLAN, LATER),
    );
    expect(injectedAt(pod({}), second.patch!.json)).toMatchObject({
      [ANNOTATION_INJECTED_AT]: LATER.toISOString(),
    });
  });

  it("encodes only the time per use", () => {
    // Heads of every length modulo 3, from annotations of three lengths.
    for (const note of ["a", "ab", "abc"]) {
      const cache = new PatchCache();
      cache.inject(pod({ note }), PLAN, NOW);

      const second = cache.inject(pod({ note }), PLAN, LATER);

      expect(second.patch?.base64).toBe(
        Buffer.from(uncachedJson(pod({ note }), PLAN, LATER)!).toString(
          "base64",
        ),
      );
    }
  });

  it("times a pod without annotations", () => {
    // The time sits inside the annotations map that the patch adds whole.
    const cache = new PatchCache();
    cache.inject(pod(), PLAN, NOW);

    const second = cache.inject(pod(), PLAN, LATER);

    expect(cache.size).toBe(1);
    expect(second.patch?.json).toBe(uncachedJson(pod(), PLAN, LATER));
  });

  it("skips pods with an injected-at time", () => {
    const cache = new PatchCache();
    const stamped = pod({ [ANNOTATION_INJECTED_AT]: NOW.toISOString() });

    const result = cache.inject(stamped, PLAN, NOW);

    expect(cache.size).toBe(0);
    expect(result.patch?.json).toBe(uncachedJson(stamped, PLAN, NOW));
  });

  it("caches a pod that has the plan", () => {
    // A pod injected before, whose injected-at time was removed: only the time is added.
    const done = applyStrict(
      pod(),
      JSON.parse(uncachedJson(pod(), PLAN, NOW)!),
    );
    const annotations = (done.metadata as JsonObject).annotations as JsonObject;
    delete annotations[ANNOTATION_INJECTED_AT];
    const cache = new PatchCache();

    cache.inject(done, PLAN, NOW);
    const second = cache.inject(structuredClone(done), PLAN, LATER);

    expect(cache.size).toBe(1);
    expect(second.patch?.json).toBe(
      `[{"op":"add","path":"/metadata/annotations/cloudhsm~1injected-at","value":"${LATER.toISOString()}"}]`,
    );
  });

  it("keeps plans apart", () => {
    const cache = new PatchCache();

    const first = cache.inject(pod(), PLAN, NOW);
    const second = cache.inject(pod(), OTHER_PLAN, NOW);

    expect(cache.size).toBe(2);
    expect(first.patch?.json).toBe(uncachedJson(pod(), PLAN, NOW));
    expect(second.patch?.json).toBe(uncachedJson(pod(), OTHER_PLAN, NOW));
  });

  it("skips views over the length limit", () => {
    const cache = new PatchCache({
      entries: 8,
      characters: 1_000_000,
      viewLength: 600,
    });
    const small = pod({ note: "a".repeat(10) });
    const large = pod({ note: "a".repeat(600) });

    cache.inject(small, PLAN, NOW);
    const result = cache.inject(large, PLAN, NOW);

    expect(cache.size).toBe(1);
    expect(result.patch?.json).toBe(uncachedJson(large, PLAN, NOW));
  });

  it("starts over when full", () => {
    const cache = new PatchCache({
      entries: 3,
      characters: 1_000_000,
      viewLength: 8192,
    });

    for (let index = 0; index < 3; index += 1) {
      cache.inject(pod({ index: String(index) }), PLAN, NOW);
    }
    expect(cache.size).toBe(3);
    cache.inject(pod({ index: "3" }), PLAN, NOW);

    expect(cache.size).toBe(1);
  });

  it("starts over at the character limit", () => {
    const json = uncachedJson(pod({ index: "0" }), PLAN, NOW)!;
    // Room for two entries of this size and not three.
    const entrySize =
      JSON.stringify(ownedView(pod({ index: "0" }), false)).length +
      json.length -
      NOW.toISOString().length;
    const cache = new PatchCache({
      entries: 100,
      characters: entrySize * 2 + 10,
      viewLength: 8192,
    });

    cache.inject(pod({ index: "0" }), PLAN, NOW);
    cache.inject(pod({ index: "1" }), PLAN, NOW);
    expect(cache.size).toBe(2);
    cache.inject(pod({ index: "2" }), PLAN, NOW);

    expect(cache.size).toBe(1);
  });

  it("skips an entry over the character limit", () => {
    const cache = new PatchCache({
      entries: 8,
      characters: 100,
      viewLength: 8192,
    });

    const result = cache.inject(pod(), PLAN, NOW);

    expect(cache.size).toBe(0);
    expect(result.patch?.json).toBe(uncachedJson(pod(), PLAN, NOW));
  });

  it("skips views with numbers JSON cannot write", () => {
    // JSON.parse reads 1e400 as Infinity, which JSON.stringify writes as null.
    const cache = new PatchCache();
    const withNull = pod();
    (withNull.spec as JsonObject).volumes = null;
    const withInfinity = JSON.parse(
      JSON.stringify(pod()).replace(
        '"volumes":[{"name":"tmp","emptyDir":{}}]',
        '"volumes":1e400',
      ),
    ) as JsonObject;
    expect((withInfinity.spec as JsonObject).volumes).toBe(Infinity);
    cache.inject(withNull, PLAN, NOW);

    expect(() => cache.inject(withInfinity, PLAN, NOW)).toThrow(
      InvalidPodError,
    );
    expect(cache.size).toBe(1);
  });

  it("rejects an invalid pod every time", () => {
    const cache = new PatchCache();
    const invalid = pod();
    (invalid.spec as JsonObject).containers = [{ image: "no-name" }];

    for (let attempt = 0; attempt < 2; attempt += 1) {
      expect(() => cache.inject(invalid, PLAN, NOW)).toThrow(InvalidPodError);
    }
    expect(cache.size).toBe(0);
  });

  it("skips views nested too deep", () => {
    const cache = new PatchCache();
    let nested: JsonObject = { value: "x" };
    for (let level = 0; level < 40; level += 1) {
      nested = { nested };
    }
    const deep = pod();
    const containers = (deep.spec as JsonObject).containers as JsonObject[];
    containers[0]!.env = [{ name: "DEEP", valueFrom: nested }];

    const result = cache.inject(deep, PLAN, NOW);

    expect(cache.size).toBe(0);
    expect(result.patch?.json).toBe(uncachedJson(deep, PLAN, NOW));
  });
});
