"""A child that cannot be executed (missing, not executable, not a program) gives its
documented exit code and one clear message, never 70 ("a bug") or a traceback: the app 127/126
like a shell, Litestream 3, the migration command 5. Real `sidecar run`, real Litestream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testkit import base_env, run_sidecar, write_app

pytestmark = pytest.mark.slow


def broken_program(tmp_path: Path, kind: str) -> str:
    """An executable file that execve() still refuses: not a program at all (ENOEXEC), or a
    script whose #! interpreter does not exist (ENOENT). Config checks cannot see either."""
    path = tmp_path / f"prog-{kind}"
    if kind == "not-a-program":
        path.write_bytes(b"\x00\x01 not a program\n")  # no shebang, no ELF header
    else:
        path.write_text("#!/nonexistent/interpreter\necho hi\n")
    path.chmod(0o755)
    return str(path)


REASON = {"not-a-program": "Exec format error",
          "bad-interpreter": "not found: the interpreter on its #! line does not exist"}


def assert_clear(res: object, code: int, text: str) -> None:
    out = res.stderr  # type: ignore[attr-defined]
    assert res.returncode == code, out[-3000:]  # type: ignore[attr-defined]
    assert text in out, out[-3000:]
    assert "Traceback" not in out and "internal error" not in out


@pytest.mark.parametrize("kind,code", [("not-a-program", 126), ("bad-interpreter", 127)])
def test_app_that_cannot_be_executed(tmp_path: Path, kind: str, code: int) -> None:
    """The app passes the config check (an executable file) but execve refuses it: exit 126
    (cannot execute) or 127 (not found), like a shell; the message names it and why."""
    prog = broken_program(tmp_path, kind)
    res = run_sidecar(["run", "--", prog, "--flag"], base_env(tmp_path), tmp_path)
    assert_clear(res, code, f"cannot start the app: {prog}: {REASON[kind]}")


@pytest.mark.parametrize("change,code,reason", [("rm -f", 127, "not found"),
                                                ("chmod -x", 126, "Permission denied")])
def test_app_gone_by_the_time_it_starts(tmp_path: Path, change: str, code: int,
                                        reason: str) -> None:
    """The app's file is removed or loses its x bit after the config check (here by the
    migration command, which runs just before): exit 127 or 126, not 70."""
    app = write_app(tmp_path, "print('never')", "app.py")
    prog = tmp_path / "app.sh"
    prog.write_text(f"#!/bin/sh\nexec {app[0]} {app[1]}\n")
    prog.chmod(0o755)
    res = run_sidecar(["run", "--", str(prog)],
                      base_env(tmp_path, SIDECAR_MIGRATE_COMMAND=f"sh -c '{change} {prog}'"),
                      tmp_path)
    assert_clear(res, code, f"cannot start the app: {prog}: {reason}")
    assert "never" not in res.stdout


def test_missing_app_is_a_config_error(tmp_path: Path) -> None:
    """A command that does not exist at all is caught by the config check: exit 2."""
    res = run_sidecar(["run", "--", str(tmp_path / "nope")], base_env(tmp_path), tmp_path)
    assert_clear(res, 2, "nope")


@pytest.mark.parametrize("kind", ["not-a-program", "bad-interpreter"])
def test_migration_command_that_cannot_be_executed(tmp_path: Path, kind: str) -> None:
    """The migration command cannot be executed: exit 5 naming it and why; no app."""
    prog = broken_program(tmp_path, kind)
    marker = tmp_path / "app-ran"
    app = write_app(tmp_path, f"open({str(marker)!r}, 'w').close()", "marker.py")
    res = run_sidecar(["run", "--", *app], base_env(tmp_path, SIDECAR_MIGRATE_COMMAND=prog),
                      tmp_path)
    assert_clear(res, 5, f"cannot run the migration command: {prog}: {REASON[kind]}")
    assert not marker.exists()


@pytest.mark.parametrize("how,reason", [("chmod -x", "Permission denied"),
                                        ("rm -f", "not found")])
def test_litestream_that_cannot_start(tmp_path: Path, how: str, reason: str) -> None:
    """Litestream passes preflight (it reports its version), then cannot be executed when
    replication starts (removed or made non-executable meanwhile, as a broken upgrade would):
    exit 3 with the reason; the app never starts."""
    real = Path(sys.executable).parent / "litestream"
    binary = tmp_path / "bin" / "litestream"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n"
                      f'if [ "$1" = version ]; then {how} "$0"; fi\n'
                      f'exec "{real}" "$@"\n')
    binary.chmod(0o755)
    marker = tmp_path / "app-ran"
    app = write_app(tmp_path, f"open({str(marker)!r}, 'w').close()", "marker.py")
    res = run_sidecar(["run", "--", *app], base_env(tmp_path, SIDECAR_LITESTREAM_BIN=str(binary)),
                      tmp_path)
    assert_clear(res, 3, f"cannot start litestream: {binary}: {reason}")
    assert not marker.exists()
