import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as never);

const ALGORITHM = {
  name: "ECDSA",
  namedCurve: "P-256",
  hash: "SHA-256",
} as const;
const DAY_MS = 86_400_000;

export interface IssuedPair {
  /** PEM certificate. */
  readonly cert: string;
  /** PEM PKCS#8 private key. */
  readonly key: string;
}

export interface CertificateAuthority extends IssuedPair {
  /** Issues a serving certificate for the given DNS names, signed by this CA. */
  issue(
    dnsNames: readonly string[],
    options?: { validDays?: number; ips?: readonly string[] },
  ): Promise<IssuedPair>;
}

async function exportKey(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey(
    "pkcs8",
    key as webcrypto.CryptoKey,
  );
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALGORITHM, true, [
    "sign",
    "verify",
  ])) as unknown as CryptoKeyPair;
}

/**
 * Creates a throwaway certificate authority with ECDSA P-256 keys, for the demo and the tests.
 * Production installs get their certificates from cert-manager or certs/make-certs.sh.
 */
export async function createCertificateAuthority(
  commonName = "cloudhsm-webhook test CA",
): Promise<CertificateAuthority> {
  const caKeys = await generateKeys();
  const now = Date.now();
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${commonName}`,
    keys: caKeys,
    signingAlgorithm: ALGORITHM,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 30 * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  return {
    cert: caCert.toString("pem"),
    key: await exportKey(caKeys.privateKey),
    async issue(dnsNames, options = {}) {
      const keys = await generateKeys();
      const cert = await x509.X509CertificateGenerator.create({
        subject: `CN=${dnsNames[0] ?? "localhost"}`,
        issuer: caCert.subject,
        publicKey: keys.publicKey,
        signingKey: caKeys.privateKey,
        signingAlgorithm: ALGORITHM,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + (options.validDays ?? 7) * DAY_MS),
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.digitalSignature,
            true,
          ),
          new x509.ExtendedKeyUsageExtension([
            x509.ExtendedKeyUsage.serverAuth,
          ]),
          new x509.SubjectAlternativeNameExtension([
            ...dnsNames.map((value) => ({ type: "dns" as const, value })),
            ...(options.ips ?? []).map((value) => ({
              type: "ip" as const,
              value,
            })),
          ]),
          await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
        ],
      });
      return {
        cert: cert.toString("pem"),
        key: await exportKey(keys.privateKey),
      };
    },
  };
}

/** The DNS name kube-apiserver verifies when it calls the webhook through its Service. */
export const SERVICE_DNS_NAME = "cloudhsm-webhook.cloudhsm-webhook.svc";
