"""The catalog (e2e/images/catalog.toml): what each layer and image is made of, loaded into
frozen dataclasses and checked key by key so that a typo fails loudly. Also image references and
the names they get in the lab registry."""

from __future__ import annotations

import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagelab.environment import CATALOG_PATH, FILES_DIR, REGISTRY, BuildError

# The image config fields a recipe may set (OCI image-spec config names).
CONFIG_FIELDS = {"Env", "Entrypoint", "Cmd", "User", "WorkingDir", "StopSignal", "ExposedPorts"}


@dataclass(frozen=True)
class CopySpec:
    """A file taken from a Debian package into a layer."""

    package: str
    path: str
    to: str
    mode: int | None


@dataclass(frozen=True)
class PathSpec:
    """An entry declared inline, or (kind None) a mode/owner change to an entry made above."""

    path: str
    kind: str | None
    mode: int | None
    uid: int | None
    gid: int | None
    target: str
    content: str


@dataclass(frozen=True)
class AppendSpec:
    path: str
    text: str


@dataclass(frozen=True)
class LayerRecipe:
    name: str
    comment: str
    packages: tuple[str, ...]
    copies: tuple[CopySpec, ...]
    files: str | None
    busybox_applets: str | None
    paths: tuple[PathSpec, ...]
    appends: tuple[AppendSpec, ...]


