/** Pure statistics for the benchmark: percentiles, summaries and growth checks. */

/** Latency summary of one measured run, in milliseconds and requests per second. */
export interface LatencySummary {
  readonly requests: number;
  readonly seconds: number;
  readonly requestsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

/** Returns the q-quantile (0..1) of sorted values by the nearest-rank method. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) {
    return Number.NaN;
  }
  const rank = Math.ceil(q * sorted.length);
  const index = Math.min(sorted.length - 1, Math.max(0, rank - 1));
  return sorted[index]!;
}

export function median(values: readonly number[]): number {
  return quantile(
    [...values].sort((a, b) => a - b),
    0.5,
  );
}

/** Summarizes latencies in milliseconds measured over `seconds` of wall time. */
export function summarize(
  latenciesMs: readonly number[],
  seconds: number,
): LatencySummary {
  const sorted = Float64Array.from(latenciesMs).sort();
  const values = Array.from(sorted);
  return {
    requests: values.length,
    seconds,
    requestsPerSecond: seconds > 0 ? values.length / seconds : Number.NaN,
    p50Ms: quantile(values, 0.5),
    p99Ms: quantile(values, 0.99),
    maxMs: values.length > 0 ? values[values.length - 1]! : Number.NaN,
  };
}

/** Merges the latencies of several rounds into one summary, adding up their seconds. */
export function mergeRounds(
  rounds: ReadonlyArray<{ latenciesMs: readonly number[]; seconds: number }>,
): LatencySummary {
  const all: number[] = [];
  let seconds = 0;
  for (const round of rounds) {
    for (const latency of round.latenciesMs) {
      all.push(latency);
    }
    seconds += round.seconds;
  }
  return summarize(all, seconds);
}

/** One point of a cost curve: the size of the input and the median latency for it. */
export interface CostPoint {
  readonly size: number;
  readonly latencyMs: number;
}

/**
 * Returns the growth exponent between the two largest inputs of a cost curve: k in
 * latency ~ size^k. Linear cost gives 1, or less while a fixed cost still dominates, and
 * quadratic cost gives 2. The largest inputs take the longest, so timer noise matters least
 * there. Points must be sorted by size, with at least two of them.
 */
export function growthExponent(points: readonly CostPoint[]): number {
  if (points.length < 2) {
    throw new RangeError(
      `growthExponent needs at least 2 points, got ${points.length}`,
    );
  }
  const last = points[points.length - 1]!;
  const previous = points[points.length - 2]!;
  return (
    Math.log(last.latencyMs / previous.latencyMs) /
    Math.log(last.size / previous.size)
  );
}
