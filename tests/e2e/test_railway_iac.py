""".railway/railway.ts, evaluated offline with Railway's own SDK (npm `railway`, `railway/iac`,
installed by scripts/setup.sh into tests/railway): the graph it declares is the one that keeps
data safe on Railway: the service built from the repository's Dockerfile with no start command
(it would replace sidecar's ENTRYPOINT), one replica, the /data volume, a Bucket whose variables
reach the service by reference, the healthcheck on sidecar's /readyz, and a draining time that
covers the app's stop plus the final sync."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import load
from testkit.deploy import (
    DB_URL,
    KNOWN_VARIABLES,
    METRICS_PORT,
    SECRET_NAME,
    VOLUME,
    railway_vars,
    stop_budget,
)
from testkit.dockerfile import image_cmd

ROOT = Path(__file__).resolve().parents[2]
RAILWAY_TS = ROOT / ".railway" / "railway.ts"
SDK_DIR = ROOT / "tests" / "railway"
BUCKET_VARIABLES = ("BUCKET", "ENDPOINT", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")


def evaluate(source: str, tmp_path: Path) -> dict[str, Any]:
    """What Railway's SDK makes of a railway.ts: {name, resources, problems (validateGraph)}."""
    tsx = SDK_DIR / "node_modules" / ".bin" / "tsx"
    if not (SDK_DIR / "node_modules" / "railway" / "package.json").is_file() or not tsx.exists():
        pytest.fail("Railway's SDK is not installed in tests/railway; run ./scripts/setup.sh")
    if not shutil.which("node"):
        pytest.fail("node is not installed; run ./scripts/setup.sh")
    work = tmp_path / "iac"
    work.mkdir()
    (work / "node_modules").symlink_to(SDK_DIR / "node_modules")
    (work / "package.json").write_text('{"type": "module"}\n')
    shutil.copy(SDK_DIR / "evaluate.ts", work / "evaluate.ts")
    (work / "railway.ts").write_text(source)
    res = subprocess.run([str(tsx), "evaluate.ts", "railway.ts", "production"], cwd=work,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def of_type(graph: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in graph["resources"] if r["type"] == kind]


def literal_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: v["value"] for k, v in service.get("variables", {}).items()
            if v["type"] == "literal"}


def graph_problems(graph: dict[str, Any]) -> list[str]:
    """Everything in the graph that would lose data or bypass sidecar on Railway."""
    bad = [f"validateGraph: {p}" for p in graph["problems"]]
    services, volumes, buckets = (of_type(graph, t) for t in ("service", "volume", "bucket"))
    if len(services) != 1 or len(volumes) != 1 or len(buckets) != 1:
        return [*bad, f"want one service, volume and bucket; got {len(services)}, "
                      f"{len(volumes)}, {len(buckets)}"]
    (svc,), (vol,), (bkt,) = services, volumes, buckets
    build, deploy = svc.get("build") or {}, svc.get("deploy") or {}
    env, variables = literal_env(svc), svc.get("variables", {})

    if build.get("builder") != "DOCKERFILE" or not (ROOT / str(build.get("dockerfilePath"))).is_file():
        bad.append(f"not built from the repository's Dockerfile: {build}")
    if (svc.get("source") or {}).get("image"):
        bad.append("a prebuilt image source: the repository's Dockerfile would not be used")
    if deploy.get("startCommand"):
        bad.append(f"start command {deploy['startCommand']!r} replaces sidecar's ENTRYPOINT")
    if "migrate" in str(deploy.get("preDeployCommand") or ""):
        bad.append("migrations as a pre-deploy command run without the volume mounted")
    if deploy.get("numReplicas") != 1 or deploy.get("multiRegionConfig"):
        bad.append(f"replicas must be exactly 1 (one writer): {deploy.get('numReplicas')}")
    if deploy.get("healthcheckPath") != "/readyz":
        bad.append(f"healthcheck {deploy.get('healthcheckPath')!r} is not sidecar's /readyz")
    draining = deploy.get("drainingSeconds")
    if not isinstance(draining, int) or draining < stop_budget(env) + 5:
        bad.append(f"drainingSeconds {draining!r} does not cover the app's stop plus the final "
                   f"sync ({stop_budget(env):.0f} s) with 5 s to spare")
    if deploy.get("overlapSeconds") not in (None, 0):
        bad.append("overlapping deployments would run two writers")

    mounts = list((svc.get("volumeAttachments") or {}).values())
    if [(m["mountPath"], m["volume"]) for m in mounts] != [(VOLUME, vol["address"])]:
        bad.append(f"the volume is not mounted at {VOLUME}: {mounts}")

    for name in BUCKET_VARIABLES:
        ref = variables.get(name) or {}
        literal_ref = "${{" + bkt["name"] + "." + name + "}}"
        by_ref = ref.get("type") == "reference" and ref.get("resource") == bkt["address"] \
            and ref.get("output") == name
        if not by_ref and ref.get("value") != literal_ref:
            bad.append(f"{name} does not reference the bucket's {name}: {ref}")
    if env.get("DATABASE_URL") != DB_URL:
        bad.append(f"DATABASE_URL {env.get('DATABASE_URL')!r} is not on the volume")
    replica_url = env.get("SIDECAR_REPLICA_URL", "")
    if not re.fullmatch(r"s3://\$\{\{" + re.escape(bkt["name"]) + r"\.BUCKET\}\}/[\w.-]+", replica_url):
        bad.append(f"SIDECAR_REPLICA_URL {replica_url!r} does not spell out a prefix in the bucket")
    if "SIDECAR_S3_FORCE_PATH_STYLE" in env:
        bad.append("SIDECAR_S3_FORCE_PATH_STYLE set: the default for Railway's host is right")
    for name, value in env.items():
        if SECRET_NAME.search(name) and "${{" not in value:
            bad.append(f"{name} has a literal value")
        if name.startswith("SIDECAR_") and name not in KNOWN_VARIABLES:
            bad.append(f"{name} is not a sidecar setting")
    if env.get("PORT") != str(METRICS_PORT):
        bad.append(f"PORT {env.get('PORT')!r}: Railway's healthcheck must reach sidecar on 9090")
    return bad


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return evaluate(RAILWAY_TS.read_text(), tmp_path_factory.mktemp("railway"))


