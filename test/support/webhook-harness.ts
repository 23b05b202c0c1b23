import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import type { Decider } from "../../src/admission/handler.js";
import { readFlags, readServeConfig, SERVE_FLAGS } from "../../src/config.js";
import { startWebhook, type RunningWebhook } from "../../src/cli/serve.js";
import type { WorkloadLookup } from "../../src/kube/lookup.js";
import { loggerOptions } from "../../src/log.js";
import {
  callWebhook,
  loopbackAgent,
  podCreateReview,
  type HttpReply,
  type WebhookTarget,
} from "../../scripts/lib/admission-client.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
  type CertificateAuthority,
} from "../../scripts/lib/pki.js";
import { applyStrict, decodePatch } from "./apply-patch.js";

// The AWS SDK's default credential chain reads these first, so it never reaches the instance
// metadata service from a test.
process.env.AWS_ACCESS_KEY_ID = "AKIDLOOPBACKTEST";
process.env.AWS_SECRET_ACCESS_KEY = "loopback-test-secret";
process.env.AWS_EC2_METADATA_DISABLED = "true";
delete process.env.AWS_PROFILE;
// Owner lookups go only to a fake API server that a test passes in.
delete process.env.KUBECONFIG;
delete process.env.KUBERNETES_SERVICE_HOST;

export const TEST_CLUSTER_ID = "cluster-abcdefghij2";
export const TEST_REGION = "us-east-1";

export interface HarnessOptions {
  /** Extra serve flags, such as --on-unavailable=allow. */
  readonly args?: readonly string[];
  /** A DescribeClusters-shaped document written to a file and passed as --static-hsms. */
  readonly staticClusters?: unknown;
  /** A cloudhsmv2 endpoint URL, passed as --aws-endpoint. */
  readonly awsEndpoint?: string;
  readonly decide?: Decider;
  /** Paths of the serving certificate and key; the default is a fresh pair for the service name. */
  readonly tlsFiles?: { readonly cert: string; readonly key: string };
  /** The CA that issued `tlsFiles`. */
  readonly ca?: CertificateAuthority;
  /** Owner and namespace lookups, normally against the loopback fake API server. */
  readonly lookup?: WorkloadLookup;
}

export interface AdmissionOutcome {
  /** The AdmissionReview as sent. */
  readonly sent: Record<string, any>;
  readonly reply: HttpReply;
  readonly review: Record<string, any>;
  readonly response: Record<string, any>;
  readonly patch: unknown[];
  /** The pod with the patch applied strictly by rfc6902. */
  readonly pod: Record<string, any>;
}

/** A webhook served in-process on loopback HTTPS, with a client that calls it like kube-apiserver. */
export interface Harness {
  readonly webhook: RunningWebhook;
  readonly ca: CertificateAuthority;
  readonly target: WebhookTarget;
  readonly folder: string;
  /** Every log line written so far, parsed. */
  readonly logs: Array<Record<string, any>>;
  /** Raw log text, for searching for values that must never be logged. */
  logText(): string;
  admit(
    pod: unknown,
    options?: { namespace?: string; apiVersion?: string; dryRun?: boolean },
  ): Promise<AdmissionOutcome>;
  close(): Promise<void>;
}

