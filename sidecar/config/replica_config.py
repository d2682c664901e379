"""The databases and where their backups go: replica URLs, S3 settings, and the databases (and
directories of databases) a Litestream config lists.

Values a Litestream config gives (endpoint, region, credentials) win over the environment and
go through the same parsers as the variables they stand for; a problem names the file's key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sidecar import names
from sidecar.config.parsers import pattern_problem
from sidecar.config.settings import BY_NAME, Problems, parse, show

# Railway Buckets answer only virtual-hosted requests (https://BUCKET.storage.railway.app);
# a path-style request gets NoSuchBucket, which reads as "bucket does not exist".
VIRTUAL_HOSTED_ENDPOINTS = ("storage.railway.app",)


@dataclass(frozen=True)
class S3:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    force_path_style: bool
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    # The CA bundle boto3 trusts for an HTTPS endpoint (AWS_CA_BUNDLE, else SSL_CERT_FILE);
    # None: botocore's own. Litestream is given the same CA (bucket/trust.py).
    ca_bundle: str | None = None

    @property
    def addressing(self) -> str:
        """How requests name the bucket, as `sidecar check` shows it."""
        return "path-style" if self.force_path_style else "virtual-hosted"


@dataclass(frozen=True)
class Replica:
    """Where one database's backups live: an S3 prefix or a local directory."""

    url: str  # display form, never carries a secret
    s3: S3 | None = None
    dir: Path | None = None

    @property
    def endpoint_label(self) -> str:
        if self.s3:
            return self.s3.endpoint or f"s3 ({self.s3.region})"
        return str(self.dir)


@dataclass(frozen=True)
class Database:
    path: Path
    replica: Replica | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class DbDir:
    """A directory entry: every file in `dir` matching `pattern` is a database, replicated
    under `<replica prefix>/<its path relative to dir>` (see bucket/tenants.py)."""

    dir: Path
    pattern: str
    recursive: bool
    watch: bool
    replica: Replica


