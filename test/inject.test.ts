import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { chainDecider } from "../src/admission/decide.js";
import { AdmissionHandler } from "../src/admission/handler.js";
import { runInjectCommand } from "../src/cli/inject.js";
import { HsmDirectory } from "../src/discovery/directory.js";
import { StaticHsmSource } from "../src/discovery/static-source.js";
import type { AnnotationSource } from "../src/injection/resolve.js";
import { applyStrict, decodePatch } from "./support/apply-patch.js";
import {
  buildCluster,
  buildHsm,
  startFakeCloudHsm,
  type FakeCloudHsm,
} from "./support/fake-cloudhsm.js";
import { validatePod } from "./support/pod-schema.js";
// Sets static AWS credentials and turns off the instance metadata service for the SDK.
import "./support/webhook-harness.js";

const FIXTURES = "test/fixtures/inject";
const STATIC = `${FIXTURES}/static-hsms.json`;
const CLUSTER = "cluster-fixture2abcd";
const REGION = "us-east-1";
const NOW = new Date("2024-05-01T08:30:00.000Z");
const LATER = new Date("2024-06-01T08:30:00.000Z");
const STATIC_FLAGS = [
  `--cluster-id=${CLUSTER}`,
  `--region=${REGION}`,
  `--static-hsms=${STATIC}`,
];

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function inject(
  args: readonly string[],
  options: { stdin?: string; now?: Date; env?: NodeJS.ProcessEnv } = {},
): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
  stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
  const code = await runInjectCommand(
    args,
    options.env ?? {},
    {
      stdin: Readable.from(options.stdin === undefined ? [] : [options.stdin]),
      stdout,
      stderr,
    },
    { now: options.now ?? NOW },
  );
  return { code, stdout: out, stderr: err };
}

type Json = Record<string, any>;

function documents(text: string): Json[] {
  return parseAllDocuments(text, { version: "1.1" }).map((document) => {
    expect(document.errors, "output parses").toEqual([]);
    return document.toJS() as Json;
  });
}

function find(objects: Json[], kind: string, name: string): Json {
  const found = objects.find(
    (object) => object?.kind === kind && object.metadata?.name === name,
  );
  if (found === undefined) {
    throw new Error(`no ${kind} ${name} in the output`);
  }
  return found;
}

function env(container: Json): Record<string, string> {
  return Object.fromEntries(
    (container.env ?? []).map((entry: Json) => [entry.name, entry.value]),
  );
}

let fixture: string;

beforeAll(async () => {
  fixture = await readFile(`${FIXTURES}/workloads.yaml`, "utf8");
});

