import { isObject, ownString, type JsonObject } from "../injection/pod.js";
import {
  serializePatch,
  type PatchOperation,
  type PatchText,
  encodeBase64,
} from "../injection/patch.js";

/** AdmissionReview versions the webhook accepts and responds in. */
export const ADMISSION_VERSIONS = [
  "admission.k8s.io/v1",
  "admission.k8s.io/v1beta1",
] as const;
export type AdmissionVersion = (typeof ADMISSION_VERSIONS)[number];

/** The fields of an AdmissionRequest that the webhook reads. */
export interface AdmissionRequest {
  readonly uid: string;
  readonly kind?: { group?: string; version?: string; kind?: string };
  readonly resource?: { group?: string; version?: string; resource?: string };
  readonly subResource?: string;
  readonly operation?: string;
  readonly namespace?: string;
  readonly name?: string;
  readonly dryRun?: boolean;
  /** The pod as the API server sent it; kept as raw JSON so unknown fields survive. */
  readonly object: unknown;
}

export interface AdmissionReview {
  readonly apiVersion: AdmissionVersion;
  readonly request: AdmissionRequest;
}

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  patchType?: "JSONPatch";
  patch?: string;
  warnings?: string[];
  status?: { code: number; message: string; reason?: string };
}

/** A request body that is not an AdmissionReview the webhook can handle; maps to HTTP 400. */
export class InvalidReviewError extends Error {
  override readonly name = "InvalidReviewError";
}

/** Checks the envelope of an AdmissionReview and returns its typed view. The object stays raw. */
export function parseAdmissionReview(body: unknown): AdmissionReview {
  if (!isObject(body)) {
    throw new InvalidReviewError(
      "request body must be a JSON object holding an AdmissionReview",
    );
  }
  const apiVersion = ownString(body, "apiVersion");
  if (!ADMISSION_VERSIONS.includes(apiVersion as AdmissionVersion)) {
    throw new InvalidReviewError(
      `unsupported apiVersion ${quoteValue(body.apiVersion)}: expected ${ADMISSION_VERSIONS.join(" or ")}`,
    );
  }
  if (ownString(body, "kind") !== "AdmissionReview") {
    throw new InvalidReviewError(
      `unsupported kind ${quoteValue(body.kind)}: expected AdmissionReview`,
    );
  }
  const request = Object.prototype.hasOwnProperty.call(body, "request")
    ? body.request
    : undefined;
  if (!isObject(request)) {
    throw new InvalidReviewError("AdmissionReview has no request object");
  }
  const uid = ownString(request, "uid");
  if (!uid) {
    throw new InvalidReviewError("AdmissionReview request has no uid");
  }
  return {
    apiVersion: apiVersion as AdmissionVersion,
    request: {
      uid,
      kind: groupVersionKind(request.kind, "kind"),
      resource: groupVersionKind(request.resource, "resource"),
      subResource: ownString(request, "subResource"),
      operation: ownString(request, "operation"),
      namespace: ownString(request, "namespace"),
      name: ownString(request, "name"),
      dryRun: request.dryRun === true,
      object: Object.prototype.hasOwnProperty.call(request, "object")
        ? request.object
        : undefined,
    },
  };
}

// Values quoted in error messages are cut to this many characters, because the message is sent
// back and logged, and the body that carries the value may be 6 MiB long.
const MAX_QUOTED_LENGTH = 100;

/**
 * Renders a client-supplied value for an error message: scalars as shortened JSON, objects and
 * lists by their type only. JSON.stringify recurses, so a list nested 10,000 levels deep would
 * overflow the stack.
 */
function quoteValue(value: unknown): string {
  if (typeof value === "object" && value !== null) {
    return Array.isArray(value) ? "(a list)" : "(an object)";
  }
  const text = JSON.stringify(value ?? null);
  return text.length > MAX_QUOTED_LENGTH
    ? `${text.slice(0, MAX_QUOTED_LENGTH)}... (${text.length} characters)`
    : text;
}

