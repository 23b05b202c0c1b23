/** The measurements of the benchmark. Each returns plain numbers for the report. */
import { setTimeout as sleep } from "node:timers/promises";
import { applyStrict, decodePatch } from "../test/support/apply-patch.js";
import type { BenchWebhook, Environment } from "./environment.js";
import type { LoadClient, LoadResult } from "./load.js";
import {
  PLACEHOLDER_UID,
  jsonSize,
  paddedPod,
  podWithContainers,
  reviewBody,
  reviewTemplate,
  type PaddingShape,
  type ReviewTemplate,
} from "./pods.js";
import type { Child } from "./processes.js";
import {
  growthExponent,
  mergeRounds,
  summarize,
  type LatencySummary,
} from "./stats.js";

type Json = Record<string, any>;

/** Counts requests and failures, for the correctness part of the report. */
export class Tally {
  /** Requests sent to webhooks, each of which must leave one decision log line. */
  webhookRequests = 0;
  failures = 0;
  readonly problems: string[] = [];

  /** Adds a run. `toWebhook` is false for runs against the floor. */
  add(result: LoadResult, caseName: string, toWebhook = true): void {
    if (toWebhook) {
      this.webhookRequests += result.latenciesMs.length + result.failures;
    }
    this.failures += result.failures;
    if (result.firstFailure !== undefined) {
      this.problems.push(
        `${caseName}: ${result.failures} failed, first: ${result.firstFailure}`,
      );
    }
  }

  problem(text: string): void {
    this.problems.push(text);
  }
}

let nextUid = 1;

/** Returns a body factory with uids that no other request of the run uses. */
function bodies(template: ReviewTemplate): (index: number) => string {
  const base = nextUid;
  nextUid += 10_000_000;
  return (index) => reviewBody(template, base + index);
}

/**
 * Admits `pod`, applies the patch strictly with rfc6902, and admits the patched pod again, which
 * must return no patch. Returns the first response text, with the placeholder uid, and the
 * number of patch operations.
 */
export async function verifyInjection(
  client: LoadClient,
  pod: Json,
  namespace: string,
  tally: Tally,
  caseName: string,
): Promise<{ responseText: string; patchLength: number }> {
  const template = reviewTemplate(pod, namespace);
  const first = await client.send(
    "/mutate",
    template.before + PLACEHOLDER_UID + template.after,
  );
  tally.webhookRequests += 1;
  if (first.status !== 200) {
    throw new Error(
      `${caseName}: POST /mutate returned HTTP ${first.status}: ${first.body}`,
    );
  }
  const response = (JSON.parse(first.body) as Json).response as Json;
  const patch = decodePatch(response);
  if (response.allowed !== true || patch.length === 0) {
    tally.problem(`${caseName}: expected an allowed response with a patch`);
  }
  const patched = applyStrict(pod, patch) as Json;
  const env = patched.spec.containers[0].env as Json[];
  if (!env.some((entry) => entry.name === "CLOUDHSM_HSM_IPS")) {
    tally.problem(`${caseName}: the patched pod has no CLOUDHSM_HSM_IPS`);
  }

  const second = await client.send(
    "/mutate",
    reviewBody(reviewTemplate(patched, namespace), 1),
  );
  tally.webhookRequests += 1;
  const again = (JSON.parse(second.body) as Json).response as Json;
  if (
    second.status !== 200 ||
    again.allowed !== true ||
    again.patch !== undefined
  ) {
    tally.problem(
      `${caseName}: admitting the patched pod again returned a patch`,
    );
  }
  return { responseText: first.body, patchLength: patch.length };
}

export interface ProfileCounts {
  readonly warmupSeconds: number;
  readonly roundSeconds: number;
  readonly rounds: number;
  readonly concurrency: number;
  readonly latencySeconds: number;
  readonly latencyRounds: number;
  readonly costRequests: number;
  readonly costSeconds: number;
  readonly awsAdmissions: number;
  readonly memoryAdmissions: number;
  readonly cliRuns: number;
}

export interface Comparison {
  readonly concurrency: number;
  readonly rounds: number;
  readonly webhook: LatencySummary;
  readonly floor: LatencySummary;
  /** Server CPU seconds per request, from /proc. */
  readonly webhookCpuMsPerRequest: number;
  readonly floorCpuMsPerRequest: number;
  readonly throughputRatio: number;
  readonly p50Ratio: number;
  readonly p99Ratio: number;
}

/**
 * Runs alternating rounds against the webhook and the floor, warm-up first, and compares them.
 * The order alternates each round, so a drift of the machine affects both alike.
 */
