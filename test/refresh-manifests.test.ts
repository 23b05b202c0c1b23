import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import {
  ClusterRole,
  ClusterRoleBinding,
  Role,
  RoleBinding,
} from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { REFRESH_RUNNING_MODES, SERVE_FLAGS } from "../src/config.js";
import {
  REFRESH_CLUSTER_RULES,
  REFRESH_LEASE_RULES,
} from "../src/refresh/kube.js";
import { REFRESH_LEASE_NAME } from "../src/refresh/setup.js";

const repoRoot = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
);
const manifestsDir = path.join(repoRoot, "manifests");
const componentDir = path.join(manifestsDir, "components", "refresh-running");
const NAMESPACE = "cloudhsm-webhook";

type Json = Record<string, any>;

function readObjects(file: string): Json[] {
  return parseAllDocuments(
    readFileSync(path.join(componentDir, file), "utf8"),
    {
      version: "1.1",
    },
  ).map((document) => {
    expect(document.errors, file).toEqual([]);
    return document.toJS() as Json;
  });
}

const kustomization = readObjects("kustomization.yaml")[0]!;
const rbac = readObjects("rbac.yaml");
const patch = readObjects("deployment-patch.yaml")[0]!;

function byKind(kind: string): Json[] {
  return rbac.filter((object) => object.kind === kind);
}

/** Sorts verbs and drops resourceNames, to compare rules with the code's constants. */
function normalize(rules: readonly Json[]): Json[] {
  return rules.map((rule) => ({
    apiGroups: rule.apiGroups,
    resources: rule.resources,
    verbs: [...rule.verbs].sort(),
  }));
}