export async function startHarness(
  options: HarnessOptions = {},
): Promise<Harness> {
  const folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-test-"));
  const ca = options.ca ?? (await createCertificateAuthority());
  let tlsFiles = options.tlsFiles;
  if (tlsFiles === undefined) {
    const serving = await ca.issue([
      SERVICE_DNS_NAME,
      `${SERVICE_DNS_NAME}.cluster.local`,
    ]);
    tlsFiles = { cert: join(folder, "tls.crt"), key: join(folder, "tls.key") };
    await writeFile(tlsFiles.cert, serving.cert);
    await writeFile(tlsFiles.key, serving.key);
  }

  const args = [
    "--host=127.0.0.1",
    "--port=0",
    "--metrics-port=0",
    `--tls-cert=${tlsFiles.cert}`,
    `--tls-key=${tlsFiles.key}`,
    `--cluster-id=${TEST_CLUSTER_ID}`,
    `--region=${TEST_REGION}`,
    "--log-level=debug",
  ];
  if (options.staticClusters !== undefined) {
    await writeFile(
      join(folder, "hsms.json"),
      JSON.stringify(options.staticClusters),
    );
    args.push(`--static-hsms=${join(folder, "hsms.json")}`);
  }
  if (options.awsEndpoint !== undefined) {
    args.push(`--aws-endpoint=${options.awsEndpoint}`);
  }
  args.push(...(options.args ?? []));
  const config = readServeConfig(readFlags(SERVE_FLAGS, args, {}).values);

  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  const logger = pino(loggerOptions("debug"), sink);
  const webhook = await startWebhook(config, {
    logger,
    decide: options.decide,
    lookup: options.lookup,
  });
  const target: WebhookTarget = {
    port: webhook.port,
    ca: ca.cert,
    serverName: SERVICE_DNS_NAME,
    agent: loopbackAgent(),
  };

  const logText = (): string => chunks.join("");
  return {
    webhook,
    ca,
    target,
    folder,
    get logs() {
      return logText()
        .split("\n")
        .filter((line) => line !== "")
        .map((line) => JSON.parse(line) as Record<string, any>);
    },
    logText,
    async admit(pod, admitOptions = {}) {
      const review = podCreateReview(pod, {
        namespace: admitOptions.namespace ?? "default",
        apiVersion: admitOptions.apiVersion,
        dryRun: admitOptions.dryRun,
      });
      const reply = await callWebhook(target, "/mutate", {
        body: JSON.stringify(review),
      });
      if (reply.status !== 200) {
        throw new Error(
          `POST /mutate returned HTTP ${reply.status}: ${reply.body}`,
        );
      }
      const answer = JSON.parse(reply.body) as Record<string, any>;
      const patch = decodePatch(answer.response);
      return {
        sent: review,
        reply,
        review: answer,
        response: answer.response,
        patch,
        pod: applyStrict(pod as Record<string, any>, patch),
      };
    },
    async close() {
      target.agent?.destroy();
      await webhook.close();
      await rm(folder, { recursive: true, force: true });
    },
  };
}

/** Polls `condition` every 25 ms until it holds, failing after `timeoutMs`. */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  description: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (
    let attempt = 0;
    attempt < 10_000 && Date.now() < deadline;
    attempt += 1
  ) {
    if (await condition()) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}`);
}

/** Builds a minimal annotated pod, as a ReplicaSet controller would create it. */
export function annotatedPod(
  overrides: {
    annotations?: Record<string, string>;
    spec?: Record<string, unknown>;
  } = {},
): Record<string, any> {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: "checkout-7d9f8c6b5-",
      namespace: "shop",
      labels: { app: "checkout" },
      annotations: { "cloudhsm/inject": "true", ...overrides.annotations },
    },
    spec: overrides.spec ?? {
      containers: [
        {
          name: "app",
          image: "registry.example.com/checkout:1.0",
          env: [{ name: "MODE", value: "prod" }],
        },
      ],
    },
  };
}

/** Builds a DescribeClusters document with two ACTIVE HSMs and one DEGRADED for the test cluster. */
export function staticClusters(
  ips: readonly string[] = ["10.0.12.5", "10.0.2.40"],
): unknown {
  return {
    Clusters: [
      {
        ClusterId: TEST_CLUSTER_ID,
        State: "ACTIVE",
        Hsms: [
          ...ips.map((ip, index) => ({
            HsmId: `hsm-abcdefghij${index + 2}`,
            EniIp: ip,
            State: "ACTIVE",
            AvailabilityZone: "us-east-1a",
          })),
          {
            HsmId: "hsm-abcdefghijz",
            EniIp: "10.0.30.3",
            State: "DEGRADED",
            AvailabilityZone: "us-east-1c",
          },
        ],
      },
    ],
  };
}
