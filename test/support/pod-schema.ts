import { Pod } from "kubernetes-models/v1/Pod";

/**
 * Validates a pod against the published Kubernetes Pod schema (kubernetes-models) and throws
 * an error that lists every violation.
 */
export function validatePod(pod: unknown): void {
  new Pod(pod as ConstructorParameters<typeof Pod>[0]).validate();
}
