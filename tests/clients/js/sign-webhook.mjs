// Signs webhook deliveries with the official Standard Webhooks library (the `standardwebhooks`
// npm package, pinned in package-lock.json), so tenantdb's verifier is tested against a signer
// nobody on the team wrote. Used by crates/tenantdb-server/tests/webhooks.rs and
// crates/tenantdb-cli/tests/webhook_crash.rs.
//
//   node sign-webhook.mjs SECRET MSG_ID TIMESTAMP < body
//       prints the signature header value (`v1,<base64>`) for the exact bytes on stdin.
//   node sign-webhook.mjs --batch < requests
//       reads one JSON object per line, {"secret","id","timestamp","body"}, and prints one
//       signature header value per line, in order.
//
// TIMESTAMP is in unix seconds. Exits non-zero with a message on stderr on any error.

import { Webhook } from "standardwebhooks";

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function signature(secret, id, timestamp, body) {
  const seconds = Number(timestamp);
  if (!Number.isSafeInteger(seconds)) {
    throw new Error(`timestamp must be unix seconds, got ${JSON.stringify(timestamp)}`);
  }
  return new Webhook(secret).sign(String(id), new Date(seconds * 1000), body);
}

async function main(args) {
  if (args.length === 1 && args[0] === "--batch") {
    const lines = (await readStdin()).split("\n").filter((line) => line.trim() !== "");
    const out = lines.map((line) => {
      const { secret, id, timestamp, body } = JSON.parse(line);
      return signature(secret, id, timestamp, body);
    });
    process.stdout.write(out.map((s) => s + "\n").join(""));
    return;
  }
  if (args.length !== 3) {
    throw new Error("usage: sign-webhook.mjs SECRET MSG_ID TIMESTAMP < body, or --batch < requests");
  }
  const [secret, id, timestamp] = args;
  process.stdout.write(signature(secret, id, timestamp, await readStdin()) + "\n");
}

main(process.argv.slice(2)).catch((e) => {
  process.stderr.write(`sign-webhook.mjs: ${e.message}\n`);
  process.exit(1);
});
