import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import type { IIoK8sApimachineryPkgApisMetaV1LabelSelector as LabelSelector } from "@kubernetes-models/apimachinery/apis/meta/v1/LabelSelector";
import {
  Certificate,
  Issuer,
  type ICertificate,
  type IIssuer,
} from "@kubernetes-models/cert-manager/cert-manager.io/v1";
import {
  MutatingWebhookConfiguration,
  type IMutatingWebhookConfiguration,
} from "kubernetes-models/admissionregistration.k8s.io/v1";
import { Deployment, type IDeployment } from "kubernetes-models/apps/v1";
import {
  NetworkPolicy,
  type INetworkPolicy,
} from "kubernetes-models/networking.k8s.io/v1";
import {
  PodDisruptionBudget,
  type IPodDisruptionBudget,
} from "kubernetes-models/policy/v1";
import {
  ClusterRole,
  ClusterRoleBinding,
  type IClusterRole,
  type IClusterRoleBinding,
} from "kubernetes-models/rbac.authorization.k8s.io/v1";
import {
  Namespace,
  Service,
  ServiceAccount,
  type IContainer,
  type INamespace,
  type IService,
  type IServiceAccount,
} from "kubernetes-models/v1";

const repoRoot = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
);
const manifestsDir = path.join(repoRoot, "manifests");

const NAME = "cloudhsm-webhook";
const NAMESPACE = "cloudhsm-webhook";
const SERVING_SECRET = "cloudhsm-webhook-tls";

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [field: string]: unknown;
}

/** A manifest object and where it came from, for failure messages. */
interface LoadedObject {
  source: string;
  object: KubeObject;
}

interface ImageOverride {
  name: string;
  newName?: string;
  newTag?: string;
  digest?: string;
}

interface Kustomization {
  resources: string[];
  images: ImageOverride[];
}

/** A published schema's model class; its validate() checks `this` against the schema. */
interface ModelClass {
  prototype: { validate(): void };
}

const modelsByType: Record<string, ModelClass> = {
  "v1/Namespace": Namespace,
  "v1/ServiceAccount": ServiceAccount,
  "v1/Service": Service,
  "apps/v1/Deployment": Deployment,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "rbac.authorization.k8s.io/v1/ClusterRole": ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": ClusterRoleBinding,
  "cert-manager.io/v1/Issuer": Issuer,
  "cert-manager.io/v1/Certificate": Certificate,
  "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
    MutatingWebhookConfiguration,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
};

function describeObject(object: KubeObject): string {
  const namespace = object.metadata.namespace
    ? `${object.metadata.namespace}/`
    : "";
  return `${object.kind} ${namespace}${object.metadata.name}`;
}

/**
 * Parses every YAML document of a file as YAML 1.1, the version kubectl's
 * go-yaml parser follows, so values such as `0440` or `yes` read as kubectl reads them.
 */
function readYamlObjects(file: string): LoadedObject[] {
  const relative = path.relative(repoRoot, file);
  const documents = parseAllDocuments(readFileSync(file, "utf8"), {
    version: "1.1",
  });
  if (!Array.isArray(documents)) {
    throw new Error(`${relative}: expected YAML documents`);
  }
  const objects: LoadedObject[] = [];
  for (const [index, document] of documents.entries()) {
    if (document.errors.length > 0) {
      throw new Error(
        `${relative} document ${index}: ${document.errors[0]?.message}`,
      );
    }
    const object = document.toJS() as KubeObject | null;
    // A document with only comments parses to null, and kubectl skips it too.
    if (object === null) continue;
    objects.push({ source: `${relative} document ${index}`, object });
  }
  return objects;
}

function readKustomization(): Kustomization {
  const file = path.join(manifestsDir, "kustomization.yaml");
  const [loaded] = readYamlObjects(file);
  if (!loaded) throw new Error("manifests/kustomization.yaml is empty");
  const raw = loaded.object as unknown as Record<string, unknown>;

  // The loader below implements only these fields. Any other kustomize
  // transformer would change the output without the tests seeing it.
  const supported = new Set(["apiVersion", "kind", "resources", "images"]);
  for (const field of Object.keys(raw)) {
    if (!supported.has(field)) {
      throw new Error(
        `manifests/kustomization.yaml: field "${field}" is not supported by the test loader; extend loadKustomization()`,
      );
    }
  }
  return {
    resources: (raw.resources as string[] | undefined) ?? [],
    images: (raw.images as ImageOverride[] | undefined) ?? [],
  };
}

function applyImageOverrides(
  object: KubeObject,
  images: ImageOverride[],
): void {
  if (object.kind !== "Deployment") return;
  const containers =
    (object as unknown as IDeployment).spec?.template.spec?.containers ?? [];
  for (const container of containers) {
    const override = images.find((image) => image.name === container.image);
    if (!override) continue;
    const name = override.newName ?? override.name;
    if (override.digest) container.image = `${name}@${override.digest}`;
    else if (override.newTag) container.image = `${name}:${override.newTag}`;
    else container.image = name;
  }
}

/** Builds the base the way `kubectl apply -k manifests/` would, for the fields it uses. */
function loadKustomization(): LoadedObject[] {
  const kustomization = readKustomization();
  const objects: LoadedObject[] = [];
  for (const resource of kustomization.resources) {
    const file = path.join(manifestsDir, resource);
    if (!file.startsWith(manifestsDir + path.sep)) {
      throw new Error(
        `manifests/kustomization.yaml: resource ${resource} is outside manifests/`,
      );
    }
    objects.push(...readYamlObjects(file));
  }
  for (const { object } of objects)
    applyImageOverrides(object, kustomization.images);
  return objects;
}

const kustomization = readKustomization();
const base = loadKustomization();

function findObject<T>(objects: LoadedObject[], kind: string, name: string): T {
  const matches = objects.filter(
    ({ object }) => object.kind === kind && object.metadata.name === name,
  );
  if (matches.length !== 1) {
    throw new Error(
      `expected one ${kind} named ${name} in the manifests, found ${matches.length}`,
    );
  }
  return matches[0]!.object as T;
}

