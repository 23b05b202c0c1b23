import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { connect } from "node:tls";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  callWebhook,
  loopbackAgent,
  podCreateReview,
  type WebhookTarget,
} from "../scripts/lib/admission-client.js";
import {
  createCertificateAuthority,
  SERVICE_DNS_NAME,
  type CertificateAuthority,
} from "../scripts/lib/pki.js";
import { serveArguments } from "./support/serve-process.js";
import { annotatedPod } from "./support/webhook-harness.js";

const ADMISSIONS = 2_000;
const SENDERS = 8;

let folder: string;
let ca: CertificateAuthority;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), "cloudhsm-webhook-log-flush-"));
  ca = await createCertificateAuthority();
  const pair = await ca.issue([SERVICE_DNS_NAME]);
  await writeFile(join(folder, "tls.crt"), pair.cert);
  await writeFile(join(folder, "tls.key"), pair.key);
});

afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

test("forced exit writes held-back lines", async () => {
  const child = spawn(
    process.execPath,
    serveArguments(folder, [
      "--cluster-id=cluster-demo2xampl3abc",
      "--region=us-east-1",
      "--static-hsms=examples/static-hsms.json",
      "--shutdown-delay=0.1",
      "--shutdown-timeout=1",
    ]),
    { stdio: ["ignore", "pipe", "inherit"], env: { PATH: process.env.PATH } },
  );
  const exit = new Promise<number | null>((done) =>
    child.once("exit", (code) => done(code)),
  );
  const lines: Array<Record<string, any>> = [];
  const reader = createInterface({ input: child.stdout! });
  const closed = new Promise<void>((done) => reader.once("close", done));
  const port = await new Promise<number>((found, reject) => {
    const timer = setTimeout(
      () => reject(new Error("serve did not start within 15 s")),
      15_000,
    );
    reader.on("line", (line) => {
      const entry = JSON.parse(line);
      lines.push(entry);
      if (entry.msg === "cloudhsm-webhook serving") {
        clearTimeout(timer);
        found(entry.port as number);
      }
    });
  });

  // With stdout unread, the pipe fills and the webhook's writes are rejected for a while.
  child.stdout!.pause();
  const agent = loopbackAgent();
  const target: WebhookTarget = {
    port,
    ca: ca.cert,
    serverName: SERVICE_DNS_NAME,
    agent,
  };
  const uids: string[] = [];
  const started = Date.now();
  await Promise.all(
    Array.from({ length: SENDERS }, async () => {
      while (uids.length < ADMISSIONS && Date.now() - started < 60_000) {
        const uid = `00000000-0000-4000-8000-${uids.length.toString().padStart(12, "0")}`;
        uids.push(uid);
        const reply = await callWebhook(target, "/mutate", {
          body: JSON.stringify(
            podCreateReview(annotatedPod(), { namespace: "shop", uid }),
          ),
        });
        expect(reply.status).toBe(200);
      }
    }),
  );
  agent.destroy();

  // A request whose body never ends keeps the drain from finishing, so the shutdown timeout
  // forces the exit.
  const stalled = connect({
    host: "127.0.0.1",
    port,
    ca: ca.cert,
    servername: SERVICE_DNS_NAME,
  });
  stalled.on("error", () => {});
  await new Promise((ready) => stalled.once("secureConnect", ready));
  stalled.write(
    "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
  );
  await new Promise((wait) => setTimeout(wait, 100));
  child.kill("SIGTERM");
  await new Promise((wait) => setTimeout(wait, 2_500));
  child.stdout!.resume();

  const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  expect(await exit).toBe(1);
  clearTimeout(killer);
  stalled.destroy();
  await closed;

  const logged = new Set(
    lines
      .filter((line) => line.msg === "admission decision")
      .map((line) => line.uid),
  );
  expect(uids.filter((uid) => !logged.has(uid))).toEqual([]);
  expect(lines.at(-1)?.msg).toBe("shutdown timed out with requests in flight");
}, 90_000);
