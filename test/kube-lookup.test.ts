import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import {
  INJECT_ANNOTATION,
  resolveInjection,
} from "../src/injection/resolve.js";
import {
  LookupError,
  type LookupKind,
  type LookupOutcome,
  REQUIRED_RBAC_RULES,
  WorkloadLookup,
  type WorkloadLookupOptions,
} from "../src/kube/lookup.js";
import {
  FakeKubeApi,
  type FakeObject,
  makeObject,
  ownerReferenceTo,
  pathOf,
} from "./support/fake-kube.js";

const NS = "payments";

let fake: FakeKubeApi;
const lookups: WorkloadLookup[] = [];

beforeEach(async () => {
  fake = await FakeKubeApi.start();
  fake.put(
    makeObject("Namespace", "", NS, {
      annotations: { "team.example.com/owner": "payments" },
    }),
  );
});

afterEach(async () => {
  for (const lookup of lookups.splice(0)) {
    lookup.close();
  }
  await fake.close();
});

function newLookup(
  options: WorkloadLookupOptions = {},
  kubeConfig?: KubeConfig,
): WorkloadLookup {
  const lookup = new WorkloadLookup(kubeConfig ?? fake.kubeConfig(), options);
  lookups.push(lookup);
  return lookup;
}

/** Serves a Deployment and the ReplicaSet it controls, and returns both. */
function deploymentChain(
  deploymentAnnotations: Record<string, string> = {
    [INJECT_ANNOTATION]: "true",
  },
): { deployment: FakeObject; replicaSet: FakeObject } {
  const deployment = makeObject("Deployment", NS, "checkout", {
    annotations: deploymentAnnotations,
  });
  const replicaSet = makeObject("ReplicaSet", NS, "checkout-7d9f", {
    annotations: { "deployment.kubernetes.io/revision": "3" },
    controller: deployment,
  });
  fake.put(deployment, replicaSet);
  return { deployment, replicaSet };
}

async function expectLookupError(
  promise: Promise<unknown>,
): Promise<LookupError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(LookupError);
    return error as LookupError;
  }
  throw new Error("expected the lookup to reject");
}

