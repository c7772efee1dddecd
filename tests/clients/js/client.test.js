// tenantdb against @libsql/client, a libSQL client that no one on the team wrote.
//
// Started by crates/tenantdb-cli/tests/clients.rs, which runs `tenantdb serve` with a `todos`
// schema and passes the server and two users' tokens in the environment:
//   TENANTDB_TEST_URL            http://127.0.0.1:PORT
//   TENANTDB_TEST_TOKEN_A        user A's JWT
//   TENANTDB_TEST_TOKEN_B        user B's JWT
//   TENANTDB_TEST_TOKEN_WRONG    a well-formed JWT signed with another secret
// Run it with `cargo test -p tenantdb-cli --test clients` (scripts/test installs the pinned
// client first with `npm ci`).
//
// @libsql/client 0.18 speaks Hrana 2 over HTTP (`/v2/pipeline`) for `http:` URLs; the Rust
// test covers `/v3/pipeline` and `/v3/cursor` with the `libsql` crate.

import { after, before, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";

import { createClient, LibsqlError, LibsqlBatchError } from "@libsql/client";

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: run this suite through \`cargo test -p tenantdb-cli --test clients\`, ` +
        "which starts the server and mints the tokens",
    );
  }
  return value;
}

const url = env("TENANTDB_TEST_URL");
const client = (authToken) => createClient({ url, authToken, intMode: "bigint" });

/** Awaits a promise that must reject with a LibsqlError and returns the error. */
async function rejects(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof LibsqlError, `expected a LibsqlError, got ${e?.stack ?? e}`);
    return e;
  }
  assert.fail("expected the call to fail, but it succeeded");
}

const bytes = (buffer) => Array.from(new Uint8Array(buffer));

