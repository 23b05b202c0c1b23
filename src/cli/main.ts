#!/usr/bin/env node
import { readFileSync } from "node:fs";
import { ConfigError } from "../config.js";
import { runDescribe } from "./describe.js";
import { runInject } from "./inject.js";
import { runServe } from "./serve.js";

const USAGE = `Usage: cloudhsm-webhook <command> [flags]

Commands:
  serve      run the mutating admission webhook (HTTPS)
  inject     inject HSM addresses into the pod templates of manifests, offline
  describe   print the cluster's HSMs and which addresses pods would get

Run "cloudhsm-webhook <command> --help" for the flags of a command, and
"cloudhsm-webhook --version" for the version.
`;

type Command = (
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
) => Promise<number>;

const COMMANDS: Readonly<Record<string, Command>> = {
  serve: runServe,
  inject: runInject,
  describe: runDescribe,
};

/** Reads the version from package.json, which sits two folders above src/cli in both layouts. */
function packageVersion(): string {
  for (const relative of ["../../package.json", "../../../package.json"]) {
    try {
      const text = readFileSync(new URL(relative, import.meta.url), "utf8");
      const parsed = JSON.parse(text) as { name?: string; version?: string };
      if (parsed.name === "cloudhsm-webhook" && parsed.version) {
        return parsed.version;
      }
    } catch {
      // Not at this level: the built layout has one more folder (dist/).
    }
  }
  return "unknown";
}

/** Runs one command and returns the process exit status. */
export async function main(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<number> {
  const [name, ...rest] = argv;
  if (
    name === undefined ||
    name === "help" ||
    name === "--help" ||
    name === "-h"
  ) {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "version") {
    process.stdout.write(`cloudhsm-webhook ${packageVersion()}\n`);
    return 0;
  }
  const command = Object.prototype.hasOwnProperty.call(COMMANDS, name)
    ? COMMANDS[name]
    : undefined;
  if (!command) {
    process.stderr.write(
      `cloudhsm-webhook: unknown command "${name}"\n\n${USAGE}`,
    );
    return 2;
  }
  try {
    return await command(rest, env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`cloudhsm-webhook ${name}: ${error.message}\n`);
      return 2;
    }
    process.stderr.write(
      `cloudhsm-webhook ${name}: ${(error as Error).message}\n`,
    );
    return 1;
  }
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`cloudhsm-webhook: ${String(error)}\n`);
    process.exitCode = 1;
  },
);
