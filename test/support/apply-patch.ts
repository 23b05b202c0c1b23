import { applyPatch, type Operation } from "rfc6902";

const ALLOWED_MEMBERS: Record<string, readonly string[]> = {
  add: ["op", "path", "value"],
  remove: ["op", "path"],
  replace: ["op", "path", "value"],
  move: ["op", "from", "path"],
  copy: ["op", "from", "path"],
  test: ["op", "path", "value"],
};

/**
 * Applies a JSONPatch with rfc6902, an implementation independent of the diff that produced it,
 * and fails on the first operation that RFC 6902 does not allow on this document. Returns a new
 * document and leaves the input untouched.
 *
 * rfc6902 reports success for an operation on a "__proto__" key but does not write the key, so
 * a patch that touches one is rejected here rather than checked wrongly.
 */
export function applyStrict<T>(document: T, patch: unknown): T {
  if (!Array.isArray(patch)) {
    throw new Error(`a JSONPatch must be an array, got ${typeof patch}`);
  }
  patch.forEach((operation, index) => {
    const allowed = ALLOWED_MEMBERS[(operation as { op?: string }).op ?? ""];
    if (!allowed) {
      throw new Error(
        `operation ${index} has an invalid op: ${JSON.stringify(operation)}`,
      );
    }
    const extra = Object.keys(operation as object).filter(
      (key) => !allowed.includes(key),
    );
    if (extra.length > 0) {
      throw new Error(
        `operation ${index} has members RFC 6902 does not define: ${extra.join(", ")}`,
      );
    }
  });
  patch.forEach((operation, index) => {
    const { path, value } = operation as { path?: unknown; value?: unknown };
    if (
      (typeof path === "string" && path.split("/").includes("__proto__")) ||
      hasProtoKey(value)
    ) {
      throw new Error(
        `operation ${index} touches a "__proto__" key, which rfc6902 cannot apply`,
      );
    }
  });
  const copy = JSON.parse(JSON.stringify(document)) as T;
  const results = applyPatch(copy, patch as Operation[]);
  results.forEach((result, index) => {
    if (result !== null) {
      throw new Error(
        `operation ${index} ${JSON.stringify(patch[index])} failed: ${result.name}: ${result.message}`,
      );
    }
  });
  return copy;
}

function hasProtoKey(value: unknown): boolean {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  if (Object.prototype.hasOwnProperty.call(value, "__proto__")) {
    return true;
  }
  return Object.values(value).some(hasProtoKey);
}

/** Decodes the base64 JSONPatch of an AdmissionResponse. */
export function decodePatch(response: {
  patch?: string;
  patchType?: string;
}): unknown[] {
  if (response.patch === undefined) {
    return [];
  }
  if (response.patchType !== "JSONPatch") {
    throw new Error(
      `patchType is ${String(response.patchType)}, expected JSONPatch`,
    );
  }
  return JSON.parse(
    Buffer.from(response.patch, "base64").toString("utf8"),
  ) as unknown[];
}
