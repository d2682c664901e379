"""What the shorter start path must keep: a cron schedule is still a checked setting (the
fast form and apscheduler agree), the generated Litestream config reads the same as YAML,
the log lines keep their fields, and `litestream version` started early gives the same answer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger

from sidecar import config, log, parsers
from sidecar.litestream import config as litestream_config
from sidecar.startup import preflight


def _apscheduler_accepts(text: str) -> bool:
    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except (ValueError, TypeError):
        return False
    return True


PLAIN = ["17 3 * * *", "0 0 * * *", "59 23 * * 6", "* * * * *", "5 * * * 0", "* 7 * * *",
         "00 09 * * *", " 17  3 * * * "]
OTHER = ["*/5 * * * *", "0 3 1 * *", "0 3 * 1 *", "0 3 * * mon", "0-10 3 * * *",
         "0 3 * * 1-5", "0,30 * * * *"]
BAD = ["60 3 * * *", "0 24 * * *", "0 3 * * 8", "0 3 32 * *", "abc", "1 2 3", "0 3 * * * *",
       "٣ 3 * * *"]


@pytest.mark.parametrize("text", PLAIN + OTHER + BAD)
def test_a_cron_schedule_is_accepted_exactly_when_apscheduler_accepts_it(text: str) -> None:
    """The fast form never lets through a schedule the scheduler would refuse later."""
    try:
        got = parsers.cron(text)
    except (ValueError, TypeError):
        got = "refused"
    assert (got != "refused") == _apscheduler_accepts(text.strip())
    if got != "refused":
        assert got == text.strip()


def test_every_plain_minute_hour_and_weekday_is_one_apscheduler_accepts() -> None:
    """The whole range the fast form takes without asking apscheduler."""
    for m in range(60):
        for h in (0, 23):
            assert parsers._plain_cron(f"{m} {h} * * *".split())
            assert _apscheduler_accepts(f"{m} {h} * * *")
    for h in range(24):
        for d in range(7):
            assert parsers._plain_cron(f"0 {h} * * {d}".split())
            assert _apscheduler_accepts(f"0 {h} * * {d}")


def test_a_bad_schedule_is_still_a_configuration_error(tmp_path: Path) -> None:
    """SIDECAR_VERIFY_SCHEDULE=61 3 * * * stops the start naming the variable."""
    env = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_VERIFY_SCHEDULE": "61 3 * * *", "PATH": os.environ["PATH"]}
    with pytest.raises(config.ConfigError) as info:
        config.load(env, app_command=["true"], cwd=tmp_path)
    assert "SIDECAR_VERIFY_SCHEDULE" in str(info.value)


def test_sidecar_run_loads_its_config_without_yaml_structlog_or_apscheduler(
        tmp_path: Path) -> None:
    """The default config, loaded as `sidecar run` does, imports none of them."""
    code = ("import sys, os\n"
            "from sidecar import cli, config\n"
            "import sidecar.commands.run\n"
            f"config.load({{'SIDECAR_DB_PATH': {str(tmp_path / 'app.db')!r}, "
            "'SIDECAR_MIGRATE_COMMAND': '', 'PATH': os.environ['PATH']}, "
            f"app_command=['true'], cwd=__import__('pathlib').Path({str(tmp_path)!r}))\n"
            "print(sorted(m for m in ('yaml', 'structlog', 'apscheduler', 'asyncio') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


def test_the_generated_litestream_config_reads_the_same_as_yaml(tmp_path: Path) -> None:
    """Written as JSON (which is YAML): a YAML parser reads back exactly the rendered doc."""
    db = tmp_path / "data dir" / "app é.db"
    db.parent.mkdir()
    env = {"SIDECAR_DB_PATH": str(db), "SIDECAR_REPLICA_URL": "s3://bkt/app.db",
           "SIDECAR_S3_ENDPOINT": "http://127.0.0.1:9", "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_STATE_DIR": str(tmp_path / "state"), "PATH": os.environ["PATH"]}
    cfg = config.load(env, app_command=["true"], cwd=tmp_path)
    doc = litestream_config.render_config(cfg, 9999)
    path = litestream_config.write_config(cfg, 9999)
    text = path.read_text()
    assert yaml.safe_load(text) == doc
    assert json.loads(text.split("\n", 1)[1]) == doc  # after the comment line


def test_log_lines_keep_their_fields_order_and_redaction() -> None:
    """component, the key/values, event, level, timestamp; exception; userinfo masked."""
    buf = io.StringIO()
    old = sys.stderr
    sys.stderr = buf
    try:
        log.setup("json")
        lg = log.get("run")
        lg.info("config loaded", url="https://key:secret@host/x", n=1, p=Path("/a"))
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            lg.error("internal error", exc_info=True)
        lg.debug("not shown")
    finally:
        sys.stderr = old
        log.setup("json")
    first, second, *rest = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rest == []
    assert list(first) == ["component", "url", "n", "p", "event", "level", "timestamp"]
    assert first["url"] == "https://***@host/x" and first["p"] == "PosixPath('/a')"
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert "RuntimeError: boom" in second["exception"] and second["level"] == "error"


def test_stdlib_records_are_rendered_as_json_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """A library's warning is one JSON line naming its logger."""
    import logging

    log.setup("json")
    logging.getLogger("botocore.retry").warning("retrying %s", "now")
    line = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "retrying now" and line["logger"] == "botocore.retry"
    assert line["component"] == "botocore" and line["level"] == "warning"


