// A loopback stand-in for the AWS CloudHSM v2 control plane. It serves DescribeClusters over the
// same AWS JSON 1.1 protocol the SDK speaks, so tests can drive the real SDK client against it.
import { randomUUID } from "node:crypto";
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo } from "node:net";

export const JSON_1_1_CONTENT_TYPE = "application/x-amz-json-1.1";
export const DESCRIBE_CLUSTERS_TARGET = "BaldrApiService.DescribeClusters";
/** The SigV4 signing name of cloudhsmv2, which differs from its endpoint prefix. */
export const SIGNING_SERVICE = "cloudhsm";

export const HSM_STATES = [
  "CREATE_IN_PROGRESS",
  "ACTIVE",
  "DEGRADED",
  "DELETE_IN_PROGRESS",
  "DELETED",
] as const;
export type FakeHsmState = (typeof HSM_STATES)[number];

/** An HSM in the wire shape of the DescribeClusters response. */
export interface WireHsm {
  HsmId: string;
  ClusterId?: string;
  AvailabilityZone?: string;
  SubnetId?: string;
  EniId?: string;
  EniIp?: string;
  State?: string;
  StateMessage?: string;
}

/** A cluster in the wire shape of the DescribeClusters response. */
export interface WireCluster {
  ClusterId: string;
  State?: string;
  StateMessage?: string;
  HsmType?: string;
  VpcId?: string;
  SecurityGroup?: string;
  SubnetMapping?: Record<string, string>;
  /** Seconds since the epoch, as the service sends it. */
  CreateTimestamp?: number;
  Hsms?: WireHsm[];
}

export type FakeFaultKind =
  | "throttling"
  | "access-denied"
  | "internal-failure"
  | "service-unavailable"
  | "proxy-error-page"
  | "hang"
  | "malformed-json"
  | "empty-cluster";

/**
 * A failure mode of the fake.
 * - `throttling`: HTTP 400 ThrottlingException.
 * - `access-denied`: HTTP 400 CloudHsmAccessDeniedException.
 * - `internal-failure`: HTTP 500 CloudHsmInternalFailureException.
 * - `service-unavailable`: HTTP 503 with an empty body and no error type.
 * - `proxy-error-page`: HTTP 502 with an HTML body, as a proxy in front of the endpoint sends.
 * - `hang`: no response until `releaseHungRequests()` or `close()`.
 * - `malformed-json`: HTTP 200 with a body that is not JSON.
 * - `empty-cluster`: HTTP 200 in which every returned cluster has no HSMs.
 * - `{ kind: "delay", ms }`: the normal response, sent after `ms` milliseconds.
 * - `{ kind: "throttling", retryAfterSeconds }`: a throttle with a Retry-After
 *   header in HTTP-date form, so whole seconds only.
 */
export type FakeFault =
  | FakeFaultKind
  | { kind: "delay"; ms: number }
  | { kind: "throttling"; retryAfterSeconds: number };

/** The SigV4 credential scope parsed from the Authorization header. */
export interface CredentialScope {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
}

/** One request the fake received, including rejected requests and requests that got a fault. */
export interface RecordedRequest {
  method: string;
  path: string;
  target?: string;
  contentType?: string;
  credentialScope?: CredentialScope;
  filters?: Record<string, string[]>;
  maxResults?: number;
  nextToken?: string;
  /** The NextToken the fake returned with a page of clusters. */
  responseNextToken?: string;
  /** The HTTP status sent, or undefined while no response has been sent. */
  status?: number;
  /** The error type sent, or the fault applied. */
  outcome?: string;
}

export interface FakeCloudHsmOptions {
  clusters?: WireCluster[];
  /** The maximum page size, which caps MaxResults. Defaults to 25. */
  pageSize?: number;
  /**
   * Applies `Filters` to each page after paging over all clusters, so a page can come back empty
   * but with a NextToken. AWS list APIs behave like this when they filter after paging.
   * Defaults to false, which filters first and then pages.
   */
  filterAfterPaging?: boolean;
}

