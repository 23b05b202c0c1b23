/**
 * Offline injection of Kubernetes manifests. It finds the pod templates of workloads in a YAML
 * or JSON stream, decides and mutates each one with the webhook's code, and writes the stream
 * back. Documents without changes are copied byte for byte. In changed documents, nodes that
 * the patch does not touch keep their comments and quoting.
 *
 * Pure: the caller fetches the HSM lists between planManifests and injectManifests.
 */
import {
  isCollection,
  isMap,
  isSeq,
  parseAllDocuments,
  type Document,
} from "yaml";
import fastJsonPatch from "fast-json-patch";
import { containerNames, podSource } from "../admission/decide.js";
import { InvalidPodError, injectPod } from "../injection/mutate.js";
import { diffPods } from "../injection/patch.js";
import { buildInjectionPlan } from "../injection/plan.js";
import { isObject, ownString, type JsonObject } from "../injection/pod.js";
import type { RenderedCluster } from "../injection/render.js";
import {
  resolveInjection,
  type AnnotationSource,
  type InjectionOptions,
  type ResolveDefaults,
} from "../injection/resolve.js";
import { ownedView } from "../injection/view.js";
import {
  YamlUpdateError,
  assertEditable,
  updateMapNode,
  type NodePath,
} from "./yaml-update.js";

/** One problem that stops the output, with the document and object it concerns. */
export interface DocumentProblem {
  /** Such as "document 2 (Deployment shop/checkout)"; documents are numbered from 1. */
  readonly location: string;
  readonly message: string;
}

/** The input cannot be injected. Nothing may be written when this is thrown. */
export class ManifestError extends Error {
  override readonly name = "ManifestError";

  constructor(readonly problems: readonly DocumentProblem[]) {
    super(
      problems
        .map((problem) => `${problem.location}: ${problem.message}`)
        .join("\n"),
    );
  }
}

interface ParsedDocument {
  /** Position in the stream, from 1. */
  readonly number: number;
  readonly document: Document.Parsed;
  /** The document's source, with its markers and surrounding comments. */
  readonly source: string;
  /** The document as plain JSON, read once before any change. */
  readonly value: unknown;
  changed: boolean;
}

/** A parsed YAML stream. injectManifests changes its documents in place. */
export interface ParsedManifests {
  readonly text: string;
  readonly documents: readonly ParsedDocument[];
}

/** One pod template that opts in, with the options resolved for it. */
export interface TemplateTarget {
  readonly location: string;
  readonly parsed: ParsedDocument;
  /** Path of the pod template node from the document root. */
  readonly path: NodePath;
  readonly template: JsonObject;
  readonly options: InjectionOptions;
}

export interface ManifestPlan {
  readonly targets: readonly TemplateTarget[];
  /** Non-fatal findings, such as a container name that the template lacks. */
  readonly warnings: readonly string[];
}

interface TemplateLayout {
  /** The API group whose objects of this kind carry a pod template. */
  readonly group: string;
  /** Path of the pod template in the object, empty for a Pod. */
  readonly templatePath: readonly string[];
}

/**
 * The kinds whose pods the webhook injects, and where their pod template sits. The group is
 * checked so that an operator's custom kind of the same name passes through unchanged.
 */
const TEMPLATE_LAYOUTS: Readonly<Record<string, TemplateLayout>> = {
  Pod: { group: "", templatePath: [] },
  Deployment: { group: "apps", templatePath: ["spec", "template"] },
  StatefulSet: { group: "apps", templatePath: ["spec", "template"] },
  DaemonSet: { group: "apps", templatePath: ["spec", "template"] },
  ReplicaSet: { group: "apps", templatePath: ["spec", "template"] },
  Job: { group: "batch", templatePath: ["spec", "template"] },
  CronJob: {
    group: "batch",
    templatePath: ["spec", "jobTemplate", "spec", "template"],
  },
};

/**
 * Parses a stream of YAML documents, which may be JSON. The YAML 1.1 schema is used, as kubectl
 * reads manifests, so `0644` is octal and `yes` is a boolean. Throws ManifestError listing every
 * document that is not valid YAML.
 */
