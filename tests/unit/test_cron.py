"""SIDECAR_VERIFY_SCHEDULE means what cron means: day of week 0 and 7 are Sunday, names and
ranges as crontab(5), either day field when both are restricted; a line cron would refuse is
a configuration error (exit 2) naming the variable; the next run is what /status shows."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar import config, cron
from sidecar.daemon import status
from sidecar.daemon.runtime import Runtime

# Monday 7 December 2026, 04:00:00 UTC.
MONDAY = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


def _at(day: int, hour: int, minute: int, month: int = 12, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


NEXT = [
    ("17 3 * * 0", _at(13, 3, 17)),       # Sunday, not Monday the 7th/14th
    ("17 3 * * 7", _at(13, 3, 17)),       # 7 is Sunday too
    ("17 3 * * sun", _at(13, 3, 17)),
    ("17 3 * * SUN", _at(13, 3, 17)),
    ("0 4 * * sun", _at(13, 4, 0)),
    ("0 4 * * 1", _at(7, 4, 0)),          # Monday: now itself (the scheduler fires it)
    ("1 4 * * 1", _at(7, 4, 1)),
    ("30 2 * * 1-5", _at(8, 2, 30)),      # Tuesday the 8th: Monday's 02:30 has passed
    ("30 2 * * mon-fri", _at(8, 2, 30)),
    ("30 2 * * 6", _at(12, 2, 30)),       # Saturday
    ("30 2 * * 5-7", _at(11, 2, 30)),     # Friday to Sunday
    ("30 2 * * fri-sun", None),           # sun is 0: the range runs backwards (refused below)
    ("0 3 * * */2", _at(8, 3, 0)),        # 0,2,4,6: Sunday, Tuesday, Thursday, Saturday
    ("17 3 * * *", _at(8, 3, 17)),
    ("*/15 * * * *", _at(7, 4, 0)),
    ("5/20 * * * *", _at(7, 4, 5)),       # 5, 25, 45
    ("0 0 1 * mon", _at(14, 0, 0)),       # either day: Monday the 14th before 1 January
    ("0 0 1 * *", _at(1, 0, 0, month=1, year=2027)),
    ("0 0 * jan *", _at(1, 0, 0, month=1, year=2027)),
    ("0 12 25 dec *", _at(25, 12, 0)),
    ("@daily", _at(8, 0, 0)),
    ("@midnight", _at(8, 0, 0)),
    ("@hourly", _at(7, 4, 0)),
    ("@weekly", _at(13, 0, 0)),           # Sunday 00:00, as cron's @weekly
    ("@monthly", _at(1, 0, 0, month=1, year=2027)),
    ("@yearly", _at(1, 0, 0, month=1, year=2027)),
    ("0 0 29 2 *", _at(29, 0, 0, month=2, year=2028)),  # the next leap day
]


@pytest.mark.parametrize(("text", "expected"), [n for n in NEXT if n[1] is not None])
def test_the_next_run_is_crons(text: str, expected: datetime) -> None:
    """From Monday 2026-12-07 04:00 UTC, each schedule runs next when cron would run it."""
    assert cron.parse(text).next_after(MONDAY) == expected
    assert cron.next_run(text, MONDAY) == expected


def test_day_of_week_0_and_7_run_on_sundays_only() -> None:
    """Four weeks of `17 3 * * 0` and of `... 7`: Sundays at 03:17, nothing else."""
    for text in ("17 3 * * 0", "17 3 * * 7"):
        trigger, when, runs = cron.parse(text).trigger(), MONDAY, []
        for _ in range(4):
            when = trigger.get_next_fire_time(None, when + timedelta(seconds=1))
            runs.append(when)
        assert [r.strftime("%A %H:%M") for r in runs] == ["Sunday 03:17"] * 4
        assert [r.day for r in runs] == [13, 20, 27, 3]


def test_mon_fri_runs_on_the_five_weekdays() -> None:
    """`30 2 * * 1-5` over two weeks: Monday to Friday, never a weekend."""
    trigger, when, days = cron.parse("30 2 * * 1-5").trigger(), MONDAY, []
    for _ in range(10):
        when = trigger.get_next_fire_time(None, when + timedelta(seconds=1))
        days.append(when.strftime("%a"))
    assert days == ["Tue", "Wed", "Thu", "Fri", "Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]


BAD = [
    ("61 * * * *", "minute 61 is out of range 0-59"),
    ("60 3 * * *", "minute 60"),
    ("0 24 * * *", "hour 24"),
    ("* * * * 8", "day of week 8 is out of range 0-7 (0 and 7 are Sunday)"),
    ("0 3 32 * *", "day of month 32"),
    ("0 3 0 * *", "day of month 0"),
    ("0 3 * 13 *", "month 13"),
    ("0 3 * * fri-sun", "runs backwards"),
    ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "step '0'"),
    ("0 3 * * funday", "'funday' is not a number or a name"),
    ("0 3 30 2 *", "never occurs"),
    ("abc", "must be 5 fields"),
    ("1 2 3", "must be 5 fields"),
    ("0 3 * * * *", "must be 5 fields"),
    ("0,,5 3 * * *", "empty item"),
    ("٣ 3 * * *", "is not a number"),
    ("@reboot", "not a cron macro"),
    ("@every 5m", "not a cron macro"),
]


@pytest.mark.parametrize(("text", "why"), BAD)
def test_a_line_cron_would_refuse_is_a_configuration_error(tmp_path: Path, text: str,
                                                            why: str) -> None:
    """Exit 2 (ConfigError) naming the variable, the value and what is wrong."""
    env = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_VERIFY_SCHEDULE": text, "PATH": os.environ["PATH"]}
    with pytest.raises(config.ConfigError) as info:
        config.load(env, app_command=["true"], cwd=tmp_path)
    assert info.value.exit_code == 2
    assert any("SIDECAR_VERIFY_SCHEDULE" in p and why in p for p in info.value.problems), \
        info.value.problems


def test_sidecar_run_exits_2_on_a_bad_schedule_without_a_traceback(tmp_path: Path) -> None:
    """The real command: exit 2, one error naming the variable, nothing started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "RAILWAY_"))}
    env.update(SIDECAR_DB_PATH=str(tmp_path / "app.db"), SIDECAR_MIGRATE_COMMAND="",
               SIDECAR_VERIFY_SCHEDULE="17 3 * * 8", SIDECAR_LOG_FORMAT="json")
    res = subprocess.run([sys.executable, "-m", "sidecar", "run", "--", "true"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "SIDECAR_VERIFY_SCHEDULE" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "app.db").exists()


@pytest.mark.parametrize("text", ["17 3 * * 0", " 17  3 * * 7 ", "0 4 * * sun", "@daily"])
def test_a_good_line_is_kept_as_written(tmp_path: Path, text: str) -> None:
    """The config keeps the line (spaces normalised); the scheduler and /status read it."""
    env = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_VERIFY_SCHEDULE": text, "PATH": os.environ["PATH"]}
    cfg = config.load(env, app_command=["true"], cwd=tmp_path)
    assert cfg.verify_schedule == " ".join(text.split())


def test_status_shows_the_next_verification_in_iso_utc(tmp_path: Path) -> None:
    """/status's `verification.next` is the scheduler's next run as ISO 8601 UTC; empty
    schedule: none."""
    env = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_VERIFY_SCHEDULE": "17 3 * * 0", "PATH": os.environ["PATH"]}
    rt = Runtime(cfg=config.load(env, app_command=["true"], cwd=tmp_path), env=env)
    assert status.verification(rt, MONDAY) == {"schedule": "17 3 * * 0",
                                               "next": "2026-12-13T03:17:00Z"}
    doc = status.build(rt)
    nxt = datetime.fromisoformat(doc["verification"]["next"].replace("Z", "+00:00"))
    assert nxt.strftime("%A %H:%M:%S") == "Sunday 03:17:00" and doc["verification"]["next"][-1] == "Z"
    assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(days=7)
    env["SIDECAR_VERIFY_SCHEDULE"] = ""
    rt = Runtime(cfg=config.load(env, app_command=["true"], cwd=tmp_path), env=env)
    assert status.build(rt)["verification"] == {"schedule": None, "next": None}


def test_the_scheduler_job_fires_when_status_says(tmp_path: Path) -> None:
    """The job apscheduler holds has the same next run as the one /status computes."""
    from sidecar.daemon import jobs

    try:
        job = jobs.add_cron(lambda: None, "17 3 * * 7", "backup verification")
        jobs.start()
        assert cron.iso(job.next_run_time) == cron.iso(cron.next_run("17 3 * * 7"))
        assert job.next_run_time.strftime("%A") == "Sunday"
    finally:
        jobs.stop()
