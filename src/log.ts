import { pino, type Logger as PinoLogger } from "pino";

/** The logging calls the webhook makes; fastify's request and instance loggers satisfy it. */
export type Logger = Pick<PinoLogger, "debug" | "info" | "warn" | "error">;

export const LOG_LEVELS = [
  "trace",
  "debug",
  "info",
  "warn",
  "error",
  "fatal",
  "silent",
] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Options for every pino logger the webhook creates. Request bodies and headers are never logged,
 * and these paths are redacted in case a caller passes a whole object by mistake. Wildcard paths
 * such as `*.env` made every line cost about a third more in a loop, so only fixed paths are listed,
 * and log calls name their fields one by one.
 */
export function loggerOptions(level: LogLevel): pino.LoggerOptions {
  return {
    level,
    base: { service: "cloudhsm-webhook" },
    redact: {
      paths: ["req.headers.authorization", "object", "request.object"],
      censor: "[redacted]",
    },
  };
}

/** Bytes of log lines that the server collects before it writes them to stdout. */
export const SERVER_LOG_BUFFER_BYTES = 4096;
/** Maximum time in milliseconds that a line waits in that buffer. */
export const SERVER_LOG_FLUSH_MS = 1000;

/**
 * Creates the server's logger. Every admission writes a line, and a write per line cost the
 * webhook about a tenth of its CPU time under load, so lines are collected up to
 * SERVER_LOG_BUFFER_BYTES and written together, and at least every SERVER_LOG_FLUSH_MS. pino
 * writes what is left when the process exits; a process killed with SIGKILL loses at most that
 * buffer.
 */
export function createServerLogger(level: LogLevel): PinoLogger {
  return pino(
    loggerOptions(level),
    pino.destination({
      dest: 1,
      sync: false,
      minLength: SERVER_LOG_BUFFER_BYTES,
      periodicFlush: SERVER_LOG_FLUSH_MS,
    }),
  );
}

/**
 * Limits how often one repeated message is logged: the first occurrence, then at most one line
 * per interval that carries the count of suppressed repeats.
 */
export class RepeatLimiter {
  readonly #last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Returns the number of suppressed repeats to report, or undefined when this one is muted. */
  admit(key: string): number | undefined {
    const time = this.now();
    const state = this.#last.get(key);
    if (state && time - state.at < this.intervalMs) {
      state.suppressed += 1;
      return undefined;
    }
    const suppressed = state?.suppressed ?? 0;
    // Bound the map: keys are cluster ids and error codes, but a flood of distinct ones must not grow it.
    if (!state && this.#last.size >= 1000) {
      this.#last.clear();
    }
    this.#last.set(key, { at: time, suppressed: 0 });
    return suppressed;
  }
}