export function parseManifests(text: string): ParsedManifests {
  const documents = parseAllDocuments(text, {
    version: "1.1",
    prettyErrors: true,
  });
  const problems: DocumentProblem[] = [];
  const parsed: ParsedDocument[] = [];
  documents.forEach((document, index) => {
    const number = index + 1;
    const start = index === 0 ? 0 : document.range[0];
    const next = documents[index + 1];
    const end = next === undefined ? text.length : next.range[0];
    const source = text.slice(start, end);
    const error = document.errors[0];
    if (error !== undefined) {
      problems.push({
        location: `document ${number}${kindHint(source)}`,
        message: `invalid YAML: ${firstLine(error.message)}`,
      });
      return;
    }
    let value: unknown;
    try {
      value = document.toJS();
    } catch (failure) {
      // toJS rejects alias expansion past maxAliasCount (a "billion laughs" document).
      problems.push({
        location: `document ${number}${kindHint(source)}`,
        message: `invalid YAML: ${oneLine((failure as Error).message)}`,
      });
      return;
    }
    parsed.push({ number, document, source, value, changed: false });
  });
  if (problems.length > 0) {
    throw new ManifestError(problems);
  }
  return { text, documents: parsed };
}

/**
 * Finds every pod template that opts in and resolves its options, as the webhook would for the
 * pods created from it. Annotation sources are, nearest first: the pod template, the CronJob's
 * jobTemplate, the workload's own metadata, and a Namespace of the same stream. Throws
 * ManifestError for a workload without a pod template and for an invalid annotation.
 */
export function planManifests(
  manifests: ParsedManifests,
  defaults: ResolveDefaults,
): ManifestPlan {
  const objects = manifests.documents.flatMap(objectsOf);
  const namespaces = namespaceSources(objects);
  const problems: DocumentProblem[] = [];
  const warnings: string[] = [];
  const targets: TemplateTarget[] = [];

  for (const entry of objects) {
    const { object, location } = entry;
    const kind = ownString(object, "kind") ?? "";
    const layout = Object.hasOwn(TEMPLATE_LAYOUTS, kind)
      ? TEMPLATE_LAYOUTS[kind]
      : undefined;
    if (layout === undefined) {
      continue;
    }
    const apiVersion = ownString(object, "apiVersion") ?? "";
    if (groupOf(apiVersion) !== layout.group) {
      warnings.push(
        `${location}: apiVersion "${apiVersion}" is not the ${layout.group || "core"} API group, so the document was passed through unchanged`,
      );
      continue;
    }
    const template = valueAt(object, layout.templatePath);
    if (!isObject(template)) {
      problems.push({
        location,
        message: `${layout.templatePath.join(".")} is missing or not a mapping, so there is no pod template to inject`,
      });
      continue;
    }

    const sources = annotationSources(object, kind, template, namespaces);
    const decision = resolveInjection(
      sources,
      containerNames(template),
      defaults,
    );
    if ("error" in decision) {
      problems.push({ location, message: decision.error });
      continue;
    }
    if (!decision.inject) {
      continue;
    }
    warnings.push(
      ...decision.warnings.map((warning) => `${location}: ${warning}`),
    );
    targets.push({
      location,
      parsed: entry.parsed,
      path: [...entry.path, ...layout.templatePath],
      template,
      options: decision.options,
    });
  }
  if (problems.length > 0) {
    throw new ManifestError(problems);
  }
  return { targets, warnings };
}

/** A cluster that some targets need, with the documents that need it, for error messages. */
export interface RequiredCluster {
  readonly clusterId: string;
  readonly region: string;
  readonly locations: readonly string[];
}

/** Lists the clusters the targets name, each once, in first-use order. */
export function requiredClusters(
  targets: readonly TemplateTarget[],
): RequiredCluster[] {
  const byKey = new Map<string, RequiredCluster & { locations: string[] }>();
  for (const target of targets) {
    const { region } = target.options;
    for (const clusterId of target.options.clusterIds) {
      const key = clusterKey(clusterId, region);
      const existing = byKey.get(key);
      if (existing === undefined) {
        byKey.set(key, { clusterId, region, locations: [target.location] });
      } else if (!existing.locations.includes(target.location)) {
        existing.locations.push(target.location);
      }
    }
  }
  return [...byKey.values()];
}

/** Returns the map key that injectManifests uses to find a cluster. */
export function clusterKey(clusterId: string, region: string): string {
  return `${region}/${clusterId}`;
}

/**
 * Injects every target in place, with the same steps as the admission handler: mutate one
 * ownedView copy with injectPod, diff it against another, and apply the patch to the template's
 * YAML node. `clusters` maps clusterKey() to a cluster with at least one ACTIVE HSM, for every
 * cluster that requiredClusters() listed. Returns the warnings. Throws ManifestError when a
 * template cannot be injected; documents may then be partly changed, so the caller must not
 * render them.
 */