def test_the_early_version_query_reads_the_version(tmp_path: Path) -> None:
    """Started before the rest of sidecar is imported, read in preflight: same answer."""
    fake = tmp_path / "litestream"
    fake.write_text("#!/bin/sh\necho v0.5.17\n")
    fake.chmod(0o755)
    assert preflight.VersionQuery(str(fake)).result() == "0.5.17"
    old = tmp_path / "old"
    old.write_text("#!/bin/sh\necho v0.3.13 >&2\n")
    old.chmod(0o755)
    assert preflight.VersionQuery(str(old)).result() == "0.3.13"
    assert preflight.VersionQuery(str(tmp_path / "missing")).result() is None
    assert preflight.VersionQuery(None).result() is None


OPS = """
m.set_build_info("1.2.3", "0.5.17")
m.init_db("/data/app.db")
m.RESTORES.labels(trigger="startup", outcome="restored").inc()
m.RESTORE_DURATION.set(3.25)
m.MIGRATIONS.labels(outcome="skipped").inc()
m.LITESTREAM_UP.set(1)
m.APP_UP.set(1)
m.REPLICA_REQUESTS.labels(db="/data/app.db", operation="list_objects_v2").inc(2)
m.LAG_CHECKS.labels(db="/data/b.db", outcome="ok")
m.REPLICATION_LAG.labels("/data/gone.db").set(1)
m.REPLICATION_LAG.remove("/data/gone.db")
"""


def _render_after_ops(module: str) -> str:
    code = (f"from sidecar.daemon import {module} as m\n{OPS}\n"
            + ("assert not m.loaded()\n" if module == "metrics" else "")
            + "import sys; sys.stdout.write(m.render(None).decode())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return "\n".join(x for x in out.splitlines() if not x.startswith(("process_", "# HELP process_",
                                                                      "# TYPE process_")))


def test_metrics_recorded_before_the_registry_loads_are_all_there() -> None:
    """Set and counted before prometheus_client is loaded, scraped after: the same text as
    when the same calls go straight to the registry."""
    direct = _render_after_ops("registry")
    assert 'sidecar_restores_total{outcome="restored",trigger="startup"} 1.0' in direct
    assert _render_after_ops("metrics") == direct


def test_every_registry_metric_has_its_stand_in() -> None:
    """A metric declared in registry.py is reachable under the same name in metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    from sidecar.daemon import metrics, registry

    declared = {k for k, v in vars(registry).items() if isinstance(v, MetricWrapperBase)}
    assert declared and declared <= set(vars(metrics))
    assert metrics.CONTENT_TYPE == registry.CONTENT_TYPE


def test_a_bad_recorded_metric_call_is_logged_and_the_rest_replayed_once() -> None:
    """A call that fails on the real metric (a wrong label) is logged; the calls around it
    still land, each exactly once, and nothing stays queued: a second load or scrape does
    not replay them again."""
    code = ("from sidecar.daemon import metrics as m\n"
            "m.RESTORES.labels(trigger='startup', outcome='restored').inc()\n"
            "m.RESTORES.labels(no_such_label='x').inc()\n"
            "m.APP_UP.set(1)\n"
            "m.load(); m.load()\n"
            "assert m.loaded() and not m._pending\n"
            "import sys; sys.stdout.write(m.render(None).decode())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'sidecar_restores_total{outcome="restored",trigger="startup"} 1.0' in res.stdout
    assert "sidecar_app_up 1.0" in res.stdout
    assert '"metric call failed"' in res.stderr and "RESTORES" in res.stderr