/** Per-object record of the property names a schema validator read. */
interface PropertyReads {
  names: Set<string>;
  /** True when the validator iterated the keys, as it does for maps such as labels. */
  enumerated: boolean;
}

/** Wraps `value` so that every property a validator reads is recorded under its JSON path. */
function traceReads(
  value: unknown,
  jsonPath: string,
  reads: Map<string, PropertyReads>,
): unknown {
  if (value === null || typeof value !== "object") return value;
  const record: PropertyReads = { names: new Set(), enumerated: false };
  reads.set(jsonPath, record);
  return new Proxy(value, {
    get(target, property, receiver) {
      const child = Reflect.get(target, property, receiver);
      if (typeof property !== "string") return child;
      record.names.add(property);
      return traceReads(child, `${jsonPath}/${property}`, reads);
    },
    has(target, property) {
      if (typeof property === "string") record.names.add(property);
      return Reflect.has(target, property);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function collectUnreadFields(
  value: unknown,
  jsonPath: string,
  reads: Map<string, PropertyReads>,
  unread: string[],
): void {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((item, index) =>
      collectUnreadFields(item, `${jsonPath}/${index}`, reads, unread),
    );
    return;
  }
  const record = reads.get(jsonPath);
  for (const [name, child] of Object.entries(value)) {
    const known =
      record !== undefined && (record.enumerated || record.names.has(name));
    if (!known) unread.push(`${jsonPath}/${name}`);
    else collectUnreadFields(child, `${jsonPath}/${name}`, reads, unread);
  }
}

function modelFor(object: KubeObject): ModelClass {
  const model = modelsByType[`${object.apiVersion}/${object.kind}`];
  if (!model) {
    throw new Error(
      `${describeObject(object)}: no schema for ${object.apiVersion} ${object.kind}; add it to modelsByType`,
    );
  }
  return model;
}

/** Throws the schema's validation error, which names the JSON path of each invalid field. */
function validateAgainstSchema(object: KubeObject): void {
  Reflect.apply(modelFor(object).prototype.validate, object, []);
}

/**
 * Returns the JSON paths of fields that the schema does not define. The
 * generated validators do not reject unknown fields, but the API server does
 * under kubectl's default --validate=strict, so a misspelled field fails the
 * install. A field counts as known when the validator read it.
 */
function findUnknownFields(object: KubeObject): string[] {
  const reads = new Map<string, PropertyReads>();
  Reflect.apply(
    modelFor(object).prototype.validate,
    traceReads(object, "", reads),
    [],
  );
  const unread: string[] = [];
  collectUnreadFields(object, "", reads, unread);
  return unread;
}

/** Evaluates a Kubernetes label selector; an absent selector matches everything. */
function selectorMatches(
  selector: LabelSelector | undefined,
  labels: Record<string, string>,
): boolean {
  if (!selector) return true;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (labels[key] !== value) return false;
  }
  for (const requirement of selector.matchExpressions ?? []) {
    const present = Object.hasOwn(labels, requirement.key);
    const values = requirement.values ?? [];
    const value = labels[requirement.key];
    switch (requirement.operator) {
      case "In":
        if (!present || !values.includes(value!)) return false;
        break;
      case "NotIn":
        if (present && values.includes(value!)) return false;
        break;
      case "Exists":
        if (!present) return false;
        break;
      case "DoesNotExist":
        if (present) return false;
        break;
      default:
        throw new Error(
          `unknown label selector operator ${requirement.operator}`,
        );
    }
  }
  return true;
}

const deployment = findObject<IDeployment>(base, "Deployment", NAME);
const podSpec = deployment.spec!.template.spec!;
const podLabels = deployment.spec!.template.metadata!.labels!;
const container = podSpec.containers.find(
  (candidate) => candidate.name === "webhook",
);
const service = findObject<IService>(base, "Service", NAME);
const webhookConfiguration = findObject<IMutatingWebhookConfiguration>(
  base,
  "MutatingWebhookConfiguration",
  NAME,
);

function requireContainer(): IContainer {
  if (!container)
    throw new Error(`Deployment ${NAME}: no container named "webhook"`);
  return container;
}

function containerPort(name: string): number | undefined {
  return requireContainer().ports?.find((port) => port.name === name)
    ?.containerPort;
}

/** Resolves a Service targetPort or probe port, which may name a container port. */
function resolvePort(port: number | string | undefined): number | undefined {
  return typeof port === "string" ? containerPort(port) : port;
}

function argValue(flag: string): string | undefined {
  const prefix = `--${flag}=`;
  return requireContainer()
    .args?.find((arg) => arg.startsWith(prefix))
    ?.slice(prefix.length);
}

describe("kustomization", () => {
  it("lists resources that all load", () => {
    expect(
      kustomization.resources.length,
      "manifests/kustomization.yaml: resources",
    ).toBeGreaterThan(0);
    expect(
      base.length,
      "objects loaded from manifests/",
    ).toBeGreaterThanOrEqual(kustomization.resources.length);
  });

  it("keeps optional manifests out of the base", () => {
    for (const resource of kustomization.resources) {
      expect(resource, "manifests/kustomization.yaml: resources").not.toMatch(
        /^optional\//,
      );
    }
    const kinds = base.map(({ object }) => object.kind);
    expect(kinds, "base kinds").not.toContain("NetworkPolicy");
    expect(kinds, "base kinds").not.toContain("ServiceMonitor");
  });

  it("names every object once", () => {
    const keys = base.map(
      ({ object }) => `${describeObject(object)} (${object.apiVersion})`,
    );
    expect(new Set(keys).size, `duplicate objects in ${keys.join(", ")}`).toBe(
      keys.length,
    );
  });

  it("places namespaced objects in cloudhsm-webhook", () => {
    const clusterScoped = new Set([
      "Namespace",
      "ClusterRole",
      "ClusterRoleBinding",
      "MutatingWebhookConfiguration",
    ]);
    for (const { source, object } of base) {
      const expected = clusterScoped.has(object.kind) ? undefined : NAMESPACE;
      expect(
        object.metadata.namespace,
        `${source}: ${describeObject(object)} metadata.namespace`,
      ).toBe(expected);
    }
  });

  it("labels every object with the app name", () => {
    for (const { source, object } of base) {
      expect(
        object.metadata.labels?.["app.kubernetes.io/name"],
        `${source}: ${describeObject(object)} metadata.labels["app.kubernetes.io/name"]`,
      ).toBe(NAME);
    }
  });

  it("sets the image through images", () => {
    const override = kustomization.images.find((image) => image.name === NAME);
    expect(
      override,
      `manifests/kustomization.yaml: images entry named ${NAME}`,
    ).toBeDefined();
    expect(override?.newName, "images[].newName").toBeTruthy();
    expect(
      override?.newTag ?? override?.digest,
      "images[].newTag or digest",
    ).toBeTruthy();
    expect(
      requireContainer().image,
      `Deployment ${NAME}: containers[webhook].image`,
    ).toBe(`${override?.newName}:${override?.newTag}`);
  });

  // kubectl is optional here, so this compares only when it is installed.
  const rendered = spawnSync("kubectl", ["kustomize", manifestsDir], {
    encoding: "utf8",
    timeout: 30_000,
  });
  const kubectlMissing =
    (rendered.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";

  it.skipIf(kubectlMissing)(
    "matches kubectl kustomize output (skipped without kubectl)",
    () => {
      expect(
        rendered.error,
        "kubectl kustomize manifests/ error",
      ).toBeUndefined();
      expect(
        rendered.status,
        `kubectl kustomize manifests/ failed: ${rendered.stderr}`,
      ).toBe(0);
      const byKey = (objects: KubeObject[]) =>
        new Map(
          objects.map((object) => [
            `${object.apiVersion} ${describeObject(object)}`,
            object,
          ]),
        );
      const fromKubectl = byKey(
        parseAllDocuments(rendered.stdout, { version: "1.1" }).map(
          (document) => document.toJS() as KubeObject,
        ),
      );
      const fromLoader = byKey(base.map(({ object }) => object));
      expect(
        [...fromLoader.keys()].sort(),
        "objects rendered by kubectl kustomize",
      ).toEqual([...fromKubectl.keys()].sort());
      for (const [key, object] of fromLoader) {
        expect(
          object,
          `${key}: test loader output differs from kubectl kustomize`,
        ).toEqual(fromKubectl.get(key));
      }
    },
  );
});

describe("schemas", () => {
  it.each(
    base.map(
      ({ source, object }) =>
        [`${source} (${describeObject(object)})`, object] as const,
    ),
  )("%s validates", (_label, object) => {
    expect(() => validateAgainstSchema(object)).not.toThrow();
  });

  it.each(
    base.map(
      ({ source, object }) =>
        [`${source} (${describeObject(object)})`, object] as const,
    ),
  )("%s has no unknown fields", (label, object) => {
    expect(
      findUnknownFields(object).join(", "),
      `${label}: fields the schema does not define`,
    ).toBe("");
  });

  it("unknown-field check catches a misspelling", () => {
    const misspelled = structuredClone(deployment) as unknown as KubeObject;
    const spec = (misspelled as unknown as IDeployment).spec!.template.spec!;
    (spec.containers[0] as unknown as Record<string, unknown>).readinesProbe =
      {};
    expect(findUnknownFields(misspelled)).toEqual([
      "/spec/template/spec/containers/0/readinesProbe",
    ]);
  });
});

describe("namespace and service account", () => {
  it("namespace enforces the restricted Pod Security Standard", () => {
    const namespace = findObject<INamespace>(base, "Namespace", NAMESPACE);
    expect(
      namespace.metadata?.labels?.["pod-security.kubernetes.io/enforce"],
      `Namespace ${NAMESPACE}: metadata.labels["pod-security.kubernetes.io/enforce"]`,
    ).toBe("restricted");
  });

  it("service account documents IRSA without setting it", () => {
    const serviceAccount = findObject<IServiceAccount>(
      base,
      "ServiceAccount",
      NAME,
    );
    expect(
      serviceAccount.metadata?.annotations?.["eks.amazonaws.com/role-arn"],
      `ServiceAccount ${NAME}: the role ARN annotation must stay commented out in the base`,
    ).toBeUndefined();
    const text = readFileSync(
      path.join(manifestsDir, "serviceaccount.yaml"),
      "utf8",
    );
    expect(text, "serviceaccount.yaml: commented IRSA annotation").toMatch(
      /#\s+eks\.amazonaws\.com\/role-arn: arn:aws:iam::/,
    );
    expect(text, "serviceaccount.yaml: EKS Pod Identity note").toMatch(
      /Pod Identity/,
    );
  });
});

describe("RBAC", () => {
  const clusterRole = findObject<IClusterRole>(base, "ClusterRole", NAME);

  it("grants get on the owner chain and namespaces only", () => {
    const grants = new Set<string>();
    for (const [index, rule] of (clusterRole.rules ?? []).entries()) {
      expect(
        rule.nonResourceURLs,
        `ClusterRole ${NAME}: rules[${index}].nonResourceURLs`,
      ).toBeUndefined();
      expect(
        rule.resourceNames,
        `ClusterRole ${NAME}: rules[${index}].resourceNames`,
      ).toBeUndefined();
      for (const group of rule.apiGroups ?? []) {
        for (const resource of rule.resources ?? []) {
          for (const verb of rule.verbs)
            grants.add(`${verb} ${group}/${resource}`);
        }
      }
    }
    expect([...grants].sort(), `ClusterRole ${NAME}: rules`).toEqual(
      [
        "get /namespaces",
        "get apps/daemonsets",
        "get apps/deployments",
        "get apps/replicasets",
        "get apps/statefulsets",
        "get batch/cronjobs",
        "get batch/jobs",
      ].sort(),
    );
  });

  it("uses no wildcards", () => {
    for (const [index, rule] of (clusterRole.rules ?? []).entries()) {
      const where = `ClusterRole ${NAME}: rules[${index}]`;
      expect(rule.apiGroups ?? [], `${where}.apiGroups`).not.toContain("*");
      expect(rule.resources ?? [], `${where}.resources`).not.toContain("*");
      expect(rule.verbs, `${where}.verbs`).not.toContain("*");
      for (const resource of rule.resources ?? []) {
        expect(
          resource,
          `${where}.resources: subresource wildcard`,
        ).not.toMatch(/\*/);
      }
    }
    expect(
      clusterRole.aggregationRule,
      `ClusterRole ${NAME}: aggregationRule`,
    ).toBeUndefined();
  });

  it("ships no other RBAC objects", () => {
    const rbacKinds = base
      .map(({ object }) => object)
      .filter((object) =>
        object.apiVersion.startsWith("rbac.authorization.k8s.io/"),
      )
      .map(describeObject)
      .sort();
    expect(rbacKinds).toEqual([
      `ClusterRole ${NAME}`,
      `ClusterRoleBinding ${NAME}`,
    ]);
  });

  it("binds the role to the webhook's service account", () => {
    const binding = findObject<IClusterRoleBinding>(
      base,
      "ClusterRoleBinding",
      NAME,
    );
    expect(binding.roleRef, `ClusterRoleBinding ${NAME}: roleRef`).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "ClusterRole",
      name: NAME,
    });
    expect(binding.subjects, `ClusterRoleBinding ${NAME}: subjects`).toEqual([
      { kind: "ServiceAccount", name: NAME, namespace: NAMESPACE },
    ]);
    expect(
      podSpec.serviceAccountName,
      `Deployment ${NAME}: spec.template.spec.serviceAccountName`,
    ).toBe(NAME);
    findObject<IServiceAccount>(base, "ServiceAccount", NAME);
  });
});

describe("deployment", () => {
  const where = `Deployment ${NAME}: spec.template.spec`;

  it("runs two replicas that survive a rollout", () => {
    expect(deployment.spec?.replicas, `Deployment ${NAME}: spec.replicas`).toBe(
      2,
    );
    expect(
      deployment.spec?.strategy?.rollingUpdate?.maxUnavailable,
      `Deployment ${NAME}: maxUnavailable`,
    ).toBe(0);
    expect(podLabels["app.kubernetes.io/name"], `${where} labels`).toBe(NAME);
    expect(
      selectorMatches(deployment.spec?.selector, podLabels),
      `Deployment ${NAME}: spec.selector must match the pod template labels`,
    ).toBe(true);
    expect(podSpec.priorityClassName, `${where}.priorityClassName`).toBe(
      "system-cluster-critical",
    );
  });

  it("spreads replicas across zones and nodes", () => {
    const constraints = podSpec.topologySpreadConstraints ?? [];
    const keys = constraints.map((constraint) => constraint.topologyKey);
    expect(keys, `${where}.topologySpreadConstraints[].topologyKey`).toContain(
      "topology.kubernetes.io/zone",
    );
    expect(keys, `${where}.topologySpreadConstraints[].topologyKey`).toContain(
      "kubernetes.io/hostname",
    );
    for (const [index, constraint] of constraints.entries()) {
      expect(
        selectorMatches(constraint.labelSelector, podLabels),
        `${where}.topologySpreadConstraints[${index}].labelSelector must select the webhook pods`,
      ).toBe(true);
      expect(
        constraint.maxSkew,
        `${where}.topologySpreadConstraints[${index}].maxSkew`,
      ).toBe(1);
    }
  });

  it("runs as non-root with a hardened context", () => {
    const pod = podSpec.securityContext;
    expect(pod?.runAsNonRoot, `${where}.securityContext.runAsNonRoot`).toBe(
      true,
    );
    expect(pod?.runAsUser, `${where}.securityContext.runAsUser`).toBeTypeOf(
      "number",
    );
    expect(
      pod?.runAsUser,
      `${where}.securityContext.runAsUser`,
    ).toBeGreaterThan(0);
    expect(
      pod?.seccompProfile?.type,
      `${where}.securityContext.seccompProfile.type`,
    ).toBe("RuntimeDefault");

    const context = requireContainer().securityContext;
    const at = `${where}.containers[webhook].securityContext`;
    expect(
      context?.allowPrivilegeEscalation,
      `${at}.allowPrivilegeEscalation`,
    ).toBe(false);
    expect(
      context?.readOnlyRootFilesystem,
      `${at}.readOnlyRootFilesystem`,
    ).toBe(true);
    expect(context?.runAsNonRoot, `${at}.runAsNonRoot`).toBe(true);
    expect(context?.capabilities?.drop, `${at}.capabilities.drop`).toEqual([
      "ALL",
    ]);
    expect(
      context?.capabilities?.add,
      `${at}.capabilities.add`,
    ).toBeUndefined();
    expect(context?.privileged, `${at}.privileged`).toBeUndefined();
    expect(podSpec.hostNetwork, `${where}.hostNetwork`).toBeUndefined();
  });

  it("sets requests and limits", () => {
    const resources = requireContainer().resources;
    const at = `${where}.containers[webhook].resources`;
    expect(resources?.requests?.cpu, `${at}.requests.cpu`).toBeDefined();
    expect(resources?.requests?.memory, `${at}.requests.memory`).toBeDefined();
    expect(resources?.limits?.cpu, `${at}.limits.cpu`).toBeDefined();
    expect(resources?.limits?.memory, `${at}.limits.memory`).toBeDefined();
  });

  it("exposes https on 8443 and metrics on 9090", () => {
    expect(
      containerPort("https"),
      `${where}.containers[webhook].ports[https]`,
    ).toBe(8443);
    expect(
      containerPort("metrics"),
      `${where}.containers[webhook].ports[metrics]`,
    ).toBe(9090);
    expect(argValue("port"), `${where}.containers[webhook].args --port`).toBe(
      "8443",
    );
    expect(
      argValue("metrics-port"),
      `${where}.containers[webhook].args --metrics-port`,
    ).toBe("9090");
    const annotations = deployment.spec?.template.metadata?.annotations ?? {};
    expect(
      annotations["prometheus.io/scrape"],
      "pod template prometheus.io/scrape",
    ).toBe("true");
    expect(
      annotations["prometheus.io/port"],
      "pod template prometheus.io/port",
    ).toBe("9090");
    expect(
      annotations["prometheus.io/path"],
      "pod template prometheus.io/path",
    ).toBe("/metrics");
  });

  it("probes health and readiness over HTTPS", () => {
    const liveness = requireContainer().livenessProbe?.httpGet;
    const readiness = requireContainer().readinessProbe?.httpGet;
    expect(
      liveness?.path,
      `${where}.containers[webhook].livenessProbe.httpGet.path`,
    ).toBe("/healthz");
    expect(
      liveness?.scheme,
      `${where}.containers[webhook].livenessProbe.httpGet.scheme`,
    ).toBe("HTTPS");
    expect(
      resolvePort(liveness?.port),
      `${where}.containers[webhook].livenessProbe.httpGet.port`,
    ).toBe(8443);
    expect(
      readiness?.path,
      `${where}.containers[webhook].readinessProbe.httpGet.path`,
    ).toBe("/readyz");
    expect(
      readiness?.scheme,
      `${where}.containers[webhook].readinessProbe.httpGet.scheme`,
    ).toBe("HTTPS");
    expect(
      resolvePort(readiness?.port),
      `${where}.containers[webhook].readinessProbe.httpGet.port`,
    ).toBe(8443);
  });

  it("sleeps in preStop within the grace period", () => {
    const preStop = requireContainer().lifecycle?.preStop;
    const seconds = preStop?.sleep?.seconds;
    expect(
      preStop?.exec,
      `${where}.containers[webhook].lifecycle.preStop.exec (the image has no shell)`,
    ).toBeUndefined();
    expect(
      seconds,
      `${where}.containers[webhook].lifecycle.preStop.sleep.seconds`,
    ).toBeGreaterThan(0);

    // The grace period includes the preStop hook. After it, the server keeps
    // serving for --shutdown-delay and drains for up to --shutdown-timeout
    // (server defaults 2 s and 20 s). The drain must cover the longest webhook
    // timeout, and all of it must end before SIGKILL.
    const shutdownDelay = Number(argValue("shutdown-delay") ?? 2);
    const shutdownTimeout = Number(argValue("shutdown-timeout") ?? 20);
    const longestWebhookTimeout = Math.max(
      ...(webhookConfiguration.webhooks ?? []).map(
        (webhook) => webhook.timeoutSeconds ?? 10,
      ),
    );
    expect(
      shutdownTimeout,
      `${where}.containers[webhook].args --shutdown-timeout`,
    ).toBeGreaterThanOrEqual(longestWebhookTimeout);

    const grace = podSpec.terminationGracePeriodSeconds ?? 30;
    expect(
      grace,
      `${where}.terminationGracePeriodSeconds must exceed preStop sleep + --shutdown-delay + --shutdown-timeout`,
    ).toBeGreaterThan((seconds ?? 0) + shutdownDelay + shutdownTimeout);
  });

  it("starts the server with the mounted serving certificate", () => {
    const args = requireContainer().args ?? [];
    expect(args[0], `${where}.containers[webhook].args[0]`).toBe("serve");
    const flags = args
      .filter((arg) => arg.startsWith("--"))
      .map((arg) => arg.split("=")[0]);
    expect(
      new Set(flags).size,
      `${where}.containers[webhook].args: repeated flag in ${flags.join(" ")}`,
    ).toBe(flags.length);

    const tlsVolume = podSpec.volumes?.find(
      (volume) => volume.secret?.secretName === SERVING_SECRET,
    );
    expect(
      tlsVolume,
      `${where}.volumes: a Secret volume for ${SERVING_SECRET}`,
    ).toBeDefined();
    const mount = requireContainer().volumeMounts?.find(
      (candidate) => candidate.name === tlsVolume?.name,
    );
    expect(
      mount,
      `${where}.containers[webhook].volumeMounts[${tlsVolume?.name}]`,
    ).toBeDefined();
    // A subPath mount never receives updates, so a renewed certificate would
    // never reach the server.
    expect(
      mount?.subPath,
      `${where}.containers[webhook].volumeMounts[${mount?.name}].subPath`,
    ).toBeUndefined();
    expect(
      mount?.readOnly,
      `${where}.containers[webhook].volumeMounts[${mount?.name}].readOnly`,
    ).toBe(true);
    expect(
      argValue("tls-cert"),
      `${where}.containers[webhook].args --tls-cert`,
    ).toBe(`${mount?.mountPath}/tls.crt`);
    expect(
      argValue("tls-key"),
      `${where}.containers[webhook].args --tls-key`,
    ).toBe(`${mount?.mountPath}/tls.key`);
  });

  it("marks the cluster id and region placeholders", () => {
    const env = new Map(
      (requireContainer().env ?? []).map((variable) => [
        variable.name,
        variable.value,
      ]),
    );
    expect(
      env.get("CLOUDHSM_WEBHOOK_CLUSTER_ID"),
      `${where}.containers[webhook].env CLOUDHSM_WEBHOOK_CLUSTER_ID`,
    ).toMatch(/^REPLACE/);
    expect(
      env.get("CLOUDHSM_WEBHOOK_REGION"),
      `${where}.containers[webhook].env CLOUDHSM_WEBHOOK_REGION`,
    ).toMatch(/^REPLACE/);
  });

  it("matches the failure policies in its fallbacks", () => {
    expect(
      argValue("on-unavailable"),
      `${where}.containers[webhook].args --on-unavailable`,
    ).toBe("deny");
    expect(
      argValue("on-lookup-error"),
      `${where}.containers[webhook].args --on-lookup-error`,
    ).toBe("allow");
  });
});

describe("service and disruption budget", () => {
  it("routes 443 to the container's 8443", () => {
    const https = service.spec?.ports?.find((port) => port.port === 443);
    expect(https, `Service ${NAME}: spec.ports with port 443`).toBeDefined();
    expect(
      resolvePort(https?.targetPort),
      `Service ${NAME}: spec.ports[443].targetPort`,
    ).toBe(8443);
    const metrics = service.spec?.ports?.find(
      (port) => port.name === "metrics",
    );
    expect(
      resolvePort(metrics?.targetPort),
      `Service ${NAME}: spec.ports[metrics].targetPort`,
    ).toBe(9090);
  });

  it("selects the webhook pods", () => {
    const selector = { matchLabels: service.spec?.selector ?? {} };
    expect(
      service.spec?.selector,
      `Service ${NAME}: spec.selector`,
    ).toBeDefined();
    expect(
      selectorMatches(selector, podLabels),
      `Service ${NAME}: spec.selector must match the pod labels`,
    ).toBe(true);
  });

  it("keeps one replica during disruptions", () => {
    const budget = findObject<IPodDisruptionBudget>(
      base,
      "PodDisruptionBudget",
      NAME,
    );
    expect(
      budget.spec?.minAvailable,
      `PodDisruptionBudget ${NAME}: spec.minAvailable`,
    ).toBe(1);
    expect(
      budget.spec?.maxUnavailable,
      `PodDisruptionBudget ${NAME}: spec.maxUnavailable`,
    ).toBeUndefined();
    expect(
      selectorMatches(budget.spec?.selector, podLabels),
      `PodDisruptionBudget ${NAME}: spec.selector must match the pod labels`,
    ).toBe(true);
  });
});

describe("cert-manager", () => {
  const servingCertificate = findObject<ICertificate>(
    base,
    "Certificate",
    "cloudhsm-webhook-serving",
  );

  it("issues the serving certificate from one shared CA", () => {
    const caIssuerName = servingCertificate.spec?.issuerRef.name;
    expect(
      servingCertificate.spec?.issuerRef.kind,
      "Certificate cloudhsm-webhook-serving: spec.issuerRef.kind",
    ).toBe("Issuer");
    const caIssuer = findObject<IIssuer>(base, "Issuer", caIssuerName!);
    const caSecret = caIssuer.spec?.ca?.secretName;
    expect(
      caSecret,
      `Issuer ${caIssuerName}: spec.ca.secretName`,
    ).toBeDefined();

    const caCertificates = base
      .map(({ object }) => object)
      .filter((object) => object.kind === "Certificate")
      .map((object) => object as unknown as ICertificate)
      .filter((certificate) => certificate.spec?.secretName === caSecret);
    expect(
      caCertificates.length,
      `Certificates writing Secret ${caSecret}`,
    ).toBe(1);
    const caCertificate = caCertificates[0]!;
    expect(
      caCertificate.spec?.isCA,
      `Certificate ${caCertificate.metadata?.name}: spec.isCA`,
    ).toBe(true);

    const rootIssuer = findObject<IIssuer>(
      base,
      "Issuer",
      caCertificate.spec!.issuerRef.name,
    );
    expect(
      rootIssuer.spec?.selfSigned,
      `Issuer ${rootIssuer.metadata?.name}: spec.selfSigned`,
    ).toEqual({});
  });

  it("covers the service DNS names", () => {
    const dnsNames = servingCertificate.spec?.dnsNames ?? [];
    for (const name of [
      NAME,
      `${NAME}.${NAMESPACE}.svc`,
      `${NAME}.${NAMESPACE}.svc.cluster.local`,
    ]) {
      expect(
        dnsNames,
        `Certificate cloudhsm-webhook-serving: spec.dnsNames`,
      ).toContain(name);
    }
    expect(
      servingCertificate.spec?.isCA,
      "Certificate cloudhsm-webhook-serving: spec.isCA",
    ).not.toBe(true);
    expect(
      servingCertificate.spec?.usages,
      "Certificate cloudhsm-webhook-serving: spec.usages",
    ).toContain("server auth");
  });

  it("writes the Secret the Deployment mounts", () => {
    expect(
      servingCertificate.spec?.secretName,
      "Certificate cloudhsm-webhook-serving: spec.secretName",
    ).toBe(SERVING_SECRET);
  });
});

describe("mutating webhook configuration", () => {
  const webhooks = webhookConfiguration.webhooks ?? [];
  const where = `MutatingWebhookConfiguration ${NAME}`;

  it("injects the CA of the serving Certificate", () => {
    const reference =
      webhookConfiguration.metadata?.annotations?.[
        "cert-manager.io/inject-ca-from"
      ];
    expect(
      reference,
      `${where}: metadata.annotations["cert-manager.io/inject-ca-from"]`,
    ).toBe(`${NAMESPACE}/cloudhsm-webhook-serving`);
  });

  it("has two webhooks with opposite failure policies", () => {
    expect(
      webhooks.map((webhook) => webhook.name),
      `${where}: webhooks[].name`,
    ).toEqual([
      "annotated-pods.cloudhsm-webhook.svc",
      "inherited-opt-in.cloudhsm-webhook.svc",
    ]);
    expect(
      webhooks[0]?.failurePolicy,
      `${where}: webhooks[annotated-pods].failurePolicy`,
    ).toBe("Fail");
    expect(
      webhooks[1]?.failurePolicy,
      `${where}: webhooks[inherited-opt-in].failurePolicy`,
    ).toBe("Ignore");
  });

  it.each(webhooks.map((webhook) => [webhook.name, webhook] as const))(
    "%s has safe settings",
    (name, webhook) => {
      const at = `${where}: webhooks[${name}]`;
      expect(webhook.sideEffects, `${at}.sideEffects`).toBe("None");
      expect(
        webhook.admissionReviewVersions,
        `${at}.admissionReviewVersions`,
      ).toEqual(["v1", "v1beta1"]);
      expect(
        webhook.timeoutSeconds,
        `${at}.timeoutSeconds`,
      ).toBeGreaterThanOrEqual(1);
      expect(
        webhook.timeoutSeconds,
        `${at}.timeoutSeconds`,
      ).toBeLessThanOrEqual(10);
      expect(webhook.reinvocationPolicy, `${at}.reinvocationPolicy`).toBe(
        "IfNeeded",
      );
      expect(
        webhook.matchConditions?.length,
        `${at}.matchConditions`,
      ).toBeGreaterThan(0);
    },
  );

  it.each(webhooks.map((webhook) => [webhook.name, webhook] as const))(
    "%s calls /mutate on the Service",
    (name, webhook) => {
      const at = `${where}: webhooks[${name}].clientConfig`;
      expect(webhook.clientConfig.url, `${at}.url`).toBeUndefined();
      expect(webhook.clientConfig.service?.name, `${at}.service.name`).toBe(
        service.metadata?.name,
      );
      expect(
        webhook.clientConfig.service?.namespace,
        `${at}.service.namespace`,
      ).toBe(service.metadata?.namespace);
      expect(webhook.clientConfig.service?.path, `${at}.service.path`).toBe(
        "/mutate",
      );
      const port = webhook.clientConfig.service?.port ?? 443;
      expect(
        service.spec?.ports?.map((servicePort) => servicePort.port),
        `${at}.service.port`,
      ).toContain(port);
    },
  );

  it.each(webhooks.map((webhook) => [webhook.name, webhook] as const))(
    "%s matches pod CREATE only",
    (name, webhook) => {
      expect(webhook.rules, `${where}: webhooks[${name}].rules`).toEqual([
        {
          operations: ["CREATE"],
          apiGroups: [""],
          apiVersions: ["v1"],
          resources: ["pods"],
          scope: "Namespaced",
        },
      ]);
    },
  );

  it.each(webhooks.map((webhook) => [webhook.name, webhook] as const))(
    "%s skips system namespaces",
    (name, webhook) => {
      const at = `${where}: webhooks[${name}].namespaceSelector`;
      const namespaceLabels = (namespace: string) => ({
        "kubernetes.io/metadata.name": namespace,
      });
      for (const excluded of [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        NAMESPACE,
      ]) {
        expect(
          selectorMatches(webhook.namespaceSelector, namespaceLabels(excluded)),
          `${at} must exclude ${excluded}`,
        ).toBe(false);
      }
      expect(
        selectorMatches(webhook.namespaceSelector, namespaceLabels("default")),
        `${at} must include default`,
      ).toBe(true);
    },
  );

  it.each(webhooks.map((webhook) => [webhook.name, webhook] as const))(
    "%s skips the webhook's pods",
    (name, webhook) => {
      const at = `${where}: webhooks[${name}].objectSelector`;
      expect(webhook.objectSelector, at).toBeDefined();
      expect(
        selectorMatches(webhook.objectSelector, podLabels),
        `${at} must exclude the webhook's own pods`,
      ).toBe(false);
      expect(
        selectorMatches(webhook.objectSelector, { app: "payments" }),
        `${at} must include other pods`,
      ).toBe(true);
      expect(
        selectorMatches(webhook.objectSelector, {}),
        `${at} must include unlabelled pods`,
      ).toBe(true);
    },
  );
});

describe("optional manifests", () => {
  const [networkPolicyEntry, ...extraPolicies] = readYamlObjects(
    path.join(manifestsDir, "optional", "networkpolicy.yaml"),
  );
  const [serviceMonitorEntry, ...extraMonitors] = readYamlObjects(
    path.join(manifestsDir, "optional", "servicemonitor.yaml"),
  );

  it("network policy validates", () => {
    expect(
      extraPolicies,
      "optional/networkpolicy.yaml: extra documents",
    ).toEqual([]);
    expect(
      networkPolicyEntry?.object.kind,
      "optional/networkpolicy.yaml: kind",
    ).toBe("NetworkPolicy");
    const object = networkPolicyEntry!.object;
    expect(() => validateAgainstSchema(object)).not.toThrow();
    expect(
      findUnknownFields(object).join(", "),
      "optional/networkpolicy.yaml: unknown fields",
    ).toBe("");
  });

  it("network policy opens the needed ports", () => {
    const policy = networkPolicyEntry!.object as unknown as INetworkPolicy;
    const at = "NetworkPolicy cloudhsm-webhook (optional/networkpolicy.yaml)";
    expect(policy.metadata?.namespace, `${at}: metadata.namespace`).toBe(
      NAMESPACE,
    );
    expect(
      selectorMatches(policy.spec?.podSelector, podLabels),
      `${at}: spec.podSelector must select the webhook pods`,
    ).toBe(true);
    expect(policy.spec?.policyTypes, `${at}: spec.policyTypes`).toEqual([
      "Ingress",
      "Egress",
    ]);

    const portsOf = (
      rules:
        | { ports?: { port?: number | string; protocol?: string }[] }[]
        | undefined,
    ) =>
      (rules ?? [])
        .flatMap((rule) => rule.ports ?? [])
        .map((port) => `${port.protocol ?? "TCP"}/${port.port}`);
    const ingress = portsOf(policy.spec?.ingress);
    expect(ingress, `${at}: spec.ingress ports`).toContain("TCP/8443");
    expect(ingress, `${at}: spec.ingress ports`).toContain("TCP/9090");
    const egress = portsOf(policy.spec?.egress);
    expect(egress, `${at}: spec.egress ports (DNS)`).toContain("UDP/53");
    expect(egress, `${at}: spec.egress ports (DNS)`).toContain("TCP/53");
    expect(egress, `${at}: spec.egress ports (API server and AWS)`).toContain(
      "TCP/443",
    );
  });

  it("service monitor scrapes the metrics port", () => {
    expect(
      extraMonitors,
      "optional/servicemonitor.yaml: extra documents",
    ).toEqual([]);
    const monitor = serviceMonitorEntry!.object as KubeObject & {
      spec?: {
        selector?: LabelSelector;
        namespaceSelector?: { matchNames?: string[] };
        endpoints?: { port?: string; path?: string; scheme?: string }[];
      };
    };
    const at = "ServiceMonitor cloudhsm-webhook (optional/servicemonitor.yaml)";

    expect(monitor.apiVersion, `${at}: apiVersion`).toBe(
      "monitoring.coreos.com/v1",
    );
    expect(monitor.kind, `${at}: kind`).toBe("ServiceMonitor");
    expect(monitor.metadata.namespace, `${at}: metadata.namespace`).toBe(
      NAMESPACE,
    );
    expect(
      selectorMatches(monitor.spec?.selector, service.metadata?.labels ?? {}),
      `${at}: spec.selector must select Service ${NAME}`,
    ).toBe(true);
    expect(
      monitor.spec?.namespaceSelector?.matchNames,
      `${at}: spec.namespaceSelector.matchNames`,
    ).toContain(NAMESPACE);

    const endpoint = monitor.spec?.endpoints?.[0];
    expect(
      service.spec?.ports?.map((port) => port.name),
      `${at}: spec.endpoints[0].port`,
    ).toContain(endpoint?.port);
    expect(endpoint?.path, `${at}: spec.endpoints[0].path`).toBe("/metrics");
    expect(endpoint?.scheme, `${at}: spec.endpoints[0].scheme`).toBe("http");
  });
});

describe("SDK 5 example", () => {
  const file = path.join(
    repoRoot,
    "examples",
    "deployment-sdk5-config-path.yaml",
  );
  const [entry, ...extra] = readYamlObjects(file);
  const at = "examples/deployment-sdk5-config-path.yaml";
  const configPath = "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg";

  it("validates as a Deployment", () => {
    expect(extra, `${at}: extra documents`).toEqual([]);
    expect(entry?.object.kind, `${at}: kind`).toBe("Deployment");
    expect(() => validateAgainstSchema(entry!.object)).not.toThrow();
    expect(
      findUnknownFields(entry!.object).join(", "),
      `${at}: unknown fields`,
    ).toBe("");
  });

  it("opts in on the pod template", () => {
    const example = entry!.object as unknown as IDeployment;
    const annotations = example.spec?.template.metadata?.annotations ?? {};
    expect(
      annotations["cloudhsm/inject"],
      `${at}: spec.template.metadata.annotations["cloudhsm/inject"]`,
    ).toBe("true");
    expect(
      annotations["cloudhsm/config-path"],
      `${at}: spec.template.metadata.annotations["cloudhsm/config-path"]`,
    ).toBe(configPath);
  });

  it("leaves the config path free", () => {
    // The webhook mounts its file at the config path, and a second mount at
    // that path or over its folder would make the pod invalid or hide the file.
    const example = entry!.object as unknown as IDeployment;
    for (const exampleContainer of example.spec?.template.spec?.containers ??
      []) {
      for (const mount of exampleContainer.volumeMounts ?? []) {
        const mountAt = `${at}: containers[${exampleContainer.name}].volumeMounts[${mount.name}].mountPath`;
        expect(mount.mountPath, mountAt).not.toBe(configPath);
        expect(
          configPath.startsWith(`${mount.mountPath.replace(/\/$/, "")}/`),
          `${mountAt} covers ${configPath}`,
        ).toBe(false);
      }
    }
  });
});

describe("IAM policies", () => {
  interface PolicyStatement {
    Effect?: string;
    Action?: string | string[];
    NotAction?: unknown;
    Resource?: string | string[];
    Principal?: { Service?: string | string[] };
  }
  interface PolicyDocument {
    Version?: string;
    Statement?: PolicyStatement[];
  }
  const asList = (value: string | string[] | undefined) =>
    value === undefined ? [] : Array.isArray(value) ? value : [value];

  it("allows DescribeClusters and nothing else", () => {
    const policy = JSON.parse(
      readFileSync(path.join(manifestsDir, "iam-policy.json"), "utf8"),
    ) as PolicyDocument;
    expect(policy.Version, "iam-policy.json: Version").toBe("2012-10-17");
    expect(policy.Statement?.length, "iam-policy.json: Statement").toBe(1);
    const statement = policy.Statement![0]!;
    expect(statement.Effect, "iam-policy.json: Statement[0].Effect").toBe(
      "Allow",
    );
    expect(
      asList(statement.Action),
      "iam-policy.json: Statement[0].Action",
    ).toEqual(["cloudhsm:DescribeClusters"]);
    expect(
      statement.NotAction,
      "iam-policy.json: Statement[0].NotAction",
    ).toBeUndefined();
    // DescribeClusters supports no resource-level permissions.
    expect(
      asList(statement.Resource),
      "iam-policy.json: Statement[0].Resource",
    ).toEqual(["*"]);
  });

  it("trusts EKS Pod Identity", () => {
    const policy = JSON.parse(
      readFileSync(
        path.join(manifestsDir, "pod-identity-trust-policy.json"),
        "utf8",
      ),
    ) as PolicyDocument;
    expect(policy.Version, "pod-identity-trust-policy.json: Version").toBe(
      "2012-10-17",
    );
    const statement = policy.Statement?.[0];
    expect(
      statement?.Effect,
      "pod-identity-trust-policy.json: Statement[0].Effect",
    ).toBe("Allow");
    expect(
      asList(statement?.Principal?.Service),
      "pod-identity-trust-policy.json: Statement[0].Principal.Service",
    ).toEqual(["pods.eks.amazonaws.com"]);
    expect(
      asList(statement?.Action).sort(),
      "pod-identity-trust-policy.json: Statement[0].Action",
    ).toEqual(["sts:AssumeRole", "sts:TagSession"]);
  });
});