describe("refresh-running component", () => {
  it("declares a Component with RBAC and patch", () => {
    expect(kustomization.apiVersion).toBe("kustomize.config.k8s.io/v1alpha1");
    expect(kustomization.kind).toBe("Component");
    expect(kustomization.resources).toEqual(["rbac.yaml"]);
    expect(kustomization.patches).toEqual([
      {
        path: "deployment-patch.yaml",
        target: {
          group: "apps",
          version: "v1",
          kind: "Deployment",
          name: "cloudhsm-webhook",
        },
      },
    ]);
  });

  it("grants exactly the refresher's cluster rules", () => {
    const rules = byKind("ClusterRole").flatMap((role) => role.rules);
    expect(normalize(rules)).toEqual(
      normalize(REFRESH_CLUSTER_RULES as unknown as Json[]),
    );
    for (const rule of rules) {
      expect(rule.verbs, JSON.stringify(rule)).not.toContain("watch");
      expect(rule.resources, JSON.stringify(rule)).not.toContain("secrets");
    }
  });

  it("grants the Lease only in the webhook's namespace", () => {
    const [role] = byKind("Role");
    expect(role?.metadata.namespace).toBe(NAMESPACE);
    expect(normalize(role!.rules)).toEqual(
      normalize(REFRESH_LEASE_RULES as unknown as Json[]),
    );
    const named = role!.rules.find((rule: Json) =>
      rule.verbs.includes("update"),
    );
    expect(named.resourceNames).toEqual([REFRESH_LEASE_NAME]);
    const create = role!.rules.find((rule: Json) =>
      rule.verbs.includes("create"),
    );
    expect(
      create.resourceNames,
      "create cannot be limited by name",
    ).toBeUndefined();
  });

  it("binds every role to the webhook's service account", () => {
    const roles = [...byKind("ClusterRole"), ...byKind("Role")].map(
      (role) => `${role.kind} ${role.metadata.name}`,
    );
    const bindings = [
      ...byKind("ClusterRoleBinding"),
      ...byKind("RoleBinding"),
    ];
    expect(
      bindings
        .map((binding) => `${binding.roleRef.kind} ${binding.roleRef.name}`)
        .sort(),
    ).toEqual(roles.sort());
    for (const binding of bindings) {
      expect(binding.subjects, binding.metadata.name).toEqual([
        {
          kind: "ServiceAccount",
          name: "cloudhsm-webhook",
          namespace: NAMESPACE,
        },
      ]);
    }
  });

  it("validates against the Kubernetes schemas", () => {
    const models: Record<string, { prototype: { validate(): void } }> = {
      ClusterRole,
      ClusterRoleBinding,
      Role,
      RoleBinding,
    };
    for (const object of rbac) {
      const model = models[object.kind];
      expect(model, object.kind).toBeDefined();
      expect(
        () => Reflect.apply(model!.prototype.validate, object, []),
        `${object.kind} ${object.metadata.name}`,
      ).not.toThrow();
      expect(object.metadata.labels?.["app.kubernetes.io/name"]).toBe(
        "cloudhsm-webhook",
      );
    }
  });

  it("sets mode and Lease identity env", () => {
    const [container] = patch.spec.template.spec.containers;
    expect(container.name).toBe("webhook");
    const env = Object.fromEntries(
      container.env.map((entry: Json) => [entry.name, entry]),
    );
    const flagEnv = (name: string) =>
      SERVE_FLAGS.find((flag) => flag.name === name)!.env;
    expect(REFRESH_RUNNING_MODES).toContain(
      env[flagEnv("refresh-running")].value,
    );
    expect(env[flagEnv("refresh-running")].value).toBe("annotate");
    expect(Number(env[flagEnv("restart-interval")].value)).toBeGreaterThan(0);
    expect(env.POD_NAME.valueFrom).toEqual({
      fieldRef: { fieldPath: "metadata.name" },
    });
    expect(env.POD_NAMESPACE.valueFrom).toEqual({
      fieldRef: { fieldPath: "metadata.namespace" },
    });
  });

  // kubectl is optional here, so the overlay is rendered only when it is installed.
  const probe = spawnSync("kubectl", ["version", "--client"], {
    encoding: "utf8",
    timeout: 30_000,
  });
  const kubectlMissing =
    (probe.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";

  it.skipIf(kubectlMissing)(
    "renders in an overlay with kubectl kustomize (skipped without kubectl)",
    () => {
      const overlay = mkdtempSync(path.join(tmpdir(), "cloudhsm-overlay-"));
      try {
        const base = path.relative(overlay, manifestsDir);
        writeFileSync(
          path.join(overlay, "kustomization.yaml"),
          `resources:\n  - ${base}\ncomponents:\n  - ${base}/components/refresh-running\n`,
        );
        const rendered = spawnSync("kubectl", ["kustomize", overlay], {
          encoding: "utf8",
          timeout: 30_000,
        });
        expect(rendered.status, rendered.stderr).toBe(0);
        const objects = parseAllDocuments(rendered.stdout, {
          version: "1.1",
        }).map((document) => document.toJS() as Json);
        const names = objects.map(
          (object) => `${object.kind} ${object.metadata.name}`,
        );
        for (const object of rbac) {
          expect(names).toContain(`${object.kind} ${object.metadata.name}`);
        }
        const baseRole = objects.find(
          (object) =>
            object.kind === "ClusterRole" &&
            object.metadata.name === "cloudhsm-webhook",
        );
        for (const rule of baseRole!.rules) {
          expect(rule.verbs, "the base ClusterRole stays read-only").toEqual([
            "get",
          ]);
        }
        const deployment = objects.find(
          (object) => object.kind === "Deployment",
        )!;
        const webhook = deployment.spec.template.spec.containers.find(
          (container: Json) => container.name === "webhook",
        );
        const envNames = webhook.env.map((entry: Json) => entry.name);
        expect(envNames).toEqual(
          expect.arrayContaining([
            "CLOUDHSM_WEBHOOK_CLUSTER_ID",
            "CLOUDHSM_WEBHOOK_REFRESH_RUNNING",
            "CLOUDHSM_WEBHOOK_RESTART_INTERVAL",
            "POD_NAME",
            "POD_NAMESPACE",
          ]),
        );
      } finally {
        rmSync(overlay, { recursive: true, force: true });
      }
    },
  );
});
