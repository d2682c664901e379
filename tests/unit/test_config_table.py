"""The settings table against itself, the Config it fills and the README: every
setting is declared once and completely, every documented variable is read, and a bad value
of any setting is one error that names it. Fast: config.load only, no process, no disk write."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sidecar import cli, config
from sidecar.config import parsers
from sidecar.config.settings import BY_NAME, SECRET_ENV, SETTINGS, VARIABLES
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# Config fields no single row fills: each is built by a cross-field rule in config.load.
CROSS_FIELDS = {"databases", "state_dir", "user_litestream_config", "user_litestream_doc",
                "http_host", "http_port", "admin_token", "migrate_command", "app_command",
                "volume_var", "local_default_replica", "prisma_schema", "cwd", "directories",
                "session_token"}
NUMERIC = (parsers.parse_duration, parsers.positive_duration, parsers.litestream_duration,
           parsers.positive_number)


def base(tmp_path: Path, **env: str) -> dict[str, str]:
    return {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin",
            "SIDECAR_MIGRATE_COMMAND": "", **env}


def load(tmp_path: Path, **env: str) -> config.Config:
    return config.load(base(tmp_path, **env), app_command=["true"], cwd=tmp_path)


def problems_of(tmp_path: Path, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, **env)
    return exc.value.problems


def test_every_setting_is_complete_and_its_default_parses() -> None:
    names = [s.env for s in SETTINGS]
    assert len(names) == len(set(names)), "a variable is declared twice"
    flags = [s.flag for s in SETTINGS if s.flag]
    assert len(flags) == len(set(flags)), "a flag is declared twice"
    for s in SETTINGS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", s.env), s
        assert s.help.strip() and callable(s.parse), s
        assert s.parse is parsers.text or s.expects.startswith(("must", "needs")), s
        assert s.flag is None or s.flag == "--" + s.flag[2:].lower(), s
        if s.default is not None:
            s.parse(s.default)  # a default that does not parse would fail every start
        if s.secret:
            assert s.flag is None, f"{s.env}: a secret's flag value shows in every `ps`"


def test_config_fields_are_the_table_rows_plus_the_cross_field_rules() -> None:
    fields = {f.name for f in dataclasses.fields(config.Config)}
    by_rows = [s.field for s in SETTINGS if s.field]
    assert len(by_rows) == len(set(by_rows))
    assert set(by_rows) <= fields, set(by_rows) - fields
    assert fields == set(by_rows) | CROSS_FIELDS, fields ^ (set(by_rows) | CROSS_FIELDS)


def test_defaults_apply_when_unset(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    for s in SETTINGS:
        if s.field:
            want = None if s.default is None else s.parse(s.default)
            assert getattr(cfg, s.field) == want, s.env
    assert (cfg.http_host, cfg.http_port) == parsers.parse_addr(BY_NAME["SIDECAR_HTTP_ADDR"].default)


def _readme_rows() -> list[tuple[list[str], str]]:
    """(variables, default) of each row of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]), cells[1]))
    return rows


def test_readme_table_lists_exactly_the_variables_read() -> None:
    documented = {v for names, _d in _readme_rows() for v in names}
    assert documented, "the README's configuration table was not found"
    assert documented - {"RAILWAY_DEPLOYMENT_DRAINING_SECONDS"} <= set(VARIABLES), \
        f"documented but not read: {sorted(documented - set(VARIABLES))}"
    undocumented = set(VARIABLES) - documented - {"RAILWAY_ENVIRONMENT",
                                                  "RAILWAY_DEPLOYMENT_DRAINING_SECONDS"}
    assert not undocumented, f"read but not in the README's table: {sorted(undocumented)}"


def test_readme_defaults_are_the_table_defaults() -> None:
    for names, default in _readme_rows():
        if len(names) != 1 or BY_NAME.get(names[0]) is None or BY_NAME[names[0]].default is None:
            continue
        assert f"`{BY_NAME[names[0]].default}`" in default, (names[0], default)


def test_every_flag_is_an_option_of_every_command() -> None:
    for name in cli.COMMANDS:
        parser = cli.build_parser(name, all_commands=False)
        sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        options = {o for a in sub._actions for o in a.option_strings}
        for s in SETTINGS:
            if s.flag:
                assert s.flag in options, (name, s.flag)
        assert "--admin-token" in options  # refused with a message, not an unknown flag