export interface FakeCloudHsm {
  /** The endpoint URL to pass to the SDK client, such as `http://127.0.0.1:41234`. */
  readonly url: string;
  /** The number of HTTP requests received, including rejected ones. */
  readonly calls: number;
  readonly requests: readonly RecordedRequest[];
  /** Replaces the clusters. Later requests see the new list, and issued NextTokens keep their offsets. */
  setClusters(clusters: WireCluster[]): void;
  /** Applies `fault` to the next `count` DescribeClusters requests, or to all of them until cleared. */
  setFault(fault: FakeFault, count?: number): void;
  clearFaults(): void;
  /** Sends the normal response to every request held by the `hang` fault. */
  releaseHungRequests(): void;
  /** Stops the server and destroys every open connection, including hung and delayed requests. */
  close(): Promise<void>;
}

const FILTER_KEYS = new Set(["clusterIds", "vpcIds", "states"]);
const MAX_RESULTS_LIMIT = 25;

interface ActiveFault {
  fault: FakeFault;
  remaining: number;
}

interface DescribeInput {
  filters: Record<string, string[]>;
  maxResults?: number;
  nextToken?: string;
}

/** Starts the fake on 127.0.0.1 with an ephemeral port. */
export async function startFakeCloudHsm(
  options: FakeCloudHsmOptions = {},
): Promise<FakeCloudHsm> {
  const pageSize = options.pageSize ?? MAX_RESULTS_LIMIT;
  if (!Number.isInteger(pageSize) || pageSize < 1) {
    throw new RangeError(
      `pageSize must be a positive integer, got ${pageSize}`,
    );
  }
  const filterAfterPaging = options.filterAfterPaging ?? false;

  let clusters = structuredClone(options.clusters ?? []);
  let activeFault: ActiveFault | undefined;
  let calls = 0;
  const requests: RecordedRequest[] = [];
  const hung = new Map<ServerResponse, () => void>();
  const delayTimers = new Set<NodeJS.Timeout>();

  function takeFault(): FakeFault | undefined {
    if (!activeFault) return undefined;
    const { fault } = activeFault;
    activeFault.remaining -= 1;
    if (activeFault.remaining <= 0) activeFault = undefined;
    return fault;
  }

  function answerPage(
    res: ServerResponse,
    record: RecordedRequest,
    input: DescribeInput,
    emptyClusters: boolean,
  ): void {
    if (res.destroyed || res.writableEnded) return;
    const page = selectPage(clusters, input, pageSize, filterAfterPaging);
    if (page.invalidToken) {
      sendError(
        res,
        record,
        400,
        "CloudHsmInvalidRequestException",
        "The NextToken is invalid.",
      );
      return;
    }
    const pageClusters = emptyClusters
      ? page.clusters.map((cluster) => ({ ...cluster, Hsms: [] }))
      : page.clusters;
    record.responseNextToken = page.nextToken;
    const body: { Clusters: WireCluster[]; NextToken?: string } = {
      Clusters: pageClusters,
    };
    if (page.nextToken !== undefined) body.NextToken = page.nextToken;
    sendJson(res, record, 200, JSON.stringify(body));
  }

  function handleDescribe(
    res: ServerResponse,
    record: RecordedRequest,
    input: DescribeInput,
  ) {
    const fault = takeFault();
    if (fault === undefined) {
      answerPage(res, record, input, false);
      return;
    }
    if (typeof fault === "object" && fault.kind === "throttling") {
      // The date form, because SDK 3.332 reads a delta-seconds Retry-After
      // as seconds since the epoch, which always lies in the past.
      const retryAt = new Date(Date.now() + fault.retryAfterSeconds * 1000);
      sendError(res, record, 400, "ThrottlingException", "Rate exceeded", {
        "retry-after": retryAt.toUTCString(),
      });
      return;
    }
    if (typeof fault === "object") {
      record.outcome = `delay ${fault.ms} ms`;
      const timer = setTimeout(() => {
        delayTimers.delete(timer);
        answerPage(res, record, input, false);
      }, fault.ms);
      delayTimers.add(timer);
      return;
    }
    record.outcome = fault;
    switch (fault) {
      case "throttling":
        sendError(res, record, 400, "ThrottlingException", "Rate exceeded");
        return;
      case "access-denied":
        sendError(
          res,
          record,
          400,
          "CloudHsmAccessDeniedException",
          "User is not authorized to perform: cloudhsm:DescribeClusters",
        );
        return;
      case "internal-failure":
        sendError(
          res,
          record,
          500,
          "CloudHsmInternalFailureException",
          "The request was rejected because of an AWS CloudHSM internal failure.",
        );
        return;
      case "service-unavailable":
        record.status = 503;
        res.writeHead(503, { "content-length": "0" });
        res.end();
        return;
      case "proxy-error-page": {
        const page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        record.status = 502;
        res.writeHead(502, {
          "content-type": "text/html",
          "content-length": Buffer.byteLength(page),
        });
        res.end(page);
        return;
      }
      case "hang":
        hung.set(res, () => answerPage(res, record, input, false));
        res.on("close", () => hung.delete(res));
        return;
      case "malformed-json":
        sendJson(res, record, 200, '{"Clusters": [{"ClusterId": ');
        return;
      case "empty-cluster":
        answerPage(res, record, input, true);
        return;
    }
  }

  function handleRequest(
    req: IncomingMessage,
    res: ServerResponse,
    rawBody: string,
  ): void {
    calls += 1;
    const record: RecordedRequest = {
      method: req.method ?? "",
      path: req.url ?? "",
      target: headerValue(req, "x-amz-target"),
      contentType: headerValue(req, "content-type"),
      credentialScope: parseCredentialScope(headerValue(req, "authorization")),
    };
    requests.push(record);

    const rejection = checkProtocol(record);
    if (rejection) {
      sendError(
        res,
        record,
        rejection.status,
        rejection.type,
        rejection.message,
      );
      return;
    }

    const parsed = parseDescribeInput(rawBody);
    if ("error" in parsed) {
      sendError(res, record, 400, parsed.errorType, parsed.error);
      return;
    }
    record.filters = parsed.filters;
    record.maxResults = parsed.maxResults;
    record.nextToken = parsed.nextToken;
    handleDescribe(res, record, parsed);
  }

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () =>
      handleRequest(req, res, Buffer.concat(chunks).toString("utf8")),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    get calls() {
      return calls;
    },
    requests,
    setClusters(next) {
      clusters = structuredClone(next);
    },
    setFault(fault, count = Number.POSITIVE_INFINITY) {
      if (!(count >= 1))
        throw new RangeError(`fault count must be at least 1, got ${count}`);
      activeFault = { fault, remaining: count };
    },
    clearFaults() {
      activeFault = undefined;
    },
    releaseHungRequests() {
      const answers = [...hung.values()];
      hung.clear();
      for (const answer of answers) answer();
    },
    async close() {
      for (const timer of delayTimers) clearTimeout(timer);
      delayTimers.clear();
      for (const res of hung.keys()) res.destroy();
      hung.clear();
      const closed = new Promise<void>((resolve) =>
        server.close(() => resolve()),
      );
      server.closeAllConnections();
      await closed;
    },
  };
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Parses `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/cloudhsm/aws4_request, ...`. */
function parseCredentialScope(
  authorization: string | undefined,
): CredentialScope | undefined {
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,/.exec(
      authorization ?? "",
    );
  if (!match) return undefined;
  const [, accessKeyId = "", date = "", region = "", service = ""] = match;
  return { accessKeyId, date, region, service };
}