/** Waits until `condition` holds, checking every 10 ms for at most `limitMs`. */
async function waitFor(
  condition: () => boolean,
  limitMs = 2_000,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${limitMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("owner chains", () => {
  it("ReplicaSet then Deployment", async () => {
    const { replicaSet } = deploymentChain();
    const result = await newLookup().lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(result.owners).toEqual([
      {
        kind: "ReplicaSet",
        name: "checkout-7d9f",
        annotations: { "deployment.kubernetes.io/revision": "3" },
      },
      {
        kind: "Deployment",
        name: "checkout",
        annotations: { [INJECT_ANNOTATION]: "true" },
      },
    ]);
    expect(result.namespace).toEqual({
      kind: "Namespace",
      name: NS,
      annotations: { "team.example.com/owner": "payments" },
    });
  });

  it("StatefulSet", async () => {
    const statefulSet = makeObject("StatefulSet", NS, "ledger", {
      annotations: { a: "1" },
    });
    fake.put(statefulSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(statefulSet),
    ]);
    expect(owners).toEqual([
      { kind: "StatefulSet", name: "ledger", annotations: { a: "1" } },
    ]);
  });

  it("DaemonSet", async () => {
    const daemonSet = makeObject("DaemonSet", NS, "agent", {
      annotations: { a: "2" },
    });
    fake.put(daemonSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(daemonSet),
    ]);
    expect(owners).toEqual([
      { kind: "DaemonSet", name: "agent", annotations: { a: "2" } },
    ]);
  });

  it("Job then CronJob", async () => {
    const cronJob = makeObject("CronJob", NS, "rotate", {
      annotations: { b: "cron" },
    });
    const job = makeObject("Job", NS, "rotate-28391", {
      annotations: { b: "job" },
      controller: cronJob,
    });
    fake.put(cronJob, job);
    const owners = await newLookup().ownerChain(NS, [ownerReferenceTo(job)]);
    expect(owners).toEqual([
      { kind: "Job", name: "rotate-28391", annotations: { b: "job" } },
      { kind: "CronJob", name: "rotate", annotations: { b: "cron" } },
    ]);
  });

  it("bare ReplicaSet", async () => {
    const replicaSet = makeObject("ReplicaSet", NS, "bare");
    fake.put(replicaSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    expect(owners).toEqual([
      { kind: "ReplicaSet", name: "bare", annotations: {} },
    ]);
  });

  it("bare Job", async () => {
    const job = makeObject("Job", NS, "migrate", { annotations: { c: "3" } });
    fake.put(job);
    const owners = await newLookup().ownerChain(NS, [ownerReferenceTo(job)]);
    expect(owners).toEqual([
      { kind: "Job", name: "migrate", annotations: { c: "3" } },
    ]);
  });

  it.each([undefined, null, []])(
    "no owners (%o) reads only the namespace",
    async (references) => {
      const result = await newLookup().lookup(NS, references);
      expect(result.owners).toEqual([]);
      expect(result.namespace.name).toBe(NS);
      expect(fake.totalRequests).toBe(1);
    },
  );

  it("chain feeds the resolver", async () => {
    const { replicaSet } = deploymentChain();
    const { owners, namespace } = await newLookup().lookup(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    const decision = resolveInjection(
      [{ kind: "Pod", name: "" }, ...owners, namespace],
      ["app"],
      {
        clusterId: "cluster-jxhlf7644ne",
        region: "us-east-1",
      },
    );
    expect(decision).toMatchObject({
      inject: true,
      decidedBy: "Deployment checkout",
    });
  });
});

describe("references that end the chain", () => {
  it("non-controller pod reference is ignored", async () => {
    const { replicaSet } = deploymentChain();
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(replicaSet, false),
    ]);
    expect(owners).toEqual([]);
    expect(fake.totalRequests).toBe(0);
  });

  it("controller is picked among several references", async () => {
    const { replicaSet } = deploymentChain();
    const other = makeObject("StatefulSet", NS, "other");
    fake.put(other);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(other, false),
      ownerReferenceTo(replicaSet),
    ]);
    expect(owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
    expect(fake.requests("StatefulSet", NS, "other")).toBe(0);
  });

  it("non-controller ReplicaSet owner is ignored", async () => {
    const deployment = makeObject("Deployment", NS, "checkout");
    const replicaSet = makeObject("ReplicaSet", NS, "checkout-1", {
      ownerReferences: [ownerReferenceTo(deployment, false)],
    });
    fake.put(deployment, replicaSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    expect(owners.map((owner) => owner.kind)).toEqual(["ReplicaSet"]);
    expect(fake.requests("Deployment", NS, "checkout")).toBe(0);
  });

  it("custom resource owner ends the chain", async () => {
    const replicaSet = makeObject("ReplicaSet", NS, "rollout-abc", {
      ownerReferences: [
        {
          apiVersion: "argoproj.io/v1alpha1",
          kind: "Rollout",
          name: "web",
          uid: "u1",
          controller: true,
        },
      ],
    });
    fake.put(replicaSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    expect(owners.map((owner) => owner.name)).toEqual(["rollout-abc"]);
    expect(fake.totalRequests).toBe(1);
  });

  it("known kind from another group is not followed", async () => {
    const owners = await newLookup().ownerChain(NS, [
      {
        apiVersion: "example.com/v1",
        kind: "ReplicaSet",
        name: "x",
        uid: "u2",
        controller: true,
      },
    ]);
    expect(owners).toEqual([]);
    expect(fake.totalRequests).toBe(0);
  });

  it("older version of the same group is followed", async () => {
    const { replicaSet } = deploymentChain();
    const reference = {
      ...ownerReferenceTo(replicaSet),
      apiVersion: "apps/v1beta2",
    };
    const owners = await newLookup().ownerChain(NS, [reference]);
    expect(owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
  });

  it.each([
    ["Deployment", "apps/v1"],
    ["CronJob", "batch/v1"],
    ["Namespace", "v1"],
    ["Pod", "v1"],
  ])(
    "pod controlled by %s directly is not followed",
    async (kind, apiVersion) => {
      const owners = await newLookup().ownerChain(NS, [
        { apiVersion, kind, name: "direct", uid: "u3", controller: true },
      ]);
      expect(owners).toEqual([]);
      expect(fake.totalRequests).toBe(0);
    },
  );

  it("Deployment with a controller is the end", async () => {
    const deployment = makeObject("Deployment", NS, "managed", {
      ownerReferences: [
        {
          apiVersion: "apps/v1",
          kind: "Deployment",
          name: "managed",
          uid: "loop",
          controller: true,
        },
      ],
    });
    const replicaSet = makeObject("ReplicaSet", NS, "managed-1", {
      controller: deployment,
    });
    fake.put(deployment, replicaSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    expect(owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
    expect(fake.totalRequests).toBe(2);
  });

  it.each([
    ["a string", "ReplicaSet/checkout-7d9f"],
    [
      "an object",
      { kind: "ReplicaSet", name: "checkout-7d9f", controller: true },
    ],
    ["null entries", [null, 5, "x"]],
    [
      "a numeric name",
      [
        {
          apiVersion: "apps/v1",
          kind: "ReplicaSet",
          name: 7,
          controller: true,
        },
      ],
    ],
    [
      "controller as a string",
      [
        {
          apiVersion: "apps/v1",
          kind: "ReplicaSet",
          name: "a",
          controller: "true",
        },
      ],
    ],
  ])("malformed references (%s) are ignored", async (_case, references) => {
    const owners = await newLookup().ownerChain(NS, references);
    expect(owners).toEqual([]);
    expect(fake.totalRequests).toBe(0);
  });

  it("inherited controller flag does not count", async () => {
    const { replicaSet } = deploymentChain();
    const { controller: _controller, ...fields } = ownerReferenceTo(replicaSet);
    const reference = Object.assign(
      Object.create({ controller: true }) as object,
      fields,
    );
    const owners = await newLookup().ownerChain(NS, [reference]);
    expect(owners).toEqual([]);
    expect(fake.totalRequests).toBe(0);
  });

  it("reference without a name is not followed", async () => {
    const owners = await newLookup().ownerChain(NS, [
      { apiVersion: "apps/v1", kind: "ReplicaSet", controller: true },
    ]);
    expect(owners).toEqual([]);
    expect(fake.totalRequests).toBe(0);
  });
});

describe("cache", () => {
  it("50 concurrent pods cost three reads", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const references = [ownerReferenceTo(replicaSet)];
    const results = await Promise.all(
      Array.from({ length: 50 }, () => lookup.lookup(NS, references)),
    );
    expect(results).toHaveLength(50);
    for (const result of results) {
      expect(result.owners.map((owner) => owner.kind)).toEqual([
        "ReplicaSet",
        "Deployment",
      ]);
    }
    expect(fake.requests("ReplicaSet", NS, "checkout-7d9f")).toBe(1);
    expect(fake.requests("Deployment", NS, "checkout")).toBe(1);
    expect(fake.requests("Namespace", "", NS)).toBe(1);
    expect(fake.totalRequests).toBe(3);
    const stats = lookup.stats;
    expect(stats.apiReads).toBe(3);
    expect(stats.cacheHits + stats.sharedReads).toBe(147);
  });

  it("sequential pods hit the cache", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    for (let i = 0; i < 20; i += 1) {
      await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    }
    expect(fake.totalRequests).toBe(3);
    expect(lookup.stats.cacheHits).toBe(57);
  });

  it("lookupCached reads only the cache", async () => {
    const { replicaSet } = deploymentChain();
    const counted: string[] = [];
    const lookup = newLookup({
      onLookup: (kind, outcome, cacheHit) =>
        counted.push(`${kind} ${outcome} ${cacheHit}`),
    });
    const references = [ownerReferenceTo(replicaSet)];

    expect(lookup.lookupCached(NS, references)).toBeUndefined();
    expect(fake.totalRequests).toBe(0);
    expect(counted).toEqual([]);

    const read = await lookup.lookup(NS, references);
    counted.length = 0;
    const cached = lookup.lookupCached(NS, references);

    expect(cached).toEqual(read);
    expect(fake.totalRequests).toBe(3);
    expect(counted).toEqual([
      "ReplicaSet ok true",
      "Deployment ok true",
      "Namespace ok true",
    ]);
    expect(lookup.stats.cacheHits).toBe(3);
  });

  it("lookupCached misses partial chains", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    await lookup.namespaceSource(NS);
    const references = [ownerReferenceTo(replicaSet)];

    expect(lookup.lookupCached(NS, references)).toBeUndefined();

    await lookup.lookup(NS, references);
    const hits = lookup.stats.cacheHits;
    const { replicaSet: recreated } = deploymentChain();
    expect(
      lookup.lookupCached(NS, [ownerReferenceTo(recreated)]),
    ).toBeUndefined();
    expect(lookup.lookupCached("", references)).toBeUndefined();
    expect(lookup.stats.cacheHits).toBe(hits);
  });

  it("lookupCached repeats a chain", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const references = [ownerReferenceTo(replicaSet)];
    const read = await lookup.lookup(NS, references);

    const first = lookup.lookupCached(NS, references);
    const second = lookup.lookupCached(NS, [ownerReferenceTo(replicaSet)]);

    expect(first).toEqual(read);
    expect(second).toBe(first);
    expect(lookup.stats.cacheHits).toBe(6);
  });

  it("lookupCached chains expire with objects", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup({ cacheTtlSeconds: 0.2 });
    const references = [ownerReferenceTo(replicaSet)];
    await lookup.lookup(NS, references);
    expect(lookup.lookupCached(NS, references)).toBeDefined();

    await new Promise((resolve) => setTimeout(resolve, 300));

    expect(lookup.lookupCached(NS, references)).toBeUndefined();
  });

  it("lookupCached chains go with clearCache", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const references = [ownerReferenceTo(replicaSet)];
    await lookup.lookup(NS, references);
    expect(lookup.lookupCached(NS, references)).toBeDefined();

    lookup.clearCache();

    expect(lookup.lookupCached(NS, references)).toBeUndefined();
  });

  it("lookupCached keys chains by uid", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(
      lookup.lookupCached(NS, [ownerReferenceTo(replicaSet)]),
    ).toBeDefined();

    const other = { ...ownerReferenceTo(replicaSet), uid: "another-uid" };

    expect(lookup.lookupCached(NS, [other])).toBeUndefined();
  });

  it("lookupCached drops chains on a new read", async () => {
    // The ReplicaSet is deleted and created again under its name: a pod of the new one makes
    // the lookup read it again, and a pod of the old one must no longer get the old chain.
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const old = [ownerReferenceTo(replicaSet)];
    await lookup.lookup(NS, old);
    expect(lookup.lookupCached(NS, old)).toBeDefined();
    const recreated = makeObject("ReplicaSet", NS, replicaSet.metadata.name, {
      annotations: { [INJECT_ANNOTATION]: "false" },
    });
    fake.put(recreated);

    await lookup.lookup(NS, [ownerReferenceTo(recreated)]);

    expect(lookup.keptChains).toBe(0);
    expect(lookup.lookupCached(NS, old)).toBeUndefined();
    await expect(lookup.lookup(NS, old)).rejects.toThrow(LookupError);
  });

  it("lookupCached keys chains by every field", async () => {
    // Fields that would read the same if joined without their lengths.
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const references = [ownerReferenceTo(replicaSet)];
    await lookup.lookup(NS, references);
    expect(lookup.lookupCached(NS, references)).toBeDefined();
    const shifted = {
      ...ownerReferenceTo(replicaSet),
      kind: `${replicaSet.kind}${replicaSet.metadata.name.slice(0, 2)}`,
      name: replicaSet.metadata.name.slice(2),
    };

    expect(lookup.lookupCached(NS, [shifted])?.owners).toEqual([]);
    expect(lookup.keptChains).toBe(2);
  });

  it("lookupCached keeps no long keys", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    const long = {
      ...ownerReferenceTo(replicaSet),
      apiVersion: `apps/${"v".repeat(100_000)}`,
    };

    const chain = lookup.lookupCached(NS, [long]);

    expect(chain?.owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
    expect(lookup.keptChains).toBe(0);
  });

  it("entries expire after the TTL", async () => {
    const { deployment, replicaSet } = deploymentChain();
    const lookup = newLookup({ cacheTtlSeconds: 0.2 });
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(fake.totalRequests).toBe(3);

    // Within the TTL the old annotations are served.
    fake.put({
      ...deployment,
      metadata: {
        ...deployment.metadata,
        annotations: { [INJECT_ANNOTATION]: "false" },
      },
    });
    const cached = await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);
    expect(cached[1]?.annotations).toEqual({ [INJECT_ANNOTATION]: "true" });
    expect(fake.totalRequests).toBe(3);

    await new Promise((resolve) => setTimeout(resolve, 300));
    const fresh = await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(fresh.owners[1]?.annotations).toEqual({
      [INJECT_ANNOTATION]: "false",
    });
    expect(fake.totalRequests).toBe(6);
  });

  it("TTL 0 disables the cache", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup({ cacheTtlSeconds: 0 });
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(fake.totalRequests).toBe(6);
    expect(lookup.stats.cacheHits).toBe(0);
  });

  it("clearCache forces reads", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    lookup.clearCache();
    await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(fake.totalRequests).toBe(6);
  });

  it("full cache still returns objects", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup({ cacheMaxEntries: 1 });
    const first = await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    const second = await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(second).toEqual(first);
    // One of the three objects fits, so the second lookup reads the other two again.
    expect(fake.totalRequests).toBe(5);
  });

  it("pods of different namespaces do not share entries", async () => {
    const { replicaSet } = deploymentChain();
    fake.put(makeObject("Namespace", "", "other"));
    const otherReplicaSet = makeObject("ReplicaSet", "other", "checkout-7d9f", {
      annotations: { x: "other" },
    });
    fake.put(otherReplicaSet);
    const lookup = newLookup();
    const inPayments = await lookup.ownerChain(NS, [
      ownerReferenceTo(replicaSet),
    ]);
    const inOther = await lookup.ownerChain("other", [
      ownerReferenceTo(otherReplicaSet),
    ]);
    expect(inPayments[0]?.annotations).toEqual({
      "deployment.kubernetes.io/revision": "3",
    });
    expect(inOther[0]?.annotations).toEqual({ x: "other" });
  });

  it("re-created owner with a new uid is read again", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);

    const { replicaSet: recreated } = deploymentChain({
      [INJECT_ANNOTATION]: "false",
    });
    const owners = await lookup.ownerChain(NS, [ownerReferenceTo(recreated)]);
    expect(owners[1]?.annotations).toEqual({ [INJECT_ANNOTATION]: "false" });
    expect(fake.requests("ReplicaSet", NS, "checkout-7d9f")).toBe(2);
    expect(fake.requests("Deployment", NS, "checkout")).toBe(2);
  });

  it("reference to a replaced owner is not found", async () => {
    const { replicaSet } = deploymentChain();
    deploymentChain();
    const error = await expectLookupError(
      newLookup().ownerChain(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("not-found");
    expect(error.kind).toBe("ReplicaSet");
    expect(error.message).toContain(
      "get ReplicaSet payments/checkout-7d9f failed: not found.",
    );
    expect(error.message).toContain(
      `reference names uid ${replicaSet.metadata.uid}`,
    );
  });

  it("annotations are frozen null-prototype records", async () => {
    const annotations = JSON.parse(
      `{"__proto__": "polluted", "constructor": "c", "${INJECT_ANNOTATION}": "true"}`,
    ) as Record<string, string>;
    const statefulSet = makeObject("StatefulSet", NS, "odd", { annotations });
    fake.put(statefulSet);
    const owners = await newLookup().ownerChain(NS, [
      ownerReferenceTo(statefulSet),
    ]);
    const result = owners[0]?.annotations;
    expect(result).toBeDefined();
    expect(Object.getPrototypeOf(result)).toBeNull();
    expect(Object.isFrozen(result)).toBe(true);
    expect(result?.["constructor"]).toBe("c");
    expect(result?.[INJECT_ANNOTATION]).toBe("true");
    expect(Object.prototype).not.toHaveProperty(INJECT_ANNOTATION);
  });
});