export function injectManifests(
  plan: ManifestPlan,
  clusters: ReadonlyMap<string, RenderedCluster>,
  hsmCaFile: string,
  now: Date,
): string[] {
  const problems: DocumentProblem[] = [];
  const warnings: string[] = [];
  for (const target of plan.targets) {
    const { location, options } = target;
    const rendered: RenderedCluster[] = [];
    for (const clusterId of options.clusterIds) {
      const cluster = clusters.get(clusterKey(clusterId, options.region));
      if (cluster === undefined || cluster.active.length === 0) {
        throw new RangeError(
          `no usable HSM list was passed for cluster ${clusterId} in ${options.region}`,
        );
      }
      rendered.push(cluster);
    }
    const injection = buildInjectionPlan(options, rendered, hsmCaFile);

    const original = ownedView(target.template, false);
    const mutated = ownedView(target.template);
    let result;
    try {
      result = injectPod(mutated, injection, now);
    } catch (error) {
      if (error instanceof InvalidPodError) {
        problems.push({ location, message: error.message });
        continue;
      }
      throw error;
    }
    warnings.push(
      ...result.warnings.map((warning) => `${location}: ${warning}`),
    );
    if (!result.changed) {
      continue;
    }
    // The API server applies the webhook's patch to the whole pod. Here it is applied to a copy
    // of the template, and the YAML node is then brought to the result.
    const patch = diffPods(original, mutated);
    let updated;
    try {
      updated = fastJsonPatch.applyPatch(
        structuredClone(target.template),
        patch,
        false,
        true,
      ).newDocument;
    } catch (error) {
      // NOTE: fast-json-patch rejects a path through a "__proto__" key. The diff takes one when
      // an env entry with that key moves, after a duplicate CLOUDHSM_* entry is dropped. The
      // webhook's patch for such a pod is correct; only this offline copy cannot be updated.
      const cause = (error as Error).message.includes("__proto__")
        ? 'the change passes through a "__proto__" key, which this command cannot write; remove duplicate CLOUDHSM_* env entries from the template'
        : (error as Error).message;
      problems.push({
        location,
        message: `cannot apply the CloudHSM changes to this template: ${cause}`,
      });
      continue;
    }
    try {
      useBlockStyle(target.parsed);
      assertEditable(target.parsed.document, target.path);
      updateMapNode(target.parsed.document, target.path, updated);
    } catch (error) {
      if (error instanceof YamlUpdateError) {
        problems.push({ location, message: error.message });
        continue;
      }
      throw error;
    }
    target.parsed.changed = true;
  }
  if (problems.length > 0) {
    throw new ManifestError(problems);
  }
  return warnings;
}

/**
 * Writes the stream back: unchanged documents as their source text, changed ones formatted by
 * the yaml library with the sequence indentation of their source and without line folding.
 */
export function renderManifests(manifests: ParsedManifests): string {
  let output = "";
  for (const parsed of manifests.documents) {
    if (!parsed.changed) {
      output += parsed.source;
      continue;
    }
    let text = parsed.document.toString({
      lineWidth: 0,
      flowCollectionPadding: false,
      indentSeq: indentsSequences(manifests.text, parsed.document),
    });
    // A document after the first needs a marker unless the previous one ended with "...".
    if (
      output !== "" &&
      !text.startsWith("---") &&
      !/(^|\n)\.\.\.[ \t]*\n?$/.test(output)
    ) {
      text = `---\n${text}`;
    }
    if (output !== "" && !output.endsWith("\n")) {
      output += "\n";
    }
    output += text;
  }
  return output;
}

interface ManifestObject {
  readonly parsed: ParsedDocument;
  readonly path: NodePath;
  readonly object: JsonObject;
  readonly location: string;
}

/** Lists the objects of a document: the document itself, or the items of a List. */
function objectsOf(parsed: ParsedDocument): ManifestObject[] {
  const { value, number } = parsed;
  if (!isObject(value)) {
    return [];
  }
  const kind = ownString(value, "kind") ?? "";
  if (kind.endsWith("List") && Array.isArray(value.items)) {
    const objects: ManifestObject[] = [];
    value.items.forEach((item: unknown, index: number) => {
      if (isObject(item)) {
        objects.push({
          parsed,
          path: ["items", index],
          object: item,
          location: `document ${number} items[${index}] (${describeObject(item)})`,
        });
      }
    });
    return objects;
  }
  return [
    {
      parsed,
      path: [],
      object: value,
      location: `document ${number} (${describeObject(value)})`,
    },
  ];
}

