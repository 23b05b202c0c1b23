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

/**
 * Characters of log lines, bytes for ASCII lines, that the server collects before it writes them.
 * In A/B runs under load, 15 KiB batches cost about 10 µs less CPU per admission than 4 KiB ones,
 * and 62 KiB batches cost no less than 15 KiB ones. The size stays below the 16 KiB that pino's
 * destination writes at most at once.
 */
export const SERVER_LOG_BUFFER_BYTES = 15 * 1024;
/** Maximum time in milliseconds that a line waits in that buffer. */
export const SERVER_LOG_FLUSH_MS = 1000;

/**
 * Creates the server's logger. Every admission writes a line, and a write per line cost the
 * webhook about a tenth of its CPU time under load. So a LineBatcher collects lines up to
 * SERVER_LOG_BUFFER_BYTES characters and writes them together, and at least every
 * SERVER_LOG_FLUSH_MS. What is left is written when the process exits, and a process killed with
 * SIGKILL loses at most that buffer.
 */
export function createServerLogger(level: LogLevel): PinoLogger {
  const destination = pino.destination({
    dest: 1,
    sync: false,
    minLength: SERVER_LOG_BUFFER_BYTES,
  });
  return pino(
    loggerOptions(level),
    new LineBatcher(destination, SERVER_LOG_BUFFER_BYTES, SERVER_LOG_FLUSH_MS),
  );
}

/** The stream that pino.destination returns, as LineBatcher uses it. */
type Destination = Pick<
  ReturnType<typeof pino.destination>,
  "write" | "flush" | "flushSync"
>;

/** Batchers whose lines are written when the process exits. */
const openBatchers = new Set<LineBatcher>();

function flushBatchersAtExit(): void {
  for (const batcher of openBatchers) {
    batcher.flushSync();
  }
}

/**
 * A stream for pino that collects lines and passes them to a destination in batches of at least
 * `batchLength` characters, and at least every `flushMs`. With lines passed one by one, the
 * destination measured the byte length of all its pending text on every write. In a loop that
 * cost about 3 µs per line once 4 KiB were pending.
 */
export class LineBatcher {
  readonly #destination: Destination;
  readonly #batchLength: number;
  #lines: string[] = [];
  #length = 0;

  constructor(destination: Destination, batchLength: number, flushMs: number) {
    this.#destination = destination;
    this.#batchLength = batchLength;
    setInterval(() => this.flush(), flushMs).unref();
    if (openBatchers.size === 0) {
      process.once("exit", flushBatchersAtExit);
    }
    openBatchers.add(this);
  }

  write(line: string): boolean {
    this.#lines.push(line);
    this.#length += line.length;
    if (this.#length >= this.#batchLength) {
      this.#release();
    }
    return true;
  }

  /** Passes the collected lines on, and calls `callback` once the destination wrote them. */
  flush(callback?: (error?: Error) => void): void {
    this.#release();
    this.#destination.flush(callback);
  }

  /** Writes the destination's pending text and the collected lines before returning. */
  flushSync(): void {
    // NOTE: a batch that the destination is writing asynchronously, for example to a blocked
    // stdout, is not written again here, so an exit at that moment loses that batch.
    // The destination is emptied first. It then has less than its minimum write length after it
    // takes the lines, so it starts no asynchronous write that the exit could cut short.
    this.#destination.flushSync();
    this.#release();
    this.#destination.flushSync();
  }

  #release(): void {
    if (this.#lines.length === 0) {
      return;
    }
    const text = this.#lines.join("");
    this.#lines = [];
    this.#length = 0;
    this.#destination.write(text);
  }
}

/** Characters of a RepeatLimiter key that tell keys apart. */
export const MAX_REPEAT_KEY_LENGTH = 512;

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

  /**
   * Returns the number of suppressed repeats to report, or undefined when this one is muted.
   * Keys that share their first MAX_REPEAT_KEY_LENGTH characters count as one.
   */
  admit(fullKey: string): number | undefined {
    // Keys contain request values such as a namespace, which a request sent before validation can
    // make megabytes long, and up to 1,000 keys are kept. The prefix is copied, because V8 keeps
    // the whole string alive behind a slice.
    const key =
      fullKey.length > MAX_REPEAT_KEY_LENGTH
        ? Buffer.from(fullKey.slice(0, MAX_REPEAT_KEY_LENGTH)).toString()
        : fullKey;
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
