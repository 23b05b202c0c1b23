/**
 * Benchmarks the webhook on loopback: throughput and latency against a bare HTTPS floor, cost
 * growth with pod size and containers, DescribeClusters calls, memory, and the time of the
 * `aws` command that init containers run today. Prints a Markdown report.
 *
 * Usage: npm run bench -- [--quick] [--smoke] [--tsx] [--json FILE] [--cpu-prof DIR] [--aws-cli PATH]
 * Exits 1 when a correctness check fails. The checks are: every request succeeds, every patch
 * applies strictly and is idempotent, every admission leaves a decision log line, and
 * DescribeClusters calls stay within the refresh ticks. Missed performance targets show as
 * MISSED in the report and do not change the exit status.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { timeAwsCli, findAwsCli } from "./aws-cli.js";
import {
  CLUSTER_ID,
  REGION,
  createEnvironment,
  startBenchWebhook,
  type BenchWebhook,
  type Environment,
} from "./environment.js";
import { LoadClient } from "./load.js";
import { jsonSize, podFromDeploymentFile, reviewTemplate } from "./pods.js";
import {
  REPO_ROOT,
  TSX_ENTRY,
  compileWebhook,
  countLines,
  startFloorProcess,
} from "./processes.js";
import {
  checkTargets,
  formatReport,
  type BenchResults,
  type CliResult,
  type MachineInfo,
} from "./report.js";
import {
  Tally,
  compareWithFloor,
  measureAwsCost,
  measureCostGrowth,
  measureMemory,
  verifyInjection,
  type ProfileCounts,
} from "./sections.js";

const USAGE = `Usage: npm run bench -- [flags]

Flags:
  --quick          shorter rounds and 20,000 memory admissions (about 1 minute on 2 cores)
  --smoke          tiny counts that only check that every section runs, with --tsx
  --tsx            run the webhook from the TypeScript sources through tsx instead of
                   compiling it with tsc first, as the container image does
  --json FILE      also write the results as JSON to FILE
  --cpu-prof DIR   write a V8 CPU profile of the webhook process to DIR
  --aws-cli PATH   the aws command to time (default: aws on PATH)
`;

const PROFILES: Record<"full" | "quick" | "smoke", ProfileCounts> = {
  full: {
    warmupSeconds: 2,
    roundSeconds: 5,
    rounds: 6,
    concurrency: 8,
    latencySeconds: 3,
    latencyRounds: 2,
    costRequests: 500,
    costSeconds: 2,
    awsAdmissions: 10_000,
    memoryAdmissions: 100_000,
    cliRuns: 10,
  },
  quick: {
    warmupSeconds: 1,
    roundSeconds: 2,
    rounds: 2,
    concurrency: 8,
    latencySeconds: 1,
    latencyRounds: 1,
    costRequests: 150,
    costSeconds: 1,
    awsAdmissions: 10_000,
    memoryAdmissions: 20_000,
    cliRuns: 3,
  },
  smoke: {
    warmupSeconds: 0.1,
    roundSeconds: 0.2,
    rounds: 1,
    concurrency: 4,
    latencySeconds: 0.1,
    latencyRounds: 1,
    costRequests: 3,
    costSeconds: 0.5,
    awsAdmissions: 200,
    memoryAdmissions: 300,
    cliRuns: 0,
  },
};

// A short --refresh-interval (the default is 30 s), so that refresh ticks fall inside even the
// shortest run. One DescribeClusters call and one log line per second are small next to the
// thousands of admissions per second measured here, though not measured on their own.
const REFRESH_SECONDS = 1;

// On a large machine with no cgroup limit, V8 lets the old generation grow past 190 MiB before
// its first full collection, which reads as growth in the memory run. In the Deployment's
// 256 MiB container Node should size the heap from the limit, and a fixed limit here gives
// collections like those.
// NOTE: 128 MiB is a stand-in. The heap limit that Node picks under a 256 MiB cgroup limit
// was not measured.
const HEAP_LIMIT_FLAG = "--max-old-space-size=128";

type Resource = { stop(): Promise<void> } | { close(): Promise<void> };

/** Servers and child processes to stop, last started first, when the run ends or is interrupted. */
const open: Resource[] = [];