/** Collects the annotations of v1 Namespace objects in the stream, by namespace name. */
function namespaceSources(
  objects: readonly ManifestObject[],
): Map<string, AnnotationSource> {
  const namespaces = new Map<string, AnnotationSource>();
  for (const { object } of objects) {
    if (
      ownString(object, "kind") === "Namespace" &&
      ownString(object, "apiVersion") === "v1"
    ) {
      const source = podSource(object);
      if (source.name !== "") {
        namespaces.set(source.name, { ...source, kind: "Namespace" });
      }
    }
  }
  return namespaces;
}

function annotationSources(
  object: JsonObject,
  kind: string,
  template: JsonObject,
  namespaces: ReadonlyMap<string, AnnotationSource>,
): AnnotationSource[] {
  if (kind === "Pod") {
    return withNamespace([podSource(object)], object, namespaces);
  }
  const own = podSource(object);
  const sources: AnnotationSource[] = [podSource(template)];
  const jobTemplate = valueAt(object, ["spec", "jobTemplate"]);
  if (kind === "CronJob" && isObject(jobTemplate)) {
    sources.push({
      ...podSource(jobTemplate),
      kind: "jobTemplate of CronJob",
      name: own.name,
    });
  }
  sources.push({ ...own, kind });
  return withNamespace(sources, object, namespaces);
}

function withNamespace(
  sources: AnnotationSource[],
  object: JsonObject,
  namespaces: ReadonlyMap<string, AnnotationSource>,
): AnnotationSource[] {
  const metadata = isObject(object.metadata) ? object.metadata : {};
  const name = ownString(metadata, "namespace");
  const namespace = name === undefined ? undefined : namespaces.get(name);
  return namespace === undefined ? sources : [...sources, namespace];
}

/** Rewrites a JSON-style (flow) document in block style before its first change. */
function useBlockStyle(parsed: ParsedDocument): void {
  const { document } = parsed;
  if (
    !parsed.changed &&
    isCollection(document.contents) &&
    document.contents.flow
  ) {
    document.contents = document.createNode(
      document.toJS(),
    ) as typeof document.contents;
  }
}

/**
 * Returns whether the document indents a block sequence under its key ("key:\n  - a") or
 * not ("key:\n- a"), from the first block sequence that is a map value. Defaults to indenting.
 */
function indentsSequences(text: string, document: Document): boolean {
  let answer: boolean | undefined;
  const visitMap = (node: unknown): void => {
    if (answer !== undefined) {
      return;
    }
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = pair.key as { range?: [number, number, number] } | null;
        const value = pair.value;
        if (isSeq(value) && !value.flow && value.range && key?.range) {
          answer = column(text, value.range[0]) > column(text, key.range[0]);
          return;
        }
        visitMap(value);
      }
    } else if (isSeq(node)) {
      for (const item of node.items) {
        visitMap(item);
      }
    }
  };
  visitMap(document.contents);
  return answer ?? true;
}

function column(text: string, offset: number): number {
  return offset - (text.lastIndexOf("\n", offset - 1) + 1);
}

/** Renders "Deployment shop/checkout" for messages; the name falls back to generateName. */
function describeObject(object: JsonObject): string {
  const kind = ownString(object, "kind") ?? "unknown kind";
  const metadata = isObject(object.metadata) ? object.metadata : {};
  const name =
    ownString(metadata, "name") ??
    (ownString(metadata, "generateName") !== undefined
      ? `${ownString(metadata, "generateName")}*`
      : "(no name)");
  const namespace = ownString(metadata, "namespace");
  return `${kind} ${namespace === undefined ? "" : `${namespace}/`}${name}`;
}

/** Returns " (Kind)" from a top-level kind line of a document that did not parse. */
function kindHint(source: string): string {
  const match = /^kind:[ \t]*["']?([A-Za-z][\w.-]*)/m.exec(source);
  return match?.[1] === undefined ? "" : ` (${match[1]})`;
}

function groupOf(apiVersion: string): string {
  const slash = apiVersion.indexOf("/");
  return slash < 0 ? "" : apiVersion.slice(0, slash);
}

function valueAt(object: JsonObject, path: readonly string[]): unknown {
  let value: unknown = object;
  for (const key of path) {
    if (!isObject(value) || !Object.hasOwn(value, key)) {
      return undefined;
    }
    value = value[key];
  }
  return value;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}

/** Drops the code excerpt that prettyErrors appends after the position. */
function firstLine(message: string): string {
  return oneLine(message.split("\n")[0] ?? "").replace(/:$/, "");
}
