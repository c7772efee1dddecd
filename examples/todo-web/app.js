// A per-user todo list that talks to tenantdb straight from the browser.
//
// Signing in yields a token whose `sub` names the user; `@libsql/client` sends it with every
// request, and tenantdb routes the SQL to that user's own database. There is no table of users
// and no `WHERE user_id = ?`: the schema (examples/migrations) is a plain `todos` table.

import { createClient, LibsqlError } from "@libsql/client/web";

const DEFAULT_SERVER = "http://127.0.0.1:8080";
/** Where a signed-in session survives a reload (per tab; gone when the tab closes). */
const SESSION_KEY = "tenantdb-todo-session";

const $ = (id) => document.getElementById(id);

const ui = {
  message: $("message"),
  signIn: $("sign-in"),
  server: $("server"),
  devForm: $("dev-sign-in"),
  user: $("user"),
  tokenForm: $("token-sign-in"),
  token: $("token"),
  todos: $("todos"),
  heading: $("todos-heading"),
  signOut: $("sign-out"),
  addForm: $("add"),
  title: $("title"),
  list: $("list"),
  empty: $("empty"),
  refresh: $("refresh"),
};

/** The signed-in session: `{server, token, user, client}`, or null. */
let session = null;

/** The server could not be reached at all: down, wrong address, or CORS refused the page. */
class Unreachable extends Error {
  constructor(server) {
    super(
      `Cannot reach tenantdb at ${server}. Is it running, and does it allow this page ` +
        `(tenantdb serve --cors-origin ${location.origin})?`,
    );
  }
}

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = false;
}

function clearMessage() {
  ui.message.hidden = true;
  ui.message.textContent = "";
}

/** The token's `sub` claim, to greet the user; null when it cannot be read. */
function subjectOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

/** Asks the server for a dev token (`tenantdb serve --dev-login`). */
async function devToken(server, user) {
  let response;
  try {
    response = await fetch(new URL("dev/token", withSlash(server)), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
  } catch {
    throw new Unreachable(server);
  }
  if (response.status === 404) {
    throw new Error(
      "This tenantdb does not offer dev sign-in: start it with --dev-login, or use a session token.",
    );
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body?.error?.message ?? `tenantdb answered ${response.status}`);
  }
  return body.token;
}

function withSlash(url) {
  return url.endsWith("/") ? url : `${url}/`;
}

function startSession(server, token, user) {
  session = { server, token, user, client: createClient({ url: server, authToken: token }) };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ server, token, user }));
  ui.heading.textContent = user ? `${user}'s todos` : "Your todos";
  ui.signIn.hidden = true;
  ui.todos.hidden = false;
  ui.list.replaceChildren();
  ui.empty.hidden = true;
  ui.title.focus();
}

function endSession() {
  session?.client.close();
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  ui.todos.hidden = true;
  ui.signIn.hidden = false;
  ui.list.replaceChildren();
}

/** Runs one user action; turns any failure into a message the user can act on. */
async function act(button, action) {
  button.disabled = true;
  try {
    await action();
    clearMessage();
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

function report(error) {
  if (error instanceof LibsqlError && error.code === "AUTH_EXPIRED") {
    endSession();
    showMessage("Your session has expired — sign in again.");
  } else if (error instanceof LibsqlError && error.code?.startsWith("AUTH_")) {
    endSession();
    showMessage(`tenantdb refused the token (${error.message}) — sign in again.`);
  } else if (error instanceof TypeError && session) {
    // fetch rejects with a TypeError when no response arrives at all; the client passes it on.
    showMessage(new Unreachable(session.server).message);
  } else {
    showMessage(error.message);
  }
}

async function load() {
  const result = await session.client.execute(
    "SELECT id, title, done FROM todos ORDER BY id",
  );
  render(result.rows);
}

function render(rows) {
  const items = rows.map((row) => {
    const id = `todo-${row.id}`;
    const done = Number(row.done) !== 0;
    const item = document.createElement("li");
    item.classList.toggle("done", done);

    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = id;
    box.checked = done;
    box.addEventListener("change", () =>
      act(box, async () => {
        await session.client.execute({
          sql: "UPDATE todos SET done = ? WHERE id = ?",
          args: [box.checked ? 1 : 0, row.id],
        });
        await load();
      }),
    );

    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = row.title;

    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${row.title}`);
    remove.addEventListener("click", () =>
      act(remove, async () => {
        await session.client.execute({ sql: "DELETE FROM todos WHERE id = ?", args: [row.id] });
        await load();
      }),
    );

    item.append(box, label, remove);
    return item;
  });
  ui.list.replaceChildren(...items);
  ui.empty.hidden = rows.length > 0;
}

function server() {
  return ui.server.value.trim().replace(/\/+$/, "");
}

/** Runs `action` as a user action (see `act`) whenever `form` is submitted. */
function onSubmit(form, action) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter ?? form.querySelector("button"), action);
  });
}

onSubmit(ui.devForm, async () => {
  const user = ui.user.value.trim();
  const token = await devToken(server(), user);
  startSession(server(), token, user);
  await load();
});

onSubmit(ui.tokenForm, async () => {
  const token = ui.token.value.trim();
  startSession(server(), token, subjectOf(token));
  ui.token.value = "";
  await load();
});

onSubmit(ui.addForm, async () => {
  const title = ui.title.value.trim();
  if (!title) return;
  await session.client.execute({ sql: "INSERT INTO todos (title) VALUES (?)", args: [title] });
  ui.title.value = "";
  await load();
});

ui.refresh.addEventListener("click", () => act(ui.refresh, load));

ui.signOut.addEventListener("click", () => {
  endSession();
  clearMessage();
});

// The server comes from `?server=` when given (the end-to-end test uses it), else the default.
ui.server.value = new URLSearchParams(location.search).get("server") ?? DEFAULT_SERVER;

let saved = null;
try {
  saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
} catch {
  sessionStorage.removeItem(SESSION_KEY);
}
if (saved?.server && saved?.token) {
  ui.server.value = saved.server;
  startSession(saved.server, saved.token, saved.user);
  act(ui.refresh, load);
}