describe("failures", () => {
  it("owner deleted mid-rollout is not found", async () => {
    const { replicaSet } = deploymentChain();
    fake.remove("ReplicaSet", NS, "checkout-7d9f");
    const error = await expectLookupError(
      newLookup().lookup(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("not-found");
    expect(error.kind).toBe("ReplicaSet");
    expect(error.namespace).toBe(NS);
    expect(error.objectName).toBe("checkout-7d9f");
    expect(error.statusCode).toBe(404);
    expect(error.serverMessage).toBe(
      'replicasets.apps "checkout-7d9f" not found',
    );
    expect(error.message).toBe(
      "get ReplicaSet payments/checkout-7d9f failed: not found. The owner may have been deleted while the pod was being created.",
    );
  });

  it("deleted Deployment fails at the Deployment", async () => {
    const { replicaSet } = deploymentChain();
    fake.remove("Deployment", NS, "checkout");
    const error = await expectLookupError(
      newLookup().ownerChain(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("not-found");
    expect(error.kind).toBe("Deployment");
    expect(error.objectName).toBe("checkout");
  });

  it("missing namespace is not found", async () => {
    const error = await expectLookupError(newLookup().namespaceSource("gone"));
    expect(error.reason).toBe("not-found");
    expect(error.kind).toBe("Namespace");
    expect(error.namespace).toBeUndefined();
    expect(error.message).toBe("get Namespace gone failed: not found.");
  });

  it("forbidden names the missing permission", async () => {
    const { replicaSet } = deploymentChain();
    fake.fail("ReplicaSet", NS, "checkout-7d9f", "Forbidden");
    const lookup = newLookup();
    const error = await expectLookupError(
      lookup.lookup(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("forbidden");
    expect(error.statusCode).toBe(403);
    expect(error.message).toBe(
      "get ReplicaSet payments/checkout-7d9f failed: forbidden. Grant the webhook's ClusterRole get on replicasets in API group apps.",
    );
    expect(error.serverMessage).toContain(
      'cannot get resource "replicasets" in API group "apps"',
    );
    expect(lookup.stats.errors.forbidden).toBe(1);
  });

  it("forbidden namespace names the core group", async () => {
    fake.fail("Namespace", "", NS, "Forbidden");
    const error = await expectLookupError(newLookup().lookup(NS, []));
    expect(error.reason).toBe("forbidden");
    expect(error.message).toBe(
      "get Namespace payments failed: forbidden. Grant the webhook's ClusterRole get on namespaces in the core API group.",
    );
  });

  it("server error is reported with its message", async () => {
    const { replicaSet } = deploymentChain();
    fake.fail("Deployment", NS, "checkout", "InternalError");
    const error = await expectLookupError(
      newLookup().ownerChain(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("error");
    expect(error.statusCode).toBe(500);
    expect(error.message).toBe(
      "get Deployment payments/checkout failed: HTTP 500: Internal error occurred: etcdserver: request timed out",
    );
  });

  it("wrong token is unauthorized", async () => {
    const lookup = newLookup({}, fake.kubeConfig("wrong-token"));
    const error = await expectLookupError(lookup.namespaceSource(NS));
    expect(error.reason).toBe("error");
    expect(error.statusCode).toBe(401);
    expect(error.message).toBe(
      "get Namespace payments failed: unauthorized (HTTP 401). Check the webhook's service account token.",
    );
  });

  it("refused connection is an error", async () => {
    // Take a free loopback port and close it again, so that connecting to it is refused.
    const server = http.createServer();
    await new Promise<void>((resolve) =>
      server.listen(0, "127.0.0.1", () => resolve()),
    );
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));

    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromOptions({
      clusters: [
        {
          name: "closed",
          server: `http://127.0.0.1:${port}`,
          skipTLSVerify: true,
        },
      ],
      users: [{ name: "user", token: "t" }],
      contexts: [{ name: "closed", cluster: "closed", user: "user" }],
      currentContext: "closed",
    });
    const error = await expectLookupError(
      newLookup({}, kubeConfig).namespaceSource(NS),
    );
    expect(error.reason).toBe("error");
    expect(error.statusCode).toBeUndefined();
    expect(error.message).toMatch(
      /^get Namespace payments failed: .*ECONNREFUSED/,
    );
  });

  it("slow answer times out within the bound", async () => {
    const { replicaSet } = deploymentChain();
    fake.delay("ReplicaSet", NS, "checkout-7d9f", 5_000);
    const lookup = newLookup({ requestTimeoutMs: 200 });
    const started = Date.now();
    const error = await expectLookupError(
      lookup.lookup(NS, [ownerReferenceTo(replicaSet)]),
    );
    const elapsed = Date.now() - started;
    expect(error.reason).toBe("timeout");
    expect(error.message).toBe(
      "get ReplicaSet payments/checkout-7d9f failed: timed out after 200 ms",
    );
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(1_500);
    expect(lookup.stats.errors.timeout).toBe(1);
    // The abort closes the connection, so the server does not keep the request open.
    await waitFor(() => fake.abortedRequests === 1);
  });

  it("empty namespace is rejected unsent", async () => {
    const { replicaSet } = deploymentChain();
    const lookup = newLookup();
    const error = await expectLookupError(
      lookup.lookup("", [ownerReferenceTo(replicaSet)]),
    );
    expect(error.reason).toBe("error");
    expect(error.message).toMatch(
      /^get (ReplicaSet|Namespace) failed: the pod's namespace is empty$/,
    );
    expect(fake.totalRequests).toBe(0);
  });

  it("empty uid in a reference is ignored", async () => {
    const { replicaSet } = deploymentChain();
    const reference = { ...ownerReferenceTo(replicaSet), uid: "" };
    const owners = await newLookup().ownerChain(NS, [reference]);
    expect(owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
  });

  it("concurrent callers share one failure", async () => {
    const { replicaSet } = deploymentChain();
    fake.fail("ReplicaSet", NS, "checkout-7d9f", "Forbidden");
    const lookup = newLookup();
    const settled = await Promise.allSettled(
      Array.from({ length: 10 }, () =>
        lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]),
      ),
    );
    for (const result of settled) {
      expect(result.status).toBe("rejected");
    }
    expect(fake.requests("ReplicaSet", NS, "checkout-7d9f")).toBe(1);
    expect(lookup.stats.errors.forbidden).toBe(1);
  });
});

describe("recovery", () => {
  it("forbidden then granted", async () => {
    const { replicaSet } = deploymentChain();
    fake.fail("ReplicaSet", NS, "checkout-7d9f", "Forbidden");
    const lookup = newLookup();
    await expectLookupError(lookup.lookup(NS, [ownerReferenceTo(replicaSet)]));

    fake.heal("ReplicaSet", NS, "checkout-7d9f");
    const result = await lookup.lookup(NS, [ownerReferenceTo(replicaSet)]);
    expect(result.owners.map((owner) => owner.kind)).toEqual([
      "ReplicaSet",
      "Deployment",
    ]);
    expect(fake.requests("ReplicaSet", NS, "checkout-7d9f")).toBe(2);
  });

  it("timeout then fast answer", async () => {
    const { replicaSet } = deploymentChain();
    fake.delay("Deployment", NS, "checkout", 3_000);
    const lookup = newLookup({ requestTimeoutMs: 150 });
    const error = await expectLookupError(
      lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]),
    );
    expect(error.kind).toBe("Deployment");

    fake.delay("Deployment", NS, "checkout", 0);
    const owners = await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);
    expect(owners).toHaveLength(2);
    // The ReplicaSet stayed cached, and the Deployment was read again.
    expect(fake.requests("ReplicaSet", NS, "checkout-7d9f")).toBe(1);
    expect(fake.requests("Deployment", NS, "checkout")).toBe(2);
  });

  it("not found then created", async () => {
    const replicaSet = makeObject("ReplicaSet", NS, "late");
    const lookup = newLookup();
    await expectLookupError(
      lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]),
    );
    fake.put(replicaSet);
    const owners = await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);
    expect(owners).toHaveLength(1);
  });
});

