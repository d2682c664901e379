"""Continue a start held by SIDECAR_ON_START_FAILURE=hold, or a live restore held because the
migration command failed on the restored database, after you fixed the cause (see `sidecar
status`). Waits until it has gone through and exits 0 when the app runs, 1 when it failed again
(the sidecar keeps holding) or no held sidecar answers.
"""

from __future__ import annotations

import argparse
import sys
import time

from sidecar import config
from sidecar.api import ResumeRequest
from sidecar.cli import add_settings, settings_from_args
from sidecar.commands.cmd_status import fetch
from sidecar.daemon.control_client import NoDaemon, call, socket_path
from sidecar.errors import OperatorError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="ask for the resume and return at once")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long to wait for the start to finish [default: 600]")
    add_settings(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    try:
        code, data = call(socket_path(cfg), "POST", "/resume", ResumeRequest())
    except NoDaemon as exc:
        raise OperatorError(f"cannot resume: {exc}") from None
    if code >= 300:
        err = data.get("error") if isinstance(data, dict) else data
        raise OperatorError(str(err))
    print("resuming the start", file=sys.stderr)
    if args.no_wait:
        return 0
    end = time.monotonic() + args.timeout
    time.sleep(0.5)
    while time.monotonic() < end:
        doc = fetch(cfg)
        if doc.get("state") == "running":
            print("started: the app is running")
            return 0
        if doc.get("state") == "held":
            failure = doc.get("failure") or {}
            raise OperatorError(f"cannot resume: the start failed again and the sidecar holds: "
                                f"{failure.get('error')}", hint=failure.get("fix"))
        time.sleep(0.5)
    raise OperatorError(f"cannot resume: the start did not finish within {args.timeout:g}s; "
                        "see `sidecar status`")