@pytest.mark.parametrize("var", [s.env for s in SETTINGS if s.parse in NUMERIC
                                 or s.env in ("SIDECAR_KEEP_COPIES",
                                              "SIDECAR_HTTP_MAX_CONNECTIONS")])
@pytest.mark.parametrize("value", ["abc", "-1", "1e400", "0x10"])
def test_a_bad_number_is_one_error_naming_the_variable(tmp_path: Path, var: str,
                                                       value: str) -> None:
    problems = problems_of(tmp_path, **{var: value})
    assert len(problems) == 1 and problems[0].startswith(f"{var}: "), problems
    assert "must" in problems[0] and f'(got "{value}")' in problems[0], problems


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    bad = {"SIDECAR_MAX_LAG_SECONDS": "x", "SIDECAR_APP_RESTART": "always",
           "SIDECAR_HTTP_ADDR": "nowhere", "SIDECAR_KEEP_COPIES": "0"}
    problems = problems_of(tmp_path, **bad)
    assert sorted(p.split(":")[0] for p in problems) == sorted(bad), problems  # table order


def test_a_secret_is_never_echoed(tmp_path: Path) -> None:
    token = "short-secret"
    problems = problems_of(tmp_path, SIDECAR_ADMIN_TOKEN=token)
    assert problems == ["SIDECAR_ADMIN_TOKEN: must be at least 16 characters (got (secret))"]
    (tmp_path / "tok").write_text(token + "\n")
    problems = problems_of(tmp_path, SIDECAR_ADMIN_TOKEN_FILE=str(tmp_path / "tok"))
    assert problems == ["SIDECAR_ADMIN_TOKEN_FILE: must be at least 16 characters (got (secret))"]
    assert set(SECRET_ENV) == {"SIDECAR_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY", "SECRET_ACCESS_KEY"}


def test_a_fallback_is_named_when_it_gave_the_value(tmp_path: Path) -> None:
    env = {"SIDECAR_REPLICA_URL": "s3://b/app.db", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s" * 20}
    assert problems_of(tmp_path, ENDPOINT="ftp://x", **env) == [
        'ENDPOINT: must be an http:// or https:// URL (got "ftp://x")']
    cfg = load(tmp_path, REGION="eu-west-3", **env)
    assert cfg.databases[0].replica.s3.region == "eu-west-3"
    cfg = load(tmp_path, REGION="eu-west-3", SIDECAR_S3_REGION="us-east-2", **env)
    assert cfg.databases[0].replica.s3.region == "us-east-2"


def test_a_litestream_config_value_is_named_by_its_key(tmp_path: Path) -> None:
    (tmp_path / "litestream.yml").write_text(
        f"dbs:\n  - path: {tmp_path / 'app.db'}\n    replica:\n      url: s3://b/app.db\n"
        "      endpoint: ftp://x\n      force-path-style: maybe\n")
    problems = problems_of(tmp_path)
    assert problems == [
        'LITESTREAM_CONFIG dbs[0].replica.endpoint: must be an http:// or https:// URL '
        '(got "ftp://x")',
        'LITESTREAM_CONFIG dbs[0].replica.force-path-style: must be true or false (got "maybe")']


def test_blank_disables_where_the_table_says_so(tmp_path: Path) -> None:
    assert load(tmp_path, SIDECAR_VERIFY_SCHEDULE="").verify_schedule is None
    assert load(tmp_path).verify_schedule == BY_NAME["SIDECAR_VERIFY_SCHEDULE"].default
    assert load(tmp_path, SIDECAR_APP_RESTART="").app_restart == "no"  # blank: the default


def test_database_url_is_read_only_without_sidecar_db_path(tmp_path: Path) -> None:
    """An app may keep another engine's DATABASE_URL when SIDECAR_DB_PATH names the SQLite
    file; alone, it must be a file: URL, and its password is not echoed."""
    other = "postgresql://user:hunter2@db.example/app"
    assert load(tmp_path, DATABASE_URL=other).databases[0].path == tmp_path / "app.db"
    env = base(tmp_path, DATABASE_URL=other)
    del env["SIDECAR_DB_PATH"]
    with pytest.raises(ConfigError) as exc:
        config.load(env, app_command=["true"], cwd=tmp_path)
    assert exc.value.problems == ['DATABASE_URL: must be a SQLite URL like file:/data/app.db '
                                  '(got "postgresql://***@db.example/app")']