export async function compareWithFloor(
  webhook: { client: LoadClient; child: Child },
  floor: { client: LoadClient; child: Child },
  template: ReviewTemplate,
  expectedLength: number,
  options: {
    concurrency: number;
    rounds: number;
    roundSeconds: number;
    warmupSeconds: number;
  },
  tally: Tally,
): Promise<Comparison> {
  const run = (client: LoadClient, seconds: number) =>
    client.run({
      path: "/mutate",
      body: bodies(template),
      concurrency: options.concurrency,
      maxRequests: 10_000_000,
      maxSeconds: seconds,
      expectedLength,
    });
  tally.add(
    await run(webhook.client, options.warmupSeconds),
    "webhook warm-up",
  );
  tally.add(
    await run(floor.client, options.warmupSeconds),
    "floor warm-up",
    false,
  );

  const rounds = {
    webhook: [] as LoadResult[],
    floor: [] as LoadResult[],
  };
  const cpu = { webhook: 0, floor: 0 };
  for (let round = 0; round < options.rounds; round += 1) {
    const order =
      round % 2 === 0
        ? (["floor", "webhook"] as const)
        : (["webhook", "floor"] as const);
    for (const name of order) {
      const side = name === "webhook" ? webhook : floor;
      const before = side.child.cpuSeconds();
      const result = await run(side.client, options.roundSeconds);
      cpu[name] += side.child.cpuSeconds() - before;
      tally.add(result, `${name} round ${round + 1}`, name === "webhook");
      rounds[name].push(result);
    }
  }
  const webhookSummary = mergeRounds(rounds.webhook);
  const floorSummary = mergeRounds(rounds.floor);
  return {
    concurrency: options.concurrency,
    rounds: options.rounds,
    webhook: webhookSummary,
    floor: floorSummary,
    webhookCpuMsPerRequest: (cpu.webhook * 1000) / webhookSummary.requests,
    floorCpuMsPerRequest: (cpu.floor * 1000) / floorSummary.requests,
    throughputRatio:
      webhookSummary.requestsPerSecond / floorSummary.requestsPerSecond,
    p50Ratio: webhookSummary.p50Ms / floorSummary.p50Ms,
    p99Ratio: webhookSummary.p99Ms / floorSummary.p99Ms,
  };
}

export interface CostCase {
  readonly series: string;
  readonly label: string;
  /** Pod JSON bytes, or the container count. */
  readonly size: number;
  readonly podBytes: number;
  readonly patchOperations: number;
  readonly webhook: LatencySummary;
  readonly floor: LatencySummary;
}

export interface CostSeries {
  readonly name: string;
  readonly unit: string;
  readonly cases: CostCase[];
  /** Growth exponent of the webhook's p50 between the two largest inputs, from stats.ts. */
  readonly growthExponent: number;
}

const SIZE_POINTS = [
  { label: "1 KB", bytes: 1024 },
  { label: "100 KB", bytes: 100 * 1024 },
  { label: "1 MB", bytes: 1024 * 1024 },
];
const CONTAINER_POINTS = [1, 10, 50];

/** Measures one request at a time for pods that grow in size or in containers. */
export async function measureCostGrowth(
  webhook: BenchWebhook,
  floorClient: LoadClient,
  base: Json,
  namespace: string,
  counts: Pick<ProfileCounts, "costRequests" | "costSeconds">,
  tally: Tally,
): Promise<CostSeries[]> {
  const measure = async (
    series: string,
    label: string,
    size: number,
    pod: Json,
  ): Promise<CostCase> => {
    const caseName = `${series} ${label}`;
    const { patchLength } = await verifyInjection(
      webhook.client,
      pod,
      namespace,
      tally,
      caseName,
    );
    const template = reviewTemplate(pod, namespace);
    const run = (client: LoadClient) =>
      client.run({
        path: "/mutate",
        body: bodies(template),
        concurrency: 1,
        maxRequests: counts.costRequests,
        maxSeconds: counts.costSeconds,
      });
    // A few requests first, so that the measured ones find warm code and connections.
    tally.add(await run(webhook.client), `${caseName} warm-up`);
    const webhookResult = await run(webhook.client);
    tally.add(webhookResult, caseName);
    const floorResult = await run(floorClient);
    tally.add(floorResult, `${caseName} floor`, false);
    return {
      series,
      label,
      size,
      podBytes: jsonSize(pod),
      patchOperations: patchLength,
      webhook: summarize(webhookResult.latenciesMs, webhookResult.seconds),
      floor: summarize(floorResult.latenciesMs, floorResult.seconds),
    };
  };

  const result: CostSeries[] = [];
  for (const shape of ["annotation", "env"] as PaddingShape[]) {
    const cases: CostCase[] = [];
    for (const point of SIZE_POINTS) {
      cases.push(
        await measure(
          `pod size, ${shape} padding`,
          point.label,
          point.bytes,
          paddedPod(base, point.bytes, shape),
        ),
      );
    }
    result.push({
      name: `pod size, ${shape} padding`,
      unit: "bytes",
      cases,
      growthExponent: exponentOf(cases),
    });
  }
  const containerCases: CostCase[] = [];
  for (const count of CONTAINER_POINTS) {
    containerCases.push(
      await measure(
        "containers",
        `${count} container${count === 1 ? "" : "s"}`,
        count,
        podWithContainers(base, count),
      ),
    );
  }
  result.push({
    name: "containers",
    unit: "containers",
    cases: containerCases,
    growthExponent: exponentOf(containerCases),
  });
  return result;
}

