// Prisma CLI configuration. `engine: "js"` with the better-sqlite3 driver adapter
// lets `prisma migrate deploy` run without Prisma's native schema engine: nothing
// is downloaded at build or start time, so migrations work offline and in a slim
// image.
import { defineConfig } from "prisma/config";
import { PrismaBetterSQLite3 } from "@prisma/adapter-better-sqlite3";
import { databasePath } from "./db.js";

export default defineConfig({
  experimental: { adapter: true },
  engine: "js",
  schema: "prisma/schema.prisma",
  migrations: { path: "prisma/migrations" },
  async adapter() {
    // Same file the server opens: DATABASE_URL, relative paths against prisma/.
    return new PrismaBetterSQLite3({ url: databasePath() });
  },
});
