/**
 * The loopback world of one benchmark run: a CA and serving certificate, the fake CloudHSM
 * endpoint, a fake Kubernetes API that serves the typical pod's owners, and webhook processes
 * wired to them.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
  type CertificateAuthority,
} from "../scripts/lib/pki.js";
import {
  buildCluster,
  buildHsm,
  DESCRIBE_CLUSTERS_TARGET,
  startFakeCloudHsm,
  type FakeCloudHsm,
} from "../test/support/fake-cloudhsm.js";
import { FakeKubeApi, makeObject } from "../test/support/fake-kube.js";
import { LoadClient, type LoadTarget } from "./load.js";
import { startWebhookProcess, type Child } from "./processes.js";

export const CLUSTER_ID = "cluster-benchabcdef2";
export const REGION = "us-east-1";

/** The owners of the typical pod, as its ReplicaSet controller created it. */
export interface PodOwners {
  readonly namespace: string;
  readonly deploymentName: string;
  readonly replicaSetName: string;
  readonly replicaSetUid: string;
}

export interface Environment {
  readonly folder: string;
  readonly ca: CertificateAuthority;
  readonly certFile: string;
  readonly keyFile: string;
  readonly aws: FakeCloudHsm;
  readonly kube: FakeKubeApi;
  readonly kubeconfigFile: string;
  /** DescribeClusters requests that the fake endpoint received so far. */
  describeCalls(): number;
  close(): Promise<void>;
}

export async function createEnvironment(
  folder: string,
  owners: PodOwners,
): Promise<Environment> {
  const ca = await createCertificateAuthority("cloudhsm-webhook bench CA");
  const serving = await ca.issue([SERVICE_DNS_NAME]);
  const certFile = join(folder, "tls.crt");
  const keyFile = join(folder, "tls.key");
  await writeFile(certFile, serving.cert);
  await writeFile(keyFile, serving.key);

  // A typical production cluster: two ACTIVE HSMs in two zones and one being created.
  const aws = await startFakeCloudHsm({
    clusters: [
      buildCluster(CLUSTER_ID, [
        buildHsm("hsm-benchaaaaa2", "ACTIVE", {
          EniIp: "10.0.12.5",
          AvailabilityZone: "us-east-1a",
        }),
        buildHsm("hsm-benchaaaaa3", "ACTIVE", {
          EniIp: "10.0.2.40",
          AvailabilityZone: "us-east-1b",
        }),
        buildHsm("hsm-benchaaaaa4", "CREATE_IN_PROGRESS", {
          EniIp: "10.0.30.3",
          AvailabilityZone: "us-east-1c",
        }),
      ]),
    ],
  });

  const kube = await FakeKubeApi.start();
  const deployment = makeObject(
    "Deployment",
    owners.namespace,
    owners.deploymentName,
  );
  const replicaSet = makeObject(
    "ReplicaSet",
    owners.namespace,
    owners.replicaSetName,
    { controller: deployment },
  );
  replicaSet.metadata.uid = owners.replicaSetUid;
  kube.put(
    makeObject("Namespace", "", owners.namespace),
    deployment,
    replicaSet,
  );
  const kubeconfigFile = join(folder, "kubeconfig.json");
  await writeFile(kubeconfigFile, kube.kubeConfig().exportConfig());

  return {
    folder,
    ca,
    certFile,
    keyFile,
    aws,
    kube,
    kubeconfigFile,
    describeCalls: () =>
      aws.requests.filter((entry) => entry.target === DESCRIBE_CLUSTERS_TARGET)
        .length,
    async close() {
      await aws.close();
      await kube.close();
    },
  };
}

/** A running webhook process and a client pool for it. */
export interface BenchWebhook {
  readonly child: Child;
  readonly client: LoadClient;
  readonly target: LoadTarget;
  readonly logFile: string;
  stop(): Promise<void>;
}

/**
 * Starts the webhook as production runs it (log level info, AWS source, owner lookups) against
 * the fakes, and waits until /readyz reports the first HSM list.
 */
export async function startBenchWebhook(
  environment: Environment,
  options: {
    readonly name: string;
    readonly refreshSeconds: number;
    readonly concurrency: number;
    /** Node arguments that run the CLI, from processes.ts. */
    readonly entry: readonly string[];
    readonly nodeFlags?: readonly string[];
  },
): Promise<BenchWebhook> {
  const logFile = join(environment.folder, `${options.name}.log`);
  const child = await startWebhookProcess({
    args: [
      "--host=127.0.0.1",
      "--port=0",
      "--metrics-port=0",
      `--tls-cert=${environment.certFile}`,
      `--tls-key=${environment.keyFile}`,
      `--cluster-id=${CLUSTER_ID}`,
      `--region=${REGION}`,
      `--aws-endpoint=${environment.aws.url}`,
      `--refresh-interval=${options.refreshSeconds}`,
      "--log-level=info",
    ],
    env: {
      NODE_ENV: "production",
      HOME: environment.folder,
      KUBECONFIG: environment.kubeconfigFile,
      AWS_ACCESS_KEY_ID: "AKIDLOOPBACKBENCH",
      AWS_SECRET_ACCESS_KEY: "loopback-bench-secret",
      AWS_EC2_METADATA_DISABLED: "true",
      AWS_CONFIG_FILE: join(environment.folder, "no-aws-config"),
      AWS_SHARED_CREDENTIALS_FILE: join(
        environment.folder,
        "no-aws-credentials",
      ),
    },
    logFile,
    entry: options.entry,
    nodeFlags: options.nodeFlags,
  });
  const target: LoadTarget = {
    port: child.port,
    ca: environment.ca.cert,
    serverName: SERVICE_DNS_NAME,
  };
  const client = new LoadClient(target, options.concurrency);
  try {
    await waitForReady(client);
  } catch (error) {
    client.close();
    await child.stop();
    throw error;
  }
  return {
    child,
    client,
    target,
    logFile,
    async stop() {
      client.close();
      await child.stop();
    },
  };
}

async function waitForReady(client: LoadClient): Promise<void> {
  const deadline = Date.now() + 20_000;
  let last = "";
  for (let attempt = 0; attempt < 400 && Date.now() < deadline; attempt += 1) {
    const reply = await client.send("/readyz");
    if (reply.status === 200) {
      return;
    }
    last = reply.body;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`the webhook did not turn ready within 20 s: ${last}`);
}
