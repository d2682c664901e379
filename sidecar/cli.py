"""The command line: one subcommand per module, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sidecar import __version__, log
from sidecar.config import SETTINGS
from sidecar.errors import EXIT_CODES, SidecarError

# name -> (module, one-line help). Each module has add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sidecar.commands.cmd_run", "restore if needed, replicate, migrate, run and supervise the app"),
    "check": ("sidecar.commands.cmd_check", "run every preflight check and test the bucket; changes nothing"),
    "status": ("sidecar.commands.cmd_status", "show what the running sidecar is doing (and why it holds)"),
    "restore": ("sidecar.commands.cmd_restore", "restore a backup into a file, or live through the daemon"),
    "verify": ("sidecar.commands.cmd_verify", "restore the latest backup aside and integrity-check it"),
    "snapshot": ("sidecar.commands.cmd_snapshot", "write a consistent copy of the live database to a file"),
    "resume": ("sidecar.commands.cmd_resume", "continue a start held by SIDECAR_ON_START_FAILURE=hold"),
}

EPILOG = "exit codes:\n" + "\n".join(f"  {k:<4} {v}" for k, v in EXIT_CODES.items()) + (
    "\n\nEvery option can also be set by the environment variable named in its help.")


class _Removed(argparse.Action):
    """A flag that would put a secret on the command line: refused, without echoing it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        parser.error(f"{option_string} was removed: a flag's value shows in every process "
                     "listing; set SIDECAR_ADMIN_TOKEN, or SIDECAR_ADMIN_TOKEN_FILE / "
                     "--admin-token-file with a file holding the token")


def add_settings(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting of config.SETTINGS; flags override the environment."""
    parser.add_argument("--admin-token", action=_Removed, help=argparse.SUPPRESS)
    group = parser.add_argument_group("configuration (flag or environment variable)")
    for s in SETTINGS:
        if (names is not None and s.env not in names) or s.flag is None:
            continue
        default = f" [default: {s.default}]" if s.default else ""
        group.add_argument(s.flag, dest=f"env_{s.env}", metavar="VALUE",
                           help=f"{s.help}{default} (${s.env})")


def settings_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("env_")}


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option (the
    top-level options take no value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(only: str | None = None, all_commands: bool = True) -> argparse.ArgumentParser:
    """The parser. With `all_commands` False only the module of the command `only` is
    imported (and gets its options): the others are listed by name and help text, which
    is all the top-level --help shows. Importing every module cost half a second of
    every start."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Container entrypoint for a SQLite app on a persistent volume, backed up "
                    "continuously to S3-compatible storage by Litestream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if not all_commands and name != only:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        # No abbreviations: `--admin-token` must never be taken for `--admin-token-file`.
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
        mod.add_arguments(p)
        p.usage = _short_usage(p, name)
        p.set_defaults(_module=mod)
    return parser


def _short_usage(parser: argparse.ArgumentParser, name: str) -> str:
    """The command's own options in the usage line; the config flags are summed up, as they
    are listed under their own heading anyway."""
    if parser.usage:
        return parser.usage
    mini = argparse.ArgumentParser(prog=f"sidecar {name}", add_help=False)
    for action in parser._actions:
        if not action.dest.startswith("env_") and action.dest != "help":
            mini._add_action(action)
    mini._mutually_exclusive_groups = parser._mutually_exclusive_groups
    own = mini.format_usage().removeprefix("usage: ").strip()
    return f"{own} [CONFIG OPTIONS]"


def _log_format_guess() -> str | None:
    fmt = (os.environ.get("SIDECAR_LOG_FORMAT") or "").strip().lower()
    return fmt if fmt in ("json", "console") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, app = argv[:i], argv[i + 1:]
    parser = build_parser(_command_in(argv), all_commands=False)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    args.app_command = app
    fmt = getattr(args, "env_SIDECAR_LOG_FORMAT", None) or _log_format_guess()
    log.setup(fmt if fmt in ("json", "console") else None)
    try:
        return int(args._module.main(args))
    except SidecarError as exc:
        if args.command == "run":
            log.get(exc.step).error(exc.message, exit_code=exc.exit_code,
                                    **({"problems": exc.problems} if exc.problems else {}),
                                    **({"fix": exc.hint} if exc.hint else {}))
        else:  # operator commands speak plainly to a person in a shell
            print(f"sidecar {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so, with the traceback, and exit 70
        log.get("internal").error("internal error", error=repr(exc), exc_info=True)
        return 70

