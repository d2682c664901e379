"use strict";
// Where the SQLite file is, from DATABASE_URL in Prisma's `file:PATH[?params]` form.
// Shared by the server and prisma.config.ts so the app, the migrations and sidecar
// all open the same file.
const path = require("node:path");

// Prisma resolves a relative `file:` path against the directory of the schema.
const SCHEMA_DIR = path.join(__dirname, "prisma");

function databasePath(url = process.env.DATABASE_URL) {
  if (!url) {
    throw new Error("DATABASE_URL is not set (expected e.g. file:/data/app.db)");
  }
  if (!url.startsWith("file:")) {
    throw new Error(`DATABASE_URL must be a SQLite file: URL (got ${JSON.stringify(url)})`);
  }
  // The better-sqlite3 adapter passes everything after `file:` to SQLite, query
  // string included, so strip `?connection_limit=1` and friends here.
  const raw = url.slice("file:".length).split("?")[0];
  if (raw === "") {
    throw new Error(`DATABASE_URL has no path (got ${JSON.stringify(url)})`);
  }
  return path.resolve(SCHEMA_DIR, raw);
}

module.exports = { databasePath };
