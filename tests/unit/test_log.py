"""sidecar's log lines: one structlog pipeline, JSON lines in the shape Railway reads as
structured logs (`message`, `level` in debug/info/warn/error, `timestamp`, `component`, then
the event's keys), the libraries' records and Litestream's lines in the same shape, and a
console format that cannot be steered by control characters."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar import log
from sidecar.litestream.process import fold_output, log_line

RAILWAY_LEVELS = {"debug", "info", "warn", "error"}


class Stderr:
    """sidecar's stderr as pytest captures it (the handler writes to whatever sys.stderr is)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]):
        self.capsys = capsys

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.capsys.readouterr().err.splitlines()]


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Stderr]:
    """JSON lines at debug level; set back afterwards."""
    log.setup("json", level="debug")
    try:
        yield Stderr(capsys)
    finally:
        log.setup("json")


def test_a_json_line_has_message_level_timestamp_component_first(stderr: Stderr) -> None:
    """message, level, timestamp, component, then the key/values; userinfo masked."""
    log.get("run").info("config loaded", url="https://key:secret@host/x", n=1, p=Path("/a"))
    (line,) = stderr.lines()
    assert list(line) == ["message", "level", "timestamp", "component", "url", "n", "p"]
    assert line["message"] == "config loaded" and line["level"] == "info"
    assert line["component"] == "run" and line["timestamp"].endswith("Z")
    assert line["url"] == "https://***@host/x" and line["p"] == "PosixPath('/a')"
    assert "event" not in line


@pytest.mark.parametrize(("method", "level"), [
    ("debug", "debug"), ("info", "info"), ("warning", "warn"), ("warn", "warn"),
    ("error", "error"), ("critical", "error"), ("exception", "error")])
def test_levels_are_railways_words(stderr: Stderr, method: str, level: str) -> None:
    """warning is `warn`; critical and exception are `error`."""
    getattr(log.get("run"), method)("something happened", n=1)
    (line,) = stderr.lines()
    assert line["level"] == level and line["message"] == "something happened"


def test_an_exception_comes_last_with_its_traceback(stderr: Stderr) -> None:
    """exc_info=True: the traceback in `exception`, after the key/values."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.get("internal").error("internal error", error="x", exc_info=True)
    (line,) = stderr.lines()
    assert list(line)[-1] == "exception" and "RuntimeError: boom" in line["exception"]
    assert line["level"] == "error"


def test_below_the_level_nothing_is_written(stderr: Stderr) -> None:
    """At info, a debug event writes nothing."""
    log.setup("json", level="info")
    log.get("run").debug("not shown")
    log.get("run").info("shown")
    assert [x["message"] for x in stderr.lines()] == ["shown"]


def test_stdlib_records_are_rendered_as_the_same_json_lines(stderr: Stderr) -> None:
    """A library's warning is one JSON line naming its logger, level `warn`; its INFO stays
    quiet."""
    logging.getLogger("botocore.retry").warning("retrying %s", "now")
    logging.getLogger("apscheduler.scheduler").info("Added job")
    (line,) = stderr.lines()
    assert line["message"] == "retrying now" and line["logger"] == "botocore.retry"
    assert line["component"] == "botocore" and line["level"] == "warn"
    assert list(line)[:4] == ["message", "level", "timestamp", "component"]


def test_an_empty_message_is_never_written(stderr: Stderr) -> None:
    """Railway requires a non-empty message."""
    logging.getLogger("somelib").error("")
    (line,) = stderr.lines()
    assert line["message"] and line["level"] == "error"


def test_setup_again_keeps_a_capture_in_force() -> None:
    """capture_logs() asserts on events; a second setup() (another format) does not undo it."""
    with capture_logs() as logs:
        log.setup("console")
        log.get("run").warning("stopped during start-up", n=2)
    log.setup("json")
    assert logs == [{"component": "run", "n": 2, "event": "stopped during start-up",
                     "log_level": "warning"}]


def test_console_format_is_unchanged_but_escapes_control_characters(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`time [level] event key=value`, keys sorted; a request path with an escape sequence
    or a newline cannot move the cursor or forge a line."""
    log.setup("console")
    try:
        log.get("http").warning("request\x1b[2J refused", path="/x\n2026 [info] forged\x07",
                                code=400)
    finally:
        log.setup("json")
    (text,) = capsys.readouterr().err.splitlines()
    ts, rest = text.split(" ", 1)
    assert ts.endswith("Z")
    assert rest == ("[warning  ] " + "request\\x1b[2J refused".ljust(30)
                    + " code=400 component=http path=/x\\n2026 [info] forged\\x07")
    assert "\x1b" not in text and "\x07" not in text


LITESTREAM = [
    b'{"time":"2026-12-07T04:00:00Z","level":"INFO","msg":"replicating","db":"/d/a.db"}\n',
    b'{"time":"2026-12-07T04:00:01Z","level":"WARN","msg":"sync slow","level2":1}\n',
    b'{"time":"2026-12-07T04:00:02Z","level":"ERROR","msg":"sync error","error":"503",'
    b'"component":"x","event":"y","message":"z"}\n',
    b'{"time":"2026-12-07T04:00:03Z","level":"DEBUG","msg":""}\n',
    b"not json at all\n",
    b"\n",
]


def test_litestreams_lines_are_folded_in_the_same_shape(stderr: Stderr) -> None:
    """Its msg is our message, WARN is warn, ERROR is error (and reported), its own fields
    that share our names are kept under ls_; a plain line is kept whole."""
    errors: list[str] = []
    fold_output(iter(LITESTREAM), log.get("litestream"), errors.append)
    lines = stderr.lines()
    assert [(x["message"], x["level"]) for x in lines] == [
        ("replicating", "info"), ("sync slow", "warn"), ("sync error", "error"),
        ("litestream output", "debug"), ("litestream output", "info")]
    assert all(x["component"] == "litestream" for x in lines)
    assert lines[0]["db"] == "/d/a.db" and "time" not in lines[0]
    assert (lines[2]["ls_component"], lines[2]["ls_event"], lines[2]["ls_message"]) == (
        "x", "y", "z")
    assert lines[4]["line"] == "not json at all"
    assert errors == ["sync error: 503"]


def test_a_restore_line_keeps_the_database_name_beside_litestreams_fields(
        stderr: Stderr) -> None:
    """`db` given by sidecar wins; Litestream's own `db` is kept as ls_db."""
    log_line('{"level":"INFO","msg":"restoring","db":"/tmp/x.tmp"}', log.get("litestream"),
             db="app.db")
    (line,) = stderr.lines()
    assert line["message"] == "restoring" and line["db"] == "app.db"
    assert line["ls_db"] == "/tmp/x.tmp"
