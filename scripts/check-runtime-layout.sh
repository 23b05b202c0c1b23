#!/usr/bin/env bash
# Checks the container image's runtime layout without Docker: compiles the
# sources, installs only the production dependencies next to the output in a
# temporary folder (as the Dockerfile's runtime stage does), and runs
# "serve --help" there. It fails when the CLI imports a package that
# package.json lists under devDependencies, or does not list at all.
#
# Usage: scripts/check-runtime-layout.sh
# Needs: node, npm and access to the npm registry (for npm ci).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
layout_dir="$(mktemp -d "${TMPDIR:-/tmp}/cloudhsm-webhook-layout.XXXXXX")"
trap 'rm -rf "$layout_dir"' EXIT

cd "$repo_root"

# Compiles into the temporary folder instead of copying ./dist, so the check
# runs a fresh build, as the image does, and ignores stale files in ./dist.
echo "Building into $layout_dir/dist"
npm run build --silent -- --outDir "$layout_dir/dist"

entry_point="dist/src/cli/main.js"
if [[ ! -f "$layout_dir/$entry_point" ]]; then
  echo "error: the build did not produce $entry_point; check tsconfig.build.json and src/cli/main.ts" >&2
  exit 1
fi

cp package.json package-lock.json "$layout_dir/"

cd "$layout_dir"
echo "Installing production dependencies"
npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error

# The folder sits outside the repository, so module resolution cannot fall
# back to the repository's node_modules. NODE_PATH is cleared for the same
# reason.
echo "Running node $entry_point serve --help"
if ! env -u NODE_PATH NODE_ENV=production node "$entry_point" serve --help >"$layout_dir/help.txt" 2>&1; then
  echo "error: 'node $entry_point serve --help' failed with only production dependencies installed:" >&2
  cat "$layout_dir/help.txt" >&2
  exit 1
fi

echo "ok: the CLI starts with production dependencies only"
