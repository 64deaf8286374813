"""The `cri-py` command: `serve` runs the daemon, `config` prints the effective config,
`images` imports, exports and tags images (`cri_py.images.commands`).

Flags override the config files; they are turned into a config layer here so that
`cri_py.config` validates them the same way as file values.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cri_py
from cri_py import config as config_mod
from cri_py import log
from cri_py.errors import ConfigError, StartupError
from cri_py.images import commands as image_commands

# flag dest -> dotted config key
_FLAG_KEYS = {
    "root_dir": "root_dir",
    "run_dir": "run_dir",
    "socket": "socket",
    "log_level": "log_level",
    "log_format": "log_format",
    "stream_address": "stream.address",
    "stream_port": "stream.port",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cri-py", description=cri_py.__doc__)
    parser.add_argument("--version", action="version", version=f"cri-py {cri_py.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=config_mod.DEFAULT_CONFIG_FILE,
        help="main config file (default: %(default)s)",
    )
    common.add_argument(
        "--config-dir",
        type=Path,
        default=config_mod.DEFAULT_CONFIG_DIR,
        help="drop-in dir, *.yaml in lexical order (default: %(default)s)",
    )
    common.add_argument("--root-dir", help="persistent state (images, metadata)")
    common.add_argument("--run-dir", help="runtime state (sockets, pins)")
    common.add_argument("--socket", help="CRI socket path")
    common.add_argument("--log-level", choices=config_mod.LOG_LEVELS)
    common.add_argument("--log-format", choices=config_mod.LOG_FORMATS)
    common.add_argument("--stream-address", help="streaming server address")
    common.add_argument("--stream-port", type=int, help="streaming server port (0: random)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[common], help="run the CRI daemon")
    config_cmd = commands.add_parser(
        "config", parents=[common], help="print the effective config as YAML"
    )
    config_cmd.add_argument(
        "--show-secrets",
        action="store_true",
        help="print registry credentials instead of <redacted>",
    )
    commands.add_parser("version", help="print the version")
    commands.add_parser(
        "info",
        parents=[common],
        help="print the config summary, cgroup mode, the running daemon's state and leaks",
    )
    debug = commands.add_parser("debug", help="inspect this host's cri-py state")
    debug_commands = debug.add_subparsers(dest="debug_command", required=True)
    debug_commands.add_parser(
        "leaks",
        parents=[common],
        help="list what looks like cri-py's but is in no record (exit 1 if any)",
    )
    image_commands.add_parser(commands, [common])
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Nested config data from the flags that were given."""
    overrides: dict[str, Any] = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"cri-py {cri_py.__version__}")
        return 0
    try:
        config = config_mod.load(args.config, args.config_dir, flag_overrides(args))
    except ConfigError as e:
        print(f"cri-py: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(config_mod.dump(config, redact=not args.show_secrets))
        return 0
    if args.command == "debug":
        return _debug_leaks(config)
    if args.command == "images":
        return image_commands.run(config, args)
    if args.command == "info":
        return _info(config, config_mod.config_sources(args.config, args.config_dir))
    log.setup(config.log_level, config.log_format)
    from cri_py.server.daemon import serve  # grpc is only imported when serving

    # SIGHUP reloads with the same files and flags as this start.
    reload = functools.partial(config_mod.load, args.config, args.config_dir, flag_overrides(args))
    try:
        asyncio.run(serve(config, reload))
    except StartupError as e:
        print(f"cri-py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful stop
        return 130
    return 0


def _debug_leaks(config: config_mod.Config) -> int:
    from cri_py.runtime.leaks import find_leaks

    leaks = find_leaks(config)
    for leak in leaks:
        print(leak)
    if not leaks:
        print("no leaks")
    return 1 if leaks else 0


def _info(config: config_mod.Config, files: list[Path]) -> int:
    """Exit status 0 when the daemon answers, 1 when it does not (the rest prints anyway)."""
    from cri_py import info

    report = info.gather(config, files)
    sys.stdout.write(info.render(report))
    return 0 if report.daemon is not None else 1


if __name__ == "__main__":
    sys.exit(main())
