// Railway Infrastructure as Code for the example app (examples/prisma-app with sidecar as its
// entrypoint), applied with `railway config plan` / `railway config apply` from the repository
// root: the service built from ./Dockerfile, its /data volume, a Bucket, and the Bucket's
// variables by reference. deploy/railway/README.md walks through it.
import { bucket, defineRailway, project, ref, service, volume } from "railway/iac";

// Shutdown budget. Railway sends SIGTERM, then SIGKILL after drainingSeconds (default 0: the
// last writes would never reach the bucket). sidecar needs the app's stop timeout plus
// Litestream's final sync: 10 s + 30 s, with room to spare.
const APP_STOP_SECONDS = 10;
const FINAL_SYNC_SECONDS = 30;
const DRAINING_SECONDS = 60;

export default defineRailway(() => {
  const backups = bucket("Bucket");
  const data = volume("app-data");

  const app = service("app", {
    build: { builder: "DOCKERFILE", dockerfilePath: "Dockerfile" },
    // No start command: one would replace the image's ENTRYPOINT (sidecar) and run the app
    // with no restore and no backup.
    deploy: {
      drainingSeconds: DRAINING_SECONDS,
      overlapSeconds: 0, // one deployment at a time: SQLite has one writer
      requiredMountPath: "/data",
      restartPolicyType: "ON_FAILURE",
      restartPolicyMaxRetries: 10,
    },
    // Railway polls $PORT, which is sidecar's listener: ready means the app runs, Litestream
    // runs and the backup is fresh. A first boot may restore and migrate first.
    healthcheck: "/readyz",
    healthcheckTimeout: 300,
    // One writer per database, and a volume attaches to one deployment.
    replicas: 1,
    volumeMounts: { "/data": data },
    env: {
      DATABASE_URL: "file:/data/app.db",
      // The Bucket's own variable names, which sidecar reads as they are. Its endpoint is
      // https://storage.railway.app, for which sidecar defaults to virtual-hosted requests.
      BUCKET: ref(backups, "BUCKET"),
      ENDPOINT: ref(backups, "ENDPOINT"),
      REGION: ref(backups, "REGION"),
      ACCESS_KEY_ID: ref(backups, "ACCESS_KEY_ID"),
      SECRET_ACCESS_KEY: ref(backups, "SECRET_ACCESS_KEY"),
      // The prefix, spelled out so it never changes by accident (another prefix on the next
      // deploy would mean "no backup found").
      SIDECAR_REPLICA_URL: "s3://${{Bucket.BUCKET}}/app.db",
      // PORT is where Railway sends the healthcheck: sidecar's listener. The app listens on
      // APP_PORT; point the public domain at 3000, never at 9090.
      PORT: "9090",
      APP_PORT: "3000",
      SIDECAR_HTTP_ADDR: "[::]:9090",
      SIDECAR_APP_STOP_TIMEOUT: `${APP_STOP_SECONDS}s`,
      SIDECAR_LITESTREAM_STOP_TIMEOUT: `${FINAL_SYNC_SECONDS}s`,
    },
  });

  return project("sidecar-prisma-app", { resources: [app, data, backups] });
});
