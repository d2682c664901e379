"""The Dockerfile read as the image would run it: there is no Docker engine to build the
image, so tests read the Dockerfile itself, and `image_command()` / `image_env()` give the exact
argv and environment the image would start with, to run the same entrypoint outside an image."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """Split a Dockerfile into stages of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
            stages.append(Stage(base=parts[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def _exec_form(args: str, keyword: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError:
        raise AssertionError(f"{keyword} must use the JSON (exec) form, got: {args}") from None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def final_stage() -> Stage:
    return parse_dockerfile()[-1]


def image_entrypoint() -> list[str]:
    args = final_stage().last("ENTRYPOINT")
    assert args is not None, "the final stage has no ENTRYPOINT"
    return _exec_form(args, "ENTRYPOINT")


def image_cmd() -> list[str]:
    args = final_stage().last("CMD")
    assert args is not None, "the final stage has no CMD"
    return _exec_form(args, "CMD")


def image_command() -> list[str]:
    """The argv the image runs by default: ENTRYPOINT followed by CMD."""
    return image_entrypoint() + image_cmd()


def image_env() -> dict[str, str]:
    """Variables the final stage sets with ENV (`$PATH`-style references left as written)."""
    env: dict[str, str] = {}
    for args in final_stage().all("ENV"):
        for token in shlex.split(args):
            assert "=" in token, f"use ENV KEY=VALUE, got: {args}"
            key, _, value = token.partition("=")
            env[key] = value
    return env


def image_workdir() -> str:
    workdir = final_stage().last("WORKDIR")
    assert workdir is not None, "the final stage sets no WORKDIR"
    return workdir


def image_exposed_ports() -> set[int]:
    ports: set[int] = set()
    for args in final_stage().all("EXPOSE"):
        ports.update(int(p.split("/")[0]) for p in args.split())
    return ports
