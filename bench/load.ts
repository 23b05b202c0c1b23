/**
 * A closed-loop HTTPS load generator: a fixed number of workers, each with one request in flight
 * on a kept-alive connection, as kube-apiserver keeps connections to a webhook.
 */
import { Agent, request } from "node:https";
import type { LookupFunction } from "node:net";
import { performance } from "node:perf_hooks";

/** A TLS server on 127.0.0.1 and the trust settings to reach it. */
export interface LoadTarget {
  readonly port: number;
  /** PEM CA that issued the server certificate. */
  readonly ca: string;
  /** The name the certificate carries. Every name resolves to 127.0.0.1. */
  readonly serverName: string;
}

export interface LoadOptions {
  readonly path: string;
  /** Builds the body of request `index`, counting from 0. */
  readonly body: (index: number) => string;
  readonly concurrency: number;
  /** The run stops after this many requests or `maxSeconds`, whichever comes first. */
  readonly maxRequests: number;
  readonly maxSeconds: number;
  /** When set, a response of another length counts as a failure. */
  readonly expectedLength?: number;
}

export interface LoadResult {
  readonly latenciesMs: number[];
  readonly seconds: number;
  readonly failures: number;
  /** Describes the first failure, for the report. */
  readonly firstFailure?: string;
}

const loopbackLookup: LookupFunction = (_hostname, options, callback) => {
  if (typeof options === "object" && options.all) {
    (
      callback as unknown as (
        error: null,
        addresses: { address: string; family: number }[],
      ) => void
    )(null, [{ address: "127.0.0.1", family: 4 }]);
    return;
  }
  callback(null, "127.0.0.1", 4);
};

/** A keep-alive connection pool to one target. Reused across rounds, it keeps connections warm. */
export class LoadClient {
  readonly #target: LoadTarget;
  readonly #agent: Agent;

  constructor(target: LoadTarget, maxSockets: number) {
    this.#target = target;
    this.#agent = new Agent({
      keepAlive: true,
      maxSockets,
      lookup: loopbackLookup,
    });
  }

  /**
   * Sends one request, a POST when there is a body and a GET otherwise, and returns its status
   * and body. Rejects on network errors.
   */
  send(path: string, body?: string): Promise<{ status: number; body: string }> {
    const headers: Record<string, string | number> = {};
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = Buffer.byteLength(body);
    }
    return new Promise((resolve, reject) => {
      const outgoing = request(
        {
          host: this.#target.serverName,
          port: this.#target.port,
          path,
          method: body === undefined ? "GET" : "POST",
          headers,
          ca: this.#target.ca,
          servername: this.#target.serverName,
          lookup: loopbackLookup,
          agent: this.#agent,
          timeout: 30_000,
        },
        (incoming) => {
          const chunks: Buffer[] = [];
          incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
          incoming.on("end", () =>
            resolve({
              status: incoming.statusCode ?? 0,
              body: Buffer.concat(chunks).toString(),
            }),
          );
          incoming.on("error", reject);
        },
      );
      outgoing.on("timeout", () =>
        outgoing.destroy(new Error(`${path} timed out after 30 s`)),
      );
      outgoing.on("error", reject);
      outgoing.end(body);
    });
  }

  /** Runs `options.concurrency` workers until the request count or the time limit is reached. */
  async run(options: LoadOptions): Promise<LoadResult> {
    const latenciesMs: number[] = [];
    let issued = 0;
    let failures = 0;
    let firstFailure: string | undefined;
    const started = performance.now();
    const deadline = started + options.maxSeconds * 1000;

    const fail = (description: string) => {
      failures += 1;
      firstFailure ??= description;
    };
    const worker = async () => {
      while (issued < options.maxRequests && performance.now() < deadline) {
        const index = issued;
        issued += 1;
        const body = options.body(index);
        const sent = performance.now();
        try {
          const reply = await this.send(options.path, body);
          latenciesMs.push(performance.now() - sent);
          if (reply.status !== 200) {
            fail(`HTTP ${reply.status}: ${reply.body.slice(0, 200)}`);
          } else if (
            options.expectedLength !== undefined &&
            reply.body.length !== options.expectedLength
          ) {
            fail(
              `response of ${reply.body.length} characters, expected ${options.expectedLength}`,
            );
          }
        } catch (error) {
          fail(error instanceof Error ? error.message : String(error));
        }
      }
    };
    await Promise.all(
      Array.from({ length: options.concurrency }, () => worker()),
    );
    return {
      latenciesMs,
      seconds: (performance.now() - started) / 1000,
      failures,
      firstFailure,
    };
  }

  close(): void {
    this.#agent.destroy();
  }
}
