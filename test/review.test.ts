import { describe, expect, it } from "vitest";

import {
  ADMISSION_VERSIONS,
  InvalidReviewError,
  allow,
  allowWithPatch,
  deny,
  parseAdmissionReview,
  reviewResponse,
  reviewResponseText,
  type AdmissionResponse,
} from "../src/admission/review.js";
import type { PatchOperation } from "../src/injection/patch.js";
import { decodePatch } from "./support/apply-patch.js";

const UID = "705ab4f5-6393-11e8-b7cc-42010a800002";

function review(
  apiVersion: string,
  request: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    apiVersion,
    kind: "AdmissionReview",
    request: {
      uid: UID,
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      operation: "CREATE",
      namespace: "shop",
      object: { apiVersion: "v1", kind: "Pod", spec: { containers: [] } },
      ...request,
    },
  };
}

/** Calls parseAdmissionReview and returns the InvalidReviewError it raises. */
function rejection(body: unknown): InvalidReviewError {
  try {
    parseAdmissionReview(body);
  } catch (error) {
    if (error instanceof InvalidReviewError) {
      return error;
    }
    throw error;
  }
  throw new Error("parseAdmissionReview accepted the body");
}

describe("parseAdmissionReview", () => {
  it.each(ADMISSION_VERSIONS)("accepts %s", (apiVersion) => {
    const parsed = parseAdmissionReview(review(apiVersion));

    expect(parsed.apiVersion).toBe(apiVersion);
    expect(parsed.request.uid).toBe(UID);
    expect(parsed.request.operation).toBe("CREATE");
    expect(parsed.request.namespace).toBe("shop");
    expect(parsed.request.kind).toEqual({
      group: "",
      version: "v1",
      kind: "Pod",
    });
    expect(parsed.request.resource).toEqual({
      group: "",
      version: "v1",
      resource: "pods",
    });
  });

  it("keeps the object raw", () => {
    const body = review("admission.k8s.io/v1");
    const object = (body.request as Record<string, unknown>).object;

    expect(parseAdmissionReview(body).request.object).toBe(object);
  });

  it("reads dryRun only when true", () => {
    const dryRun = parseAdmissionReview(
      review("admission.k8s.io/v1", { dryRun: true }),
    );
    const text = parseAdmissionReview(
      review("admission.k8s.io/v1", { dryRun: "true" }),
    );

    expect(dryRun.request.dryRun).toBe(true);
    expect(text.request.dryRun).toBe(false);
  });

  it("ignores non-string fields", () => {
    const parsed = parseAdmissionReview(
      review("admission.k8s.io/v1", { operation: 1, namespace: {} }),
    );

    expect(parsed.request.operation).toBeUndefined();
    expect(parsed.request.namespace).toBeUndefined();
  });

  it("ignores __proto__ in the request", () => {
    const body = JSON.parse(
      `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",` +
        `"request":{"uid":"${UID}","__proto__":{"dryRun":true,"operation":"CREATE"}}}`,
    ) as unknown;

    const parsed = parseAdmissionReview(body);

    expect(parsed.request.dryRun).toBe(false);
    expect(parsed.request.operation).toBeUndefined();
  });

  it("ignores inherited envelope fields", () => {
    const body = Object.create(review("admission.k8s.io/v1")) as unknown;

    expect(rejection(body).message).toMatch(/apiVersion/);
  });

  it.each([
    ["string", "AdmissionReview", /JSON object/],
    ["number", 42, /JSON object/],
    ["null", null, /JSON object/],
    ["array", [review("admission.k8s.io/v1")], /JSON object/],
    ["empty object", {}, /apiVersion/],
    [
      "wrong apiVersion",
      review("admission.k8s.io/v2"),
      /apiVersion "admission\.k8s\.io\/v2"/,
    ],
    ["apiVersion of another group", review("v1"), /apiVersion "v1"/],
    [
      "wrong kind",
      { ...review("admission.k8s.io/v1"), kind: "AdmissionResponse" },
      /kind "AdmissionResponse"/,
    ],
    [
      "missing kind",
      { apiVersion: "admission.k8s.io/v1", request: { uid: UID } },
      /kind/,
    ],
    [
      "missing request",
      { apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" },
      /request/,
    ],
    [
      "request not an object",
      {
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        request: [],
      },
      /request/,
    ],
    ["missing uid", review("admission.k8s.io/v1", { uid: undefined }), /uid/],
    ["empty uid", review("admission.k8s.io/v1", { uid: "" }), /uid/],
    ["number uid", review("admission.k8s.io/v1", { uid: 7 }), /uid/],
  ])("rejects %s", (_, body, message) => {
    expect(rejection(body).message).toMatch(message);
  });

  it("names the accepted versions", () => {
    const message = rejection(review("admission.k8s.io/v2")).message;

    expect(message).toContain("admission.k8s.io/v1");
    expect(message).toContain("admission.k8s.io/v1beta1");
  });
});

describe("admission responses", () => {
  const PATCH: PatchOperation[] = [
    {
      op: "add",
      path: "/metadata/labels/cloudhsm~1injected",
      value: "true",
    },
    { op: "replace", path: "/spec/containers/0/env", value: [] },
  ];

  it("allows without patch", () => {
    expect(allow(UID)).toEqual({ uid: UID, allowed: true });
  });

  it("allows with warnings", () => {
    expect(allow(UID, ["first", "second"])).toEqual({
      uid: UID,
      allowed: true,
      warnings: ["first", "second"],
    });
  });

  it("encodes patch as base64 JSON", () => {
    const response = allowWithPatch(UID, PATCH);

    expect(response.allowed).toBe(true);
    expect(response.patchType).toBe("JSONPatch");
    expect(response.patch).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(decodePatch(response)).toEqual(PATCH);
  });

  it("sends no patch for empty patch", () => {
    const response = allowWithPatch(UID, [], ["note"]);

    expect(response).toEqual({ uid: UID, allowed: true, warnings: ["note"] });
  });

  it("keeps warnings with patch", () => {
    expect(allowWithPatch(UID, PATCH, ["note"]).warnings).toEqual(["note"]);
  });

  it("denies with 403 by default", () => {
    expect(deny(UID, "no HSM")).toEqual({
      uid: UID,
      allowed: false,
      status: { code: 403, message: "no HSM" },
    });
  });

  it("denies with given code and warnings", () => {
    const response = deny(UID, "AWS timed out", 503, ["retry later"]);

    expect(response.status).toEqual({ code: 503, message: "AWS timed out" });
    expect(response.warnings).toEqual(["retry later"]);
  });

  it("keeps at most 20 warnings", () => {
    const warnings = Array.from({ length: 25 }, (_, index) => `w${index}`);

    const response = allow(UID, warnings);

    expect(response.warnings).toEqual(warnings.slice(0, 20));
  });

  it.each([
    [240, 240, false],
    [241, 240, true],
    [1000, 240, true],
  ])("truncates warning of %i characters", (length, expected, ellipsis) => {
    const response = allow(UID, ["x".repeat(length)]);
    const warning = response.warnings?.[0] ?? "";

    expect(warning).toHaveLength(expected);
    expect(warning.endsWith("...")).toBe(ellipsis);
  });

  it("keeps surrogate pairs whole", () => {
    const warning = `${"a".repeat(236)}${"\u{1f512}".repeat(3)}`;

    const [cut] = allow(UID, [warning]).warnings!;

    expect(cut).toBe(`${"a".repeat(236)}...`);
    expect(cut).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])/);
  });

  it("leaves warnings input unchanged", () => {
    const warnings = ["y".repeat(300)];

    allow(UID, warnings);

    expect(warnings[0]).toHaveLength(300);
  });
});

