import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { SecureContextOptions } from "node:tls";
import type { Logger } from "../log.js";

export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

/** The TLS floor for every listener that serves /mutate. */
export const MIN_TLS_VERSION = "TLSv1.2";

/** A certificate and key that cannot be served together; the message names the check that failed. */
export class KeyPairError extends Error {
  override readonly name = "KeyPairError";
}

/**
 * Reads a PEM certificate and key and checks that they parse and belong together, so a
 * half-written renewal is never served.
 */
export async function loadKeyPair(
  certPath: string,
  keyPath: string,
): Promise<KeyPair> {
  let cert: string;
  let key: string;
  try {
    [cert, key] = await Promise.all([
      readFile(certPath, "utf8"),
      readFile(keyPath, "utf8"),
    ]);
  } catch (error) {
    throw new KeyPairError(
      `cannot read the serving certificate or key: ${(error as Error).message}`,
    );
  }
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    throw new KeyPairError(
      `invalid certificate in ${certPath}: ${(error as Error).message}`,
    );
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new KeyPairError(
      `invalid private key in ${keyPath}: ${(error as Error).message}`,
    );
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new KeyPairError(
      `the key in ${keyPath} does not match the certificate in ${certPath}`,
    );
  }
  return { cert, key };
}

/** A server whose certificate can be swapped for new connections, such as https.Server. */
export interface SecureContextTarget {
  setSecureContext(options: SecureContextOptions): void;
}

export interface ReloaderOptions {
  readonly certPath: string;
  readonly keyPath: string;
  readonly target: SecureContextTarget;
  readonly logger: Logger;
  /** Interval of the content check that backs up file-system events, which can be missed. */
  readonly pollMs?: number;
  readonly onReload?: (outcome: "success" | "error") => void;
}

/**
 * Serves a renewed certificate without a restart. Kubernetes updates a Secret volume by swapping
 * a `..data` symlink in the mounted directory, so the directory is watched and the file contents
 * are also compared on a timer. A new pair that does not load leaves the old one in service.
 */
export class CertificateReloader {
  readonly #options: ReloaderOptions;
  #fingerprint = "";
  #watchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #lastError: string | undefined;

  constructor(options: ReloaderOptions, initial: KeyPair) {
    this.#options = options;
    this.#fingerprint = fingerprint(initial);
  }

  start(): void {
    const folders = new Set([
      dirname(this.#options.certPath),
      dirname(this.#options.keyPath),
    ]);
    for (const folder of folders) {
      try {
        const watcher = watch(folder, () => this.#schedule());
        watcher.on("error", (error) => {
          this.#options.logger.warn(
            { folder, err: error.message },
            "certificate folder watch failed; polling continues",
          );
        });
        watcher.unref();
        this.#watchers.push(watcher);
      } catch (error) {
        this.#options.logger.warn(
          { folder, err: (error as Error).message },
          "cannot watch the certificate folder; polling only",
        );
      }
    }
    this.#timer = setInterval(
      () => void this.reload(),
      this.#options.pollMs ?? 10_000,
    );
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
    for (const watcher of this.#watchers) {
      watcher.close();
    }
    this.#watchers = [];
  }

  /** Loads the files and serves them if they changed and are valid. Never rejects. */
  reload(): Promise<void> {
    // One reload at a time; a change during it is caught by the next event or poll.
    this.#running ??= this.#reload().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  #schedule(): void {
    // A symlink swap fires several events; wait for the burst to end.
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.reload(), 200);
    this.#debounce.unref();
  }

  async #reload(): Promise<void> {
    const { certPath, keyPath, logger, target, onReload } = this.#options;
    let pair: KeyPair;
    try {
      pair = await loadKeyPair(certPath, keyPath);
    } catch (error) {
      // During a renewal the two files can briefly disagree; the next event or poll retries.
      if (this.#lastError !== (error as Error).message) {
        logger.error(
          { err: (error as Error).message },
          "serving certificate reload failed; keeping the current one",
        );
        onReload?.("error");
      }
      this.#lastError = (error as Error).message;
      return;
    }
    this.#lastError = undefined;
    const next = fingerprint(pair);
    if (next === this.#fingerprint) {
      return;
    }
    try {
      target.setSecureContext({
        cert: pair.cert,
        key: pair.key,
        minVersion: MIN_TLS_VERSION,
      });
    } catch (error) {
      logger.error(
        { err: (error as Error).message },
        "serving certificate reload failed; keeping the current one",
      );
      onReload?.("error");
      return;
    }
    this.#fingerprint = next;
    logger.info(
      { notAfter: new X509Certificate(pair.cert).validTo },
      "serving certificate reloaded",
    );
    onReload?.("success");
  }
}

function fingerprint(pair: KeyPair): string {
  return createHash("sha256")
    .update(pair.cert)
    .update("\0")
    .update(pair.key)
    .digest("hex");
}
