import { join, resolve } from "node:path";

/**
 * Returns the Node arguments that run the real `cloudhsm-webhook serve` from the sources on a
 * free loopback port, with the serving pair `tls.crt` and `tls.key` in `folder`, followed by
 * `flags`. Tests that check signals and exit paths run it in a process of its own.
 */
export function serveArguments(
  folder: string,
  flags: readonly string[],
): string[] {
  return [
    "--import",
    "tsx",
    resolve("src/cli/main.ts"),
    "serve",
    "--host=127.0.0.1",
    "--port=0",
    "--metrics-port=0",
    `--tls-cert=${join(folder, "tls.crt")}`,
    `--tls-key=${join(folder, "tls.key")}`,
    ...flags,
  ];
}
