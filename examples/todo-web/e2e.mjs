// The todo page end to end, in headless Chromium, against a running `tenantdb serve`.
//
// Run by crates/tenantdb-cli/tests/todo_web.rs, which starts `tenantdb serve --dev-login
// --cors-origin <page origin>` and this directory's serve.mjs, and passes:
//   TODO_WEB_URL            the page's origin, http://127.0.0.1:PORT
//   TENANTDB_URL            the server, http://127.0.0.1:PORT
//   TENANTDB_PID            the server's process id: the last step stops it
//   TODO_WEB_EXPIRED_TOKEN  a token for alice signed with the server's secret, expired
//   CHROMIUM                the browser (default /usr/bin/chromium, Debian's package)
// On success it prints one JSON line: the todos each user's page shows at the end.

import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 10_000;
const TOTAL_TIMEOUT_MS = 90_000;

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: run this through \`cargo test -p tenantdb-cli --test todo_web\`, ` +
        "which starts the servers",
    );
  }
  return value;
}

const pageUrl = env("TODO_WEB_URL");
const serverUrl = env("TENANTDB_URL");
const serverPid = Number(env("TENANTDB_PID"));
const expiredToken = env("TODO_WEB_EXPIRED_TOKEN");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Polls `read` until `done(value)` holds; fails with the last value seen. */
async function until(what, read, done, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await read();
    if (done(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** The todos a page shows, as `[title, done]` pairs: each item's label and checkbox, read in
 * one go so that a list re-rendering meanwhile is never seen half old, half new. */
async function shown(page) {
  return page.getByRole("list", { name: "Todos" }).evaluate((list) =>
    Array.from(list.querySelectorAll("li"), (item) => [
      item.querySelector("label").textContent,
      item.querySelector("input[type=checkbox]").checked,
    ]),
  );
}

async function expectTodos(page, who, expected) {
  await until(`${who}'s list to be ${JSON.stringify(expected)}`, () => shown(page), (list) =>
    same(list, expected),
  );
}

async function expectAlert(page, text) {
  const alert = page.getByRole("alert");
  await until(
    `the message "${text}"`,
    async () => ((await alert.isVisible()) ? await alert.innerText() : "(no message)"),
    (message) => message.includes(text),
  );
}

/** A fresh browser profile (its own storage) with the page open. */
async function open(browser, errors, who) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on("pageerror", (error) => errors.push(`${who}: ${error.message}`));
  await page.goto(`${pageUrl}/?server=${encodeURIComponent(serverUrl)}`);
  return page;
}

async function signIn(page, user) {
  await page.getByLabel("User").fill(user);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByRole("heading", { name: `${user}'s todos` }).waitFor();
}

async function add(page, title) {
  const before = (await shown(page)).length;
  await page.getByLabel("New todo").fill(title);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await until(`"${title}" to be added`, () => shown(page), (list) => list.length === before + 1);
}

async function complete(page, title) {
  await page.getByRole("checkbox", { name: title, exact: true }).check();
  await until(`"${title}" to be done`, () => shown(page), (list) =>
    list.some(([t, done]) => t === title && done),
  );
}

async function remove(page, title) {
  await page.getByRole("button", { name: `Delete ${title}`, exact: true }).click();
  await until(`"${title}" to be deleted`, () => shown(page), (list) =>
    list.every(([t]) => t !== title),
  );
}

/** Resolves once nothing answers at `url` any more. */
async function serverGone(url) {
  await until(
    `tenantdb at ${url} to stop`,
    () => fetch(`${url}/health`).then(() => "still up", () => "gone"),
    (state) => state === "gone",
  );
}

async function run(browser) {
  const errors = [];
  const alice = await open(browser, errors, "alice");
  const bob = await open(browser, errors, "bob");

  // Two people at once, each in their own browser profile and their own database.
  await signIn(alice, "alice");
  await signIn(bob, "bob");
  await expectTodos(alice, "alice", []);
  for (const title of ["buy milk", "water the plants", "call the bank"]) {
    await add(alice, title);
  }
  // Titles are text, never markup.
  for (const title of ["fix the bike", "<b>not bold</b>", "book flights"]) {
    await add(bob, title);
  }
  await complete(alice, "water the plants");
  await remove(alice, "call the bank");
  await complete(bob, "book flights");
  await remove(bob, "fix the bike");

  const aliceSees = [["buy milk", false], ["water the plants", true]];
  const bobSees = [["<b>not bold</b>", false], ["book flights", true]];
  await expectTodos(alice, "alice", aliceSees);
  await expectTodos(bob, "bob", bobSees);
  // What each sees comes from their own database, not from what the page remembers.
  await alice.reload();
  await alice.getByRole("heading", { name: "alice's todos" }).waitFor();
  await expectTodos(alice, "alice", aliceSees);
  await bob.getByRole("button", { name: "Refresh" }).click();
  await expectTodos(bob, "bob", bobSees);

  // An expired session token: the server answers 401 and the page says so.
  const late = await open(browser, errors, "expired");
  await late.getByLabel("Session token").fill(expiredToken);
  await late.getByRole("button", { name: "Use this token" }).click();
  await expectAlert(late, "Your session has expired — sign in again");
  await late.getByRole("button", { name: "Sign in", exact: true }).waitFor();

  // The server goes away while alice is signed in.
  process.kill(serverPid, "SIGTERM");
  await serverGone(serverUrl);
  await alice.getByLabel("New todo").fill("written while the server is down");
  await alice.getByRole("button", { name: "Add", exact: true }).click();
  await expectAlert(alice, `Cannot reach tenantdb at ${serverUrl}`);
  // Signing in needs the server too.
  const stranger = await open(browser, errors, "stranger");
  await stranger.getByLabel("User").fill("carol");
  await stranger.getByRole("button", { name: "Sign in", exact: true }).click();
  await expectAlert(stranger, `Cannot reach tenantdb at ${serverUrl}`);

  if (errors.length > 0) {
    throw new Error(`uncaught errors in the page:\n${errors.join("\n")}`);
  }
  return { alice: await shown(alice), bob: await shown(bob) };
}

const watchdog = setTimeout(() => {
  console.error(`e2e: not finished within ${TOTAL_TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  console.log(JSON.stringify(await run(browser)));
} catch (error) {
  console.error(`e2e: ${error.stack ?? error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
