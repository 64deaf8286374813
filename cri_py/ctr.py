"""cri-py's stand-ins for containerd's `ctr` and `containerd` commands on a node without
containerd, so that `kind load docker-image` and `kind load image-archive` (kind v0.33.0,
`pkg/cluster/nodeutils`) work unchanged. They accept exactly what kind runs on a node:

    containerd config dump
    ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=<s> -
    ctr --namespace=k8s.io images tag --force <image ID> <name>

(plus `ctr -n k8s.io images list -q`), with ctr's meaning, through `cri-py images`
(`cri_py.images.commands`: the running daemon, or the store when none runs). kind reads the
snapshotter from `containerd config dump` and passes it back to ctr: the dump names cri-py's
one, `overlayfs`. Anything else is refused with a message saying what this is and what it does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cri_py import config as config_mod
from cri_py.errors import ConfigError, CriError

NAMESPACE = "k8s.io"  # containerd's namespace for CRI images: the only one cri-py has
SNAPSHOTTER = "overlayfs"
USAGE = f"""\
ctr: cri-py's stand-in for containerd's ctr (this node runs cri-py, not containerd).
It supports only what `kind load` runs, acting on cri-py's images:
  ctr --namespace={NAMESPACE} images import [--all-platforms] [--digests] \
[--snapshotter={SNAPSHOTTER}] FILE|-
  ctr --namespace={NAMESPACE} images tag [--force] SOURCE TARGET...
  ctr --namespace={NAMESPACE} images list -q
For anything else use crictl or `cri-py images` (import, export, tag, list).
"""
CONFIG_DUMP = f"""\
# cri-py's stand-in for `containerd config dump` (this node runs cri-py, not containerd):
# only what kind reads, the snapshotter cri-py unpacks images for.
version = 3

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "{SNAPSHOTTER}"
"""


class Refused(Exception):
    """An argument list this stand-in does not take; the message says which part."""


def _take_value(args: list[str], flag: str) -> str:
    """The value of `flag` at the front of `args` (`--flag=v` or `--flag v`), consumed."""
    first = args.pop(0)
    if "=" in first:
        return first.split("=", 1)[1]
    if not args:
        raise Refused(f"{flag} needs a value")
    return args.pop(0)


def _flags(args: list[str], known: Sequence[str], valued: Sequence[str] = ()) -> dict[str, str]:
    """Leading flags of a subcommand (ctr takes flags before arguments), consumed."""
    found: dict[str, str] = {}
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args[0].split("=", 1)[0]
        if flag in valued:
            found[flag] = _take_value(args, flag)
        elif flag in known and "=" not in args[0]:
            found[flag] = ""
            args.pop(0)
        else:
            raise Refused(f"flag {args[0]!r} is not supported")
    return found


def _config() -> config_mod.Config:
    """cri-py's config, from its default files or those CRI_PY_CONFIG / CRI_PY_CONFIG_DIR name
    (kind gives ctr no way to say: an install elsewhere, or a test, sets them)."""
    file = os.environ.get("CRI_PY_CONFIG") or config_mod.DEFAULT_CONFIG_FILE
    directory = os.environ.get("CRI_PY_CONFIG_DIR") or config_mod.DEFAULT_CONFIG_DIR
    return config_mod.load(Path(file), Path(directory), {})


def _images(args: list[str]) -> int:
    from cri_py.images import commands

    if not args:
        raise Refused("`images` needs a subcommand")
    command = args.pop(0)
    if command == "import":
        flags = _flags(args, ("--all-platforms", "--digests"), ("--snapshotter",))
        snapshotter = flags.get("--snapshotter", SNAPSHOTTER)
        if snapshotter != SNAPSHOTTER:
            raise Refused(f"snapshotter {snapshotter!r}: cri-py unpacks for {SNAPSHOTTER} only")
        if len(args) != 1:
            raise Refused("`images import` takes one FILE (or - for stdin)")
        from cri_py.images.importer import ImportOptions

        options = ImportOptions(commands.today(), "--all-platforms" in flags, "--digests" in flags)
        fd = commands.open_input(args[0])
        try:
            imported = commands.import_images(_config(), fd, options)
        finally:
            os.close(fd)
        for image in imported:
            print(f"unpacking {image.name or '<none>'} ({image.digest})...done")
        return 0
    if command == "tag":
        flags = _flags(args, ("--force",))
        if len(args) < 2:
            raise Refused("`images tag` takes SOURCE and at least one TARGET")
        config = _config()
        for target in args[1:]:
            commands.tag_image(config, args[0], target, "--force" in flags)
            print(target)
        return 0
    if command in ("list", "ls"):
        _flags(args, ("-q", "--quiet"))
        if args:
            raise Refused("`images list` takes no filters here")
        for name in commands.image_names(_config()):
            print(name)
        return 0
    raise Refused(f"`images {command}` is not supported")


def run(argv: Sequence[str]) -> int:
    args = list(argv)
    if not args or any(a in ("-h", "--help", "help") for a in args):
        sys.stdout.write(USAGE)
        return 0 if args else 1
    namespace = ""
    while args and args[0].startswith("-"):
        flag = args[0].split("=", 1)[0]
        if flag not in ("--namespace", "-n"):
            raise Refused(f"global flag {args[0]!r} is not supported")
        namespace = _take_value(args, flag)
    if namespace != NAMESPACE:
        raise Refused(
            f"namespace {namespace or '(none)'!r}: cri-py's images are the CRI's, "
            f"containerd's namespace {NAMESPACE!r}; pass --namespace={NAMESPACE}"
        )
    if not args or args[0] not in ("images", "image", "i"):
        raise Refused(f"command {args[0] if args else '(none)'!r} is not supported")
    return _images(args[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """`ctr`: the stand-in's entry point."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except Refused as e:
        sys.stderr.write(f"ctr: {e}\n\n{USAGE}")
        return 1
    except (CriError, ConfigError, OSError) as e:
        print(f"ctr: {e}", file=sys.stderr)
        return 1


def containerd_main(argv: Sequence[str] | None = None) -> int:
    """`containerd`: only `containerd config dump`, which kind reads the snapshotter from."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["config", "dump"]:
        sys.stdout.write(CONFIG_DUMP)
        return 0
    print(
        "containerd: this node runs cri-py, not containerd; this stand-in answers only "
        f"`containerd config dump` (for kind), not {' '.join(args) or '(no arguments)'!r}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
