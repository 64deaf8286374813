"""The image admin channel: how `cri-py images ...` (and the `ctr` stand-in) asks a running
daemon to import, export, tag or list images, so that the daemon's own image service does the
work and sees the result at once (ListImages, ImageStatus) with its locks and garbage
collection in charge.

A unix socket `<run_dir>/admin.sock`, root's only (mode 0600, and the peer's uid checked).
One request per connection: a versioned JSON line, with the archive to read (import) or the
file to write (export) passed as an open file descriptor (SCM_RIGHTS), so the daemon never
opens a path the caller names and a pipe (`ctr images import -`) works as a file does. The
answer is one JSON line. Messages are the frozen dataclasses below; the server is
`cri_py.server.admin`.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cri_py.errors import (
    AlreadyExists,
    Code,
    CriError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from cri_py.images.service import ImageService

PROTOCOL_VERSION = 1
SOCKET_NAME = "admin.sock"
MAX_MESSAGE_BYTES = 1 << 20


def socket_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SOCKET_NAME


@dataclass(frozen=True)
class ImportRequest:
    """Import the archive on the descriptor sent along (see `importer.ImportOptions`)."""

    date: str
    all_platforms: bool = False
    digests: bool = False


@dataclass(frozen=True)
class ExportRequest:
    """Write the images named to the descriptor sent along."""

    images: tuple[str, ...]


@dataclass(frozen=True)
class TagRequest:
    source: str
    target: str
    force: bool = False


@dataclass(frozen=True)
class ListRequest:
    """Every image name (repo tags and repo digests)."""


Request = ImportRequest | ExportRequest | TagRequest | ListRequest
_OPS: dict[str, type[Request]] = {
    "import": ImportRequest,
    "export": ExportRequest,
    "tag": TagRequest,
    "list": ListRequest,
}


@dataclass(frozen=True)
class ImportedName:
    name: str  # "" for a nameless image
    digest: str
    image_id: str


@dataclass(frozen=True)
class Reply:
    """The answer: `error_code` empty on success. `imported` answers an import, `image_id` a
    tag, `names` a list."""

    error_code: str = ""
    error: str = ""
    imported: tuple[ImportedName, ...] = ()
    image_id: str = ""
    names: tuple[str, ...] = field(default_factory=tuple)


def encode_request(request: Request) -> bytes:
    op = next(name for name, kind in _OPS.items() if isinstance(request, kind))
    body = {"version": PROTOCOL_VERSION, "op": op, "args": asdict(request)}
    return json.dumps(body).encode() + b"\n"


def decode_request(data: bytes) -> Request:
    """A request from its line; InvalidArgument when it is not one this version knows."""
    try:
        doc = json.loads(data)
        if doc.get("version") != PROTOCOL_VERSION:
            raise InvalidArgument(
                f"admin protocol version {doc.get('version')!r}, this cri-py speaks "
                f"{PROTOCOL_VERSION}"
            )
        kind = _OPS[doc["op"]]
        args = dict(doc.get("args") or {})
        if kind is ExportRequest:
            args["images"] = tuple(str(image) for image in args.get("images", ()))
        return kind(**args)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidArgument(f"malformed admin request: {e}") from None


def encode_reply(reply: Reply) -> bytes:
    return json.dumps({"version": PROTOCOL_VERSION, **asdict(reply)}).encode() + b"\n"


def decode_reply(data: bytes) -> Reply:
    try:
        doc = json.loads(data)
        return Reply(
            error_code=str(doc.get("error_code", "")),
            error=str(doc.get("error", "")),
            imported=tuple(ImportedName(**item) for item in doc.get("imported", ())),
            image_id=str(doc.get("image_id", "")),
            names=tuple(str(name) for name in doc.get("names", ())),
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise Internal(f"malformed answer from the daemon: {e}") from None


_ERRORS: dict[str, type[CriError]] = {
    Code.INVALID_ARGUMENT.name: InvalidArgument,
    Code.NOT_FOUND.name: NotFound,
    Code.ALREADY_EXISTS.name: AlreadyExists,
    Code.FAILED_PRECONDITION.name: FailedPrecondition,
}


def raise_for(reply: Reply) -> Reply:
    """The reply, or the error it carries raised as the same kind of `CriError`."""
    if reply.error_code:
        raise _ERRORS.get(reply.error_code, Internal)(reply.error)
    return reply


def call(path: Path, request: Request, fd: int | None = None) -> Reply:
    """Sends `request` (with `fd`) to the daemon listening on `path` and waits for its
    answer; Unavailable when nothing listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise Unavailable(
                f"the running cri-py does not answer on {path} ({e.strerror}); an older "
                "cri-py without the admin socket? restart it"
            ) from None
        socket.send_fds(sock, [encode_request(request)], [fd] if fd is not None else [])
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if len(data) > MAX_MESSAGE_BYTES:
                raise Internal("the daemon's answer is too large")
    if not data:
        raise Internal("the daemon closed the admin connection without an answer")
    return raise_for(decode_reply(data))


async def handle(images: ImageService, request: Request, file: IO[bytes] | None) -> Reply:
    """Runs `request` on `images` (on its event loop); `file` is the archive to read (import)
    or the file to write (export). The daemon and a command without a daemon both answer
    through here."""
    if isinstance(request, ImportRequest | ExportRequest) and file is None:
        raise InvalidArgument(f"{type(request).__name__}: no file sent along")
    if isinstance(request, ImportRequest):
        from cri_py.images.importer import ImportOptions  # the image stack, only when needed

        assert file is not None
        options = ImportOptions(request.date, request.all_platforms, request.digests)
        imported = await images.import_archive(file, options)
        return Reply(imported=tuple(ImportedName(i.name, i.digest, i.image_id) for i in imported))
    if isinstance(request, ExportRequest):
        assert file is not None
        await images.export(request.images, file)
        return Reply()
    if isinstance(request, TagRequest):
        return Reply(image_id=await images.tag(request.source, request.target, force=request.force))
    views = images.list_images()
    return Reply(names=tuple(sorted(n for v in views for n in (*v.repo_tags, *v.repo_digests))))


def describe(value: Any) -> str:
    """A request for log lines."""
    return f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in asdict(value).items())})"