describe("@libsql/client against tenantdb serve", () => {
  let a;
  let b;

  before(() => {
    a = client(env("TENANTDB_TEST_TOKEN_A"));
    b = client(env("TENANTDB_TEST_TOKEN_B"));
  });

  after(() => {
    a?.close();
    b?.close();
  });

  beforeEach(async () => {
    await a.execute("DELETE FROM todos");
    await b.execute("DELETE FROM todos");
  });

  test("execute with positional arguments", async () => {
    const ins = await a.execute("INSERT INTO todos (title, done) VALUES (?, ?)", ["buy milk", 0n]);
    assert.equal(ins.rowsAffected, 1);
    assert.equal(typeof ins.lastInsertRowid, "bigint");

    const rs = await a.execute({
      sql: "SELECT id, title, done FROM todos WHERE title = ?",
      args: ["buy milk"],
    });
    assert.deepEqual(rs.columns, ["id", "title", "done"]);
    assert.deepEqual(rs.columnTypes, ["INTEGER", "TEXT", "INTEGER"]);
    assert.equal(rs.rows.length, 1);
    const [row] = rs.rows;
    assert.equal(row.id, ins.lastInsertRowid);
    assert.equal(row[0], ins.lastInsertRowid);
    assert.equal(row.title, "buy milk");
    assert.equal(row.done, 0n);
  });

  test("execute with named arguments (:name, @name, $name)", async () => {
    await a.execute({
      sql: "INSERT INTO todos (title, done) VALUES (:title, :done)",
      args: { title: "walk dog", done: 1n },
    });
    await a.execute({
      sql: "INSERT INTO todos (title, done) VALUES (@title, $done)",
      args: { title: "feed cat", done: 0n },
    });
    const rs = await a.execute({
      sql: "SELECT title, done FROM todos WHERE done = :d OR title = :t ORDER BY title",
      args: { d: 1n, t: "feed cat" },
    });
    assert.deepEqual(
      rs.rows.map((r) => [r.title, r.done]),
      [
        ["feed cat", 0n],
        ["walk dog", 1n],
      ],
    );
  });

  test("batch in write mode is one transaction", async () => {
    const results = await a.batch(
      [
        { sql: "INSERT INTO todos (title) VALUES (?)", args: ["one"] },
        { sql: "INSERT INTO todos (title) VALUES (?)", args: ["two"] },
        "UPDATE todos SET done = 1 WHERE title = 'two'",
        "SELECT title, done FROM todos ORDER BY title",
      ],
      "write",
    );
    assert.equal(results.length, 4);
    assert.equal(results[0].rowsAffected, 1);
    assert.equal(results[2].rowsAffected, 1);
    assert.deepEqual(
      results[3].rows.map((r) => [r.title, r.done]),
      [
        ["one", 0n],
        ["two", 1n],
      ],
    );

    // A failing statement rolls the whole batch back.
    const err = await rejects(
      a.batch(
        [
          { sql: "INSERT INTO todos (title) VALUES (?)", args: ["three"] },
          { sql: "INSERT INTO todos (title) VALUES (?)", args: ["one"] },
        ],
        "write",
      ),
    );
    assert.ok(err instanceof LibsqlBatchError, `expected a LibsqlBatchError, got ${err.stack}`);
    assert.equal(err.statementIndex, 1);
    assert.equal(err.code, "SQLITE_CONSTRAINT_UNIQUE");
    const left = await a.execute("SELECT count(*) AS n FROM todos WHERE title = 'three'");
    assert.equal(left.rows[0].n, 0n);
  });

  test("batch in read mode (BEGIN TRANSACTION READONLY)", async () => {
    await a.execute("INSERT INTO todos (title, done) VALUES ('r1', 0), ('r2', 1)");
    const [all, done] = await a.batch(
      ["SELECT count(*) AS n FROM todos", "SELECT title FROM todos WHERE done = 1"],
      "read",
    );
    assert.equal(all.rows[0].n, 2n);
    assert.deepEqual(
      done.rows.map((r) => r.title),
      ["r2"],
    );

    // A write inside a read transaction is refused and leaves nothing behind.
    await rejects(a.batch(["INSERT INTO todos (title) VALUES ('sneaky')"], "read"));
    const rs = await a.execute("SELECT count(*) AS n FROM todos WHERE title = 'sneaky'");
    assert.equal(rs.rows[0].n, 0n);
  });

  test("interactive write transaction that commits", async () => {
    const tx = await a.transaction("write");
    try {
      await tx.execute({ sql: "INSERT INTO todos (title) VALUES (?)", args: ["in tx"] });
      const inside = await tx.execute("SELECT count(*) AS n FROM todos");
      assert.equal(inside.rows[0].n, 1n);
      const [upd, sel] = await tx.batch([
        "UPDATE todos SET done = 1 WHERE title = 'in tx'",
        "SELECT done FROM todos WHERE title = 'in tx'",
      ]);
      assert.equal(upd.rowsAffected, 1);
      assert.equal(sel.rows[0].done, 1n);
      await tx.commit();
    } finally {
      tx.close();
    }
    assert.ok(tx.closed);
    const rs = await a.execute("SELECT title, done FROM todos");
    assert.deepEqual(
      rs.rows.map((r) => [r.title, r.done]),
      [["in tx", 1n]],
    );
  });

  test("interactive write transaction that rolls back", async () => {
    await a.execute("INSERT INTO todos (title) VALUES ('kept')");
    const tx = await a.transaction("write");
    try {
      await tx.execute("INSERT INTO todos (title) VALUES ('gone 1')");
      await tx.execute("INSERT INTO todos (title) VALUES ('gone 2')");
      await tx.execute("DELETE FROM todos WHERE title = 'kept'");
      const inside = await tx.execute("SELECT count(*) AS n FROM todos");
      assert.equal(inside.rows[0].n, 2n);
      await tx.rollback();
    } finally {
      tx.close();
    }
    const rs = await a.execute("SELECT title FROM todos ORDER BY title");
    assert.deepEqual(
      rs.rows.map((r) => r.title),
      ["kept"],
    );
  });

  test("interactive read transaction", async () => {
    await a.execute("INSERT INTO todos (title) VALUES ('seen')");
    const tx = await a.transaction("read");
    try {
      const rs = await tx.execute("SELECT title FROM todos");
      assert.deepEqual(
        rs.rows.map((r) => r.title),
        ["seen"],
      );
      await rejects(tx.execute("INSERT INTO todos (title) VALUES ('not in a read tx')"));
    } finally {
      tx.close();
    }
    const rs = await a.execute("SELECT count(*) AS n FROM todos");
    assert.equal(rs.rows[0].n, 1n);
  });

  test("executeMultiple runs a script", async () => {
    await a.executeMultiple(`
      INSERT INTO todos (title) VALUES ('m1');
      INSERT INTO todos (title) VALUES ('m2');
      -- a comment between statements
      UPDATE todos SET done = 1 WHERE title = 'm2';
    `);
    const rs = await a.execute("SELECT title, done FROM todos ORDER BY title");
    assert.deepEqual(
      rs.rows.map((r) => [r.title, r.done]),
      [
        ["m1", 0n],
        ["m2", 1n],
      ],
    );
  });

  test("integers beyond 2^53 round-trip exactly as bigint", async () => {
    const values = [
      2n ** 53n + 1n,
      9007199254740993n,
      9223372036854775807n,
      -9223372036854775808n,
      -(2n ** 60n) - 7n,
      0n,
    ];
    for (const [i, big] of values.entries()) {
      await a.execute("INSERT INTO todos (title, big) VALUES (?, ?)", [`big ${i}`, big]);
    }
    const rs = await a.execute("SELECT big, typeof(big) AS t FROM todos ORDER BY id");
    assert.deepEqual(
      rs.rows.map((r) => r.big),
      values,
    );
    for (const row of rs.rows) {
      assert.equal(typeof row.big, "bigint");
      assert.equal(row.t, "integer");
    }
    // Arithmetic done by SQLite comes back exact too.
    const sum = await a.execute("SELECT ? + 1 AS n", [9223372036854775806n]);
    assert.equal(sum.rows[0].n, 9223372036854775807n);
    // A rowid beyond 2^53 comes back exact as lastInsertRowid.
    const ins = await a.execute("INSERT INTO todos (id, title) VALUES (?, 'high rowid')", [
      2n ** 62n + 3n,
    ]);
    assert.equal(ins.lastInsertRowid, 2n ** 62n + 3n);
  });

  test("blobs round-trip as bytes", async () => {
    const all = new Uint8Array(256).map((_, i) => i);
    const cases = [all, new Uint8Array([0]), new Uint8Array([0xff, 0xfe, 0xfd]), new Uint8Array(0)];
    for (const [i, blob] of cases.entries()) {
      await a.execute("INSERT INTO todos (title, data) VALUES (?, ?)", [`blob ${i}`, blob]);
    }
    const rs = await a.execute("SELECT data, typeof(data) AS t, length(data) AS len FROM todos ORDER BY id");
    assert.equal(rs.rows.length, cases.length);
    for (const [i, row] of rs.rows.entries()) {
      assert.ok(row.data instanceof ArrayBuffer, `row ${i}: ${row.data}`);
      assert.deepEqual(bytes(row.data), Array.from(cases[i]));
      assert.equal(row.t, "blob");
      assert.equal(row.len, BigInt(cases[i].length));
    }
    // A blob made by SQLite.
    const made = await a.execute("SELECT x'00ff10' AS b");
    assert.deepEqual(bytes(made.rows[0].b), [0x00, 0xff, 0x10]);
  });

  test("NULLs round-trip", async () => {
    await a.execute("INSERT INTO todos (title, data, score, big) VALUES (?, ?, ?, ?)", [
      "nothing",
      null,
      null,
      null,
    ]);
    const rs = await a.execute("SELECT data, score, big, NULL AS lit FROM todos");
    const [row] = rs.rows;
    assert.equal(row.data, null);
    assert.equal(row.score, null);
    assert.equal(row.big, null);
    assert.equal(row.lit, null);
    const nn = await rejects(a.execute("INSERT INTO todos (title) VALUES (?)", [null]));
    assert.equal(nn.code, "SQLITE_CONSTRAINT_NOTNULL");
  });

  test("floats round-trip", async () => {
    const values = [3.141592653589793, -0.5, 1e300, 2.5e-300, 2.0, 0.1 + 0.2];
    for (const [i, f] of values.entries()) {
      await a.execute("INSERT INTO todos (title, score) VALUES (?, ?)", [`float ${i}`, f]);
    }
    const rs = await a.execute("SELECT score, typeof(score) AS t FROM todos ORDER BY id");
    assert.deepEqual(
      rs.rows.map((r) => r.score),
      values,
    );
    for (const row of rs.rows) {
      // A whole-number REAL stays a float, not a bigint, under intMode "bigint".
      assert.equal(typeof row.score, "number");
      assert.equal(row.t, "real");
    }
    const avg = await a.execute("SELECT 7 / 2.0 AS x");
    assert.equal(avg.rows[0].x, 3.5);
  });

  test("text round-trips, including non-ASCII", async () => {
    const title = "naïve café ✓ 🚀 \"quoted\" 'single' \n newline \\ backslash";
    await a.execute("INSERT INTO todos (title) VALUES (?)", [title]);
    const rs = await a.execute("SELECT title, length(title) AS n FROM todos");
    assert.equal(rs.rows[0].title, title);
    assert.equal(rs.rows[0].n, BigInt([...title].length));
  });

  test("a UNIQUE violation surfaces as LibsqlError with code SQLITE_CONSTRAINT_UNIQUE", async () => {
    await a.execute("INSERT INTO todos (title) VALUES ('dup')");
    const err = await rejects(a.execute("INSERT INTO todos (title) VALUES ('dup')"));
    // Over Hrana, @libsql/client 0.18 takes `code` from the error the server sends and leaves
    // `extendedCode` and `rawCode` undefined (they are filled only by the local SQLite client),
    // so the server must send the extended result code's name as `code`.
    assert.equal(err.code, "SQLITE_CONSTRAINT_UNIQUE");
    assert.ok(
      err.extendedCode === undefined || err.extendedCode === "SQLITE_CONSTRAINT_UNIQUE",
      `extendedCode ${err.extendedCode}`,
    );
    assert.match(err.message, /UNIQUE constraint failed: todos\.title/);
    // A failed statement leaves the connection usable.
    const rs = await a.execute("SELECT count(*) AS n FROM todos");
    assert.equal(rs.rows[0].n, 1n);
  });

  test("one user cannot see another user's rows", async () => {
    await a.execute("INSERT INTO todos (title) VALUES ('secret of A')");
    await b.execute("INSERT INTO todos (title) VALUES ('secret of B')");
    const seenByA = await a.execute("SELECT title FROM todos");
    const seenByB = await b.execute("SELECT title FROM todos");
    assert.deepEqual(
      seenByA.rows.map((r) => r.title),
      ["secret of A"],
    );
    assert.deepEqual(
      seenByB.rows.map((r) => r.title),
      ["secret of B"],
    );
    // The same title is not a UNIQUE violation across users: they are separate databases.
    await b.execute("INSERT INTO todos (title) VALUES ('secret of A')");
    const [count] = await b.batch(["SELECT count(*) AS n FROM todos"], "read");
    assert.equal(count.rows[0].n, 2n);
  });

  test("a wrong token is refused", async () => {
    const wrong = client(env("TENANTDB_TEST_TOKEN_WRONG"));
    try {
      const err = await rejects(wrong.execute("SELECT 1"));
      assert.equal(err.code, "AUTH_INVALID");
      await rejects(wrong.batch(["SELECT 1"], "read"));
    } finally {
      wrong.close();
    }
    const garbage = client("not-a-jwt");
    try {
      const err = await rejects(garbage.execute("SELECT 1"));
      assert.equal(err.code, "AUTH_MALFORMED");
    } finally {
      garbage.close();
    }
    const anonymous = createClient({ url, intMode: "bigint" });
    try {
      const err = await rejects(anonymous.execute("SELECT 1"));
      assert.equal(err.code, "AUTH_MISSING");
    } finally {
      anonymous.close();
    }
  });
});