// NOTE: the status codes and error types for malformed requests follow what AWS JSON services
// commonly return. The fake does not verify the SigV4 signature itself, only its scope.
function checkProtocol(
  record: RecordedRequest,
): { status: number; type: string; message: string } | undefined {
  if (record.method !== "POST" || record.path !== "/") {
    return {
      status: 404,
      type: "UnknownOperationException",
      message: `${record.method} ${record.path} is not an operation of this service.`,
    };
  }
  if (record.contentType?.split(";")[0]?.trim() !== JSON_1_1_CONTENT_TYPE) {
    return {
      status: 400,
      type: "SerializationException",
      message: `Content-Type must be ${JSON_1_1_CONTENT_TYPE}, got ${record.contentType ?? "none"}.`,
    };
  }
  if (record.target !== DESCRIBE_CLUSTERS_TARGET) {
    return {
      status: 400,
      type: "UnknownOperationException",
      message: `X-Amz-Target ${record.target ?? "(missing)"} is not supported by this fake.`,
    };
  }
  if (!record.credentialScope) {
    return {
      status: 403,
      type: "MissingAuthenticationTokenException",
      message: "Missing Authentication Token",
    };
  }
  if (record.credentialScope.service !== SIGNING_SERVICE) {
    return {
      status: 403,
      type: "InvalidSignatureException",
      message: `Credential should be scoped to correct service: '${SIGNING_SERVICE}'.`,
    };
  }
  return undefined;
}