function groupVersionKind(
  value: unknown,
  last: "kind" | "resource",
): Record<string, string> | undefined {
  if (!isObject(value)) {
    return undefined;
  }
  const result: Record<string, string> = {};
  for (const key of ["group", "version", last]) {
    const field = ownString(value, key);
    if (field !== undefined) {
      result[key] = field;
    }
  }
  return result;
}

/** Admits the object unchanged. */
export function allow(
  uid: string,
  warnings: readonly string[] = [],
): AdmissionResponse {
  return withWarnings({ uid, allowed: true }, warnings);
}

/** Admits the object with a JSONPatch; an empty patch admits it unchanged. */
export function allowWithPatch(
  uid: string,
  patch: readonly PatchOperation[],
  warnings: readonly string[] = [],
): AdmissionResponse {
  return allowWithPatchText(uid, serializePatch(patch), warnings);
}

/** Admits the object with a patch already written as JSON text, as diffPodsToJson writes it. */
export function allowWithPatchText(
  uid: string,
  patch: PatchText,
  warnings: readonly string[] = [],
): AdmissionResponse {
  if (patch.length === 0) {
    return allow(uid, warnings);
  }
  const response: AdmissionResponse = {
    uid,
    allowed: true,
    patchType: "JSONPatch",
    patch: patch.base64 ?? encodeBase64(patch.json, patch.ascii),
  };
  return withWarnings(response, warnings);
}

/**
 * Rejects the object. The message reaches the user through kubectl or the controller's events,
 * so it names the value at fault and what to do.
 */
export function deny(
  uid: string,
  message: string,
  code = 403,
  warnings: readonly string[] = [],
): AdmissionResponse {
  return withWarnings(
    { uid, allowed: false, status: { code, message } },
    warnings,
  );
}

/** Wraps a response in an AdmissionReview of the request's version, as the API server requires. */
export function reviewResponse(
  apiVersion: AdmissionVersion,
  response: AdmissionResponse,
): JsonObject {
  return { apiVersion, kind: "AdmissionReview", response };
}

/**
 * Serializes reviewResponse(apiVersion, response) as JSON text. The base64 patch is the longest
 * part of a response and needs no escaping, and JSON.stringify on Node 20 spends several
 * microseconds scanning it, so the text is put together field by field.
 */
export function reviewResponseText(
  apiVersion: AdmissionVersion,
  response: AdmissionResponse,
): string {
  let text =
    `{"apiVersion":${JSON.stringify(apiVersion)},"kind":"AdmissionReview",` +
    `"response":{"uid":${JSON.stringify(response.uid)},"allowed":${response.allowed}`;
  if (response.patchType !== undefined && response.patch !== undefined) {
    // Only allowWithPatchText sets a patch, and it sets base64 text.
    text += `,"patchType":"${response.patchType}","patch":"${response.patch}"`;
  }
  if (response.status !== undefined) {
    text += `,"status":${JSON.stringify(response.status)}`;
  }
  if (response.warnings !== undefined) {
    text += `,"warnings":${JSON.stringify(response.warnings)}`;
  }
  return `${text}}}`;
}

// The API server truncates long warnings; keep each one short and their number bounded.
const MAX_WARNINGS = 20;
const MAX_WARNING_LENGTH = 240;

function withWarnings(
  response: AdmissionResponse,
  warnings: readonly string[],
): AdmissionResponse {
  if (warnings.length > 0) {
    response.warnings = warnings.slice(0, MAX_WARNINGS).map(shortenWarning);
  }
  return response;
}

/** Cuts a warning to MAX_WARNING_LENGTH characters, never between the halves of a surrogate pair. */
function shortenWarning(warning: string): string {
  if (warning.length <= MAX_WARNING_LENGTH) {
    return warning;
  }
  let end = MAX_WARNING_LENGTH - 3;
  const last = warning.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) {
    end -= 1;
  }
  return `${warning.slice(0, end)}...`;
}