function exponentOf(cases: readonly CostCase[]): number {
  return growthExponent(
    cases.map((entry) => ({
      size: entry.size,
      latencyMs: entry.webhook.p50Ms,
    })),
  );
}

export interface AwsCost {
  readonly admissions: number;
  readonly seconds: number;
  readonly refreshSeconds: number;
  /** Refresh timer ticks that fell in the run, plus one for a tick at its start. */
  readonly allowedCalls: number;
  readonly describeCalls: number;
  readonly callsPerThousandAdmissions: number;
}

/** Counts DescribeClusters requests at the fake endpoint while admissions run. */
export async function measureAwsCost(
  webhook: BenchWebhook,
  environment: Environment,
  template: ReviewTemplate,
  options: { admissions: number; concurrency: number; refreshSeconds: number },
  tally: Tally,
): Promise<AwsCost> {
  const before = environment.describeCalls();
  const result = await webhook.client.run({
    path: "/mutate",
    body: bodies(template),
    concurrency: options.concurrency,
    maxRequests: options.admissions,
    maxSeconds: 300,
  });
  const calls = environment.describeCalls() - before;
  tally.add(result, "AWS cost run");
  const allowedCalls = Math.floor(result.seconds / options.refreshSeconds) + 1;
  if (calls > allowedCalls) {
    tally.problem(
      `AWS cost run: ${calls} DescribeClusters calls, more than the ${allowedCalls} refresh ticks`,
    );
  }
  const admissions = result.latenciesMs.length;
  return {
    admissions,
    seconds: result.seconds,
    refreshSeconds: options.refreshSeconds,
    allowedCalls,
    describeCalls: calls,
    callsPerThousandAdmissions: (calls * 1000) / admissions,
  };
}

export interface MemoryGrowth {
  readonly warmupAdmissions: number;
  readonly admissions: number;
  readonly warmRssBytes: number;
  readonly finalRssBytes: number;
  readonly growth: number;
  /** RSS after each tenth of the run. */
  readonly samples: Array<{ admissions: number; rssBytes: number }>;
}

/** Reads the webhook's RSS after the warm-up, then after each tenth of `admissions`. */
export async function measureMemory(
  webhook: BenchWebhook,
  template: ReviewTemplate,
  options: {
    warmupAdmissions: number;
    admissions: number;
    concurrency: number;
  },
  tally: Tally,
): Promise<MemoryGrowth> {
  await sleep(500);
  const warmRssBytes = webhook.child.rssBytes();
  const samples: Array<{ admissions: number; rssBytes: number }> = [];
  const chunk = Math.ceil(options.admissions / 10);
  let done = 0;
  for (let part = 0; part < 10 && done < options.admissions; part += 1) {
    const result = await webhook.client.run({
      path: "/mutate",
      body: bodies(template),
      concurrency: options.concurrency,
      maxRequests: Math.min(chunk, options.admissions - done),
      maxSeconds: 300,
    });
    tally.add(result, `memory run part ${part + 1}`);
    done += result.latenciesMs.length + result.failures;
    samples.push({ admissions: done, rssBytes: webhook.child.rssBytes() });
  }
  await sleep(500);
  const finalRssBytes = webhook.child.rssBytes();
  return {
    warmupAdmissions: options.warmupAdmissions,
    admissions: done,
    warmRssBytes,
    finalRssBytes,
    growth: finalRssBytes / warmRssBytes - 1,
    samples,
  };
}
