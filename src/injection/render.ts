import type { ClusterSnapshot, Hsm } from "../discovery/types.js";

/** Config file shapes the webhook can write into a pod. */
export type ConfigFormat = "sdk5" | "sdk3" | "json";

export const CONFIG_FORMATS: readonly ConfigFormat[] = ["sdk5", "sdk3", "json"];

/** TCP port on which Client SDK 5 and SDK 3 reach an HSM. */
export const HSM_PORT = 2223;

/** One cluster to render: its description and its ACTIVE HSMs in injection order. */
export interface RenderedCluster {
  readonly snapshot: ClusterSnapshot;
  readonly active: readonly Hsm[];
}

export interface RenderOptions {
  readonly format: ConfigFormat;
  /** Path of the cluster's issuing CA certificate inside the application container. */
  readonly hsmCaFile: string;
}

/**
 * Renders the config file the pod's CloudHSM client reads. The output is deterministic for the
 * same input, because the annotation it lands in is compared on reinvocation.
 */
export function renderConfig(
  clusters: readonly RenderedCluster[],
  options: RenderOptions,
): string {
  switch (options.format) {
    case "sdk5":
      return pretty(renderSdk5(clusters, options.hsmCaFile));
    case "sdk3":
      return pretty(renderSdk3(clusters));
    case "json":
      return pretty(renderNeutral(clusters));
  }
}

function pretty(document: unknown): string {
  return `${JSON.stringify(document, null, 2)}\n`;
}

// NOTE: every cluster in a multi-cluster config points at the same hsm_ca_file, because the
// webhook has one --hsm-ca-file. Clusters initialized with different CAs need a shared bundle.
function renderSdk5(
  clusters: readonly RenderedCluster[],
  hsmCaFile: string,
): object {
  return {
    clusters: clusters.map(({ snapshot, active }) => ({
      type: "hsm1",
      cluster: {
        hsm_ca_file: hsmCaFile,
        cluster_id: snapshot.clusterId,
        servers: active.map((hsm) => ({
          hostname: hsm.eniIp,
          port: HSM_PORT,
          enable: true,
        })),
      },
    })),
    logging: { log_type: "term", log_level: "info" },
  };
}

/**
 * Renders the legacy SDK 3 cloudhsm_client.cfg fields that `configure -a` sets. SDK 3 takes one
 * bootstrap address, so only the first ACTIVE HSM of the first cluster is written.
 */
function renderSdk3(clusters: readonly RenderedCluster[]): object {
  const first = clusters[0]?.active[0];
  return { server: { hostname: first?.eniIp ?? "", port: HSM_PORT } };
}

/** Renders a tool-neutral document that lists every HSM, whatever its state. */
function renderNeutral(clusters: readonly RenderedCluster[]): object {
  return {
    clusters: clusters.map(({ snapshot }) => ({
      clusterId: snapshot.clusterId,
      region: snapshot.region,
      hsms: [...snapshot.hsms].sort(byHsmId).map((hsm) => ({
        hsmId: hsm.hsmId,
        availabilityZone: hsm.availabilityZone ?? null,
        eniIp: hsm.eniIp ?? null,
        state: hsm.state,
      })),
    })),
  };
}

function byHsmId(left: Hsm, right: Hsm): number {
  return left.hsmId.localeCompare(right.hsmId, "en");
}
