/**
 * Builders for the running-pod refresher tests: a DescribeClusters source whose results a test
 * changes, and pods injected by the real mutation code as the webhook would have admitted them.
 */
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { pino, type Logger } from "pino";
import {
  ClusterNotFoundError,
  type ClusterSnapshot,
  type HsmSource,
} from "../../src/discovery/types.js";
import { activeHsms } from "../../src/injection/addresses.js";
import { buildInjectionPlan } from "../../src/injection/plan.js";
import type { ConfigFormat } from "../../src/injection/render.js";
import { loggerOptions } from "../../src/log.js";
import {
  ownerReferenceTo,
  type FakeObject,
  type FakePod,
} from "./fake-kube.js";
import { runInjection } from "./inject-pod.js";

export const HSM_CA_FILE = "/opt/cloudhsm/etc/customerCA.crt";

/** Returns DescribeClusters results from a table that tests edit between refreshes. */
export class ScriptedSource implements HsmSource {
  readonly #answers = new Map<string, readonly string[] | Error>();
  calls = 0;

  /** Sets the ACTIVE addresses of a cluster. Each address keeps one HSM id across calls. */
  setActive(clusterId: string, ips: readonly string[]): void {
    this.#answers.set(clusterId, [...ips]);
  }

  /** Makes every later describe of the cluster reject with `error`. */
  fail(clusterId: string, error: Error): void {
    this.#answers.set(clusterId, error);
  }

  async describe(clusterId: string, region: string): Promise<ClusterSnapshot> {
    this.calls += 1;
    const answer = this.#answers.get(clusterId);
    if (answer instanceof Error) {
      throw answer;
    }
    if (answer === undefined) {
      throw new ClusterNotFoundError(clusterId, region);
    }
    return snapshotOf(clusterId, region, answer);
  }
}

/** Builds a snapshot whose HSMs are ACTIVE at `ips`, with ids derived from the addresses. */
export function snapshotOf(
  clusterId: string,
  region: string,
  ips: readonly string[],
): ClusterSnapshot {
  return {
    clusterId,
    region,
    clusterState: "ACTIVE",
    hsms: ips.map((ip) => ({
      hsmId: `hsm-${ip.replaceAll(".", "x")}`,
      eniIp: ip,
      state: "ACTIVE",
      availabilityZone: "us-east-1a",
    })),
    fetchedAt: Date.now(),
  };
}

export interface PodSpec {
  readonly namespace: string;
  readonly name: string;
  /** The addresses the pod was created with. */
  readonly ips: readonly string[];
  readonly clusterId: string;
  readonly region: string;
  /** The pod's controller: a ReplicaSet, StatefulSet or DaemonSet. */
  readonly owner?: FakeObject;
  readonly createdAt?: Date;
  readonly format?: ConfigFormat;
  readonly configPath?: string;
  readonly annotations?: Record<string, string>;
}

/** Builds a running pod injected with `ips` by injectPod, as the webhook admitted it. */
export function injectedPod(spec: PodSpec): FakePod {
  const createdAt = spec.createdAt ?? new Date(Date.now() - 3_600_000);
  const snapshot = snapshotOf(spec.clusterId, spec.region, spec.ips);
  const plan = buildInjectionPlan(
    {
      configFormat: spec.format ?? "sdk5",
      configPath: spec.configPath,
    },
    [{ snapshot, active: activeHsms(snapshot.hsms) }],
    HSM_CA_FILE,
  );
  const metadata: Record<string, unknown> = {
    name: spec.name,
    namespace: spec.namespace,
    uid: randomUUID(),
    labels: { app: spec.name.replace(/-[^-]+$/, "") },
    annotations: { "cloudhsm/inject": "true", ...spec.annotations },
    creationTimestamp: createdAt.toISOString().replace(/\.\d{3}Z$/, "Z"),
  };
  if (spec.owner !== undefined) {
    metadata.ownerReferences = [ownerReferenceTo(spec.owner)];
  }
  const pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata,
    spec: {
      containers: [
        {
          name: "app",
          image: "registry.example.com/app:1.0",
          env: [{ name: "MODE", value: "prod" }],
        },
      ],
    },
  };
  return runInjection(pod, plan, createdAt).pod as unknown as FakePod;
}

/** Creates a pino logger that keeps its lines for assertions. */
export function capturingLogger(): {
  logger: Logger;
  lines: () => Array<Record<string, unknown>>;
} {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return {
    logger: pino(loggerOptions("debug"), sink),
    lines: () =>
      chunks
        .join("")
        .split("\n")
        .filter((line) => line !== "")
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}
