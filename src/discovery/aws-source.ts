import { performance } from "node:perf_hooks";

import {
  CloudHSMV2Client,
  CloudHSMV2ServiceException,
  DescribeClustersCommand,
  type CloudHSMV2ClientConfig,
  type Cluster,
} from "@aws-sdk/client-cloudhsm-v2";
import { NodeHttpHandler } from "@aws-sdk/node-http-handler";
import type {
  RetryErrorInfo,
  RetryStrategyV2,
  RetryToken,
} from "@aws-sdk/types";

import {
  ClusterNotFoundError,
  DiscoveryError,
  type ClusterSnapshot,
  type Hsm,
  type HsmSource,
} from "./types.js";

export interface AwsHsmSourceOptions {
  /**
   * Endpoint URL that replaces the regional CloudHSM endpoint, such as an interface VPC endpoint
   * or a test server. Requests are still signed for the region passed to `describe`.
   */
  endpoint?: string;
  /** Deadline in milliseconds for one `describe` call, covering every page, retry and backoff. */
  timeoutMs: number;
  /** Maximum HTTP attempts per DescribeClusters page, counting the first. Defaults to 3. */
  maxAttempts?: number;
  /** Maximum DescribeClusters pages per `describe` call. Defaults to 100. */
  maxPages?: number;
  /** Static credentials or a provider. Leave unset in production to use the SDK's default chain. */
  credentials?: CloudHSMV2ClientConfig["credentials"];
  /**
   * Called once per `describe` with "success" or the DiscoveryError code, and the duration in
   * milliseconds. An exception thrown here is reported as a process warning and otherwise ignored.
   */
  onCall?: (outcome: string, durationMs: number) => void;
}

const DEFAULT_MAX_ATTEMPTS = 3;
const DEFAULT_MAX_PAGES = 100;
const SUCCESS_OUTCOME = "success";
const MAX_CAUSE_LENGTH = 300;
// setTimeout fires at once for larger delays.
const MAX_TIMER_DELAY_MS = 2_147_483_647;

// Backoff bases and cap of the SDK's standard retry mode (@aws-sdk/util-retry 3.329).
const TRANSIENT_DELAY_BASE_MS = 100;
const THROTTLING_DELAY_BASE_MS = 500;
const MAX_RETRY_DELAY_MS = 20_000;

// Regions as AWS names them (us-east-1, us-gov-west-1, cn-north-1). The region becomes part of
// the endpoint host name, so anything else is rejected before a request is signed.
const REGION_PATTERN = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;

interface CallContext {
  signal: AbortSignal;
  deadline: number;
}

/**
 * Retries throttling and transient errors with exponential backoff and full jitter, like the
 * SDK's standard mode, and makes at most `maxAttempts` attempts in total. The SDK's own
 * StandardRetryStrategy (3.329) makes `maxAttempts + 1`. This strategy also gives up at once when
 * the call was aborted or when the backoff would end after the call's deadline, so the caller
 * gets the last AWS error rather than a timeout.
 */
class DeadlineAwareRetryStrategy implements RetryStrategyV2 {
  constructor(
    private readonly maxAttempts: number,
    private readonly call: CallContext,
  ) {}

  async acquireInitialRetryToken(): Promise<RetryToken> {
    return retryToken(0, 0);
  }

  async refreshRetryTokenForRetry(
    token: RetryToken,
    errorInfo: RetryErrorInfo,
  ): Promise<RetryToken> {
    const retries = token.getRetryCount();
    const retryable =
      errorInfo.errorType === "THROTTLING" ||
      errorInfo.errorType === "TRANSIENT";
    if (!retryable || retries + 1 >= this.maxAttempts) {
      throw new Error("retry not allowed");
    }

    const base =
      errorInfo.errorType === "THROTTLING"
        ? THROTTLING_DELAY_BASE_MS
        : TRANSIENT_DELAY_BASE_MS;
    let delay =
      Math.random() * Math.min(MAX_RETRY_DELAY_MS, base * 2 ** retries);
    if (errorInfo.retryAfterHint) {
      delay = Math.max(delay, errorInfo.retryAfterHint.getTime() - Date.now());
    }
    delay = Math.floor(delay);

    const { call } = this;
    if (call.signal.aborted || performance.now() + delay >= call.deadline) {
      throw new Error("retry would pass the deadline");
    }
    return retryToken(retries + 1, delay);
  }