describe("reviewResponse", () => {
  it.each(ADMISSION_VERSIONS)("echoes %s", (apiVersion) => {
    const response = allow(UID);

    expect(reviewResponse(apiVersion, response)).toEqual({
      apiVersion,
      kind: "AdmissionReview",
      response,
    });
  });
});

describe("reviewResponseText", () => {
  const patch: PatchOperation[] = [
    { op: "add", path: "/metadata/labels/a~1b", value: 'quote " and \\' },
  ];
  const responses: Array<[string, AdmissionResponse]> = [
    ["allow", allow(UID)],
    ["allow with warnings", allow(UID, ['a "quoted" word', "ünïcode \u2028"])],
    ["allow with patch", allowWithPatch(UID, patch)],
    ["allow with patch and warnings", allowWithPatch(UID, patch, ["w"])],
    ["deny", deny(UID, 'pod field "x" is \n bad', 400)],
    ["deny with warnings", deny(UID, "no", 503, ["first", "second"])],
  ];

  it.each(responses)("serializes %s as JSON.stringify does", (_, response) => {
    for (const apiVersion of ADMISSION_VERSIONS) {
      const text = reviewResponseText(apiVersion, response);

      expect(text).toBe(JSON.stringify(reviewResponse(apiVersion, response)));
    }
  });

  it("escapes quotes in the uid", () => {
    const response = allow('uid "with" quotes\\');

    const parsed = JSON.parse(
      reviewResponseText("admission.k8s.io/v1", response),
    );

    expect(parsed.response.uid).toBe('uid "with" quotes\\');
  });
});

describe("allowWithPatch encoding", () => {
  it.each([
    ["ASCII", "10.0.0.1"],
    ["Latin-1", "café"],
    ["other scripts", "日本 \u{1f512}"],
  ])("encodes %s values as base64 of UTF-8", (_, value) => {
    const patch: PatchOperation[] = [
      { op: "add", path: "/metadata/annotations/a", value },
    ];

    const response = allowWithPatch(UID, patch);

    expect(decodePatch(response)).toEqual(patch);
    expect(Buffer.from(response.patch!, "base64").toString("utf8")).toBe(
      JSON.stringify(patch),
    );
  });
});
