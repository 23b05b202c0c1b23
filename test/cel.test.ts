import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Environment } from "@marcbachmann/cel-js";
import { parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import type {
  IMutatingWebhook,
  IMutatingWebhookConfiguration,
} from "kubernetes-models/admissionregistration.k8s.io/v1";

const repoRoot = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
);
const manifestFile = path.join(
  repoRoot,
  "manifests",
  "mutatingwebhookconfiguration.yaml",
);

const ANNOTATED = "annotated-pods.cloudhsm-webhook.svc";
const INHERITED = "inherited-opt-in.cloudhsm-webhook.svc";

function loadWebhooks(): IMutatingWebhook[] {
  const configuration = parseAllDocuments(readFileSync(manifestFile, "utf8"), {
    version: "1.1",
  })
    .map((document) => document.toJS() as IMutatingWebhookConfiguration | null)
    .find((object) => object?.kind === "MutatingWebhookConfiguration");
  if (!configuration) {
    throw new Error(
      "manifests/mutatingwebhookconfiguration.yaml: no MutatingWebhookConfiguration",
    );
  }
  return configuration.webhooks ?? [];
}

const webhooks = loadWebhooks();

/**
 * The CEL environment of a webhook match condition, reduced to the fields the
 * expressions may read. As in Kubernetes, `object` is typed by the Pod schema,
 * so `annotations` is a map(string, string) and selecting a field the schema
 * lacks (a misspelling) fails the type check.
 */
const environment = new Environment().registerVariable({
  name: "object",
  schema: {
    metadata: {
      name: "string",
      generateName: "string",
      namespace: "string",
      labels: "map<string, string>",
      annotations: "map<string, string>",
    },
  },
});

interface PodMetadata {
  generateName?: string;
  namespace?: string;
  labels?: Record<string, string> | null;
  annotations?: Record<string, string> | null;
}

/**
 * Returns the pod as match conditions see it. The API server decodes the
 * request into its typed Pod and converts that back to a map for CEL, so a
 * null `annotations` or `labels` arrives as an unset field.
 */
function asDecodedByApiServer(metadata: PodMetadata): {
  metadata: PodMetadata;
} {
  const decoded: PodMetadata = {};
  for (const [field, value] of Object.entries(metadata)) {
    if (value !== null && value !== undefined)
      Object.assign(decoded, { [field]: value });
  }
  return { metadata: decoded };
}

type ConditionResult = boolean | Error;

