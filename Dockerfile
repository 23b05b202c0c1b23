# syntax=docker/dockerfile:1

# Both images are Debian 12, so any native module built in the dependency
# stage links against the same glibc as the runtime. Pin them by digest
# (image@sha256:...) in release builds.
ARG NODE_BUILD_IMAGE=node:20-bookworm-slim
ARG NODE_RUNTIME_IMAGE=gcr.io/distroless/nodejs20-debian12:nonroot

# Compiles the TypeScript sources with the full dependency set.
FROM ${NODE_BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# No dependency needs an install script, and skipping them keeps a
# compromised package from running code at build time.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm run build

# Installs the production dependencies only, in a stage of their own so no
# development package or build cache reaches the runtime image.
FROM ${NODE_BUILD_IMAGE} AS production-dependencies
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# Distroless: Node.js and its libraries, no shell and no package manager.
FROM ${NODE_RUNTIME_IMAGE}
WORKDIR /app
ENV NODE_ENV=production
# Files stay owned by root and read-only to the server's user.
COPY --from=production-dependencies /app/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# package.json carries "type": "module", which makes Node load dist/ as ESM.
COPY package.json ./
# The numeric id of the image's nonroot user, so the kubelet can verify
# runAsNonRoot without resolving a user name.
USER 65532:65532
EXPOSE 8443 9090
# Distroless installs Node.js at /nodejs/bin/node, the path its own
# ENTRYPOINT uses. This one adds the CLI, so Kubernetes args start at "serve".
ENTRYPOINT ["/nodejs/bin/node", "/app/dist/src/cli/main.js"]
CMD ["serve"]
