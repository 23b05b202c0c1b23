import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { X509Certificate, createPrivateKey } from "node:crypto";
import {
  copyFileSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repoRoot = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
);
const script = path.join(repoRoot, "certs", "make-certs.sh");

const SERVER_AUTH_OID = "1.3.6.1.5.5.7.3.1";

const opensslInstalled =
  spawnSync("openssl", ["version"], { encoding: "utf8" }).status === 0;

/** Runs make-certs.sh with only the given MAKE_CERTS_* variables set. */
function runScript(
  args: string[],
  env: Record<string, string> = {},
): SpawnSyncReturns<string> {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) => !name.startsWith("MAKE_CERTS_"),
    ),
  );
  return spawnSync("bash", [script, ...args], {
    encoding: "utf8",
    env: { ...inherited, ...env },
    timeout: 30_000,
  });
}

function readCertificate(directory: string, file: string): X509Certificate {
  return new X509Certificate(readFileSync(path.join(directory, file)));
}

function subjectAltNames(certificate: X509Certificate): string[] {
  return (certificate.subjectAltName ?? "")
    .split(", ")
    .filter((name) => name.length > 0);
}

/** Returns the value of the `caBundle: ...` line the script prints. */
function printedCaBundle(stdout: string): string | undefined {
  return /^caBundle: (\S+)$/m.exec(stdout)?.[1];
}

