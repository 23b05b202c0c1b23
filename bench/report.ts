/** Turns benchmark results into target checks and a Markdown report. Pure functions only. */
import type {
  AwsCost,
  Comparison,
  CostSeries,
  MemoryGrowth,
} from "./sections.js";
import { median } from "./stats.js";

export interface MachineInfo {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryBytes: number;
  readonly node: string;
  readonly platform: string;
  /** The first three fields of /proc/loadavg when the run started and when it ended. */
  readonly loadAverage: { readonly start: string; readonly end: string };
}

export interface CliResult {
  /** The reason the command was not timed, if it was not. */
  readonly skipped?: string;
  readonly path?: string;
  readonly resolvedPath?: string;
  readonly version?: string;
  readonly runsMs?: number[];
}

export interface BenchResults {
  readonly mode: string;
  readonly date: string;
  readonly command: string;
  /** Command line that started the webhook under test, without its paths. */
  readonly webhookCommand: string;
  readonly machine: MachineInfo;
  readonly typicalPodBytes: number;
  readonly responseBytes: number;
  readonly throughput: Comparison;
  readonly latency: Comparison;
  readonly costGrowth: CostSeries[];
  readonly awsCost: AwsCost;
  readonly memory: MemoryGrowth;
  readonly awsCli: CliResult;
  readonly decisionLines: { readonly expected: number; readonly found: number };
  readonly problems: string[];
}

export interface TargetCheck {
  readonly name: string;
  readonly met: boolean;
  readonly detail: string;
}

// A growth exponent up to this bound counts as linear. It leaves room for timer and garbage
// collection noise, and quadratic growth would still show as about 2.
const LINEAR_EXPONENT = 1.25;

export function checkTargets(results: BenchResults): TargetCheck[] {
  const { throughput, costGrowth, awsCost, memory } = results;
  const checks: TargetCheck[] = [
    {
      name: "throughput at least 0.8x the floor",
      met: throughput.throughputRatio >= 0.8,
      detail: `${fixed(throughput.throughputRatio, 2)}x`,
    },
    {
      name: "p99 at most 1.5x the floor",
      met: throughput.p99Ratio <= 1.5,
      detail: `${fixed(throughput.p99Ratio, 2)}x`,
    },
  ];
  for (const series of costGrowth) {
    checks.push({
      name: `${series.name} grows linearly`,
      met: series.growthExponent <= LINEAR_EXPONENT,
      detail: `growth exponent ${fixed(series.growthExponent, 2)}`,
    });
    const largest = series.cases[series.cases.length - 1];
    if (series.unit === "bytes" && largest !== undefined) {
      checks.push({
        name: `${series.name}: ${largest.label} pod under 20 ms`,
        met: largest.webhook.p50Ms < 20,
        detail: `p50 ${fixed(largest.webhook.p50Ms, 2)} ms, p99 ${fixed(largest.webhook.p99Ms, 2)} ms`,
      });
    }
  }
  checks.push(
    {
      name: "DescribeClusters calls at most the refresh ticks",
      met: awsCost.describeCalls <= awsCost.allowedCalls,
      detail: `${awsCost.describeCalls} calls, ${awsCost.allowedCalls} ticks, ${awsCost.admissions} admissions`,
    },
    {
      name: "RSS growth within 20% after warm-up",
      met: memory.growth <= 0.2,
      detail: `${percent(memory.growth)} (${mib(memory.warmRssBytes)} to ${mib(memory.finalRssBytes)})`,
    },
    {
      name: "one decision log line per admission",
      met: results.decisionLines.found === results.decisionLines.expected,
      detail: `${results.decisionLines.found} lines, ${results.decisionLines.expected} admissions`,
    },
  );
  return checks;
}

