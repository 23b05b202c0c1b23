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
 * and these paths are redacted in case a caller passes a whole object by mistake.
 */
export function loggerOptions(level: LogLevel): pino.LoggerOptions {
  return {
    level,
    base: { service: "cloudhsm-webhook" },
    redact: {
      paths: [
        "req.headers.authorization",
        "*.env",
        "*.value",
        "object",
        "request.object",
      ],
      censor: "[redacted]",
    },
  };
}

/** Creates a logger for commands that run without the HTTP server. */
export function createLogger(level: LogLevel): PinoLogger {
  return pino(loggerOptions(level));
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