async function releaseAll(): Promise<void> {
  while (open.length > 0) {
    const resource = open.pop()!;
    await ("stop" in resource ? resource.stop() : resource.close());
  }
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping the child processes\n`);
    void releaseAll().finally(() => process.exit(130));
  });
}

function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

function machineInfo(loadAtStart: string): MachineInfo {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model =
    /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model;
  return {
    cores: cpus().length,
    cpuModel: model ?? "unknown",
    memoryBytes: totalmem(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    loadAverage: { start: loadAtStart, end: loadAverage() },
  };
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      tsx: { type: "boolean" },
      json: { type: "string" },
      "cpu-prof": { type: "string" },
      "aws-cli": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let mode: keyof typeof PROFILES = "full";
  if (values.smoke) {
    mode = "smoke";
  } else if (values.quick) {
    mode = "quick";
  }
  const counts = PROFILES[mode];
  const started = Date.now();
  const loadAtStart = loadAverage();
  const log = (text: string) =>
    process.stderr.write(
      `bench: ${((Date.now() - started) / 1000).toFixed(1)} s: ${text}\n`,
    );

  const typical = podFromDeploymentFile(
    join(REPO_ROOT, "examples/web-deployment.yaml"),
  );
  const owner = typical.pod.metadata.ownerReferences[0];
  const folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-bench-"));
  try {
    const environment = await createEnvironment(folder, {
      namespace: typical.namespace,
      deploymentName: typical.deploymentName,
      replicaSetName: typical.replicaSetName,
      replicaSetUid: String(owner.uid),
    });
    open.push(environment);
    const tally = new Tally();
    const template = reviewTemplate(typical.pod, typical.namespace);

    let entry = TSX_ENTRY;
    if (!values.tsx && !values.smoke) {
      log("compiling the webhook with tsc");
      entry = await compileWebhook(join(folder, "build"));
    }
    const nodeFlags = [HEAP_LIMIT_FLAG];
    if (values["cpu-prof"]) {
      nodeFlags.push("--cpu-prof", `--cpu-prof-dir=${values["cpu-prof"]}`);
    }
    log("starting the webhook and the floor");
    const webhook = await startBenchWebhook(environment, {
      name: "webhook",
      refreshSeconds: REFRESH_SECONDS,
      concurrency: counts.concurrency,
      entry,
      nodeFlags,
    });
    open.push(webhook);
    const verified = await verifyInjection(
      webhook.client,
      typical.pod,
      typical.namespace,
      tally,
      "typical pod",
    );
    const templateFile = join(folder, "floor-response.json");
    await writeFile(templateFile, verified.responseText);
    const floorChild = await startFloorProcess(
      environment.certFile,
      environment.keyFile,
      templateFile,
    );
    open.push(floorChild);
    const floor = {
      child: floorChild,
      client: new LoadClient(
        { ...webhook.target, port: floorChild.port },
        counts.concurrency,
      ),
    };
    open.push({ close: async () => floor.client.close() });
    const expectedLength = verified.responseText.length;

    // The AWS run comes first, on a fresh process, and is the warm-up of the memory run.
    log("DescribeClusters calls");
    const awsCost = await measureAwsCost(
      webhook,
      environment,
      template,
      {
        admissions: counts.awsAdmissions,
        concurrency: counts.concurrency,
        refreshSeconds: REFRESH_SECONDS,
      },
      tally,
    );
    log("memory");
    const memory = await measureMemory(
      webhook,
      template,
      {
        warmupAdmissions: awsCost.admissions,
        admissions: counts.memoryAdmissions,
        concurrency: counts.concurrency,
      },
      tally,
    );

    log("throughput against the floor");
    const throughput = await compareWithFloor(
      webhook,
      floor,
      template,
      expectedLength,
      {
        concurrency: counts.concurrency,
        rounds: counts.rounds,
        roundSeconds: counts.roundSeconds,
        warmupSeconds: counts.warmupSeconds,
      },
      tally,
    );
    log("latency one request at a time");
    const latency = await compareWithFloor(
      webhook,
      floor,
      template,
      expectedLength,
      {
        concurrency: 1,
        rounds: counts.latencyRounds,
        roundSeconds: counts.latencySeconds,
        warmupSeconds: counts.warmupSeconds,
      },
      tally,
    );
    log("cost growth with pod size and containers");
    const costGrowth = await measureCostGrowth(
      webhook,
      floor.client,
      typical.pod,
      typical.namespace,
      counts,
      tally,
    );
    const decisionLines = await stopAndCountDecisions(
      webhook,
      tally.webhookRequests,
    );
    await floorChild.stop();

    log("aws CLI");
    const awsCli = await measureAwsCli(
      environment,
      folder,
      counts.cliRuns,
      values["aws-cli"],
    );

    log("done");
    const results: BenchResults = {
      mode,
      date: new Date().toISOString(),
      command: ["npm run bench --", ...argv].join(" "),
      webhookCommand: [
        "node",
        ...nodeFlags,
        ...(entry === TSX_ENTRY ? entry : ["<tsc output>/src/cli/main.js"]),
        "serve",
        "--log-level=info",
        `--refresh-interval=${REFRESH_SECONDS}`,
        "...",
      ].join(" "),
      machine: machineInfo(loadAtStart),
      typicalPodBytes: jsonSize(typical.pod),
      responseBytes: expectedLength,
      throughput,
      latency,
      costGrowth,
      awsCost,
      memory,
      awsCli,
      decisionLines,
      problems: tally.problems,
    };
    process.stdout.write(`${formatReport(results)}\n`);
    if (values.json) {
      await writeFile(
        values.json,
        `${JSON.stringify({ ...results, targets: checkTargets(results) }, null, 2)}\n`,
      );
    }
    const correctnessFailed =
      tally.problems.length > 0 ||
      results.decisionLines.found !== results.decisionLines.expected;
    return correctnessFailed ? 1 : 0;
  } finally {
    await releaseAll();
    await rm(folder, { recursive: true, force: true });
  }
}

/** Stops the webhook, so that its log is complete, and counts its decision lines. */
async function stopAndCountDecisions(
  webhook: BenchWebhook,
  expected: number,
): Promise<{ expected: number; found: number }> {
  await webhook.stop();
  const found = await countLines(webhook.logFile, '"msg":"admission decision"');
  return { expected, found };
}

async function measureAwsCli(
  environment: Environment,
  folder: string,
  runs: number,
  explicitPath: string | undefined,
): Promise<CliResult> {
  const path = explicitPath ?? findAwsCli();
  if (path === undefined) {
    return {
      skipped:
        "no aws command on PATH; install the AWS CLI (Debian: apt-get install awscli) or pass --aws-cli",
    };
  }
  if (runs === 0) {
    return { skipped: "not run in this mode", path };
  }
  return timeAwsCli({
    path,
    endpoint: environment.aws.url,
    clusterId: CLUSTER_ID,
    region: REGION,
    runs,
    home: folder,
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(
      `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  },
);