def db_path_problem(path: Path) -> str | None:
    """Why this database path cannot be backed up exactly, or None (names.uri_problem: the
    same words as for a name from a directory or its bucket)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ("must be valid UTF-8: Litestream's config and DATABASE_URL are text, so a "
                "path with other bytes cannot be named exactly")
    why = names.uri_problem(text)
    return None if why is None else f"{why}; rename the file or its directory"


def default_path_style(endpoint: str | None) -> bool:
    """Path style for a custom endpoint (MinIO and most self-hosted servers need it), except
    the hosts known to answer only virtual-hosted requests; AWS itself (no endpoint) is
    virtual-hosted."""
    if endpoint is None:
        return False
    return (urlparse(endpoint).hostname or "") not in VIRTUAL_HOSTED_ENDPOINTS


# A Litestream replica's key -> the variable it stands for.
_FILE_KEYS = {"endpoint": "SIDECAR_S3_ENDPOINT", "region": "SIDECAR_S3_REGION",
              "force-path-style": "SIDECAR_S3_FORCE_PATH_STYLE",
              "access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY"}


def s3_settings(values: Mapping[str, Any], bucket: str, prefix: str, problems: Problems,
                rep: Mapping[str, Any] | None = None, where: str = "") -> S3:
    """S3 settings from the parsed variables, with a Litestream replica's keys laid over."""
    v = dict(values)
    for key, var in _FILE_KEYS.items():
        if rep and rep.get(key) is not None and str(rep[key]) != "":
            raw = str(rep[key]).lower() if key == "force-path-style" else str(rep[key])
            v[var] = parse(BY_NAME[var], f"{where}.replica.{key}", raw, problems)
    endpoint = v["SIDECAR_S3_ENDPOINT"]
    path_style = v["SIDECAR_S3_FORCE_PATH_STYLE"]
    key_id, secret = v["AWS_ACCESS_KEY_ID"], v["AWS_SECRET_ACCESS_KEY"]
    if v.get("AWS_SESSION_TOKEN") and rep and rep.get("access-key-id") and \
            key_id == values["AWS_ACCESS_KEY_ID"]:
        # Litestream 0.5.17 signs with the keys its config names and an empty session token
        # (s3/replica_client.go: NewStaticCredentialsProvider(key, secret, "")), so temporary
        # keys named there are denied on every upload; from its environment (what it reads
        # when the config names none) it takes AWS_SESSION_TOKEN too.
        problems.note(f"{where}.replica.access-key-id: names temporary keys (AWS_SESSION_TOKEN "
                      "is set for them), which Litestream 0.5 would use without their session "
                      "token and be denied; remove access-key-id / secret-access-key from the "
                      "config and let Litestream read AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                      "and AWS_SESSION_TOKEN from the environment")
    if bool(key_id) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        problems.note(f"{missing}: must be set too when the other credential is set "
                      f"(or SECRET_ACCESS_KEY / ACCESS_KEY_ID from a Railway Bucket)")
    return S3(bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint,
              region=v["SIDECAR_S3_REGION"],
              force_path_style=default_path_style(endpoint) if path_style is None else path_style,
              access_key_id=key_id, secret_access_key=secret,
              ca_bundle=v.get("AWS_CA_BUNDLE"))


# S3's bucket names, with the older rules' upper case and underscores still allowed (the
# bucket exists or it does not; the server decides): what is never in one is `:` or `@`.
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


def parse_replica_url(url: str, values: Mapping[str, Any], problems: Problems,
                      var: str = "SIDECAR_REPLICA_URL", rep: Mapping[str, Any] | None = None,
                      where: str = "") -> Replica | None:
    special = next((c for c in "?#" if c in url), None)
    if special is not None:
        # urlparse would cut the prefix at it and back up under a shorter prefix, silently.
        problems.add(var, url, f"must not contain {special!r}: in a URL it {names.URI_ROLE[special]}, "
                     "so the prefix would be cut short there; use a prefix without it")
        return None
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            problems.add(var, url, "must be s3://BUCKET/PREFIX with a bucket name")
            return None
        if "@" in parsed.netloc:
            problems.note(f"{var}: must not carry credentials (use AWS_ACCESS_KEY_ID)")
            return None
        if not _BUCKET.fullmatch(parsed.netloc):
            # Not echoed: `s3://KEY:SECRET/WITH/SLASHES@bucket/p` parses with `KEY:SECRET` as
            # the bucket, and that value would reach every log line and message.
            problems.note(f"{var}: the bucket name must be letters, digits, '.', '-' or '_' "
                          "(S3's rules); a URL must not carry credentials "
                          "(use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
            return None
        prefix = parsed.path.strip("/")
        if not prefix:
            problems.add(var, url, "needs a non-empty PREFIX after the bucket (s3://BUCKET/PREFIX)")
            return None
        s3 = s3_settings(values, parsed.netloc, prefix, problems, rep, where)
        return Replica(url=f"s3://{parsed.netloc}/{prefix}", s3=s3)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            problems.add(var, url, "must be file:///ABSOLUTE/DIR")
            return None
        return Replica(url=f"file://{parsed.path}", dir=Path(unquote(parsed.path)))
    problems.add(var, url, "must be s3://BUCKET/PREFIX or file:///DIR")
    return None


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Expand $VAR / ${VAR} in a Litestream config the way Litestream does, but on our side,
    so the rendered config runs with -no-expand-env and a `$` inside a secret survives."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: env.get(m.group(1) or m.group(2), ""), value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


def read_litestream_config(path: Path, env: Mapping[str, str],
                           problems: Problems) -> dict[str, Any] | None:
    """The config file as a mapping with the environment expanded, or None (reported)."""
    import yaml  # only a project's own litestream.yml needs a YAML parser

    try:
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError("the top level must be a mapping")
        return expand_env(doc, env)
    except (yaml.YAMLError, ValueError, OSError) as exc:
        problems.note(f"LITESTREAM_CONFIG: cannot read {path}: {str(exc).splitlines()[0]}")
        return None


def project_config(env: Mapping[str, str], cwd: Path,
                   problems: Problems) -> tuple[Path | None, dict[str, Any] | None]:
    """The project's Litestream config, when it has one: LITESTREAM_CONFIG, else
    ./litestream.yml."""
    raw = env.get("LITESTREAM_CONFIG", "").strip()
    if raw:
        path = (cwd / raw).resolve()
        if not path.is_file():
            problems.add("LITESTREAM_CONFIG", raw, "must name an existing Litestream config file")
            return None, None
    elif (cwd / "litestream.yml").is_file():
        path = cwd / "litestream.yml"
    else:
        return None, None
    return path, read_litestream_config(path, env, problems)


def replica_from_litestream(db: dict[str, Any], values: Mapping[str, Any], where: str,
                            problems: Problems) -> Replica | None:
    """One `dbs:` entry's replica (a `url`, or a typed s3/file replica)."""
    rep = db.get("replica")
    if rep is None and db.get("replicas"):
        reps = db["replicas"]
        if not isinstance(reps, list) or len(reps) != 1:
            problems.note(f"{where}: exactly one replica per database is supported")
            return None
        rep = reps[0]
    if rep is None:
        problems.note(f"{where}: has no replica; every database needs one to be backed up")
        return None
    if not isinstance(rep, dict):
        problems.note(f"{where}.replica: must be a mapping")
        return None
    url = rep.get("url")
    rtype = rep.get("type") or ("s3" if rep.get("bucket") else None)
    if url:
        return parse_replica_url(str(url), values, problems, f"{where}.replica.url", rep, where)
    if rtype == "s3":
        bucket, path = rep.get("bucket"), str(rep.get("path") or "").strip("/")
        if not bucket or not path:
            problems.note(f"{where}.replica: an s3 replica needs `bucket` and a non-empty `path`")
            return None
        s3 = s3_settings(values, str(bucket), path, problems, rep, where)
        return Replica(url=f"s3://{bucket}/{path}", s3=s3)
    if rtype == "file":
        path = rep.get("path")
        if not path or not str(path).startswith("/"):
            problems.note(f"{where}.replica.path: a file replica needs an absolute path")
            return None
        return Replica(url=f"file://{path}", dir=Path(str(path)))
    problems.note(f"{where}.replica: only s3 and file replicas are supported (got type "
                  f"{show(str(rtype))})")
    return None


def dir_entry(entry: Mapping[str, Any], base: Path, values: Mapping[str, Any], where: str,
              problems: Problems) -> DbDir | None:
    """A `dir:` entry of the project's litestream.yml, read the way Litestream reads it."""
    d = str(entry["dir"])
    path = Path(d) if Path(d).is_absolute() else (base / d).resolve()
    if (why := db_path_problem(path)) is not None:  # every database's path starts with it
        problems.note(f"{where}.dir: {why}")
        return None
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or pattern_problem(pattern) is not None:
        problems.note(f"{where}.pattern: a `dir` entry needs a file-name pattern like \"*.db\" "
                      f"(got {show(str(pattern))})")
        return None
    flags = {}
    for key in ("recursive", "watch"):
        flag = entry.get(key, False)
        if not isinstance(flag, bool):
            problems.note(f"{where}.{key}: must be true or false (got {show(str(flag))})")
            return None
        flags[key] = flag
    rep = replica_from_litestream(dict(entry), values, where, problems)
    if rep is None:
        return None
    if rep.s3 is None:
        problems.note(f"{where}.replica: a `dir` entry needs an s3 replica")
        return None
    return DbDir(dir=path, pattern=pattern, recursive=flags["recursive"], watch=flags["watch"],
                 replica=rep)


def databases_from_litestream(doc: Mapping[str, Any], cfg_path: Path, values: Mapping[str, Any],
                              problems: Problems) -> tuple[list[Database], list[DbDir]]:
    """The databases and directory entries of a Litestream config's `dbs:`, each with its
    replica."""
    dbs = doc.get("dbs")
    if not isinstance(dbs, list) or not dbs:
        problems.note(f"LITESTREAM_CONFIG: {cfg_path} lists no databases under `dbs:`")
        return [], []
    out: list[Database] = []
    dirs: list[DbDir] = []
    for i, entry in enumerate(dbs):
        where = f"LITESTREAM_CONFIG dbs[{i}]"
        if isinstance(entry, dict) and entry.get("dir") and not entry.get("path"):
            if (dd := dir_entry(entry, cfg_path.parent, values, where, problems)) is not None:
                dirs.append(dd)
            continue
        if not isinstance(entry, dict) or not entry.get("path"):
            problems.note(f"{where}: needs a `path` or a `dir` with a `pattern`")
            continue
        p = str(entry["path"])
        if p.startswith("file:"):
            problems.note(f"{where}.path: Litestream needs a plain path, not {show(p)}")
            continue
        path = Path(p) if Path(p).is_absolute() else (cfg_path.parent / p).resolve()
        if (why := db_path_problem(path)) is not None:
            problems.add(f"{where}.path", str(path), why)
        out.append(Database(path=path, replica=replica_from_litestream(entry, values, where,
                                                                        problems)))
    return out, dirs
