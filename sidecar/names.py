"""The one rule for a database's name relative to its directory, wherever the name comes from:
the local scan of a directory entry, the bucket listing of its prefix, an admin request's or
`sidecar restore --db`'s `db`. A bucket is shared more widely than a volume (another app, a
leaked key, a lifecycle rule), so a name read from it is checked before it becomes a path.

Why each part of the rule:
- relative and normalized (no empty, `.` or `..` segment): the name is joined to the
  directory and must stay inside it, and a name and its normalized path must be one string
  (the listing and the restore look databases up by it);
- no `?`, `#` or `%XX`: Litestream opens each database through a SQLite URI it builds without
  escaping (`file:<path>?_pragma=...`, db.go), where `?` starts the query, `#` the fragment and
  `%XX` is decoded, so such a name makes Litestream open another file (`%2e%2e%2f` climbs out
  of the directory);
- no control character: a name is shown in logs and errors;
- no hidden directory (a component starting with a dot, except the file's own name, which
  Litestream backs up like any other): sidecar's state dir and Litestream's metadata live in
  such directories, and the local scan never looks inside them;
- each component at most NAME_ROOM bytes: sidecar writes temporary files named after the
  database beside it (`.<name>.sidecar-restore-<pid>.tmp`), which must fit Linux's NAME_MAX.
"""

from __future__ import annotations

import re

NAME_MAX = 255  # bytes per file name, Linux
# Bytes a database's file name (and each directory of its path) may have: room beside it for
# `.<name>.sidecar-restore-<pid>` plus Litestream's `.tmp` (29 bytes with a 7-digit pid),
# `.<name>.sidecar.lock` and Litestream's `.<name>-litestream`.
NAME_ROOM = 200

# What a SQLite URI gives a meaning to (see the module's docstring).
URI_SPECIAL = re.compile(r"[?#]|%[0-9A-Fa-f]{2}")
URI_ROLE = {"?": "starts a URI's query", "#": "starts a URI's fragment"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def uri_problem(text: str) -> str | None:
    """Why Litestream would not open exactly the file `text` names, or None."""
    m = URI_SPECIAL.search(text)
    if m is None:
        return None
    char = m.group(0)
    role = URI_ROLE.get(char, "is decoded as a URI escape")
    return (f"must not contain {char!r}: Litestream opens the database through a SQLite URI, "
            f"where {char!r} {role}, so it would back up another file")


def problem(rel: str) -> str | None:
    """Why `rel` cannot be the name of a database relative to its directory, or None (the
    rule of the module's docstring). The words complete "the name ... ": `must ...`."""
    if not rel:
        return "must not be empty"
    try:
        raw = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    if (c := _CONTROL.search(rel)) is not None:
        return f"must not contain a control character ({c.group(0)!r})"
    if rel.startswith("/"):
        return "must be relative to the directory (it starts with '/')"
    if (why := uri_problem(rel)) is not None:
        return why
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if part == "":
            return "must not have an empty segment ('//' or a '/' at an end)"
        if part in (".", ".."):
            return f"must not have a {part!r} segment"
        if part.startswith(".") and i < len(parts) - 1:
            return (f"must not be inside a hidden directory ({part!r}): sidecar's state dir "
                    "and Litestream's own files live in such directories")
        if len(part.encode()) > NAME_ROOM:
            return (f"has a component {len(part.encode())} bytes long; at most {NAME_ROOM} "
                    "(sidecar writes temporary files named after it beside it)")
    if len(raw) > 4095 - NAME_MAX:
        return f"is {len(raw)} bytes long; at most {4095 - NAME_MAX}"
    return None


def nested_in(rel: str, others: set[str]) -> str | None:
    """The name among `others` whose path `rel` lies inside (`t1.db` for `t1.db/x/n.db`): a
    database cannot be a directory too."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        if (head := "/".join(parts[:i])) in others:
            return head
    return None