def test_railway_ts_declares_the_safe_graph(graph: dict[str, Any]) -> None:
    """Railway's SDK evaluates the file and validateGraph finds nothing; the graph has the
    service, the /data volume, the bucket references, the healthcheck, the draining time, one
    replica and no start command."""
    assert graph_problems(graph) == []
    (svc,) = of_type(graph, "service")
    assert svc["deploy"]["healthcheckPath"] == "/readyz" and svc["deploy"]["numReplicas"] == 1
    assert "startCommand" not in svc["deploy"]


@pytest.mark.parametrize("edit,problem", [
    (('replicas: 1,', 'replicas: 1, start: "node server.js",'), "replaces sidecar's ENTRYPOINT"),
    (("replicas: 1,", "replicas: 2,"), "replicas must be exactly 1"),
    (("drainingSeconds: DRAINING_SECONDS", "drainingSeconds: 30"), "does not cover"),
    (('healthcheck: "/readyz"', 'healthcheck: "/"'), "is not sidecar's /readyz"),
    (('"/data": data', '"/var/data": data'), "not mounted at /data"),
    (('REGION: ref(backups, "REGION")', 'REGION: "auto"'), "REGION does not reference"),
    (('dockerfilePath: "Dockerfile"', 'dockerfilePath: "Nope.Dockerfile"'), "Dockerfile"),
])
def test_the_checks_catch_each_unsafe_edit(tmp_path: Path, edit: tuple[str, str],
                                           problem: str) -> None:
    """The same evaluation of a copy with one unsafe edit reports that edit (the assertions
    above can fail)."""
    source = RAILWAY_TS.read_text()
    assert edit[0] in source, f"the edit no longer applies: {edit[0]!r}"
    found = graph_problems(evaluate(source.replace(edit[0], edit[1], 1), tmp_path))
    assert any(problem in p for p in found), found


def test_railway_ts_variables_load_in_sidecar(graph: dict[str, Any]) -> None:
    """The service's variables, with the references filled in as Railway would, give sidecar
    the database on /data, the bucket with virtual-hosted addressing and its listener on $PORT."""
    (svc,) = of_type(graph, "service")
    (bkt,) = of_type(graph, "bucket")
    bucket_values = {"BUCKET": "app-bucket-x1", "ENDPOINT": "https://storage.railway.app",
                     "REGION": "auto", "ACCESS_KEY_ID": "tid", "SECRET_ACCESS_KEY": "tsecret"}
    env: dict[str, str] = {}
    for name, value in svc["variables"].items():
        if value["type"] == "reference":
            assert value["resource"] == bkt["address"]
            env[name] = bucket_values[value["output"]]
        else:
            env[name] = re.sub(r"\$\{\{" + re.escape(bkt["name"]) + r"\.(\w+)\}\}",
                               lambda m: bucket_values[m.group(1)], value["value"])
    cfg = load({**env, "RAILWAY_ENVIRONMENT": "production", "PATH": os.environ["PATH"],
                "RAILWAY_DEPLOYMENT_DRAINING_SECONDS": str(svc["deploy"]["drainingSeconds"])},
               app_command=image_cmd(), cwd=ROOT / "examples" / "prisma-app")
    (db,) = cfg.databases
    assert str(db.path) == "/data/app.db"
    s3 = db.replica.s3
    assert (s3.bucket, s3.prefix, s3.endpoint) == ("app-bucket-x1", "app.db",
                                                    "https://storage.railway.app")
    assert s3.force_path_style is False
    assert cfg.http_port == int(env["PORT"]) == METRICS_PORT


def test_dashboard_variables_agree_with_railway_ts(graph: dict[str, Any]) -> None:
    """deploy/railway/variables.env.example (the dashboard alternative) sets what railway.ts
    sets, with the same draining time."""
    (svc,) = of_type(graph, "service")
    (bkt,) = of_type(graph, "bucket")
    dashboard = railway_vars()
    for name, value in literal_env(svc).items():
        assert dashboard[name] == value, name
    for name in BUCKET_VARIABLES:
        assert dashboard[name] == "${{" + bkt["name"] + "." + name + "}}"
    assert float(dashboard["RAILWAY_DEPLOYMENT_DRAINING_SECONDS"]) == svc["deploy"]["drainingSeconds"]


def test_no_config_as_code_file_is_left() -> None:
    """railway.json / railway.toml are no longer read (2026-12-01), and a service managed by
    them cannot be managed by railway.ts: none is shipped."""
    for name in ("railway.json", "railway.toml"):
        assert not list(ROOT.glob(f"**/{name}")) or all(
            "node_modules" in p.parts for p in ROOT.glob(f"**/{name}")), name
