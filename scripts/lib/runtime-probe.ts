// Preload module for `node --import`: measures the event-loop delay and heap of the process it
// is loaded into, without changes to that program. scripts/soak.ts loads it into the server.
//
// Every second, and when the process exits, it writes a RuntimeSnapshot as JSON to the file
// named by SOAK_PROBE_FILE. It acts on two marker files next to that file and deletes each one
// when done. `<that name>.gc` runs a full garbage collection (under `node --expose-gc`) and
// records the heap left, which separates a leak from garbage not yet collected.
// `<that name>.reset` clears the delay histogram, so that start-up work is left out.
import { existsSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";

/** Event-loop delay since the last reset, and the V8 heap at the time of writing. */
export interface RuntimeSnapshot {
  readonly samples: number;
  /** Delay percentiles and maximum in milliseconds, beyond the sampling interval. */
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly resets: number;
  /** Heap in use, garbage included, and heap reserved, in MiB. */
  readonly heapUsedMiB: number;
  readonly heapTotalMiB: number;
  /** Full collections run on request, and the heap in use after the last one, in MiB. */
  readonly gcRuns: number;
  readonly heapAfterGcMiB?: number;
  readonly writtenAt: string;
}

// Sampling interval of the histogram. Its values are the time between two samples, so the
// interval is subtracted to leave the delay.
const RESOLUTION_MS = 10;

const outputPath = process.env.SOAK_PROBE_FILE;

if (outputPath !== undefined && outputPath !== "") {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  const resetMarker = `${outputPath}.reset`;
  const gcMarker = `${outputPath}.gc`;
  let resets = 0;
  let gcRuns = 0;
  let heapAfterGcMiB: number | undefined;

  const toDelayMs = (nanoseconds: number): number =>
    Math.max(0, Math.round((nanoseconds / 1e6 - RESOLUTION_MS) * 100) / 100);
  const toMiB = (bytes: number): number =>
    Math.round((bytes / 1024 / 1024) * 10) / 10;

  const write = (): void => {
    const memory = process.memoryUsage();
    const snapshot: RuntimeSnapshot = {
      samples: histogram.count,
      p50Ms: toDelayMs(histogram.percentile(50)),
      p99Ms: toDelayMs(histogram.percentile(99)),
      maxMs: toDelayMs(histogram.max),
      resets,
      heapUsedMiB: toMiB(memory.heapUsed),
      heapTotalMiB: toMiB(memory.heapTotal),
      gcRuns,
      heapAfterGcMiB,
      writtenAt: new Date().toISOString(),
    };
    // A rename replaces the file at once, so a reader never sees half of it.
    writeFileSync(`${outputPath}.tmp`, JSON.stringify(snapshot));
    renameSync(`${outputPath}.tmp`, outputPath);
  };

  const collect = (globalThis as { gc?: () => void }).gc;
  const timer = setInterval(() => {
    if (existsSync(gcMarker) && collect !== undefined) {
      collect();
      gcRuns += 1;
      heapAfterGcMiB = toMiB(process.memoryUsage().heapUsed);
      rmSync(gcMarker, { force: true });
    }
    if (existsSync(resetMarker)) {
      histogram.reset();
      resets += 1;
      rmSync(resetMarker, { force: true });
    }
    write();
  }, 1_000);
  timer.unref();
  process.on("exit", write);
}