function parseDescribeInput(
  rawBody: string,
): DescribeInput | { error: string; errorType: string } {
  let body: unknown;
  try {
    body = rawBody === "" ? {} : JSON.parse(rawBody);
  } catch {
    return {
      errorType: "SerializationException",
      error: "The request body is not valid JSON.",
    };
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return {
      errorType: "SerializationException",
      error: "The request body must be a JSON object.",
    };
  }
  const { Filters, MaxResults, NextToken } = body as Record<string, unknown>;

  const filters: Record<string, string[]> = {};
  if (Filters !== undefined) {
    if (
      typeof Filters !== "object" ||
      Filters === null ||
      Array.isArray(Filters)
    ) {
      return {
        errorType: "SerializationException",
        error: "Filters must be a map.",
      };
    }
    for (const [key, values] of Object.entries(Filters)) {
      if (!FILTER_KEYS.has(key)) {
        return {
          errorType: "CloudHsmInvalidRequestException",
          error: `Unsupported filter ${key}; use clusterIds, vpcIds or states.`,
        };
      }
      if (
        !Array.isArray(values) ||
        !values.every((value) => typeof value === "string")
      ) {
        return {
          errorType: "SerializationException",
          error: `Filter ${key} must be a string list.`,
        };
      }
      filters[key] = values;
    }
  }

  if (
    MaxResults !== undefined &&
    (!Number.isInteger(MaxResults) ||
      (MaxResults as number) < 1 ||
      (MaxResults as number) > MAX_RESULTS_LIMIT)
  ) {
    return {
      errorType: "ValidationException",
      error: `MaxResults must be an integer from 1 to ${MAX_RESULTS_LIMIT}.`,
    };
  }
  if (NextToken !== undefined && typeof NextToken !== "string") {
    return {
      errorType: "SerializationException",
      error: "NextToken must be a string.",
    };
  }
  return {
    filters,
    maxResults: MaxResults as number | undefined,
    nextToken: NextToken,
  };
}

function matchesFilters(
  cluster: WireCluster,
  filters: Record<string, string[]>,
): boolean {
  const { clusterIds, vpcIds, states } = filters;
  if (clusterIds && !clusterIds.includes(cluster.ClusterId)) return false;
  if (vpcIds && !vpcIds.includes(cluster.VpcId ?? "")) return false;
  if (states && !states.includes(cluster.State ?? "")) return false;
  return true;
}

// A NextToken encodes the offset into the paged list, so it stays valid across setClusters().
function encodeToken(offset: number): string {
  return Buffer.from(`offset:${offset}`).toString("base64url");
}

function decodeToken(token: string): number | undefined {
  const match = /^offset:(\d+)$/.exec(
    Buffer.from(token, "base64url").toString("utf8"),
  );
  return match ? Number(match[1]) : undefined;
}

