/** Pods and AdmissionReview bodies for the benchmark. */
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { podCreateReview } from "../scripts/lib/admission-client.js";
import { podFromWorkload } from "../scripts/lib/workloads.js";

type Json = Record<string, any>;

/** The uid in response templates. Every generated uid has the same length. */
export const PLACEHOLDER_UID = "00000000-0000-4000-8000-00000000f100";

/** Returns a distinct uid of the placeholder's length for request `index`. */
export function uidFor(index: number): string {
  return `00000000-0000-4000-8000-${index.toString(16).padStart(12, "0")}`;
}

/** An AdmissionReview body split around its uid, so each request gets its own uid cheaply. */
export interface ReviewTemplate {
  readonly before: string;
  readonly after: string;
}

export function reviewTemplate(pod: Json, namespace: string): ReviewTemplate {
  const text = JSON.stringify(
    podCreateReview(pod, { namespace, uid: PLACEHOLDER_UID }),
  );
  const at = text.indexOf(PLACEHOLDER_UID);
  return {
    before: text.slice(0, at),
    after: text.slice(at + PLACEHOLDER_UID.length),
  };
}

export function reviewBody(template: ReviewTemplate, index: number): string {
  return template.before + uidFor(index) + template.after;
}

/**
 * Builds the pod that the ReplicaSet of a Deployment file creates: the template's metadata and
 * spec, a generateName and a controller ownerReference.
 */
export function podFromDeploymentFile(path: string): {
  pod: Json;
  namespace: string;
  replicaSetName: string;
  deploymentName: string;
} {
  const documents = parseAllDocuments(readFileSync(path, "utf8")).map(
    (document) => document.toJSON() as Json,
  );
  const deployment = documents.find(
    (document) => document?.kind === "Deployment",
  );
  if (deployment === undefined) {
    throw new Error(`${path} contains no Deployment`);
  }
  const { pod, namespace } = podFromWorkload(deployment) as {
    pod: Json;
    namespace: string;
  };
  const owner = pod.metadata.ownerReferences[0] as Json;
  return {
    pod,
    namespace,
    replicaSetName: String(owner.name),
    deploymentName: String(deployment.metadata.name),
  };
}

export function jsonSize(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value));
}

/** The padding that grows a pod to a target size. */
export type PaddingShape = "annotation" | "env";

/**
 * Returns a copy of `pod` grown to about `bytes` of JSON. "annotation" adds one large annotation,
 * which injection leaves alone. "env" adds variables of about 100 bytes to the first container.
 * That is the worst case, because injection puts its variables first, so every user entry
 * moves and the patch has to cover the whole list.
 */
export function paddedPod(pod: Json, bytes: number, shape: PaddingShape): Json {
  const copy = structuredClone(pod);
  const missing = bytes - jsonSize(copy);
  if (missing <= 0) {
    return copy;
  }
  if (shape === "annotation") {
    const key = "example.com/padding";
    // The key, quotes, colon and comma take about 25 bytes.
    copy.metadata.annotations[key] = "x".repeat(Math.max(0, missing - 25));
    return copy;
  }
  const container = copy.spec.containers[0];
  container.env ??= [];
  let size = jsonSize(copy);
  for (let index = 0; size < bytes && index < 1_000_000; index += 1) {
    const entry = {
      name: `PAD_${String(index).padStart(6, "0")}`,
      value: "v".repeat(70),
    };
    container.env.push(entry);
    size += jsonSize(entry) + 1;
  }
  return copy;
}

/** Returns a copy of `pod` with `count` containers, each a renamed copy of the first. */
export function podWithContainers(pod: Json, count: number): Json {
  const copy = structuredClone(pod);
  const first = copy.spec.containers[0];
  copy.spec.containers = Array.from({ length: count }, (_, index) => ({
    ...structuredClone(first),
    name: `${first.name}-${index}`,
  }));
  return copy;
}
