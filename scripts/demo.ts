/**
 * Runs the webhook end to end on this machine: a throwaway CA, `serve` on a bundled static
 * cluster, and the example workloads' pods sent over TLS the way kube-apiserver sends them.
 * Prints what each pod would start with, then stops the server.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import fastJsonPatch from "fast-json-patch";
import { parseAllDocuments } from "yaml";
import {
  callWebhook,
  loopbackAgent,
  podCreateReview,
  type WebhookTarget,
} from "./lib/admission-client.js";
import { SERVICE_DNS_NAME, createCertificateAuthority } from "./lib/pki.js";
import { podFromWorkload } from "./lib/workloads.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const EXAMPLES = [
  "web-deployment.yaml",
  "java-sidecar-deployment.yaml",
  "batch-job.yaml",
  "deployment-sdk5-config-path.yaml",
  "not-opted-in.yaml",
];
const CLUSTER_ID = "cluster-demo2xampl3abc";
const STARTUP_TIMEOUT_MS = 15_000;

type Json = Record<string, any>;

async function main(): Promise<void> {
  const workdir = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-demo-"));
  let server: ChildProcess | undefined;
  try {
    console.log(
      `1. Creating a throwaway CA and a serving certificate for ${SERVICE_DNS_NAME}`,
    );
    const ca = await createCertificateAuthority("cloudhsm-webhook demo CA");
    const serving = await ca.issue([
      SERVICE_DNS_NAME,
      `${SERVICE_DNS_NAME}.cluster.local`,
    ]);
    await writeFile(join(workdir, "tls.crt"), serving.cert);
    await writeFile(join(workdir, "tls.key"), serving.key, { mode: 0o600 });

    console.log(
      "2. Starting `cloudhsm-webhook serve` on examples/static-hsms.json (2 ACTIVE HSMs, 1 DEGRADED)",
    );
    const started = await startServer(workdir);
    server = started.child;
    const target: WebhookTarget = {
      port: started.port,
      ca: ca.cert,
      serverName: SERVICE_DNS_NAME,
      agent: loopbackAgent(),
    };
    await waitUntilReady(target);

    console.log(
      "3. Sending the example workloads' pods to POST /mutate, verifying the certificate\n",
    );
    for (const file of EXAMPLES) {
      await admitExample(target, file);
    }
    target.agent?.destroy();

    console.log("4. Stopping the webhook with SIGTERM");
    const exitCode = await stopServer(server);
    server = undefined;
    if (exitCode !== 0) {
      throw new Error(`the webhook exited with status ${exitCode}`);
    }
    console.log("Done: the webhook exited cleanly.");
  } finally {
    server?.kill("SIGKILL");
    await rm(workdir, { recursive: true, force: true });
  }
}

async function startServer(
  workdir: string,
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    [
      join(root, "dist", "src", "cli", "main.js"),
      "serve",
      "--host=127.0.0.1",
      "--port=0",
      "--metrics-port=0",
      `--tls-cert=${join(workdir, "tls.crt")}`,
      `--tls-key=${join(workdir, "tls.key")}`,
      `--cluster-id=${CLUSTER_ID}`,
      "--region=us-east-1",
      `--static-hsms=${join(root, "examples", "static-hsms.json")}`,
    ],
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, AWS_EC2_METADATA_DISABLED: "true" },
    },
  );
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(
      () => reject(new Error("the webhook did not start within 15 s")),
      STARTUP_TIMEOUT_MS,
    );
    child.once("exit", (code) =>
      reject(new Error(`the webhook exited early with status ${code}`)),
    );
    lines.on("line", (line) => {
      const entry = safeParse(line);
      if (
        entry?.msg === "cloudhsm-webhook serving" &&
        typeof entry.port === "number"
      ) {
        clearTimeout(timer);
        resolvePort(entry.port);
      }
    });
  });
  return { child, port };
}

async function waitUntilReady(target: WebhookTarget): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (let attempt = 0; attempt < 150 && Date.now() < deadline; attempt += 1) {
    const reply = await callWebhook(target, "/readyz");
    if (reply.status === 200) {
      return;
    }
    await new Promise((wait) => setTimeout(wait, 100));
  }
  throw new Error("the webhook did not become ready within 15 s");
}

async function admitExample(
  target: WebhookTarget,
  file: string,
): Promise<void> {
  const text = await readFile(join(root, "examples", file), "utf8");
  const workload = parseAllDocuments(text)[0]!.toJS() as Json;
  const { pod, namespace } = podFromWorkload(workload);

  const review = podCreateReview(pod, { namespace });
  const reply = await callWebhook(target, "/mutate", {
    body: JSON.stringify(review),
  });
  if (reply.status !== 200) {
    throw new Error(
      `POST /mutate for ${file} returned HTTP ${reply.status}: ${reply.body}`,
    );
  }
  const response = JSON.parse(reply.body).response as Json;

  console.log(
    `== ${workload.kind} ${namespace}/${workload.metadata.name} (examples/${file})`,
  );
  for (const warning of response.warnings ?? []) {
    console.log(`   warning: ${warning}`);
  }
  if (!response.allowed) {
    console.log(`   denied: ${response.status?.message}\n`);
  } else if (!response.patch) {
    console.log("   admitted unchanged (not opted in)\n");
  } else {
    printInjectedPod(pod, response.patch as string);
  }
}

/** Applies the base64 JSONPatch and prints each container's env and the config file. */
function printInjectedPod(pod: Json, patch: string): void {
  const operations = JSON.parse(Buffer.from(patch, "base64").toString());
  const injected = fastJsonPatch.applyPatch(
    structuredClone(pod),
    operations,
    true,
    false,
  ).newDocument as Json;
  const { labels, annotations } = injected.metadata;
  console.log(
    `   patch: ${operations.length} JSONPatch operations; label cloudhsm/injected=${labels["cloudhsm/injected"]}`,
  );
  console.log(
    `   annotations: cloudhsm/injected-ips=${annotations["cloudhsm/injected-ips"]}, cloudhsm/injected-at=${annotations["cloudhsm/injected-at"]}`,
  );

  const containers: Json[] = [
    ...(injected.spec.initContainers ?? []),
    ...injected.spec.containers,
  ];
  for (const container of containers) {
    const env = (container.env ?? []).map(describeEnvEntry);
    const mount = (container.volumeMounts ?? []).find(
      (entry: Json) => entry.name === "cloudhsm-config",
    );
    console.log(`   container ${container.name}:`);
    console.log(`     env: ${env.join(", ")}`);
    console.log(
      `     config mounted at: ${mount ? mount.mountPath : "(not mounted)"}`,
    );
  }

  const configFile = containers[0]?.env?.find(
    (entry: Json) => entry.name === "CLOUDHSM_CONFIG_FILE",
  )?.value;
  const config = injected.metadata.annotations["cloudhsm/config"] as string;
  console.log(`   file ${configFile}:`);
  console.log(config.replace(/^/gm, "     "));
}

function describeEnvEntry(entry: Json): string {
  if (entry.value !== undefined) {
    return `${entry.name}=${entry.value}`;
  }
  return `${entry.name} (from ${Object.keys(entry.valueFrom ?? {})[0]})`;
}

function stopServer(child: ChildProcess): Promise<number | null> {
  return new Promise((resolveExit) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 25_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolveExit(code);
    });
    child.kill("SIGTERM");
  });
}

function safeParse(line: string): Json | undefined {
  try {
    return JSON.parse(line) as Json;
  } catch {
    return undefined;
  }
}

main().catch((error: unknown) => {
  console.error(`demo failed: ${(error as Error).message}`);
  process.exitCode = 1;
});
