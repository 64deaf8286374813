"""`cri-py images import|export|tag|list` (and the `ctr` stand-in): through the running daemon
when there is one, else directly on the store.

Whether a daemon runs is what its run-dir lock says (`<run_dir>/cri-py.lock`, held by
`cri-py serve` for its whole life): when the lock is taken, the request goes over the admin
socket (`admin.py`) and the daemon's image service does the work, so its in-memory state, its
locks and its garbage collection stay the only writers of the store; when the lock is free,
this command takes it (a daemon starting meanwhile refuses to start, saying who holds it) and
runs the same image service in this process, e.g. while a node image is built.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cri_py.config import Config
from cri_py.errors import CriError, InvalidArgument
from cri_py.images.admin import (
    ExportRequest,
    ImportedName,
    ImportRequest,
    ListRequest,
    Reply,
    Request,
    TagRequest,
    call,
    handle,
    socket_path,
)

if TYPE_CHECKING:
    from cri_py.images.importer import ImportOptions


@contextlib.contextmanager
def store_lock(run_dir: Path) -> Iterator[bool]:
    """True (and the lock held for the block) when no daemon runs with `run_dir`."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(run_dir / "cri-py.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)


def perform(config: Config, request: Request, fd: int | None = None) -> Reply:
    """Runs `request` (with the archive to read or the file to write on `fd`) on the daemon,
    or in this process when none runs; CriError when it fails."""
    with store_lock(Path(config.run_dir)) as offline:
        if not offline:
            return call(socket_path(config.run_dir), request, fd)
        from cri_py.images.service import ImageService

        async def run() -> Reply:
            service = ImageService(config)
            try:
                if fd is None:
                    return await handle(service, request, None)
                mode = "rb" if isinstance(request, ImportRequest) else "wb"
                with open(os.dup(fd), mode) as file:
                    return await handle(service, request, file)
            finally:
                await service.close()

        return asyncio.run(run())


def import_images(config: Config, fd: int, options: ImportOptions) -> tuple[ImportedName, ...]:
    """Imports the archive readable on `fd`; the names given (one nameless entry per image
    the archive carries without a name)."""
    request = ImportRequest(options.date, options.all_platforms, options.digests)
    return perform(config, request, fd).imported


def export_images(config: Config, images: tuple[str, ...], fd: int) -> None:
    perform(config, ExportRequest(images), fd)


def tag_image(config: Config, source: str, target: str, force: bool) -> str:
    return perform(config, TagRequest(source, target, force)).image_id


def image_names(config: Config) -> tuple[str, ...]:
    return perform(config, ListRequest()).names


# --- the command line ---------------------------------------------------------------------------


def today() -> str:
    """The day in `import-<date>` names: local time, as ctr takes it."""
    return time.strftime("%Y-%m-%d")


def open_input(path: str) -> int:
    """A descriptor to read an archive from: `-` is stdin."""
    if path == "-":
        return os.dup(sys.stdin.fileno())
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def open_output(path: str) -> int:
    """A descriptor to write an export to: `-` is stdout (refused when it is a terminal)."""
    if path == "-":
        if sys.stdout.isatty():
            raise InvalidArgument("refusing to write a tar to a terminal; use --output FILE")
        sys.stdout.flush()
        return os.dup(sys.stdout.fileno())
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def run_import(config: Config, source: str, options: ImportOptions) -> list[str]:
    """`cri-py images import`: the lines to print, one per name given."""
    fd = open_input(source)
    try:
        imported = import_images(config, fd, options)
    finally:
        os.close(fd)
    return [f"imported {i.name or '<none>'} {i.image_id}" for i in imported]


def run_export(config: Config, images: tuple[str, ...], output: str) -> None:
    fd = open_output(output)
    try:
        export_images(config, images, fd)
    except BaseException:
        os.close(fd)
        if output != "-":
            Path(output).unlink(missing_ok=True)  # no half-written export left behind
        raise
    os.close(fd)


def run(config: Config, args: argparse.Namespace) -> int:
    """`cri-py images ...` from parsed arguments; errors are printed, exit status 1."""
    try:
        if args.images_command == "import":
            from cri_py.images.importer import ImportOptions

            options = ImportOptions(today(), args.all_platforms, args.digests)
            for line in run_import(config, args.file, options):
                print(line)
        elif args.images_command == "export":
            run_export(config, tuple(args.images), args.output)
        elif args.images_command == "tag":
            print(tag_image(config, args.source, args.target, args.force))
        else:
            for name in image_names(config):
                print(name)
    except (CriError, OSError) as e:
        print(f"cri-py images {args.images_command}: {e}", file=sys.stderr)
        return 1
    return 0


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The `images` subcommand of `cri-py`."""
    images = commands.add_parser(
        "images", help="import, export, tag and list images (through the running daemon)"
    )
    sub = images.add_subparsers(dest="images_command", required=True)
    importing = sub.add_parser(
        "import",
        parents=parents,
        help="import the images of an OCI layout or `docker save` tar (- for stdin)",
    )
    importing.add_argument("file", help="the archive, or - to read it from stdin")
    importing.add_argument(
        "--all-platforms",
        action="store_true",
        help="require every platform's content in the archive (as ctr does); the node's "
        "platform is the one kept",
    )
    importing.add_argument(
        "--digests",
        action="store_true",
        help="also name each image import-<date>@<digest>, as `ctr images import --digests`",
    )
    exporting = sub.add_parser(
        "export", parents=parents, help="write images as an OCI layout tar (with manifest.json)"
    )
    exporting.add_argument("images", nargs="+", metavar="IMAGE")
    exporting.add_argument("--output", "-o", default="-", help="the tar to write (- : stdout)")
    tagging = sub.add_parser("tag", parents=parents, help="give an image another tag")
    tagging.add_argument("source")
    tagging.add_argument("target")
    tagging.add_argument("--force", action="store_true", help="take the tag from another image")
    sub.add_parser("list", parents=parents, help="print every image name")