export function formatReport(results: BenchResults): string {
  const { machine, throughput, latency, awsCost, memory, awsCli } = results;
  const lines: string[] = [];
  lines.push(`# cloudhsm-webhook benchmark (${results.mode})`, "");
  lines.push(
    `- date: ${results.date}`,
    `- command: \`${results.command}\``,
    `- webhook: \`${results.webhookCommand}\``,
    `- machine: ${machine.cores} cores, ${machine.cpuModel}, ${gib(machine.memoryBytes)} memory, ${machine.platform}`,
    `- node: ${machine.node}`,
    `- load average (1, 5, 15 min) at the start: ${machine.loadAverage.start}, at the end: ${machine.loadAverage.end}`,
    `- typical pod: ${results.typicalPodBytes} bytes of JSON; webhook response: ${results.responseBytes} bytes`,
    "",
  );

  lines.push(
    "## Throughput and latency against the floor",
    "",
    comparisonTable(throughput, "saturation"),
    "",
    comparisonTable(latency, "one request at a time"),
    "",
  );

  lines.push("## Cost growth (one request at a time)", "");
  for (const series of results.costGrowth) {
    lines.push(
      `### ${series.name} (growth exponent ${fixed(series.growthExponent, 2)})`,
      "",
      "| case | pod bytes | patch ops | webhook p50 ms | webhook p99 ms | floor p50 ms | webhook minus floor p50 ms |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const entry of series.cases) {
      lines.push(
        `| ${entry.label} | ${entry.podBytes} | ${entry.patchOperations} | ${fixed(entry.webhook.p50Ms, 3)} | ${fixed(entry.webhook.p99Ms, 3)} | ${fixed(entry.floor.p50Ms, 3)} | ${fixed(entry.webhook.p50Ms - entry.floor.p50Ms, 3)} |`,
      );
    }
    lines.push("");
  }

  lines.push(
    "## AWS calls",
    "",
    `- ${awsCost.admissions} admissions in ${fixed(awsCost.seconds, 2)} s with --refresh-interval=${awsCost.refreshSeconds}: ${awsCost.describeCalls} DescribeClusters calls (allowed: ${awsCost.allowedCalls} refresh ticks), ${fixed(awsCost.callsPerThousandAdmissions, 3)} per 1,000 admissions`,
    "- at the default --refresh-interval=30: 2 calls per minute per replica and cluster, whatever the number of pods",
    "- init container running `aws cloudhsmv2 describe-clusters`: 1,000 calls per 1,000 pod starts",
    "",
  );

  lines.push("## Against the init container", "");
  if (awsCli.runsMs && awsCli.runsMs.length > 0) {
    const runs = awsCli.runsMs;
    const resolved =
      awsCli.resolvedPath !== awsCli.path ? ` (${awsCli.resolvedPath})` : "";
    lines.push(
      `- \`${awsCli.path}\`${resolved}, ${awsCli.version}`,
      `- describe-clusters wall time over ${runs.length} runs: median ${fixed(median(runs), 0)} ms, min ${fixed(Math.min(...runs), 0)} ms, max ${fixed(Math.max(...runs), 0)} ms`,
    );
  } else {
    lines.push(`- aws CLI not timed: ${awsCli.skipped ?? "unknown reason"}`);
  }
  lines.push(
    `- webhook time per pod, one request at a time: p50 ${fixed(latency.webhook.p50Ms, 3)} ms, p99 ${fixed(latency.webhook.p99Ms, 3)} ms`,
    "",
  );

  lines.push(
    "## Memory",
    "",
    `- RSS after ${memory.warmupAdmissions} warm-up admissions: ${mib(memory.warmRssBytes)}`,
    `- RSS after ${memory.admissions} more: ${mib(memory.finalRssBytes)} (${percent(memory.growth)})`,
    `- samples: ${memory.samples.map((sample) => `${sample.admissions}: ${mib(sample.rssBytes)}`).join(", ")}`,
    "",
  );

  lines.push(
    "## Targets",
    "",
    "| target | result | measured |",
    "| --- | --- | --- |",
  );
  for (const check of checkTargets(results)) {
    lines.push(
      `| ${check.name} | ${check.met ? "met" : "MISSED"} | ${check.detail} |`,
    );
  }
  lines.push("");
  if (results.problems.length > 0) {
    lines.push("## Correctness problems", "");
    for (const problem of results.problems) {
      lines.push(`- ${problem}`);
    }
    lines.push("");
  }
  return lines.join("\n");
}

function comparisonTable(comparison: Comparison, title: string): string {
  const { webhook, floor } = comparison;
  return [
    `${title}: ${comparison.concurrency} keep-alive connection${comparison.concurrency === 1 ? "" : "s"}, ${comparison.rounds} alternating round${comparison.rounds === 1 ? "" : "s"}`,
    "",
    "| server | requests | req/s | p50 ms | p99 ms | max ms | server CPU ms/req |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    `| webhook | ${webhook.requests} | ${fixed(webhook.requestsPerSecond, 0)} | ${fixed(webhook.p50Ms, 3)} | ${fixed(webhook.p99Ms, 3)} | ${fixed(webhook.maxMs, 2)} | ${fixed(comparison.webhookCpuMsPerRequest, 3)} |`,
    `| floor | ${floor.requests} | ${fixed(floor.requestsPerSecond, 0)} | ${fixed(floor.p50Ms, 3)} | ${fixed(floor.p99Ms, 3)} | ${fixed(floor.maxMs, 2)} | ${fixed(comparison.floorCpuMsPerRequest, 3)} |`,
    `| ratio | | ${fixed(comparison.throughputRatio, 2)}x | ${fixed(comparison.p50Ratio, 2)}x | ${fixed(comparison.p99Ratio, 2)}x | | ${fixed(comparison.webhookCpuMsPerRequest / comparison.floorCpuMsPerRequest, 2)}x |`,
  ].join("\n");
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "n/a";
}

function percent(fraction: number): string {
  return `${fraction >= 0 ? "+" : ""}${(fraction * 100).toFixed(1)}%`;
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}
