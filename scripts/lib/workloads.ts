import { randomBytes } from "node:crypto";

type Json = Record<string, unknown>;

/**
 * Builds the pod a controller would create from a workload's pod template: the template's
 * metadata and spec, a generateName and no name, and a controller ownerReference.
 */
export function podFromWorkload(workload: Json): {
  pod: Json;
  namespace: string;
} {
  const metadata = (workload.metadata ?? {}) as Json;
  const name = String(metadata.name);
  const namespace = String(metadata.namespace ?? "default");
  const kind = String(workload.kind);
  const spec = (workload.spec ?? {}) as Json;
  const template = (
    kind === "CronJob"
      ? ((spec.jobTemplate as Json).spec as Json).template
      : spec.template
  ) as Json;
  if (template === undefined) {
    throw new Error(`${kind} ${name} has no pod template`);
  }
  const templateMetadata = structuredClone((template.metadata ?? {}) as Json);
  // A Deployment's pods belong to a ReplicaSet named after the Deployment and a template hash.
  const hash = randomBytes(5).toString("hex").slice(0, 10);
  const owner =
    kind === "Deployment"
      ? { apiVersion: "apps/v1", kind: "ReplicaSet", name: `${name}-${hash}` }
      : {
          apiVersion:
            kind === "Job" || kind === "CronJob" ? "batch/v1" : "apps/v1",
          kind,
          name,
        };
  const pod: Json = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      ...templateMetadata,
      generateName: `${owner.name}-`,
      namespace,
      ownerReferences: [
        {
          ...owner,
          uid: "00000000-0000-4000-8000-000000000001",
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    spec: structuredClone(template.spec),
  };
  return { pod, namespace };
}