  recordSuccess(): void {}
}

function retryToken(retryCount: number, delayMs: number): RetryToken {
  return { getRetryCount: () => retryCount, getRetryDelay: () => delayMs };
}

/**
 * Fetches cluster descriptions from the CloudHSM v2 API with DescribeClusters.
 *
 * Each call sends its requests through an SDK client of its own, whose retry strategy is built
 * with the call's deadline and abort signal. The clients of one region share a connection pool
 * and a credential provider, which a base client per region keeps from its first use. The call
 * is not found through AsyncLocalStorage, because on Node 20 that turns on promise hooks for
 * the whole process, and every admission would pay for them.
 *
 * The SDK reads AWS_MAX_ATTEMPTS and AWS_RETRY_MODE only for its built-in strategy, which this
 * source replaces, so `maxAttempts` is the only retry setting.
 */
export class AwsHsmSource implements HsmSource {
  private readonly clients = new Map<string, CloudHSMV2Client>();
  private readonly destroyed = new AbortController();
  private readonly maxAttempts: number;
  private readonly timeoutMs: number;
  private readonly maxPages: number;

  constructor(private readonly options: AwsHsmSourceOptions) {
    this.timeoutMs = requirePositiveInteger(
      "timeoutMs",
      options.timeoutMs,
      MAX_TIMER_DELAY_MS,
    );
    this.maxPages = requirePositiveInteger(
      "maxPages",
      options.maxPages ?? DEFAULT_MAX_PAGES,
    );
    this.maxAttempts = requirePositiveInteger(
      "maxAttempts",
      options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    );
    if (options.endpoint !== undefined) {
      parseEndpoint(options.endpoint);
    }
  }

  async describe(
    clusterId: string,
    region: string,
    signal?: AbortSignal,
  ): Promise<ClusterSnapshot> {
    const started = performance.now();
    try {
      const snapshot = await this.describeWithDeadline(
        clusterId,
        region,
        signal,
      );
      this.reportCall(SUCCESS_OUTCOME, started);
      return snapshot;
    } catch (error) {
      const code =
        error instanceof DiscoveryError ? error.code : "UnknownError";
      this.reportCall(code, started);
      throw error;
    }
  }

  /** Closes every SDK client and rejects the calls still in flight with code "Destroyed". */
  destroy(): void {
    this.destroyed.abort();
    for (const client of this.clients.values()) {
      client.destroy();
    }
    this.clients.clear();
  }

  private async describeWithDeadline(
    clusterId: string,
    region: string,
    callerSignal: AbortSignal | undefined,
  ): Promise<ClusterSnapshot> {
    if (!REGION_PATTERN.test(region)) {
      throw new DiscoveryError(
        `DescribeClusters for ${clusterId} was not sent because the region "${region}" is invalid. ` +
          "Use an AWS region name such as us-east-1.",
        "InvalidRegion",
      );
    }

    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.timeoutMs);
    const sources = [deadline.signal, this.destroyed.signal];
    if (callerSignal) sources.push(callerSignal);
    const signal = AbortSignal.any(sources);
    const context: CallContext = {
      signal,
      deadline: performance.now() + this.timeoutMs,
    };

