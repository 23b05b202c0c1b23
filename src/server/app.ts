import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";
import Fastify, { LogController, type FastifyError } from "fastify";
import type { Logger as PinoLogger } from "pino";
import type { AdmissionHandler, HandlerResult } from "../admission/handler.js";
import {
  InvalidReviewError,
  deny,
  parseAdmissionReview,
  reviewResponseText,
  type AdmissionReview,
} from "../admission/review.js";
import { podDisplayName } from "../injection/pod.js";
import { RepeatLimiter } from "../log.js";
import { MIN_TLS_VERSION, type KeyPair } from "./tls.js";

/**
 * Largest accepted request body. The API server limits a request to 3 MiB, and an
 * AdmissionReview wraps the object with its metadata, so 6 MiB leaves room for the largest pod.
 */
export const BODY_LIMIT_BYTES = 6 * 1024 * 1024;

/** Readiness as /readyz reports it. */
export interface ReadinessState {
  /** True once the default cluster's HSM list was fetched. */
  ready(): boolean;
  /** Set on SIGTERM, so the Service stops routing new requests here. */
  draining: boolean;
}

/** Hooks for metrics; each is optional so tests can build a server without them. */
export interface AdmissionObserver {
  admission?(result: HandlerResult | undefined, seconds: number): void;
  badRequest?(statusCode: number): void;
}

export interface AppOptions {
  readonly handler: AdmissionHandler;
  readonly tls: KeyPair;
  readonly readiness: ReadinessState;
  readonly logger: PinoLogger;
  readonly observer?: AdmissionObserver;
}

/**
 * Builds the HTTPS server: POST /mutate for AdmissionReviews, GET /healthz for liveness and
 * GET /readyz for readiness. There is no plaintext listener for /mutate.
 */
export function buildApp(options: AppOptions) {
  const app = Fastify({
    https: {
      cert: options.tls.cert,
      key: options.tls.key,
      minVersion: MIN_TLS_VERSION,
    },
    loggerInstance: options.logger,
    // Fastify would give every request a child logger that binds a request id. The decision
    // line carries the admission uid instead. Child loggers, fastify's and one for the uid, cost
    // about 25 µs per admission in a loop, so requests log through the server's logger.
    childLoggerFactory: (logger) => logger,
    bodyLimit: BODY_LIMIT_BYTES,
    // One decision line per admission replaces fastify's request and response lines.
    logController: new LogController({ disableRequestLogging: true }),
    // Requests that arrive on kept-alive connections during shutdown are still served, so an
    // API server that has not yet dropped the endpoint loses none.
    return503OnClosing: false,
    // Annotation and env keys such as "__proto__" are data here. JSON.parse stores them as own
    // properties, and the code reads them only through own-property checks.
    onProtoPoisoning: "ignore",
    onConstructorPoisoning: "ignore",
    // kube-apiserver gives up on a webhook after at most 30 seconds, so a request still unread
    // by then only ties up a connection and up to BODY_LIMIT_BYTES of buffered body.
    requestTimeout: REQUEST_TIMEOUT_MS,
    clientErrorHandler: answerClientError,
  });
  const { observer } = options;
  // Errors that a client can repeat on every request are logged at most once a minute per
  // cause, with the count of suppressed repeats. The metrics still count every malformed
  // request, and every admission still gets its decision line.
  const repeats = new RepeatLimiter(60_000);

  // During shutdown, each response closes its kept-alive connection, so the server can finish
  // once the requests in flight are done.
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  // A callback hook, because an async one costs a promise on every request.
  app.addHook("onSend", (_request, reply, payload, done) => {
    if (closing) {
      void reply.header("connection", "close");
    }
    done(null, payload);
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const statusCode = clientErrorStatus(error);
    if (statusCode === undefined) {
      const suppressed = repeats.admit(`failed|${error.message}`);
      if (suppressed !== undefined) {
        request.log.error(
          {
            err: error.message,
            url: request.url,
            suppressedRepeats: suppressed,
          },
          "request failed",
        );
      }
      void reply.code(500).send({
        error: "Internal Server Error",
        message: "internal error; see the webhook logs",
      });
      return;
    }
    observer?.badRequest?.(statusCode);
    // Keyed by the error code, because parser messages differ in positions and values.
    const suppressed = repeats.admit(
      `malformed|${statusCode}|${error.code ?? error.name}`,
    );
    if (suppressed !== undefined) {
      request.log.warn(
        {
          statusCode,
          err: error.message,
          url: request.url,
          suppressedRepeats: suppressed,
        },
        "rejected a malformed request",
      );
    }
    void reply
      .code(statusCode)
      .send({ error: statusText(statusCode), message: error.message });
  });

  app.get("/healthz", async () => ({ status: "ok" }));

  app.get("/readyz", async (_request, reply) => {
    if (options.readiness.draining) {
      return reply.code(503).send({ status: "draining" });
    }
    if (!options.readiness.ready()) {
      return reply.code(503).send({ status: "waiting for the first HSM list" });
    }
    return { status: "ready" };
  });

  app.post("/mutate", async (request, reply) => {
    const started = performance.now();
    const review: AdmissionReview = parseAdmissionReview(request.body);
    const { request: admission } = review;
    const uid = shorten(admission.uid);

    let result: HandlerResult | undefined;
    let response;
    try {
      result = await options.handler.handle(admission);
      response = result.response;
    } catch (error) {
      // A fault in the webhook must still produce a response the API server understands.
      const message = (error as Error).message;
      const suppressed = repeats.admit(`internal|${message}`);
      if (suppressed !== undefined) {
        request.log.error(
          { uid, err: message, suppressedRepeats: suppressed },
          "admission failed with an internal error",
        );
      }
      response = deny(
        admission.uid,
        "internal error in cloudhsm-webhook; see its logs",
        500,
      );
    }
    const seconds = (performance.now() - started) / 1000;
    observer?.admission?.(result, seconds);
    request.log.info(
      {
        uid,
        namespace:
          admission.namespace === undefined
            ? undefined
            : shorten(admission.namespace),
        pod: podDisplayName(admission.object),
        operation: admission.operation,
        // Only dry runs carry the field, so most lines do not repeat false.
        dryRun: admission.dryRun ? true : undefined,
        decision: result?.outcome ?? "error",
        reason: result?.reason,
        clusterId: result?.clusterId,
        ipCount: result?.ipCount,
        durationMs: Math.round(seconds * 1e6) / 1e3,
      },
      "admission decision",
    );
    return reply
      .type(JSON_CONTENT_TYPE)
      .send(reviewResponseText(review.apiVersion, response));
  });

  return app;
}