function selectPage(
  all: WireCluster[],
  input: DescribeInput,
  pageSize: number,
  filterAfterPaging: boolean,
): { clusters: WireCluster[]; nextToken?: string; invalidToken?: true } {
  const offset =
    input.nextToken === undefined ? 0 : decodeToken(input.nextToken);
  if (offset === undefined) return { clusters: [], invalidToken: true };
  const size = Math.min(input.maxResults ?? pageSize, pageSize);

  const source = filterAfterPaging
    ? all
    : all.filter((cluster) => matchesFilters(cluster, input.filters));
  const slice = source.slice(offset, offset + size);
  const clusters = filterAfterPaging
    ? slice.filter((cluster) => matchesFilters(cluster, input.filters))
    : slice;
  const end = offset + size;
  return end < source.length
    ? { clusters, nextToken: encodeToken(end) }
    : { clusters };
}

function sendJson(
  res: ServerResponse,
  record: RecordedRequest,
  status: number,
  body: string,
): void {
  record.status = status;
  res.writeHead(status, {
    "content-type": JSON_1_1_CONTENT_TYPE,
    "content-length": Buffer.byteLength(body),
    "x-amzn-requestid": randomUUID(),
  });
  res.end(body);
}

// AWS JSON 1.1 services send the error type both in x-amzn-ErrorType and in the body's __type.
// The SDK (3.332) reads the header first, then `code`, then `__type`.
function sendError(
  res: ServerResponse,
  record: RecordedRequest,
  status: number,
  type: string,
  message: string,
  extraHeaders: Record<string, string> = {},
): void {
  record.outcome = type;
  record.status = status;
  const body = JSON.stringify({ __type: type, message });
  res.writeHead(status, {
    "content-type": JSON_1_1_CONTENT_TYPE,
    "content-length": Buffer.byteLength(body),
    "x-amzn-requestid": randomUUID(),
    "x-amzn-errortype": type,
    ...extraHeaders,
  });
  res.end(body);
}

let nextAddress = 10;

/** Builds an HSM in the wire shape. The ENI IP defaults to a new 10.0.0.x address on each call. */
export function buildHsm(
  hsmId: string,
  state: FakeHsmState | string = "ACTIVE",
  overrides: Partial<WireHsm> = {},
): WireHsm {
  const host = nextAddress;
  nextAddress = nextAddress >= 250 ? 10 : nextAddress + 1;
  return {
    HsmId: hsmId,
    AvailabilityZone: "us-east-1a",
    SubnetId: "subnet-0a1b2c3d4e5f60718",
    EniId: `eni-0${host.toString(16).padStart(16, "0")}`,
    EniIp: `10.0.0.${host}`,
    State: state,
    StateMessage: state === "ACTIVE" ? "HSM created." : `HSM is ${state}.`,
    ...overrides,
  };
}

/** Builds a cluster in the wire shape, with `ClusterId` set on each HSM. */
export function buildCluster(
  clusterId: string,
  hsms: WireHsm[] = [],
  overrides: Partial<WireCluster> = {},
): WireCluster {
  return {
    ClusterId: clusterId,
    State: "ACTIVE",
    HsmType: "hsm1.medium",
    VpcId: "vpc-0a1b2c3d4e5f60718",
    SecurityGroup: "sg-0a1b2c3d4e5f60718",
    SubnetMapping: { "us-east-1a": "subnet-0a1b2c3d4e5f60718" },
    CreateTimestamp: 1_700_000_000,
    Hsms: hsms.map((hsm) => ({ ...hsm, ClusterId: clusterId })),
    ...overrides,
  };
}

/** Builds one HSM in each of the five HSM states, with IDs derived from `prefix`. */
export function buildHsmInEachState(prefix = "hsm-abcdefghij"): WireHsm[] {
  const suffixes = ["a", "b", "c", "d", "e"];
  return HSM_STATES.map((state, index) =>
    buildHsm(`${prefix}${suffixes[index]}`, state),
  );
}