    try {
      if (signal.aborted) throw signal.reason;
      const cluster = await rejectOnAbort(
        this.findCluster(clusterId, region, context),
        signal,
      );
      if (!cluster) {
        throw new ClusterNotFoundError(clusterId, region);
      }
      return toSnapshot(cluster, clusterId, region);
    } catch (error) {
      if (error instanceof DiscoveryError) throw error;
      if (signal.aborted) {
        throw this.abortError(clusterId, region, signal, callerSignal);
      }
      throw toDiscoveryError(
        error,
        clusterId,
        region,
        this.endpointDescription(region),
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** Pages through DescribeClusters until it finds the cluster or reaches the last page. */
  private async findCluster(
    clusterId: string,
    region: string,
    call: CallContext,
  ): Promise<Cluster | undefined> {
    const { signal } = call;
    const client = this.clientFor(region, call);
    let nextToken: string | undefined;
    for (let page = 1; page <= this.maxPages; page++) {
      const output = await client.send(
        new DescribeClustersCommand({
          Filters: { clusterIds: [clusterId] },
          NextToken: nextToken,
        }),
        { abortSignal: signal },
      );
      // Cluster IDs are unique, so later pages cannot hold another match.
      const cluster = output.Clusters?.find(
        (candidate) => candidate.ClusterId === clusterId,
      );
      if (cluster) return cluster;
      nextToken = output.NextToken;
      if (!nextToken) return undefined;
    }
    throw new DiscoveryError(
      `DescribeClusters for ${clusterId} in ${region} still returned a NextToken after ` +
        `${this.maxPages} pages. The endpoint may be returning the same page again. ` +
        `Check that ${this.endpointDescription(region)} is the CloudHSM v2 API.`,
      "PaginationLimitExceeded",
    );
  }

  /** Returns a client for one call, on the shared connections of the region's base client. */
  private clientFor(region: string, call: CallContext): CloudHSMV2Client {
    if (this.destroyed.signal.aborted) {
      // Reported by describeWithDeadline as a "Destroyed" abort.
      throw this.destroyed.signal.reason;
    }
    let base = this.clients.get(region);
    if (!base) {
      base = new CloudHSMV2Client({
        region,
        endpoint: this.options.endpoint,
        credentials: this.options.credentials,
        // Per-attempt limits. The deadline in describeWithDeadline bounds the whole call.
        requestHandler: new NodeHttpHandler({
          connectionTimeout: this.timeoutMs,
          requestTimeout: this.timeoutMs,
        }),
      });
      this.clients.set(region, base);
    }
    // Not destroyed after the call: destroy() would close the shared request handler.
    return new CloudHSMV2Client({
      region,
      endpoint: this.options.endpoint,
      // The base client's provider caches credentials until they expire.
      credentials: base.config.credentials,
      requestHandler: base.config.requestHandler,
      retryStrategy: new DeadlineAwareRetryStrategy(this.maxAttempts, call),
      // Only fills the amz-sdk-request header, so that it matches the strategy.
      maxAttempts: this.maxAttempts,
    });
  }

  private abortError(
    clusterId: string,
    region: string,
    signal: AbortSignal,
    callerSignal: AbortSignal | undefined,
  ): DiscoveryError {
    const call = `DescribeClusters for ${clusterId} in ${region}`;
    // AbortSignal.any takes the reason of the first source that aborted, so the
    // reason identifies that source.
    if (signal.reason === this.destroyed.signal.reason) {
      return new DiscoveryError(
        `${call} was aborted because the source was destroyed.`,
        "Destroyed",
      );
    }
    if (callerSignal && signal.reason === callerSignal.reason) {
      return new DiscoveryError(
        `${call} was aborted by the caller.`,
        "AbortError",
        {
          cause: callerSignal.reason,
        },
      );
    }
    return new DiscoveryError(
      `${call} timed out after ${this.timeoutMs} ms, including retries. ` +
        `Check that the webhook can reach ${this.endpointDescription(region)} ` +
        "through its VPC endpoint, proxy, security groups and network policies.",
      "TimeoutError",
    );
  }

  private endpointDescription(region: string): string {
    return this.options.endpoint ?? `the CloudHSM v2 endpoint of ${region}`;
  }

  private reportCall(outcome: string, started: number): void {
    if (!this.options.onCall) return;
    try {
      this.options.onCall(outcome, performance.now() - started);
    } catch (error) {
      // A broken metrics hook must not turn a fetched cluster into a failure.
      process.emitWarning(
        `AwsHsmSource onCall hook threw: ${String(error)}`,
        "AwsHsmSourceWarning",
      );
    }
  }
}

function requirePositiveInteger(
  name: string,
  value: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new RangeError(
      `AwsHsmSource option ${name} must be an integer from 1 to ${max}, got ${value}`,
    );
  }
  return value;
}

function parseEndpoint(endpoint: string): URL {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new RangeError(
      `AwsHsmSource option endpoint is not a valid URL: ${endpoint}`,
    );
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new RangeError(
      `AwsHsmSource option endpoint must use http or https, got ${endpoint}`,
    );
  }
  return url;
}