// The content type that fastify gives a serialized object, set here for text serialized by hand.
const JSON_CONTENT_TYPE = "application/json; charset=utf-8";

/** Maps parser and validation errors to their 4xx status; undefined means a server fault. */
function clientErrorStatus(error: FastifyError): number | undefined {
  if (error instanceof InvalidReviewError) {
    return 400;
  }
  const status = error.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    return status;
  }
  return undefined;
}

// The API server sends a UUID and an existing namespace. Only a client that reaches the
// Service directly can send longer values, and those must not bloat every log line.
const MAX_LOGGED_ID_LENGTH = 253;

function shorten(value: string): string {
  return value.length > MAX_LOGGED_ID_LENGTH
    ? `${value.slice(0, MAX_LOGGED_ID_LENGTH)}...`
    : value;
}

const CLIENT_ERROR_STATUS: Readonly<Record<string, number>> = {
  HPE_HEADER_OVERFLOW: 431,
  ERR_HTTP_REQUEST_TIMEOUT: 408,
};

/** Time limit for receiving one whole request, headers and body. */
export const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Responds to a request that Node's HTTP parser rejected, before fastify gets it, with a status and
 * a message that names the parser error, then closes the connection.
 */
function answerClientError(error: Error, socket: Duplex): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const statusCode =
    CLIENT_ERROR_STATUS[(error as NodeJS.ErrnoException).code ?? ""] ?? 400;
  const body = JSON.stringify({
    error: statusText(statusCode),
    message: `malformed HTTP request: ${error.message}`,
  });
  socket.end(
    `HTTP/1.1 ${statusCode} ${statusText(statusCode)}\r\n` +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      "Connection: close\r\n\r\n" +
      body,
  );
}

function statusText(statusCode: number): string {
  const texts: Record<number, string> = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
  };
  return texts[statusCode] ?? "Client Error";
}

export type WebhookApp = ReturnType<typeof buildApp>;
