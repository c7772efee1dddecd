// Serves the todo page on its own origin, with no dependencies: `node serve.mjs [PORT]`
// (or PORT=…; default 5173; 0 picks a free port). A page opened from file:// has no usable
// origin, and one served by tenantdb itself would not be cross-origin; a separate origin is
// what a real web app has, so it is what exercises tenantdb's CORS.
//
// Only the page's own files are served, by a fixed table: nothing else in this directory
// (node_modules, package files) is reachable.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const HOST = process.env.HOST ?? "127.0.0.1";
const ROOT = new URL(".", import.meta.url);

const FILES = new Map([
  ["/", ["index.html", "text/html; charset=utf-8"]],
  ["/index.html", ["index.html", "text/html; charset=utf-8"]],
  ["/style.css", ["style.css", "text/css; charset=utf-8"]],
  ["/dist/app.js", ["dist/app.js", "text/javascript; charset=utf-8"]],
  ["/dist/app.js.map", ["dist/app.js.map", "application/json"]],
]);

function port() {
  const raw = process.argv[2] ?? process.env.PORT ?? "5173";
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value > 65535) {
    console.error(`serve.mjs: invalid port ${JSON.stringify(raw)}: use a number from 0 to 65535`);
    process.exit(2);
  }
  return value;
}

function reply(res, status, type, body) {
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
}

const server = createServer(async (req, res) => {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  const file = FILES.get(path);
  if (!file) {
    return reply(res, 404, "text/plain; charset=utf-8", "not found\n");
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("allow", "GET, HEAD");
    return reply(res, 405, "text/plain; charset=utf-8", "method not allowed\n");
  }
  const [name, type] = file;
  try {
    const body = await readFile(fileURLToPath(new URL(name, ROOT)));
    reply(res, 200, type, req.method === "HEAD" ? undefined : body);
  } catch (error) {
    const missingBuild = error.code === "ENOENT" && name.startsWith("dist/");
    const text = missingBuild
      ? `${name} is missing: run \`npm ci && npm run build\` in examples/todo-web first\n`
      : `cannot read ${name}: ${error.message}\n`;
    console.error(`serve.mjs: ${text.trim()}`);
    reply(res, missingBuild ? 503 : 500, "text/plain; charset=utf-8", text);
  }
});

server.on("error", (error) => {
  console.error(`serve.mjs: ${error.message}`);
  process.exit(1);
});

server.listen(port(), HOST, () => {
  const { port } = server.address();
  const host = HOST.includes(":") ? `[${HOST}]` : HOST;
  // The test reads this line for the page's origin.
  console.log(`todo-web on http://${host}:${port}`);
});
