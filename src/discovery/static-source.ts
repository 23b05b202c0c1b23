import { readFile } from "node:fs/promises";
import {
  ClusterNotFoundError,
  DiscoveryError,
  type ClusterSnapshot,
  type HsmSource,
} from "./types.js";
import { isObject, ownString } from "../injection/pod.js";

/**
 * Serves clusters from a JSON file shaped like a DescribeClusters response
 * (`{"Clusters": [{"ClusterId": …, "Hsms": [{"HsmId", "EniIp", "State", …}]}]}`), for demos,
 * air-gapped tests and clusters whose addresses are managed by hand. The file is read on every
 * describe, so an edit reaches new pods at the next refresh.
 */
export class StaticHsmSource implements HsmSource {
  constructor(private readonly path: string) {}

  async describe(clusterId: string, region: string): Promise<ClusterSnapshot> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (error) {
      throw new DiscoveryError(
        `cannot read static HSM file ${this.path}: ${(error as Error).message}`,
        "StaticFileUnreadable",
        { cause: error },
      );
    }
    const clusters = parseDescribeClusters(text, this.path);
    const found = clusters.find((cluster) => cluster.clusterId === clusterId);
    if (!found) {
      throw new ClusterNotFoundError(clusterId, region);
    }
    return { ...found, region, fetchedAt: Date.now() };
  }
}

/** Parses DescribeClusters JSON into snapshots, with an error that names the file and field. */
export function parseDescribeClusters(
  text: string,
  source: string,
): Array<Omit<ClusterSnapshot, "region" | "fetchedAt">> {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw new DiscoveryError(
      `invalid JSON in ${source}: ${(error as Error).message}`,
      "StaticFileInvalid",
    );
  }
  const clusters = isObject(document) ? document.Clusters : undefined;
  if (!Array.isArray(clusters)) {
    throw new DiscoveryError(
      `invalid ${source}: expected an object with a "Clusters" list, as DescribeClusters returns`,
      "StaticFileInvalid",
    );
  }
  return clusters.map((cluster, index) => {
    const clusterId = ownString(cluster, "ClusterId");
    const hsms = isObject(cluster) ? (cluster.Hsms ?? []) : undefined;
    if (!clusterId || !Array.isArray(hsms)) {
      throw new DiscoveryError(
        `invalid ${source}: Clusters[${index}] needs a ClusterId and an Hsms list`,
        "StaticFileInvalid",
      );
    }
    return {
      clusterId,
      clusterState: ownString(cluster, "State"),
      hsms: hsms.map((hsm, hsmIndex) => {
        const hsmId = ownString(hsm, "HsmId");
        if (!hsmId) {
          throw new DiscoveryError(
            `invalid ${source}: Clusters[${index}].Hsms[${hsmIndex}] needs an HsmId`,
            "StaticFileInvalid",
          );
        }
        return {
          hsmId,
          availabilityZone: ownString(hsm, "AvailabilityZone"),
          eniIp: ownString(hsm, "EniIp"),
          state: ownString(hsm, "State") ?? "UNKNOWN",
        };
      }),
    };
  });
}
