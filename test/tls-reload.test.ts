import { X509Certificate } from "node:crypto";
import {
  mkdir,
  mkdtemp,
  rename,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:tls";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
  type CertificateAuthority,
  type IssuedPair,
} from "../scripts/lib/pki.js";
import {
  annotatedPod,
  startHarness,
  staticClusters,
  waitFor,
  type Harness,
} from "./support/webhook-harness.js";

let secretDir: string;
let ca: CertificateAuthority;
let harness: Harness;
let generation = 0;

/**
 * Publishes a key pair the way the kubelet updates a Secret volume: files in a new timestamped
 * folder, then an atomic rename of the `..data` symlink that tls.crt and tls.key point through.
 */
async function publish(pair: IssuedPair): Promise<void> {
  generation += 1;
  const folder = `..2026_12_04_00_00_0${generation}.000000000`;
  await mkdir(join(secretDir, folder));
  await writeFile(join(secretDir, folder, "tls.crt"), pair.cert);
  await writeFile(join(secretDir, folder, "tls.key"), pair.key);
  await symlink(folder, join(secretDir, "..data_tmp"));
  await rename(join(secretDir, "..data_tmp"), join(secretDir, "..data"));
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** Opens a new TLS connection, verified as kube-apiserver verifies it, and returns the served certificate. */
function servedFingerprint(): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: "127.0.0.1",
      port: harness.webhook.port,
      servername: SERVICE_DNS_NAME,
      ca: ca.cert,
    });
    socket.once("secureConnect", () => {
      const served = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(served);
    });
    socket.once("error", reject);
  });
}

beforeAll(async () => {
  secretDir = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-secret-"));
  ca = await createCertificateAuthority();
  await publish(await ca.issue([SERVICE_DNS_NAME]));
  await symlink("..data/tls.crt", join(secretDir, "tls.crt"));
  await symlink("..data/tls.key", join(secretDir, "tls.key"));
  harness = await startHarness({
    staticClusters: staticClusters(),
    ca,
    tlsFiles: {
      cert: join(secretDir, "tls.crt"),
      key: join(secretDir, "tls.key"),
    },
  });
});

afterAll(async () => {
  await harness.close();
  await rm(secretDir, { recursive: true, force: true });
});

test("renewed certificate is served without failed requests", async () => {
  const renewed = await ca.issue([SERVICE_DNS_NAME]);
  const failures: string[] = [];
  let sent = 0;
  let running = true;
  const stopAt = Date.now() + 15_000;

  // Two workers: one on a kept-alive connection, one opening a new connection per request.
  const worker = async (keepAlive: boolean) => {
    for (
      let index = 0;
      running && index < 5_000 && Date.now() < stopAt;
      index += 1
    ) {
      sent += 1;
      try {
        const outcome = keepAlive
          ? await harness.admit(annotatedPod())
          : await admitOnNewConnection();
        if (!outcome) {
          failures.push("no response");
        }
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
  };
  const admitOnNewConnection = async () => {
    const { callWebhook, podCreateReview } =
      await import("../scripts/lib/admission-client.js");
    const reply = await callWebhook(
      { ...harness.target, agent: undefined },
      "/mutate",
      {
        body: JSON.stringify(
          podCreateReview(annotatedPod(), { namespace: "shop" }),
        ),
      },
    );
    return (
      reply.status === 200 && JSON.parse(reply.body).response.allowed === true
    );
  };
  const workers = [worker(true), worker(false)];

  await waitFor(() => sent > 20, 5_000, "requests before the renewal");
  await publish(renewed);
  await waitFor(
    async () => (await servedFingerprint()) === fingerprint(renewed.cert),
    14_000,
    "the renewed certificate",
  );
  const sentAtSwitch = sent;
  await waitFor(
    () => sent > sentAtSwitch + 20,
    5_000,
    "requests after the renewal",
  );
  running = false;
  await Promise.all(workers);

  expect(failures).toEqual([]);
  expect(
    harness.logs.some((line) => line.msg === "serving certificate reloaded"),
  ).toBe(true);
});

test("mismatched key keeps the current certificate", async () => {
  const before = await servedFingerprint();
  const good = await ca.issue([SERVICE_DNS_NAME]);
  const other = await ca.issue([SERVICE_DNS_NAME]);
  await publish({ cert: good.cert, key: other.key });
  await waitFor(
    () =>
      harness.logs.some(
        (line) =>
          line.msg ===
          "serving certificate reload failed; keeping the current one",
      ),
    14_000,
    "the reload error",
  );
  expect(await servedFingerprint()).toBe(before);
  const outcome = await harness.admit(annotatedPod());
  expect(outcome.response.allowed).toBe(true);
});

test("unreadable files keep the current certificate", async () => {
  const before = await servedFingerprint();
  await rm(join(secretDir, "..data"));
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(await servedFingerprint()).toBe(before);
});
