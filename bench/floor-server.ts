/**
 * The benchmark's floor: a bare Node HTTPS server that parses each AdmissionReview body and
 * responds with a precomputed response of the webhook's size, with the request's uid spliced in.
 * It shows what TLS, HTTP and JSON parsing alone cost on this machine.
 *
 * Usage: floor-server.ts CERT_FILE KEY_FILE RESPONSE_TEMPLATE_FILE
 * The template is a JSON object whose text contains the placeholder uid once. The server prints
 * "listening PORT" on stdout once it accepts connections on 127.0.0.1.
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { PLACEHOLDER_UID } from "./pods.js";

const [certFile, keyFile, templateFile] = process.argv.slice(2);
if (!certFile || !keyFile || !templateFile) {
  process.stderr.write(
    "usage: floor-server.ts CERT_FILE KEY_FILE RESPONSE_TEMPLATE_FILE\n",
  );
  process.exit(2);
}
const template = readFileSync(templateFile, "utf8");
const at = template.indexOf(PLACEHOLDER_UID);
if (at < 0) {
  process.stderr.write(
    `the response template has no placeholder uid ${PLACEHOLDER_UID}\n`,
  );
  process.exit(2);
}
const before = template.slice(0, at);
const after = template.slice(at + PLACEHOLDER_UID.length);

const server = createServer(
  {
    cert: readFileSync(certFile, "utf8"),
    key: readFileSync(keyFile, "utf8"),
    minVersion: "TLSv1.2",
  },
  (request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      let uid: unknown;
      try {
        const review = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
          request?: { uid?: unknown };
        };
        uid = review.request?.uid;
      } catch {
        uid = undefined;
      }
      if (typeof uid !== "string" || uid.length !== PLACEHOLDER_UID.length) {
        response.writeHead(400, { "content-type": "text/plain" });
        response.end("expected an AdmissionReview with a 36-character uid\n");
        return;
      }
      const body = before + uid + after;
      response.writeHead(200, {
        "content-type": "application/json; charset=utf-8",
        "content-length": Buffer.byteLength(body),
      });
      response.end(body);
    });
  },
);
// fastify keeps idle connections for 72 s, and the same timeout here keeps both pools warm.
server.keepAliveTimeout = 72_000;
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`listening ${port}\n`);
});
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