describe("counters and hook", () => {
  it("hook sees each object with its outcome", async () => {
    const { replicaSet } = deploymentChain();
    const calls: [LookupKind, LookupOutcome, boolean][] = [];
    const lookup = newLookup({
      onLookup: (kind, outcome, cacheHit) =>
        calls.push([kind, outcome, cacheHit]),
    });
    await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);
    await lookup.ownerChain(NS, [ownerReferenceTo(replicaSet)]);
    fake.fail("Namespace", "", NS, "Forbidden");
    await expectLookupError(lookup.namespaceSource(NS));
    expect(calls).toEqual([
      ["ReplicaSet", "ok", false],
      ["Deployment", "ok", false],
      ["ReplicaSet", "ok", true],
      ["Deployment", "ok", true],
      ["Namespace", "forbidden", false],
    ]);
  });

  it("stats returns a copy", async () => {
    const lookup = newLookup();
    const before = lookup.stats;
    await lookup.namespaceSource(NS);
    expect(before.apiReads).toBe(0);
    expect(lookup.stats.apiReads).toBe(1);
  });

  it("invalid options are rejected", () => {
    expect(() => newLookup({ cacheTtlSeconds: -1 })).toThrow(RangeError);
    expect(() => newLookup({ requestTimeoutMs: 0 })).toThrow(RangeError);
    expect(() => newLookup({ requestTimeoutMs: Number.NaN })).toThrow(
      RangeError,
    );
  });
});

