"""Everything about talking to Litestream: its config file (yaml_file.py), its control socket
(control.py), and its environment, command lines and log lines (process.py).

The names below are re-exported so `from sidecar.litestream import Control` reads the same as
before the split; sidecar's own modules import from the submodule that holds each one.
"""

from sidecar.litestream.control import Control, ControlError, short_socket_path, unix_request
from sidecar.litestream.process import child_env, free_loopback_port, replicate_argv, restore_argv
from sidecar.litestream.yaml_file import render_config, write_config

__all__ = ["Control", "ControlError", "child_env", "free_loopback_port", "render_config",
           "replicate_argv", "restore_argv", "short_socket_path", "unix_request", "write_config"]
