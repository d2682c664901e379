"use strict";
// A tiny notes API on SQLite through Prisma Client and the better-sqlite3 driver
// adapter. Start it as `node server.js` (not `npm start`: npm does not pass SIGTERM
// on to the app, so it would never shut down cleanly).
//
//   GET  /health      200 when the database answers
//   GET  /notes       the newest notes, with author and tags
//   GET  /notes/:id   one note
//   POST /notes       {"title", "body"?, "author": email, "tags"?: [names]}
const http = require("node:http");
const { PrismaClient, Prisma } = require("@prisma/client");
const { PrismaBetterSQLite3 } = require("@prisma/adapter-better-sqlite3");
const { databasePath } = require("./db.js");

// APP_PORT first: on Railway, PORT names the port the platform's healthcheck
// calls, which is sidecar's (9090, /readyz), not the app's.
const PORT = Number(process.env.APP_PORT || process.env.PORT || 3000);
const MAX_BODY_BYTES = 64 * 1024;

function log(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

const dbPath = databasePath();
const prisma = new PrismaClient({
  // timeout is SQLite's busy timeout: Litestream briefly holds locks while it
  // checkpoints the WAL, and writers should wait rather than fail.
  adapter: new PrismaBetterSQLite3({ url: dbPath, timeout: 5000 }),
});

const noteInclude = {
  author: { select: { id: true, email: true, name: true } },
  tags: { select: { tag: { select: { name: true } } } },
};

function present(note) {
  return { ...note, tags: note.tags.map((t) => t.tag.name) };
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, "body too large");
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  } catch {
    throw new HttpError(400, "body is not valid JSON");
  }
}

function validNote(input) {
  const { title, body = "", author, tags = [] } = input ?? {};
  if (typeof title !== "string" || title.trim() === "") {
    throw new HttpError(400, "title: a non-empty string is required");
  }
  if (typeof body !== "string") throw new HttpError(400, "body: must be a string");
  if (typeof author !== "string" || !author.includes("@")) {
    throw new HttpError(400, "author: an email address is required");
  }
  if (!Array.isArray(tags) || tags.some((t) => typeof t !== "string" || t.trim() === "")) {
    throw new HttpError(400, "tags: must be a list of non-empty strings");
  }
  return { title: title.trim(), body, author, tags: [...new Set(tags.map((t) => t.trim()))] };
}

async function createNote(input) {
  const note = validNote(input);
  try {
    const created = await prisma.note.create({
      data: {
        title: note.title,
        body: note.body,
        author: {
          connectOrCreate: { where: { email: note.author }, create: { email: note.author } },
        },
        tags: {
          create: note.tags.map((name) => ({
            tag: { connectOrCreate: { where: { name }, create: { name } } },
          })),
        },
      },
      include: noteInclude,
    });
    return present(created);
  } catch (err) {
    if (err instanceof Prisma.PrismaClientKnownRequestError && err.code === "P2002") {
      throw new HttpError(409, "this author already has a note with that title");
    }
    throw err;
  }
}

async function route(req, res) {
  const url = new URL(req.url, "http://localhost");
  const noteId = url.pathname.match(/^\/notes\/([^/]+)$/)?.[1];

  if (req.method === "GET" && url.pathname === "/health") {
    await prisma.$queryRaw`SELECT 1`;
    return send(res, 200, { status: "ok" });
  }
  if (req.method === "GET" && url.pathname === "/notes") {
    const notes = await prisma.note.findMany({
      include: noteInclude,
      orderBy: { createdAt: "desc" },
      take: 100,
    });
    return send(res, 200, notes.map(present));
  }
  if (req.method === "GET" && noteId) {
    const note = await prisma.note.findUnique({ where: { id: noteId }, include: noteInclude });
    if (!note) throw new HttpError(404, "no such note");
    return send(res, 200, present(note));
  }
  if (req.method === "POST" && url.pathname === "/notes") {
    return send(res, 201, await createNote(await readJson(req)));
  }
  throw new HttpError(404, "not found");
}

const server = http.createServer((req, res) => {
  route(req, res).catch((err) => {
    if (err instanceof HttpError) return send(res, err.status, { error: err.message });
    log("request failed", { method: req.method, url: req.url, error: String(err) });
    send(res, 500, { error: "internal error" });
  });
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log("shutting down", { signal });
  // Stop accepting connections, let in-flight requests finish, then close the
  // database so the last transaction is on disk before Litestream's final sync.
  server.close(async () => {
    await prisma.$disconnect();
    log("stopped");
    process.exit(0);
  });
  server.closeIdleConnections();
  setTimeout(() => server.closeAllConnections(), 5000).unref();
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));

async function main() {
  await prisma.$connect();
  // WAL is what Litestream replicates; it also sets this, but say it here so the
  // app behaves the same with or without sidecar in front of it.
  await prisma.$queryRawUnsafe("PRAGMA journal_mode = WAL");
  await prisma.$queryRawUnsafe("PRAGMA synchronous = NORMAL");
  // Without a host Node listens on :: (IPv4 and IPv6) where it can, else 0.0.0.0.
  server.listen(PORT, () => log("listening", { port: PORT, database: dbPath }));
}

main().catch((err) => {
  log("start failed", { error: String(err) });
  process.exit(1);
});