describe("inject", () => {
  it("injects every workload kind", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/workloads.yaml`,
      ...STATIC_FLAGS,
    ]);
    expect(run.stderr).toBe(
      'cloudhsm-webhook inject: warning: document 13 (Deployment shop/not-apps): apiVersion "example.com/v1" is not the apps API group, so the document was passed through unchanged\n',
    );
    expect(run.code).toBe(0);
    const output = documents(run.stdout);
    const input = documents(fixture);
    expect(output).toHaveLength(input.length);

    const templates: Array<[string, string, Json]> = [
      [
        "Deployment",
        "checkout",
        find(output, "Deployment", "checkout").spec.template,
      ],
      [
        "StatefulSet",
        "ledger",
        find(output, "StatefulSet", "ledger").spec.template,
      ],
      [
        "DaemonSet",
        "key-agent",
        find(output, "DaemonSet", "key-agent").spec.template,
      ],
      [
        "ReplicaSet",
        "signer",
        find(output, "ReplicaSet", "signer").spec.template,
      ],
      [
        "Job",
        "migrate-keys",
        find(output, "Job", "migrate-keys").spec.template,
      ],
      [
        "CronJob",
        "rotate-keys",
        find(output, "CronJob", "rotate-keys").spec.jobTemplate.spec.template,
      ],
      ["Pod", "hsm-debug", find(output, "Pod", "hsm-debug")],
    ];
    for (const [kind, name, template] of templates) {
      const where = `${kind} ${name}`;
      expect(template.metadata.labels["cloudhsm/injected"], where).toBe("true");
      expect(
        template.metadata.annotations["cloudhsm/injected-ips"],
        where,
      ).toBe("10.0.2.40,10.0.12.5");
      expect(template.metadata.annotations["cloudhsm/injected-at"], where).toBe(
        NOW.toISOString(),
      );
      validatePod({ apiVersion: "v1", kind: "Pod", ...template });
    }

    const checkout = find(output, "Deployment", "checkout").spec.template;
    expect(env(checkout.spec.containers[0])).toEqual({
      CLOUDHSM_CLUSTER_ID: CLUSTER,
      CLOUDHSM_HSM_IPS: "10.0.2.40,10.0.12.5",
      CLOUDHSM_HSM_IP: "10.0.2.40",
      CLOUDHSM_CONFIG_FILE: "/var/run/cloudhsm/cloudhsm.cfg",
      LISTEN_ADDR: ":8080",
      HSM_ENDPOINT: "$(CLOUDHSM_HSM_IP):2223",
    });
    const ledger = find(output, "StatefulSet", "ledger").spec.template;
    expect(
      JSON.parse(ledger.metadata.annotations["cloudhsm/config"]).clusters[0]
        .region,
      "StatefulSet metadata sets config-format json",
    ).toBe(REGION);
    const signer = find(output, "ReplicaSet", "signer").spec.template;
    expect(env(signer.spec.containers[0]).CLOUDHSM_HSM_IP, "signer app").toBe(
      "10.0.2.40",
    );
    expect(signer.spec.containers[1].env, "signer proxy").toBeUndefined();
    const migrate = find(output, "Job", "migrate-keys").spec.template;
    expect(migrate.spec.containers[0].volumeMounts).toEqual([
      {
        name: "cloudhsm-config",
        mountPath: "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg",
        readOnly: true,
        subPath: "cloudhsm.cfg",
      },
    ]);
    const rotate = find(output, "CronJob", "rotate-keys").spec.jobTemplate.spec
      .template;
    const rotateConfig = JSON.parse(
      rotate.metadata.annotations["cloudhsm/config"],
    );
    expect(
      rotateConfig.clusters.map((entry: Json) => entry.cluster.cluster_id),
      "CronJob jobTemplate names two clusters",
    ).toEqual([CLUSTER, "cluster-secondary234"]);
    const debug = find(output, "Pod", "hsm-debug");
    expect(JSON.parse(debug.metadata.annotations["cloudhsm/config"])).toEqual({
      server: { hostname: "10.0.2.40", port: 2223 },
    });

    for (const [kind, name] of [
      ["ConfigMap", "checkout-settings"],
      ["Service", "checkout"],
      ["Deployment", "storefront"],
      ["Deployment", "reports"],
      ["Deployment", "not-apps"],
      ["Namespace", "payments"],
    ] as const) {
      expect(find(output, kind, name), `${kind} ${name} unchanged`).toEqual(
        find(input, kind, name),
      );
    }
  });

  it("matches the webhook's patch for each template", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/workloads.yaml`,
      ...STATIC_FLAGS,
    ]);
    const output = documents(run.stdout);
    const input = documents(fixture);
    const logger = pino({ level: "silent" });
    const directory = new HsmDirectory({
      source: new StaticHsmSource(STATIC),
      refreshIntervalMs: 60_000,
      maxStalenessMs: 600_000,
      requestTimeoutMs: 5_000,
      logger,
    });
    const source = (kind: string, name: string, annotations: Json = {}) =>
      ({ kind, name, annotations }) as AnnotationSource;
    const payments = source("Namespace", "payments", {
      "cloudhsm/inject": "true",
    });
    const shop = source("Namespace", "shop");
    // What the webhook reads from the API server for the pods of each workload.
    const cases: Array<{
      kind: string;
      name: string;
      template: (object: Json) => Json;
      owners: AnnotationSource[];
      namespace: AnnotationSource;
    }> = [
      {
        kind: "Deployment",
        name: "checkout",
        template: (object) => object.spec.template,
        owners: [
          source("ReplicaSet", "checkout-7d9f"),
          source("Deployment", "checkout"),
        ],
        namespace: shop,
      },
      {
        kind: "StatefulSet",
        name: "ledger",
        template: (object) => object.spec.template,
        owners: [
          source("StatefulSet", "ledger", {
            "cloudhsm/inject": "true",
            "cloudhsm/config-format": "json",
          }),
        ],
        namespace: shop,
      },
      {
        kind: "DaemonSet",
        name: "key-agent",
        template: (object) => object.spec.template,
        owners: [source("DaemonSet", "key-agent")],
        namespace: payments,
      },
      {
        kind: "ReplicaSet",
        name: "signer",
        template: (object) => object.spec.template,
        owners: [source("ReplicaSet", "signer")],
        namespace: shop,
      },
      {
        kind: "Job",
        name: "migrate-keys",
        template: (object) => object.spec.template,
        owners: [source("Job", "migrate-keys")],
        namespace: payments,
      },
      {
        kind: "CronJob",
        name: "rotate-keys",
        template: (object) => object.spec.jobTemplate.spec.template,
        owners: [
          source("Job", "rotate-keys-28600000", {
            "cloudhsm/inject": "true",
            "cloudhsm/cluster-id": `${CLUSTER},cluster-secondary234`,
          }),
          source("CronJob", "rotate-keys"),
        ],
        namespace: shop,
      },
      {
        kind: "Pod",
        name: "hsm-debug",
        template: (object) => object,
        owners: [],
        namespace: shop,
      },
    ];
    try {
      for (const entry of cases) {
        const template = entry.template(find(input, entry.kind, entry.name));
        const pod: Json = {
          apiVersion: "v1",
          kind: "Pod",
          ...structuredClone(template),
        };
        const handler = new AdmissionHandler({
          directory,
          decide: chainDecider({
            reader: {
              read: async () => ({
                owners: entry.owners,
                namespace: entry.namespace,
              }),
            },
            defaults: { clusterId: CLUSTER, region: REGION },
            onLookupError: "deny",
            logger,
          }),
          hsmCaFile: "/opt/cloudhsm/etc/customerCA.crt",
          onUnavailable: "deny",
          now: () => NOW,
        });
        const result = await handler.handle({
          uid: `uid-${entry.name}`,
          kind: { group: "", version: "v1", kind: "Pod" },
          resource: { group: "", version: "v1", resource: "pods" },
          operation: "CREATE",
          namespace: entry.namespace.name,
          object: pod,
        });
        expect(result.outcome, `${entry.kind} ${entry.name}`).toBe("injected");
        const admitted = applyStrict(pod, decodePatch(result.response));
        const injected = entry.template(find(output, entry.kind, entry.name));
        // A workload's template has no apiVersion and kind of its own.
        const expected =
          entry.kind === "Pod"
            ? admitted
            : { metadata: admitted.metadata, spec: admitted.spec };
        expect(injected, `${entry.kind} ${entry.name}`).toEqual(expected);
      }
    } finally {
      directory.stop();
    }
  });

  it("keeps comments, styles and untouched documents", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/workloads.yaml`,
      ...STATIC_FLAGS,
    ]);
    const sections = fixture.split(/^---$/m);
    // The Namespace, ConfigMap, Service, two Deployments that do not opt in, and the
    // Deployment of another API group.
    for (const index of [0, 9, 10, 11, 12]) {
      expect(
        run.stdout,
        `document ${index + 1} copied byte for byte`,
      ).toContain(sections[index]!);
    }
    expect(run.stdout.startsWith(sections[0]!), "leading comments").toBe(true);

    for (const comment of [
      "# Signs session tokens. Opts in on its pod template.",
      "- name: web # the only container",
      "# Nightly rotation. Opts in on the jobTemplate, for two clusters.",
      "# Node agent in payments: opted in by the Namespace above.",
      'cloudhsm/inject: "true" # every pod in payments gets HSM addresses',
    ]) {
      expect(run.stdout, comment).toContain(comment);
    }

    // The comment stays with the variable it describes, which now contains the current address.
    expect(run.stdout).toContain(
      [
        "        # A stale address from an old manifest; inject replaces it.",
        "        - name: CLOUDHSM_HSM_IP",
        "          value: 10.0.2.40",
      ].join("\n"),
    );

    // The Deployment's sequences are not indented under their keys, and stay that way.
    expect(run.stdout).toContain(
      "      containers:\n      - name: web # the only container",
    );
    expect(run.stdout).toContain(
      "        volumeMounts:\n        - name: cloudhsm-config",
    );
    expect(run.stdout).toContain(
      "  labels: {app.kubernetes.io/name: checkout, app.kubernetes.io/part-of: shop}",
    );
    expect(run.stdout).toContain(
      `args: ["--listen", ":8080", "--log-format", "json"]`,
    );
    expect(run.stdout).toContain("prometheus.io/scrape: 'true'");
    expect(run.stdout, "the config as a literal block").toContain(
      "        cloudhsm/config: |\n          {\n",
    );
  });

  it("injects the items of a List", async () => {
    for (const file of ["list.yaml", "list.json"]) {
      const run = await inject(["-f", `${FIXTURES}/${file}`, ...STATIC_FLAGS]);
      expect(run.code, file).toBe(0);
      expect(run.stderr, file).toBe("");
      const [list] = documents(run.stdout);
      expect(list?.kind, file).toBe("List");
      const deployment = list!.items[0];
      expect(
        deployment.spec.template.metadata.annotations["cloudhsm/injected-ips"],
        `${file} items[0]`,
      ).toBe("10.0.2.40,10.0.12.5");
      const second = list!.items[1];
      const input = documents(
        await readFile(`${FIXTURES}/${file}`, "utf8"),
      )[0]!;
      expect(second, `${file} items[1] unchanged`).toEqual(input.items[1]);
      expect(list!.metadata, file).toEqual({ resourceVersion: "" });
    }
    const json = await inject(["-f", `${FIXTURES}/list.json`, ...STATIC_FLAGS]);
    expect(json.stdout, "JSON input comes out as block YAML").toMatch(
      /^apiVersion: v1\nkind: List\nitems:\n {2}- apiVersion: apps\/v1\n/,
    );
    const yaml = await inject(["-f", `${FIXTURES}/list.yaml`, ...STATIC_FLAGS]);
    expect(yaml.stdout).toContain(
      "  # The first item opts in on its template.\n",
    );
  });

  it("reads standard input with -f -", async () => {
    const fromFile = await inject([
      "-f",
      `${FIXTURES}/workloads.yaml`,
      ...STATIC_FLAGS,
    ]);
    const fromStdin = await inject(["-f", "-", ...STATIC_FLAGS], {
      stdin: fixture,
    });
    expect(fromStdin.code).toBe(0);
    expect(fromStdin.stdout).toBe(fromFile.stdout);
  });

  it("leaves its own output unchanged", async () => {
    const first = await inject(["-f", "-", ...STATIC_FLAGS], {
      stdin: fixture,
    });
    const second = await inject(["-f", "-", ...STATIC_FLAGS], {
      stdin: first.stdout,
      now: LATER,
    });
    expect(second.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    for (const file of ["list.yaml", "list.json"]) {
      const once = await inject(["-f", `${FIXTURES}/${file}`, ...STATIC_FLAGS]);
      const twice = await inject(["-f", "-", ...STATIC_FLAGS], {
        stdin: once.stdout,
        now: LATER,
      });
      expect(twice.stdout, file).toBe(once.stdout);
    }
  });

  it("updates addresses on a second run after a change", async () => {
    const folder = await mkdtemp(join(tmpdir(), "cloudhsm-inject-"));
    try {
      const changed = JSON.parse(await readFile(STATIC, "utf8"));
      changed.Clusters[0].Hsms[0].State = "DELETE_IN_PROGRESS";
      await writeFile(join(folder, "hsms.json"), JSON.stringify(changed));
      const first = await inject(["-f", "-", ...STATIC_FLAGS], {
        stdin: fixture,
      });
      const second = await inject(
        [
          "-f",
          "-",
          `--cluster-id=${CLUSTER}`,
          `--region=${REGION}`,
          `--static-hsms=${join(folder, "hsms.json")}`,
        ],
        { stdin: first.stdout, now: LATER },
      );
      expect(second.code).toBe(0);
      const checkout = find(documents(second.stdout), "Deployment", "checkout")
        .spec.template;
      expect(checkout.metadata.annotations["cloudhsm/injected-ips"]).toBe(
        "10.0.2.40",
      );
      expect(checkout.metadata.annotations["cloudhsm/injected-at"]).toBe(
        LATER.toISOString(),
      );
      expect(env(checkout.spec.containers[0]).CLOUDHSM_HSM_IPS).toBe(
        "10.0.2.40",
      );
      // Apart from the addresses and the time, the output is the same.
      const normalize = (text: string) =>
        text
          .replaceAll(LATER.toISOString(), "TIME")
          .replaceAll(NOW.toISOString(), "TIME")
          .replace(/\n\s*\{\n\s*"hostname": "10\.0\.12\.5",\n[^}]*\},?/g, "")
          .replaceAll("10.0.2.40,10.0.12.5", "10.0.2.40");
      const firstLines = normalize(first.stdout).split("\n").length;
      expect(normalize(second.stdout).split("\n").length).toBeLessThanOrEqual(
        firstLines,
      );
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});

describe("inject errors", () => {
  it("rejects invalid YAML with the document and kind", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/invalid-yaml.yaml`,
      ...STATIC_FLAGS,
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(
      /^cloudhsm-webhook inject: document 2 \(Deployment\): invalid YAML: .+ at line \d+, column \d+\n$/,
    );
  });

  it("rejects an alias bomb", async () => {
    let text =
      "apiVersion: v1\nkind: ConfigMap\ndata:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    let previous = "a";
    for (const name of ["b", "c", "d", "e", "f"]) {
      text += `  ${name}: &${name} [${Array(10).fill(`*${previous}`).join(", ")}]\n`;
      previous = name;
    }
    const run = await inject(["-f", "-", ...STATIC_FLAGS], { stdin: text });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe(
      "cloudhsm-webhook inject: document 1 (ConfigMap): invalid YAML: Excessive alias count indicates a resource exhaustion attack\n",
    );
  });

  it("rejects workloads without a pod template", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/missing-template.yaml`,
      ...STATIC_FLAGS,
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe(
      [
        "cloudhsm-webhook inject: document 1 (Deployment shop/checkout): spec.template is missing or not a mapping, so there is no pod template to inject",
        "cloudhsm-webhook inject: document 3 (CronJob shop/rotate): spec.jobTemplate.spec.template is missing or not a mapping, so there is no pod template to inject",
        "",
      ].join("\n"),
    );
  });

  it("rejects an invalid annotation like the webhook", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/invalid-annotation.yaml`,
      ...STATIC_FLAGS,
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(
      'cloudhsm-webhook inject: document 1 (Deployment shop/checkout): invalid cloudhsm/cluster-id "cluster-xyz" on Deployment checkout',
    );
  });

  it("names template on failed patch", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/proto-env.yaml`,
      ...STATIC_FLAGS,
    ]);

    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(
      'cloudhsm-webhook inject: document 1 (Pod shop/debug): cannot apply the CloudHSM changes to this template: the change passes through a "__proto__" key',
    );
  });

  it("writes nothing when a later document fails", async () => {
    const text = `${fixture}---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: broken\n`;
    const run = await inject(["-f", "-", ...STATIC_FLAGS], { stdin: text });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(
      "document 14 (DaemonSet broken): spec.template is missing",
    );
  });

  it.each([
    [
      "anchor",
      "template: &template\n    spec:\n      containers: [{name: app, image: app}]\n  other: *template",
      "the pod template contains the YAML anchor &template",
    ],
    [
      "alias inside",
      "base: {env: &env [{name: A, value: b}]}\n  template:\n    spec:\n      containers: [{name: app, image: app, env: *env}]",
      "the pod template contains YAML aliases",
    ],
    [
      "merge key",
      "template:\n    <<: {spec: {containers: [{name: app, image: app}]}}",
      "the pod template contains a YAML merge key (<<)",
    ],
  ])("rejects a template with a YAML %s", async (_name, template, message) => {
    const text = `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shared\n  annotations: {cloudhsm/inject: "true"}\nspec:\n  ${template}\n`;
    const run = await inject(["-f", "-", ...STATIC_FLAGS], { stdin: text });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(
      `cloudhsm-webhook inject: document 1 (Deployment shared): ${message}`,
    );
  });

  it("rejects a cluster without ACTIVE HSMs", async () => {
    const run = await inject(
      [
        "-f",
        "-",
        "--cluster-id=cluster-degraded2345",
        `--region=${REGION}`,
        `--static-hsms=${STATIC}`,
      ],
      { stdin: fixture },
    );
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(
      /^cloudhsm-webhook inject: cluster cluster-degraded2345 in us-east-1 has no ACTIVE HSM \(1 DEGRADED\) \(needed by document 2 \(Deployment shop\/checkout\), /,
    );
  });

  it("rejects a cluster that does not exist", async () => {
    const run = await inject(
      [
        "-f",
        "-",
        "--cluster-id=cluster-missing23456",
        `--region=${REGION}`,
        `--static-hsms=${STATIC}`,
      ],
      { stdin: fixture },
    );
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(
      "cloudhsm-webhook inject: ClusterNotFound: cluster cluster-missing23456 not found in us-east-1",
    );
  });

  it("reports a file that cannot be read", async () => {
    const run = await inject([
      "-f",
      `${FIXTURES}/absent.yaml`,
      ...STATIC_FLAGS,
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(
      /^cloudhsm-webhook inject: cannot read .*absent\.yaml: ENOENT/,
    );
  });

  it.each([
    [["--cluster-id", CLUSTER, "--region", REGION], "missing -f FILE"],
    [["-f", "x.yaml", "--region", REGION], "missing --cluster-id"],
    [
      ["-f", "x.yaml", "--cluster-id", "cluster-x", "--region", REGION],
      'invalid --cluster-id "cluster-x"',
    ],
    [
      ["-f", "x.yaml", ...STATIC_FLAGS, "--replicas=3"],
      "unknown flag --replicas",
    ],
    [["x.yaml", ...STATIC_FLAGS], 'unexpected argument "x.yaml"'],
  ])("rejects flags %j", async (args, message) => {
    const run = await inject(args);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(message);
  });

  it("prints its flags with --help", async () => {
    const run = await inject(["--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("-f, --filename VALUE");
    expect(run.stdout).toContain("--static-hsms VALUE");
  });
});

describe("inject against AWS", () => {
  let aws: FakeCloudHsm;

  beforeAll(async () => {
    aws = await startFakeCloudHsm({
      clusters: [
        buildCluster(CLUSTER, [
          buildHsm("hsm-fixtureaaaaa2", "ACTIVE", { EniIp: "10.0.12.5" }),
          buildHsm("hsm-fixturebbbbb3", "ACTIVE", { EniIp: "10.0.2.40" }),
        ]),
      ],
    });
  });

  afterAll(async () => {
    await aws.close();
  });

  it("describes each cluster once", async () => {
    const before = aws.calls;
    const run = await inject([
      "-f",
      `${FIXTURES}/list.yaml`,
      `--cluster-id=${CLUSTER}`,
      `--region=${REGION}`,
      `--aws-endpoint=${aws.url}`,
    ]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(aws.calls - before).toBe(1);
    const [list] = documents(run.stdout);
    expect(
      list!.items[0].spec.template.metadata.annotations[
        "cloudhsm/injected-ips"
      ],
    ).toBe("10.0.2.40,10.0.12.5");
  });

  it("fails with the AWS error code and writes nothing", async () => {
    aws.setFault("access-denied");
    try {
      const run = await inject([
        "-f",
        `${FIXTURES}/list.yaml`,
        `--cluster-id=${CLUSTER}`,
        `--region=${REGION}`,
        `--aws-endpoint=${aws.url}`,
      ]);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(
        /^cloudhsm-webhook inject: CloudHsmAccessDeniedException: DescribeClusters for cluster-fixture2abcd in us-east-1 failed with CloudHsmAccessDeniedException/,
      );
      expect(run.stderr).toContain(
        "(needed by document 1 items[0] (Deployment shop/checkout))",
      );
    } finally {
      aws.clearFaults();
    }
  });

  it("calls AWS only when a template opts in", async () => {
    aws.setFault("access-denied");
    try {
      const before = aws.calls;
      const run = await inject(
        [
          "-f",
          "-",
          `--cluster-id=${CLUSTER}`,
          `--region=${REGION}`,
          `--aws-endpoint=${aws.url}`,
        ],
        {
          stdin: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
        },
      );
      expect(run.code).toBe(0);
      expect(run.stdout).toBe(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
      );
      expect(aws.calls).toBe(before);
    } finally {
      aws.clearFaults();
    }
  });
});

describe("inject CLI process", () => {
  it("runs through main with exit codes", () => {
    const childEnv = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const ok = spawnSync(
      "npx",
      [
        "tsx",
        "src/cli/main.ts",
        "inject",
        "-f",
        `${FIXTURES}/list.yaml`,
        ...STATIC_FLAGS,
      ],
      { encoding: "utf8", timeout: 60_000, env: childEnv },
    );
    expect(ok.stderr).toBe("");
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain("cloudhsm/injected-ips: 10.0.2.40,10.0.12.5");

    const failed = spawnSync(
      "npx",
      [
        "tsx",
        "src/cli/main.ts",
        "inject",
        "-f",
        `${FIXTURES}/missing-template.yaml`,
        ...STATIC_FLAGS,
      ],
      { encoding: "utf8", timeout: 60_000, env: childEnv },
    );
    expect(failed.status).toBe(1);
    expect(failed.stdout).toBe("");
    expect(failed.stderr).toContain("document 1 (Deployment shop/checkout)");
  });
});