describe.skipIf(!opensslInstalled)(
  "make-certs.sh (skipped: openssl is not installed)",
  () => {
    let workDir: string;
    let outDir: string;
    let firstRun: SpawnSyncReturns<string>;

    beforeAll(() => {
      workDir = mkdtempSync(
        path.join(tmpdir(), "cloudhsm-webhook-certs-test-"),
      );
      outDir = path.join(workDir, "default");
      firstRun = runScript(["--out-dir", outDir]);
    });

    afterAll(() => {
      rmSync(workDir, { recursive: true, force: true });
    });

    it("exits 0 with the defaults", () => {
      expect(firstRun.stderr, "make-certs.sh stderr").toBe("");
      expect(
        firstRun.status,
        `make-certs.sh exit status; stderr: ${firstRun.stderr}`,
      ).toBe(0);
    });

    it("creates a CA certificate", () => {
      const ca = readCertificate(outDir, "ca.crt");
      expect(ca.ca, "ca.crt basicConstraints CA").toBe(true);
      expect(ca.checkIssued(ca), "ca.crt is self-issued").toBe(true);
      expect(ca.verify(ca.publicKey), "ca.crt is self-signed").toBe(true);
    });

    it("signs the serving certificate with the CA", () => {
      const ca = readCertificate(outDir, "ca.crt");
      const serving = readCertificate(outDir, "tls.crt");
      expect(serving.ca, "tls.crt basicConstraints CA").toBe(false);
      expect(
        serving.checkIssued(ca),
        "tls.crt issuer is the CA's subject",
      ).toBe(true);
      expect(
        serving.verify(ca.publicKey),
        "tls.crt signature verifies with the CA key",
      ).toBe(true);
    });

    it("makes the serving certificate valid now", () => {
      const serving = readCertificate(outDir, "tls.crt");
      const now = Date.now();
      expect(
        Date.parse(serving.validFrom),
        `tls.crt validFrom ${serving.validFrom}`,
      ).toBeLessThanOrEqual(now);
      expect(
        Date.parse(serving.validTo),
        `tls.crt validTo ${serving.validTo}`,
      ).toBeGreaterThan(now);
      const ca = readCertificate(outDir, "ca.crt");
      expect(
        Date.parse(ca.validTo),
        "ca.crt must outlive tls.crt",
      ).toBeGreaterThanOrEqual(Date.parse(serving.validTo));
    });

    it("lists the service DNS names", () => {
      const names = subjectAltNames(readCertificate(outDir, "tls.crt"));
      for (const name of [
        "cloudhsm-webhook",
        "cloudhsm-webhook.cloudhsm-webhook",
        "cloudhsm-webhook.cloudhsm-webhook.svc",
        "cloudhsm-webhook.cloudhsm-webhook.svc.cluster.local",
      ]) {
        expect(names, "tls.crt subjectAltName").toContain(`DNS:${name}`);
      }
    });

    it("allows server authentication", () => {
      expect(
        readCertificate(outDir, "tls.crt").keyUsage,
        "tls.crt extendedKeyUsage",
      ).toContain(SERVER_AUTH_OID);
    });

    it("writes keys that match their certificates", () => {
      const servingKey = createPrivateKey(
        readFileSync(path.join(outDir, "tls.key")),
      );
      const caKey = createPrivateKey(readFileSync(path.join(outDir, "ca.key")));
      expect(
        readCertificate(outDir, "tls.crt").checkPrivateKey(servingKey),
        "tls.key matches tls.crt",
      ).toBe(true);
      expect(
        readCertificate(outDir, "ca.crt").checkPrivateKey(caKey),
        "ca.key matches ca.crt",
      ).toBe(true);
    });

    it("keeps keys private to the owner", () => {
      for (const file of ["ca.key", "tls.key"]) {
        const mode = statSync(path.join(outDir, file)).mode & 0o777;
        expect(mode.toString(8), `${file} file mode`).toBe("600");
      }
    });

    it("prints the CA as caBundle", () => {
      const bundle = printedCaBundle(firstRun.stdout);
      expect(
        bundle,
        `a "caBundle: " line in stdout:\n${firstRun.stdout}`,
      ).toBeDefined();
      const decoded = new X509Certificate(Buffer.from(bundle!, "base64"));
      expect(decoded.fingerprint256, "caBundle decodes to ca.crt").toBe(
        readCertificate(outDir, "ca.crt").fingerprint256,
      );
    });

    it("prints the Secret command", () => {
      expect(firstRun.stdout, "kubectl command in stdout").toContain(
        `kubectl create secret tls cloudhsm-webhook-tls --namespace cloudhsm-webhook --cert=${outDir}/tls.crt --key=${outDir}/tls.key`,
      );
    });

    it("reuses the CA on a second run", () => {
      const caBefore = readCertificate(outDir, "ca.crt");
      const servingBefore = readCertificate(outDir, "tls.crt");
      const secondRun = runScript(["--out-dir", outDir]);
      expect(
        secondRun.status,
        `second run exit status; stderr: ${secondRun.stderr}`,
      ).toBe(0);

      const caAfter = readCertificate(outDir, "ca.crt");
      const servingAfter = readCertificate(outDir, "tls.crt");
      expect(caAfter.fingerprint256, "ca.crt after the second run").toBe(
        caBefore.fingerprint256,
      );
      expect(
        printedCaBundle(secondRun.stdout),
        "caBundle after the second run",
      ).toBe(printedCaBundle(firstRun.stdout));
      expect(
        servingAfter.serialNumber,
        "tls.crt serial after the second run",
      ).not.toBe(servingBefore.serialNumber);
      expect(
        servingAfter.verify(caAfter.publicKey),
        "renewed tls.crt verifies with the CA",
      ).toBe(true);
    });

    it("replaces the CA with --new-ca", () => {
      const directory = path.join(workDir, "new-ca");
      expect(runScript(["--out-dir", directory]).status, "first run").toBe(0);
      const before = readCertificate(directory, "ca.crt");
      const rerun = runScript(["--out-dir", directory, "--new-ca"]);
      expect(
        rerun.status,
        `--new-ca exit status; stderr: ${rerun.stderr}`,
      ).toBe(0);
      const after = readCertificate(directory, "ca.crt");
      expect(after.fingerprint256, "ca.crt after --new-ca").not.toBe(
        before.fingerprint256,
      );
      expect(
        readCertificate(directory, "tls.crt").verify(after.publicKey),
        "tls.crt signed by the new CA",
      ).toBe(true);
    });

    it("takes service and namespace from flags", () => {
      const directory = path.join(workDir, "flags");
      const run = runScript([
        "--out-dir",
        directory,
        "--service",
        "hsm-injector",
        "--namespace",
        "security",
      ]);
      expect(run.status, `exit status; stderr: ${run.stderr}`).toBe(0);
      const names = subjectAltNames(readCertificate(directory, "tls.crt"));
      expect(names, "tls.crt subjectAltName").toContain(
        "DNS:hsm-injector.security.svc",
      );
      expect(names, "tls.crt subjectAltName").toContain(
        "DNS:hsm-injector.security.svc.cluster.local",
      );
      expect(names, "tls.crt subjectAltName").not.toContain(
        "DNS:cloudhsm-webhook.cloudhsm-webhook.svc",
      );
      expect(run.stdout, "kubectl command namespace").toContain(
        "--namespace security",
      );
    });

    it("takes service and namespace from the environment", () => {
      const directory = path.join(workDir, "env");
      const run = runScript([], {
        MAKE_CERTS_OUT_DIR: directory,
        MAKE_CERTS_SERVICE: "hsm-injector",
        MAKE_CERTS_NAMESPACE: "security",
        MAKE_CERTS_CLUSTER_DOMAIN: "cluster.example",
      });
      expect(run.status, `exit status; stderr: ${run.stderr}`).toBe(0);
      const names = subjectAltNames(readCertificate(directory, "tls.crt"));
      expect(names, "tls.crt subjectAltName").toContain(
        "DNS:hsm-injector.security.svc.cluster.example",
      );
    });

    it("rejects an unknown option with usage", () => {
      const run = runScript([
        "--out-dir",
        path.join(workDir, "unused"),
        "--bogus",
      ]);
      expect(run.status, "exit status").toBe(2);
      expect(run.stderr, "stderr").toContain("unknown option: --bogus");
      expect(run.stderr, "stderr").toContain("Usage:");
    });

    it("rejects an invalid service name", () => {
      const run = runScript([
        "--out-dir",
        path.join(workDir, "unused"),
        "--service",
        "Bad_Name",
      ]);
      expect(run.status, "exit status").toBe(1);
      expect(run.stderr, "stderr").toContain("invalid service name 'Bad_Name'");
    });

    it("rejects a CA key that does not match", () => {
      const directory = path.join(workDir, "mismatch");
      expect(runScript(["--out-dir", directory]).status, "first run").toBe(0);
      const otherKey = path.join(workDir, "default", "tls.key");
      copyFileSync(otherKey, path.join(directory, "ca.key"));
      const run = runScript(["--out-dir", directory]);
      expect(run.status, "exit status").toBe(1);
      expect(run.stderr, "stderr").toContain("does not match");
    });

    it("prints help", () => {
      const run = runScript(["--help"]);
      expect(run.status, "exit status").toBe(0);
      expect(run.stdout, "stdout").toContain("Usage:");
      expect(run.stdout, "stdout").toContain("--namespace");
    });
  },
);