/** Settles with `work`, or rejects with the signal's reason as soon as the signal aborts. */
async function rejectOnAbort<T>(
  work: Promise<T>,
  signal: AbortSignal,
): Promise<T> {
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    // The race subscribes to `work`, so its rejection after an abort is handled.
    return await Promise.race([work, aborted]);
  } finally {
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

function toSnapshot(
  cluster: Cluster,
  clusterId: string,
  region: string,
): ClusterSnapshot {
  const hsms: Hsm[] = [];
  for (const wire of cluster.Hsms ?? []) {
    if (typeof wire.HsmId !== "string" || wire.HsmId === "") {
      throw new DiscoveryError(
        `DescribeClusters for ${clusterId} in ${region} returned an HSM without an HsmId. ` +
          "Check that the endpoint is the CloudHSM v2 API.",
        "MalformedResponse",
      );
    }
    // The model marks State optional. A missing state must never read as ACTIVE.
    const hsm: { -readonly [K in keyof Hsm]: Hsm[K] } = {
      hsmId: wire.HsmId,
      state: typeof wire.State === "string" ? wire.State : "UNKNOWN",
    };
    if (typeof wire.AvailabilityZone === "string")
      hsm.availabilityZone = wire.AvailabilityZone;
    if (typeof wire.EniIp === "string") hsm.eniIp = wire.EniIp;
    hsms.push(hsm);
  }

  const snapshot: ClusterSnapshot = {
    clusterId,
    region,
    hsms,
    fetchedAt: Date.now(),
  };
  return typeof cluster.State === "string"
    ? { ...snapshot, clusterState: cluster.State }
    : snapshot;
}

const ACCESS_HINT =
  'Check that the webhook\'s IAM role allows cloudhsm:DescribeClusters on resource "*", ' +
  "because the action supports no resource-level permissions.";
const CREDENTIALS_HINT =
  "Check the webhook's AWS credentials: the IRSA role annotation on its ServiceAccount " +
  "or its EKS Pod Identity association.";
const SERVICE_HINT =
  "AWS CloudHSM failed to serve the request. This is usually transient.";

const HINTS: Record<string, string> = {
  CloudHsmAccessDeniedException: ACCESS_HINT,
  AccessDeniedException: ACCESS_HINT,
  UnrecognizedClientException: CREDENTIALS_HINT,
  InvalidClientTokenId: CREDENTIALS_HINT,
  ExpiredTokenException: CREDENTIALS_HINT,
  InvalidSignatureException: CREDENTIALS_HINT,
  MissingAuthenticationTokenException: CREDENTIALS_HINT,
  CredentialsProviderError: CREDENTIALS_HINT,
  ThrottlingException:
    "AWS throttled DescribeClusters. Increase the refresh interval, or run " +
    "fewer webhook replicas that call DescribeClusters in this account and region.",
  CloudHsmInternalFailureException: SERVICE_HINT,
  CloudHsmServiceException: SERVICE_HINT,
  CloudHsmInvalidRequestException:
    "Check the cluster ID and region in the webhook's configuration.",
};

/** An error from `client.send`, classified by where it came from. */
interface FailureCause {
  kind: "service" | "unparsable" | "network" | "other";
  code: string;
  /** One line that describes the cause. */
  detail: string;
  requestId?: string;
}

/** Maps an SDK or network error to a DiscoveryError with a stable code and an operator hint. */
function toDiscoveryError(
  error: unknown,
  clusterId: string,
  region: string,
  endpoint: string,
): DiscoveryError {
  const call = `DescribeClusters for ${clusterId} in ${region}`;
  const { kind, code, detail, requestId } = classifyFailure(error);

  let message: string;
  if (kind === "unparsable") {
    message =
      `${call} failed because the response body could not be parsed (${detail}). ` +
      `Check that ${endpoint} is the CloudHSM v2 API and not a proxy or error page.`;
  } else {
    const hint = HINTS[code] ?? fallbackHint(kind, code, endpoint);
    message = `${call} failed with ${code} (${detail}).`;
    if (hint) message += ` ${hint}`;
  }
  if (requestId) message += ` AWS request ID: ${requestId}.`;
  return new DiscoveryError(message, code, { cause: error });
}

function fallbackHint(
  kind: FailureCause["kind"],
  code: string,
  endpoint: string,
): string | undefined {
  if (kind === "network" || code === "TimeoutError") {
    return `Check that the webhook can reach ${endpoint}.`;
  }
  if (/^Http5\d\d$/.test(code)) {
    return `${endpoint} or a proxy in front of it was unavailable. This is usually transient.`;
  }
  return undefined;
}

/**
 * Classifies an error thrown by `client.send`. The SDK (3.332) throws:
 * - a CloudHSMV2ServiceException named after the AWS error type, or after the HTTP status when
 *   the response carries no error type (an empty 503 arrives named "503");
 * - an error carrying `$response` when the body does not parse, such as a SyntaxError;
 * - a Node system error for network failures. The HTTP handler renames ECONNRESET, EPIPE and
 *   ETIMEDOUT to TimeoutError but keeps the system code, which is used here.
 */
function classifyFailure(error: unknown): FailureCause {
  if (!(error instanceof Error)) {
    return {
      kind: "other",
      code: "UnknownError",
      detail: oneLine(String(error)),
    };
  }
  const detail = oneLine(error.message.split("\n")[0] ?? "") || "no message";

  if (error instanceof CloudHSMV2ServiceException) {
    const name = String(error.name);
    const { httpStatusCode, requestId } = error.$metadata;
    if (/^\d+$/.test(name)) {
      return {
        kind: "service",
        code: `Http${name}`,
        detail: `HTTP ${httpStatusCode ?? name} without an AWS error type`,
        requestId,
      };
    }
    return { kind: "service", code: name, detail, requestId };
  }

  // NOTE: SDK 3.332 does not retry these, even for a 5xx status, because the
  // deserialization error carries no HTTP status for its retry classifier.
  const response = (error as { $response?: { statusCode?: number } }).$response;
  if (response !== undefined) {
    const status = response.statusCode ?? 0;
    return {
      kind: "unparsable",
      code: status >= 300 ? `Http${status}` : "MalformedResponse",
      detail: `HTTP ${status}: ${detail}`,
    };
  }

  const systemCode = (error as { code?: unknown }).code;
  if (typeof systemCode === "string" && /^E[A-Z]+$/.test(systemCode)) {
    return { kind: "network", code: systemCode, detail };
  }
  return { kind: "other", code: error.name || "UnknownError", detail };
}

function oneLine(text: string): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > MAX_CAUSE_LENGTH
    ? `${flat.slice(0, MAX_CAUSE_LENGTH)}…`
    : flat;
}
