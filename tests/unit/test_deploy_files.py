"""The deployment files (deploy/railway, deploy/kubernetes, deploy/compose) and the reference
litestream.yml: they parse, and they agree on the facts that keep data safe — the database on
the /data volume, sidecar's port 9090 for metrics and probes, the app on 3000, the entrypoint
not bypassed, grace periods that cover the app's stop plus the final sync, no literal secrets.
Read as files here; tests/e2e/test_deploy_files_run.py runs litestream.yml and the Compose
settings for real."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import database_path_from_url, load, parse_duration
from testkit.deploy import (
    COMPOSE,
    DB_URL,
    KNOWN_VARIABLES,
    LITESTREAM_YML,
    METRICS_PORT,
    RAILWAY,
    SECRET_NAME,
    VOLUME,
    compose,
    compose_env,
    interpolate,
    load_file,
    railway_vars,
    stop_budget,
)
from testkit.dockerfile import image_cmd, image_entrypoint, image_env, image_exposed_ports

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
APP_DIR = ROOT / "examples" / "prisma-app"

APP_PORT = 3000

# Litestream 0.5's config keys (cmd/litestream/main.go, v0.5.16/0.5.17). Litestream ignores
# unknown keys without a word, so a misspelt key silently does nothing.
LS_REPLICA_SETTINGS = {
    "sync-interval", "validation-interval", "max-sync-ltx-files", "auto-recover",
    "access-key-id", "secret-access-key", "region", "bucket", "endpoint", "force-path-style",
    "sign-payload", "require-content-md5", "skip-verify", "storage-class", "part-size",
    "concurrency", "sse-customer-algorithm", "sse-customer-key", "sse-customer-key-path",
    "sse-kms-key-id", "account-name", "account-key", "sas-token", "host", "user", "password",
    "key-path", "concurrent-writes", "host-key", "webdav-url", "webdav-username",
    "webdav-password", "jwt", "seed", "creds", "nkey", "username", "token", "tls", "root-cas",
    "client-cert", "client-key", "max-reconnects", "reconnect-wait", "timeout", "age"}
LS_TOP = LS_REPLICA_SETTINGS | {
    "addr", "socket", "levels", "snapshot", "validation", "l0-retention",
    "l0-retention-check-interval", "verify-compaction", "retention", "heartbeat-url",
    "heartbeat-interval", "dbs", "exec", "logging", "mcp-addr", "shutdown-sync-timeout",
    "shutdown-sync-interval"}
LS_DB = {"path", "dir", "pattern", "recursive", "watch", "snapshot", "meta-path", "meta-dir",
         "monitor-interval", "checkpoint-interval", "busy-timeout", "min-checkpoint-page-count",
         "truncate-page-n", "max-sync-wal-bytes", "restore-if-db-not-exists", "replica",
         "replicas"}
LS_REPLICA = LS_REPLICA_SETTINGS | {"type", "name", "path", "url"}
LS_SECTIONS = {"socket": {"enabled", "path", "permissions"},
               "logging": {"level", "type", "stderr", "source"},
               "snapshot": {"interval", "retention"}, "retention": {"enabled"},
               "validation": {"interval"}}


# ------------------------------------------------------------------ reading the files


def config_files() -> list[Path]:
    found = [p for p in DEPLOY.rglob("*") if p.is_file()
             and p.suffix in (".yaml", ".yml", ".json", ".toml")]
    return [*sorted(found), LITESTREAM_YML]


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(load_file(path))
    return docs


def k8s_one(kind: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_container() -> dict[str, Any]:
    containers = k8s_one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "sidecar supervises the app inside one container"
    return containers[0]


def k8s_env() -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_container()["env"]}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# ------------------------------------------------------------------------ everything


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_parses(path: Path) -> None:
    """Each YAML/JSON/TOML file under deploy/ (any owner) and litestream.yml parses."""
    assert load_file(path), f"{path} is empty"


def test_my_deploy_dirs_hold_the_expected_files() -> None:
    """Railway (.railway/railway.ts at the root, the dashboard variables and a README),
    Kubernetes and Compose each ship their files."""
    for path in (ROOT / ".railway" / "railway.ts", RAILWAY / "variables.env.example",
                 RAILWAY / "README.md", K8S / "statefulset.yaml", K8S / "service.yaml",
                 K8S / "servicemonitor.yaml", K8S / "kustomization.yaml", K8S / "README.md",
                 COMPOSE, COMPOSE.parent / "README.md"):
        assert path.is_file(), path


def test_no_literal_secret_in_deploy_files() -> None:
    """No credential appears as a value: only references (${{Bucket.X}}, ${VAR}, Secrets)."""
    for name, value in railway_vars().items():
        if SECRET_NAME.search(name):
            assert re.fullmatch(r"\$\{\{[\w.]+\}\}", value), f"{name}={value}"
    for name, value in k8s_env().items():
        assert not SECRET_NAME.search(name) or not isinstance(value, str), \
            f"{name} has a literal value in the StatefulSet; use the Secret"
    for svc in compose()["services"].values():
        for name, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\{\w+(:-[\w-]*)?\}", str(value)), f"{name}={value}"
    ls = load_file(LITESTREAM_YML)[0]
    replica = ls["dbs"][0]["replica"]
    for key in ("access-key-id", "secret-access-key"):
        assert re.fullmatch(r"\$\{\w+\}", replica[key]), replica[key]
    for path in [*DEPLOY.glob("railway/*"), *DEPLOY.glob("kubernetes/*"),
                 *DEPLOY.glob("compose/*"), LITESTREAM_YML]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        assert not re.search(r"(?i)secret[\w-]*\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30,}", text), path


def test_variable_names_are_ones_sidecar_knows() -> None:
    """Every SIDECAR_* name in the deploy files is a real sidecar setting (no typos)."""
    used: set[str] = set(railway_vars())
    used |= {n for n in k8s_env()}
    used |= set(compose_env("app"))
    for path in [*RAILWAY.iterdir(), *K8S.iterdir(), *COMPOSE.parent.iterdir(), LITESTREAM_YML]:
        used |= set(re.findall(r"\bSIDECAR_[A-Z_]+\b", path.read_text()))
    unknown = {n for n in used if n.startswith("SIDECAR_") and n not in KNOWN_VARIABLES}
    assert not unknown, f"not sidecar settings: {sorted(unknown)}"
    assert set(railway_vars()) <= KNOWN_VARIABLES


# ------------------------------------------------------------------------ litestream.yml


def walk_keys(doc: dict[str, Any]) -> list[str]:
    """Every key that Litestream would not recognise, as a dotted path."""
    bad = [k for k in doc if k not in LS_TOP]
    for section, keys in LS_SECTIONS.items():
        bad += [f"{section}.{k}" for k in (doc.get(section) or {}) if k not in keys]
    for i, db in enumerate(doc.get("dbs") or []):
        bad += [f"dbs[{i}].{k}" for k in db if k not in LS_DB]
        bad += [f"dbs[{i}].snapshot.{k}" for k in (db.get("snapshot") or {})
                if k not in LS_SECTIONS["snapshot"]]
        for j, rep in enumerate([db.get("replica"), *(db.get("replicas") or [])]):
            bad += [f"dbs[{i}].replica[{j}].{k}" for k in (rep or {}) if k not in LS_REPLICA]
    return bad


def test_litestream_yml_uses_only_keys_litestream_knows() -> None:
    """Every key in litestream.yml is a Litestream 0.5 config key (typos are silently ignored)."""
    doc = load_file(LITESTREAM_YML)[0]
    assert walk_keys(doc) == []
    assert walk_keys({"dbs": [{"path": "/x", "replica": {"force-pathstyle": True}}]}) \
        == ["dbs[0].replica[0].force-pathstyle"]


def test_litestream_yml_holds_the_railway_settings() -> None:
    """The reference config: DB on /data, Railway bucket variables, virtual-hosted style, a
    non-empty prefix shared with SIDECAR_REPLICA_URL, 1 s sync, control socket, loopback metrics."""
    doc = load_file(LITESTREAM_YML)[0]
    assert len(doc["dbs"]) == 1
    db = doc["dbs"][0]
    assert db["path"] == database_path_from_url(DB_URL) == "/data/app.db"
    rep = db["replica"]
    assert rep["type"] == "s3"
    assert rep["bucket"] == "${BUCKET}"
    assert rep["endpoint"] == "${ENDPOINT}"
    assert rep["region"] == "${REGION}"
    assert rep["force-path-style"] is False
    assert rep["path"] and rep["path"].strip("/")
    assert railway_vars()["SIDECAR_REPLICA_URL"].endswith("/" + rep["path"])
    assert parse_duration(rep["sync-interval"]) <= 1
    assert doc["socket"]["enabled"] is True and doc["socket"]["path"].startswith("/")
    assert doc["addr"].startswith("127.0.0.1:")
    assert "exec" not in doc, "sidecar supervises the app; Litestream's -exec loses the final sync"
    sync_bound = parse_duration(doc["shutdown-sync-timeout"])
    assert sync_bound <= parse_duration(railway_vars()["SIDECAR_LITESTREAM_STOP_TIMEOUT"])


# ------------------------------------------------------------------------------- Railway


def test_railway_healthcheck_reaches_sidecar_and_the_app_keeps_its_port() -> None:
    """Railway calls the healthcheck on $PORT: PORT is sidecar's listener (9090), the app
    listens on APP_PORT (3000), which the image exposes."""
    v = railway_vars()
    assert int(v["PORT"]) == port_of(v.get("SIDECAR_HTTP_ADDR", "[::]:9090")) == METRICS_PORT
    assert v["SIDECAR_HTTP_ADDR"].startswith("[::]:"), "Railway's private network is IPv6"
    assert int(v["APP_PORT"]) == APP_PORT == int(image_env()["APP_PORT"])
    assert {APP_PORT, METRICS_PORT} <= image_exposed_ports()
    server = (APP_DIR / "server.js").read_text()
    assert "process.env.APP_PORT || process.env.PORT" in server


def test_railway_variables() -> None:
    """The dashboard variables: Bucket references as they are, DB on the volume, no path-style
    override (the default for Railway's host is virtual-hosted), a spelled-out replica prefix,
    and a draining time long enough (tests/e2e/test_railway_iac.py: equal to railway.ts's)."""
    v = railway_vars()
    for name in ("BUCKET", "ENDPOINT", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        assert v[name] == "${{Bucket." + name + "}}"
    assert v["DATABASE_URL"] == DB_URL
    assert "SIDECAR_S3_FORCE_PATH_STYLE" not in v
    assert re.fullmatch(r"s3://\$\{\{Bucket\.BUCKET\}\}/[\w.-]+", v["SIDECAR_REPLICA_URL"])
    draining = float(v["RAILWAY_DEPLOYMENT_DRAINING_SECONDS"])
    assert draining >= stop_budget(v) + 5


def test_railway_variables_load_in_sidecar(tmp_path: Path) -> None:
    """sidecar's own config loader, given the Railway variables (references filled in the way
    Railway would), resolves the DB on /data and the bucket with virtual-hosted addressing."""
    filled = {k: re.sub(r"\$\{\{Bucket\.(\w+)\}\}", lambda m: {
        "BUCKET": "app-bucket-x1", "ENDPOINT": "https://storage.railway.app", "REGION": "auto",
        "ACCESS_KEY_ID": "tid", "SECRET_ACCESS_KEY": "tsecret"}[m.group(1)], val)
        for k, val in railway_vars().items()}
    cfg = load({**filled, "RAILWAY_ENVIRONMENT": "production", "PATH": os.environ["PATH"]},
               app_command=image_cmd(), cwd=APP_DIR)
    (db,) = cfg.databases
    assert str(db.path) == "/data/app.db"
    assert db.replica is not None and db.replica.s3 is not None
    s3 = db.replica.s3
    assert (s3.bucket, s3.prefix) == ("app-bucket-x1", "app.db")
    assert s3.endpoint == "https://storage.railway.app" and s3.region == "auto"
    assert s3.force_path_style is False
    assert (s3.access_key_id, s3.secret_access_key) == ("tid", "tsecret")
    assert cfg.migrate_command == ("npx", "prisma", "migrate", "deploy")
    assert cfg.http_port == METRICS_PORT


# ---------------------------------------------------------------------------- Kubernetes


def test_kubernetes_objects_and_kustomization() -> None:
    """StatefulSet, Service and ServiceMonitor exist, and kustomization.yaml lists every file."""
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == ["Service", "ServiceMonitor", "StatefulSet"]
    kust = load_file(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_statefulset_one_writer_on_a_claimed_volume() -> None:
    """replicas: 1, a volumeClaimTemplate mounted at /data, the DB and volume check on it."""
    sts = k8s_one("StatefulSet")
    assert sts["apiVersion"] == "apps/v1"
    assert sts["spec"]["replicas"] == 1
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in pod_container()["volumeMounts"]}
    assert mounts[VOLUME] in claims
    assert claims[mounts[VOLUME]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = k8s_env()
    assert env["DATABASE_URL"] == DB_URL
    assert env["SIDECAR_VOLUME_PATH"] == VOLUME
    assert re.fullmatch(r"s3://[\w.-]+/[\w./-]+", env["SIDECAR_REPLICA_URL"])
    assert sts["spec"]["selector"]["matchLabels"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()


def test_statefulset_keeps_the_image_entrypoint() -> None:
    """No `command:` (it would replace `sidecar run --`); args are the image's CMD."""
    c = pod_container()
    assert "command" not in c
    assert c["args"] == image_cmd()
    assert image_entrypoint() == ["sidecar", "run", "--"]


def test_statefulset_ports_and_probes() -> None:
    """App on 3000, sidecar on 9090; liveness /healthz and readiness /readyz on 9090."""
    c = pod_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": APP_PORT, "metrics": METRICS_PORT}
    assert port_of(k8s_env().get("SIDECAR_HTTP_ADDR", "[::]:9090")) == METRICS_PORT

    def target(probe: dict[str, Any]) -> tuple[str, int]:
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports.get(port, port)

    assert target(c["livenessProbe"]) == ("/healthz", METRICS_PORT)
    assert target(c["readinessProbe"]) == ("/readyz", METRICS_PORT)
    if "startupProbe" in c:
        assert target(c["startupProbe"])[1] == METRICS_PORT


def test_statefulset_grace_period_covers_stop_and_final_sync() -> None:
    """terminationGracePeriodSeconds >= app stop timeout + Litestream's final sync bound."""
    spec = k8s_one("StatefulSet")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= stop_budget(k8s_env()) + 5


def test_statefulset_credentials_come_from_a_secret() -> None:
    """AWS credentials arrive through envFrom a Secret, never as literal env values."""
    c = pod_container()
    assert any("secretRef" in src for src in c.get("envFrom", []))
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(k8s_env())


def test_service_and_servicemonitor_scrape_port_9090() -> None:
    """The Service maps `metrics` to 9090 and the ServiceMonitor scrapes it at /metrics."""
    svc = k8s_one("Service")
    pod_labels = k8s_one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert sports["metrics"]["port"] == METRICS_PORT
    assert sports["metrics"]["targetPort"] in ("metrics", METRICS_PORT)
    assert sports["http"]["targetPort"] in ("http", APP_PORT)
    assert k8s_one("StatefulSet")["spec"]["serviceName"] == svc["metadata"]["name"]
    sm = k8s_one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


# ------------------------------------------------------------------------------- Compose


def test_compose_app_runs_the_image_on_a_volume() -> None:
    """The app service builds the Dockerfile, keeps its entrypoint, mounts /data, sets the DB
    and volume check there, publishes 3000 and 9090, and waits long enough on stop."""
    app = compose()["services"]["app"]
    build = app["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == \
        (ROOT / "Dockerfile").resolve()
    assert "entrypoint" not in app and "command" not in app
    volumes = {v.split(":")[1]: v.split(":")[0] for v in app["volumes"]}
    assert volumes[VOLUME] in compose()["volumes"]
    env = compose_env("app")
    assert env["DATABASE_URL"] == DB_URL and env["SIDECAR_VOLUME_PATH"] == VOLUME
    published = {int(p.split(":")[-1]) for p in app["ports"]}
    assert published == {APP_PORT, METRICS_PORT}
    assert all(p.startswith("127.0.0.1:") for p in app["ports"])
    assert parse_duration(app["stop_grace_period"]) >= stop_budget(env) + 5
    assert "/readyz" in " ".join(app["healthcheck"]["test"]) and f":{METRICS_PORT}/" in \
        " ".join(app["healthcheck"]["test"])


def test_compose_bucket_server_and_app_agree() -> None:
    """The bucket the create step makes is the one the replica URL names, on the server the
    endpoint names, with the credentials the server accepts."""
    services = compose()["services"]
    env = compose_env("app")
    server_cmd = [interpolate(a) for a in services["s3"]["command"]]
    assert server_cmd[:2] == ["serve", "s3"]
    serve_dir = server_cmd[-1]
    made = services["create-bucket"]["command"][-1]
    assert made.startswith(serve_dir.rstrip("/") + "/")
    bucket = made[len(serve_dir.rstrip("/")) + 1:]
    assert env["SIDECAR_REPLICA_URL"] == f"s3://{bucket}/app.db"
    assert env["SIDECAR_S3_ENDPOINT"] == \
        f"http://s3:{port_of(server_cmd[server_cmd.index('--addr') + 1])}"
    assert env["SIDECAR_S3_FORCE_PATH_STYLE"] == "true"
    key = server_cmd[server_cmd.index("--auth-key") + 1]
    assert key == f"{interpolate(env['AWS_ACCESS_KEY_ID'])},{interpolate(env['AWS_SECRET_ACCESS_KEY'])}"
    s3_volume = services["s3"]["volumes"][0].split(":")[0]
    assert services["create-bucket"]["volumes"][0].split(":")[0] == s3_volume
    assert services["s3"]["depends_on"]["create-bucket"]["condition"] == \
        "service_completed_successfully"


