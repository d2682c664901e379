"""Links planted on the volume, against the real `sidecar run`: a lock file or the state dir
that is a symbolic link refuses the start (exit 3) naming it and leaves its target as it was;
a state dir found 0755 is 0700 after a start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from testkit import base_env, run_sidecar

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("planted", [".app.db.sidecar.lock", ".sidecar/sidecar.lock",
                                     ".sidecar"])
def test_a_planted_link_refuses_the_start_and_its_target_is_untouched(tmp_path: Path,
                                                                      planted: str) -> None:
    data = tmp_path / "data"
    (data / ".sidecar").mkdir(parents=True, mode=0o700)
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / "victim.txt"
    victim.write_text("precious\n")
    link = data / planted
    if planted == ".sidecar":
        (data / ".sidecar").rmdir()
        link.symlink_to(victim_dir)
    else:
        link.symlink_to(victim)
    env = base_env(tmp_path)
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=120)
    assert res.returncode == 3, res.stderr[-3000:]
    assert f"cannot use {link} as" in res.stderr and "symbolic link" in res.stderr
    assert "Traceback" not in res.stderr
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["victim.txt"]


def test_a_loose_state_dir_is_made_private_by_a_start(tmp_path: Path) -> None:
    state = tmp_path / "data" / ".sidecar"
    state.mkdir(parents=True)
    os.chmod(state, 0o755)
    res = run_sidecar(["run", "--", "true"], base_env(tmp_path), tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
