import type { InjectionPlan } from "./mutate.js";
import {
  renderConfig,
  type RenderOptions,
  type RenderedCluster,
} from "./render.js";
import type { InjectionOptions } from "./resolve.js";

/**
 * Builds the plan for one pod from its resolved options and the clusters they name, in the
 * order of `options.clusterIds`. The CLOUDHSM_* variables describe the first cluster, and the
 * config file lists all of them. Throws when `clusters` is empty. `render` lets a caller
 * reuse configs it rendered before for the same cluster lists.
 */
export function buildInjectionPlan(
  options: Pick<InjectionOptions, "configFormat" | "configPath" | "containers">,
  clusters: readonly RenderedCluster[],
  hsmCaFile: string,
  render: (
    clusters: readonly RenderedCluster[],
    options: RenderOptions,
  ) => string = renderConfig,
): InjectionPlan {
  const first = clusters[0];
  if (first === undefined) {
    throw new RangeError("an injection plan needs at least one cluster");
  }
  const plan: {
    -readonly [K in keyof InjectionPlan]: InjectionPlan[K];
  } = {
    clusterId: first.snapshot.clusterId,
    ips: first.active.map((hsm) => hsm.eniIp!),
    config: render(clusters, {
      format: options.configFormat,
      hsmCaFile,
    }),
  };
  if (options.configPath !== undefined) {
    plan.configPath = options.configPath;
  }
  if (options.containers !== undefined) {
    plan.containers = options.containers;
  }
  return plan;
}
