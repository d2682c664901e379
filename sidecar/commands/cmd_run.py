"""Run the app under sidecar: validate config, check the volume, restore the database when it is
missing (refusing to start when the replica cannot be read), start Litestream, run migrations
after a safety copy, start the app, forward signals, and on shutdown stop the app first and let
Litestream make its final sync. Exits with the app's exit code.
The app command comes after `--`, or from SIDECAR_APP_COMMAND.
"""

from __future__ import annotations

import argparse
import os

from sidecar import config
from sidecar.cli import add_settings, settings_from_args
from sidecar.startup import preflight


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "sidecar run [OPTIONS] -- APP_COMMAND..."
    add_settings(parser)


def main(args: argparse.Namespace) -> int:
    env = config.environment_with_flags(settings_from_args(args))
    cfg = config.load(env, app_command=args.app_command)
    # The admin token is sidecar's own: no child (app, Litestream, migration command, helper
    # `litestream restore`) inherits it, from `env` or from this process's environment.
    for name in config.HIDDEN_FROM_CHILDREN:
        os.environ.pop(name, None)
    # `litestream version` (a preflight check) runs while the rest of sidecar is imported.
    version = preflight.start_version_query(cfg)
    from sidecar import assembly

    return assembly.run(cfg, config.for_children(env), version=version)
