/** HSM lifecycle states, as DescribeClusters reports them. Only ACTIVE HSMs are handed to pods. */
export type HsmState =
  | "CREATE_IN_PROGRESS"
  | "ACTIVE"
  | "DEGRADED"
  | "DELETE_IN_PROGRESS"
  | "DELETED";

/** One HSM of a cluster, reduced to what injection and diagnostics use. */
export interface Hsm {
  readonly hsmId: string;
  readonly availabilityZone?: string;
  readonly eniIp?: string;
  /** The state string as AWS sent it; newer API versions may add states this type does not list. */
  readonly state: HsmState | string;
}

/** A DescribeClusters result for one cluster, as fetched at `fetchedAt`. */
export interface ClusterSnapshot {
  readonly clusterId: string;
  readonly region: string;
  readonly clusterState?: string;
  readonly hsms: readonly Hsm[];
  /** Milliseconds since the epoch at which the response arrived. */
  readonly fetchedAt: number;
}

/** A provider of cluster descriptions: AWS, or a static file. */
export interface HsmSource {
  /**
   * Fetches one cluster. Rejects with ClusterNotFoundError when the region has no such cluster,
   * and with DiscoveryError for every other failure.
   */
  describe(
    clusterId: string,
    region: string,
    signal?: AbortSignal,
  ): Promise<ClusterSnapshot>;
}

/** A failed DescribeClusters call, with the AWS error name when there was one. */
export class DiscoveryError extends Error {
  override readonly name: string = "DiscoveryError";
  constructor(
    message: string,
    /** The AWS error name, such as ThrottlingException, or a local cause such as TimeoutError. */
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** DescribeClusters succeeded, but without the requested cluster. */
export class ClusterNotFoundError extends DiscoveryError {
  override readonly name = "ClusterNotFoundError";
  constructor(
    readonly clusterId: string,
    readonly region: string,
  ) {
    super(`cluster ${clusterId} not found in ${region}`, "ClusterNotFound");
  }
}