@dataclass(frozen=True)
class Reference:
    """An image reference with an explicit registry host and a tag (no digests here)."""

    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Reference:
        if "@" in text:
            raise BuildError(f"{text}: digest references cannot be built; list it as unbuildable")
        host, sep, rest = text.partition("/")
        if not sep or not ("." in host or ":" in host or host == "localhost"):
            raise BuildError(f"{text}: write the registry host explicitly (e.g. docker.io/...)")
        # A ':' in the last path component starts the tag (one in the host is a port).
        if ":" in rest.rsplit("/", 1)[-1]:
            repository, _, tag = rest.rpartition(":")
        else:
            repository, tag = rest, "latest"
        return cls(host=host, repository=repository, tag=tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    def lab_repository(self) -> str:
        """The repository in the lab registry: the original one prefixed by its host, which is
        what a mirror endpoint http://127.0.0.1:5000/<host> resolves it to."""
        return f"{self.host}/{self.repository}"

    def lab(self, registry: str = REGISTRY) -> str:
        return f"{registry}/{self.lab_repository()}:{self.tag}"


@dataclass(frozen=True)
class ImageRecipe:
    refs: tuple[Reference, ...]
    layers: tuple[str, ...]
    config: Mapping[str, Any]
    index: bool
    upstream: str
    critest: str


@dataclass(frozen=True)
class Unbuildable:
    ref: str
    reason: str


@dataclass(frozen=True)
class Catalog:
    layers: Mapping[str, LayerRecipe]
    images: tuple[ImageRecipe, ...]
    unbuildable: tuple[Unbuildable, ...]


def _table(value: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """Check a catalog table's keys, so that a typo fails loudly instead of being ignored."""
    if not isinstance(value, dict):
        raise BuildError(f"catalog: {where} must be a table")
    unknown = set(value) - allowed
    missing = required - set(value)
    if unknown or missing:
        raise BuildError(
            f"catalog: {where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )
    return value


def _mode(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 8)
    except ValueError:
        raise BuildError(f"catalog: {where}: mode {text!r} is not octal") from None


def _absolute(path: str, where: str) -> str:
    normal = posixpath.normpath(path)
    if not path.startswith("/") or normal != path or ".." in path.split("/"):
        raise BuildError(f"catalog: {where}: {path!r} must be a normalised absolute path")
    return path


def load_catalog(path: Path = CATALOG_PATH, files_dir: Path = FILES_DIR) -> Catalog:
    raw = tomllib.loads(path.read_text())
    _table(raw, "top level", {"layers", "images", "unbuildable"}, {"layers", "images"})
    layers = {name: _load_layer(name, value, files_dir) for name, value in raw["layers"].items()}
    images = tuple(
        _load_image(f"images[{number}]", value, layers)
        for number, value in enumerate(raw["images"])
    )
    seen: set[Reference] = set()
    for ref in (ref for image in images for ref in image.refs):
        if ref in seen:
            raise BuildError(f"catalog: {ref} is listed twice")
        seen.add(ref)
    unbuildable = tuple(
        Unbuildable(**_table(item, "unbuildable", {"ref", "reason"}, {"ref", "reason"}))
        for item in raw.get("unbuildable", [])
    )
    return Catalog(layers=layers, images=images, unbuildable=unbuildable)


def _load_layer(name: str, value: Any, files_dir: Path) -> LayerRecipe:
    where = f"layers.{name}"
    table = _table(
        value,
        where,
        {"comment", "packages", "copy", "files", "busybox_applets", "paths", "append"},
        {"comment"},
    )
    packages = tuple(table.get("packages", []))
    copies = []
    for item in table.get("copy", []):
        spec = _table(item, f"{where}.copy", {"package", "path", "to", "mode"}, {"package", "path"})
        if spec["package"] not in packages:
            raise BuildError(f"catalog: {where}: copy from {spec['package']!r}, not in packages")
        source = _absolute(spec["path"], where)
        copies.append(
            CopySpec(
                package=spec["package"],
                path=source,
                to=_absolute(spec.get("to", source), where),
                mode=_mode(spec.get("mode"), where),
            )
        )
    paths = []
    for item in table.get("paths", []):
        spec = _table(
            item,
            f"{where}.paths",
            {"path", "type", "mode", "uid", "gid", "target", "content"},
            {"path"},
        )
        kind = spec.get("type")
        if kind not in (None, "dir", "file", "symlink"):
            raise BuildError(f"catalog: {where}: unknown path type {kind!r}")
        if (kind == "symlink") != ("target" in spec):
            raise BuildError(f"catalog: {where}: {spec['path']}: target goes with symlinks")
        paths.append(
            PathSpec(
                path=_absolute(spec["path"], where),
                kind=kind,
                mode=_mode(spec.get("mode"), where),
                uid=spec.get("uid"),
                gid=spec.get("gid"),
                target=spec.get("target", ""),
                content=spec.get("content", ""),
            )
        )
    appends = []
    for item in table.get("append", []):
        spec = _table(item, f"{where}.append", {"path", "text"}, {"path", "text"})
        appends.append(AppendSpec(path=_absolute(spec["path"], where), text=spec["text"]))
    files = table.get("files")
    if files is not None and not (files_dir / files).is_dir():
        raise BuildError(f"catalog: {where}: no directory {files_dir / files}")
    applets = table.get("busybox_applets")
    return LayerRecipe(
        name=name,
        comment=table["comment"],
        packages=packages,
        copies=tuple(copies),
        files=files,
        busybox_applets=_absolute(applets, where) if applets else None,
        paths=tuple(paths),
        appends=tuple(appends),
    )


def _load_image(where: str, value: Any, layers: Mapping[str, LayerRecipe]) -> ImageRecipe:
    keys = {"refs", "layers", "config", "index", "upstream", "critest"}
    table = _table(value, where, keys, keys)
    unknown_layers = [name for name in table["layers"] if name not in layers]
    if unknown_layers:
        raise BuildError(f"catalog: {where}: unknown layers {unknown_layers}")
    unknown_fields = set(table["config"]) - CONFIG_FIELDS
    if unknown_fields:
        raise BuildError(f"catalog: {where}: unsupported config fields {sorted(unknown_fields)}")
    return ImageRecipe(
        refs=tuple(Reference.parse(text) for text in table["refs"]),
        layers=tuple(table["layers"]),
        config=table["config"],
        index=bool(table["index"]),
        upstream=table["upstream"],
        critest=table["critest"],
    )