describe("fake API server", () => {
  it("serves objects at the real paths", async () => {
    const job = makeObject("Job", NS, "migrate");
    fake.put(job);
    const response = await fetch(`${fake.url}${pathOf("Job", NS, "migrate")}`, {
      headers: { authorization: "Bearer fake-token" },
    });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({
      apiVersion: "batch/v1",
      kind: "Job",
    });
    expect(pathOf("Job", NS, "migrate")).toBe(
      "/apis/batch/v1/namespaces/payments/jobs/migrate",
    );
    expect(pathOf("Namespace", "", NS)).toBe("/api/v1/namespaces/payments");
  });

  it("unknown paths get a NotFound Status", async () => {
    const response = await fetch(
      `${fake.url}/apis/apps/v1/namespaces/payments/pods/x`,
      {
        headers: { authorization: "Bearer fake-token" },
      },
    );
    expect(response.status).toBe(404);
    expect(await response.json()).toMatchObject({
      kind: "Status",
      reason: "NotFound",
      code: 404,
    });
  });
});

describe("RBAC rules", () => {
  it("match the ClusterRole manifest", () => {
    const documents = parseAllDocuments(
      readFileSync("manifests/rbac.yaml", "utf8"),
    );
    const clusterRole = documents
      .map((document) => document.toJS() as { kind?: string; rules?: unknown })
      .find((object) => object.kind === "ClusterRole");
    expect(clusterRole?.rules).toEqual(REQUIRED_RBAC_RULES);
  });
});
