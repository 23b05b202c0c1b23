import { existsSync, readFileSync } from "node:fs";
import { describe, expect, test } from "vitest";
import { SERVE_FLAGS } from "../src/config.js";
import { ANNOTATION_KEYS } from "../src/injection/resolve.js";

const readme = readFileSync("README.md", "utf8");
const packageJson = JSON.parse(readFileSync("package.json", "utf8")) as {
  scripts: Record<string, string>;
};

describe("README", () => {
  test("starts with the demo and test commands", () => {
    const firstBlock = readme.slice(
      readme.indexOf("```sh"),
      readme.indexOf("```", readme.indexOf("```sh") + 5),
    );
    expect(firstBlock).toContain("npm ci && npm run demo");
    expect(firstBlock).toContain("npm ci && npm test");
    expect(packageJson.scripts.demo).toBeDefined();
    expect(packageJson.scripts.test).toBeDefined();
  });

  test.each(SERVE_FLAGS.map((flag) => [flag.name, flag]))(
    "documents --%s and its variable",
    (_name, flag) => {
      expect(readme).toContain(`\`--${flag.name}\``);
      expect(readme).toContain(`\`${flag.env}\``);
      if (flag.default !== undefined) {
        const row = readme
          .split("\n")
          .find((line) => line.startsWith(`| \`--${flag.name}\``));
        expect(row, `table row for --${flag.name}`).toBeDefined();
        expect(row).toContain(`\`${flag.default}\``);
      }
    },
  );

  test.each(ANNOTATION_KEYS.map((key) => [key]))(
    "documents %s with a kubectl example",
    (key) => {
      expect(readme).toContain(`\`${key}\``);
      expect(readme).toMatch(
        new RegExp(`kubectl annotate \\S+ \\S+ ${key.replace("/", "\\/")}=`),
      );
    },
  );

  test("every repository path it names exists", () => {
    const paths = new Set<string>();
    for (const match of readme.matchAll(
      /(?:^|[\s`(=])((?:manifests|certs|examples|scripts|src|docs|bench)\/[\w./-]*\w)/gm,
    )) {
      paths.add(match[1]!);
    }
    // Files the install steps create, and build output.
    const created = [/^certs\/out(\/|$)/];
    const missing = [...paths].filter(
      (path) =>
        !created.some((pattern) => pattern.test(path)) && !existsSync(path),
    );
    expect(missing).toEqual([]);
    expect(paths.size).toBeGreaterThan(10);
  });

  test("every kubectl apply target exists or is made by the README", () => {
    const targets = [
      ...readme.matchAll(/kubectl (?:apply|delete) -[kf] ([^\s`]+)/g),
    ].map((match) => match[1]!);
    expect(targets.length).toBeGreaterThan(3);
    for (const target of targets) {
      if (target.startsWith("deploy/")) {
        expect(readme, `the README creates ${target}`).toContain(
          `mkdir -p ${target}`,
        );
      } else if (target !== "-") {
        expect(existsSync(target), `${target} exists`).toBe(true);
      }
    }
  });

  test("names every npm script it runs", () => {
    for (const match of readme.matchAll(/npm run ([\w:-]+)/g)) {
      expect(
        packageJson.scripts[match[1]!],
        `npm run ${match[1]}`,
      ).toBeDefined();
    }
  });
});
