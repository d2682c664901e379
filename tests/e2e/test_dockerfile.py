"""The Dockerfile through the tools around it: hadolint finds nothing, and the build context
(`git ls-files` read through .dockerignore's rules) holds what COPY needs and nothing else.
What the Dockerfile says is read in tests/unit/test_dockerfile_contents.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.dockerfile import DOCKERFILE, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERIGNORE = ROOT / ".dockerignore"


# --------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_excludes(relpath: str, ignore_file: Path = DOCKERIGNORE) -> bool:
    """Whether Docker leaves `relpath` out of the build context (last matching rule wins;
    a rule matching a parent directory applies to everything below it)."""
    rules = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def tracked_files(*paths: str) -> list[str]:
    res = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return [p for p in res.stdout.splitlines() if p]


# ------------------------------------------------------------------------- the tests


def test_hadolint_reports_nothing() -> None:
    """hadolint finds no problem in the Dockerfile (no rule ignored)."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed (it comes with the test extras: ./scripts/setup.sh)")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_dockerignore_sends_what_copy_needs_and_nothing_else() -> None:
    """Every file a COPY needs is in the build context; node_modules, .git, .venv, tests and
    local databases are not."""
    sources: list[str] = []
    for stage in parse_dockerfile():
        for args in stage.all("COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            if "--from=" in args:
                continue
            sources.extend(parts[:-1])
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
        for f in tracked_files(src.rstrip("/")) or [src]:
            assert not dockerignore_excludes(f), f"{f} is needed by COPY but .dockerignore drops it"
    for dropped in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "testkit/s3.py",
                    "examples/prisma-app/node_modules/prisma/package.json",
                    "examples/prisma-app/prisma/dev.db", "examples/prisma-app/.env",
                    "sidecar/__pycache__/config.cpython-311.pyc", ".railway/railway.ts",
                    "litestream.yml", "sidecar.egg-info/PKG-INFO"):
        assert dockerignore_excludes(dropped), f"{dropped} would be sent to the build"


def test_dockerignore_matcher_follows_docker_rules(tmp_path: Path) -> None:
    """The .dockerignore reading used above: last rule wins, `!` re-includes, `**` spans dirs,
    and `*` does not cross `/` (unlike fnmatch)."""
    rules = tmp_path / ".dockerignore"
    rules.write_text("*\n!keep/\n**/node_modules\n!keep/node_modules/ok\nkeep/*.log\n")
    assert dockerignore_excludes("other.txt", rules)
    assert not dockerignore_excludes("keep/a/b.js", rules)
    assert dockerignore_excludes("keep/node_modules/x/index.js", rules)
    assert not dockerignore_excludes("keep/node_modules/ok", rules)
    assert dockerignore_excludes("keep/x.log", rules)
    assert not dockerignore_excludes("keep/sub/x.log", rules)