function evaluateCondition(
  expression: string,
  pod: { metadata: PodMetadata },
): ConditionResult {
  try {
    const result: unknown = environment.evaluate(expression, { object: pod });
    if (typeof result !== "boolean")
      return new Error(`returned ${String(result)}, not a bool`);
    return result;
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}

type Outcome = "called" | "skipped" | "rejected";

/**
 * Applies the API server's rule for match conditions. Any false condition
 * skips the webhook. Otherwise an evaluation error applies the failure policy,
 * so Fail rejects the request and Ignore skips the webhook. With neither, the
 * webhook is called.
 */
function admissionOutcome(
  webhook: IMutatingWebhook,
  pod: { metadata: PodMetadata },
): Outcome {
  const results = (webhook.matchConditions ?? []).map((condition) =>
    evaluateCondition(condition.expression, pod),
  );
  if (results.includes(false)) return "skipped";
  if (results.some((result) => result instanceof Error)) {
    return (webhook.failurePolicy ?? "Fail") === "Fail"
      ? "rejected"
      : "skipped";
  }
  return "called";
}

function findWebhook(name: string): IMutatingWebhook {
  const webhook = webhooks.find((candidate) => candidate.name === name);
  if (!webhook)
    throw new Error(
      `manifests/mutatingwebhookconfiguration.yaml: no webhook named ${name}`,
    );
  return webhook;
}

const pods: {
  name: string;
  metadata: PodMetadata;
  annotated: Outcome;
  inherited: Outcome;
}[] = [
  {
    name: 'annotation "true"',
    metadata: { annotations: { "cloudhsm/inject": "true" } },
    annotated: "called",
    inherited: "skipped",
  },
  {
    name: 'annotation "true" among others',
    metadata: {
      annotations: {
        "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
        "cloudhsm/inject": "true",
      },
      labels: { app: "payments" },
    },
    annotated: "called",
    inherited: "skipped",
  },
  {
    name: 'annotation "false"',
    metadata: { annotations: { "cloudhsm/inject": "false" } },
    annotated: "skipped",
    inherited: "skipped",
  },
  {
    name: "annotation absent, others present",
    metadata: { annotations: { "example.com/team": "payments" } },
    annotated: "skipped",
    inherited: "called",
  },
  {
    name: "annotations empty",
    metadata: { annotations: {} },
    annotated: "skipped",
    inherited: "called",
  },
  {
    name: "annotations unset",
    metadata: { generateName: "payments-7d9f8-" },
    annotated: "skipped",
    inherited: "called",
  },
  {
    name: "annotations null",
    metadata: { annotations: null, labels: null },
    annotated: "skipped",
    inherited: "called",
  },
  {
    // Only the exact string "true" is fail-closed. Other values go to the
    // server through the Ignore webhook, which decides what they mean.
    name: 'annotation "True"',
    metadata: { annotations: { "cloudhsm/inject": "True" } },
    annotated: "skipped",
    inherited: "called",
  },
  {
    name: "annotation empty string",
    metadata: { annotations: { "cloudhsm/inject": "" } },
    annotated: "skipped",
    inherited: "called",
  },
  {
    name: "similar key only",
    metadata: { annotations: { "cloudhsm/injected-ips": "10.0.1.5" } },
    annotated: "skipped",
    inherited: "called",
  },
];

describe("match conditions", () => {
  it("both webhooks are in the manifest", () => {
    expect(webhooks.map((webhook) => webhook.name)).toEqual([
      ANNOTATED,
      INHERITED,
    ]);
  });

  for (const webhook of webhooks) {
    for (const condition of webhook.matchConditions ?? []) {
      it(`${webhook.name} ${condition.name} type-checks as bool`, () => {
        const result = environment.check(condition.expression);
        expect(
          result.error?.message,
          `${webhook.name} matchConditions[${condition.name}]`,
        ).toBeUndefined();
        expect(
          result.valid,
          `${webhook.name} matchConditions[${condition.name}].valid`,
        ).toBe(true);
        expect(
          result.type,
          `${webhook.name} matchConditions[${condition.name}] result type`,
        ).toBe("bool");
      });
    }
  }

  it.each(pods)("pod with $name: no condition errors", ({ metadata }) => {
    const pod = asDecodedByApiServer(metadata);
    for (const webhook of webhooks) {
      for (const condition of webhook.matchConditions ?? []) {
        const result = evaluateCondition(condition.expression, pod);
        expect(
          result instanceof Error ? result.message : result,
          `${webhook.name} matchConditions[${condition.name}]`,
        ).toBeTypeOf("boolean");
      }
    }
  });

  it.each(pods)(
    "pod with $name: annotated-pods is $annotated",
    ({ metadata, annotated }) => {
      expect(
        admissionOutcome(
          findWebhook(ANNOTATED),
          asDecodedByApiServer(metadata),
        ),
      ).toBe(annotated);
    },
  );

  it.each(pods)(
    "pod with $name: inherited-opt-in is $inherited",
    ({ metadata, inherited }) => {
      expect(
        admissionOutcome(
          findWebhook(INHERITED),
          asDecodedByApiServer(metadata),
        ),
      ).toBe(inherited);
    },
  );

  it.each(pods)("pod with $name: at most one webhook", ({ metadata }) => {
    const pod = asDecodedByApiServer(metadata);
    const called = webhooks.filter(
      (webhook) => admissionOutcome(webhook, pod) === "called",
    );
    expect(called.map((webhook) => webhook.name).length).toBeLessThanOrEqual(1);
  });
});

describe("match condition harness", () => {
  // Guards the harness itself: an expression that indexes the annotations
  // without has() must show up as an error, or the tests above prove nothing.
  const unguarded: IMutatingWebhook = {
    name: "unguarded.example.com",
    admissionReviewVersions: ["v1"],
    sideEffects: "None",
    clientConfig: {},
    failurePolicy: "Fail",
    matchConditions: [
      {
        name: "unguarded",
        expression: "object.metadata.annotations['cloudhsm/inject'] == 'true'",
      },
    ],
  };

  it("rejects on an unguarded index", () => {
    expect(admissionOutcome(unguarded, asDecodedByApiServer({}))).toBe(
      "rejected",
    );
  });

  it("skips on an unguarded index with Ignore", () => {
    expect(
      admissionOutcome(
        { ...unguarded, failurePolicy: "Ignore" },
        asDecodedByApiServer({}),
      ),
    ).toBe("skipped");
  });

  it("rejects a field the Pod schema lacks", () => {
    const result = environment.check(
      "object.metadata.annotation['cloudhsm/inject'] == 'true'",
    );
    expect(result.valid).toBe(false);
  });
});
