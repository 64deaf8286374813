"""The catalog (e2e/images/catalog.toml): what each layer and image is made of, loaded into
frozen dataclasses and checked key by key so that a typo fails loudly. Also image references and
the names they get in the lab registry."""

from __future__ import annotations

import hashlib
import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagelab.environment import CATALOG_PATH, FILES_DIR, REGISTRY, BuildError

# Capabilities a catalog may grant a file (linux/capability.h bit numbers).
CAPABILITY_BITS = {"cap_net_bind_service": 10, "cap_net_admin": 12, "cap_net_raw": 13}

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
    # File capabilities (`setcap NAME+ep`), as the security.capability xattr of the entry.
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConcatSpec:
    """Every file under `directory` of a package whose name ends with `suffix`, concatenated in
    path order into one file at `to` (a CA bundle as update-ca-certificates writes it)."""

    package: str
    directory: str
    suffix: str
    to: str


@dataclass(frozen=True)
class AppendSpec:
    path: str
    text: str


@dataclass(frozen=True)
class GoBuildSpec:
    """A main package of one of the catalog's Go modules, built and put at `to`; `module` names
    the [go] module it belongs to ("" in a catalog with a single [go] module)."""

    package: str
    to: str
    mode: int | None
    module: str = ""


@dataclass(frozen=True)
class ModuleFileSpec:
    """A file of a Go module's source tree (path relative to its root), put at `to`."""

    path: str
    to: str
    mode: int | None
    module: str = ""


@dataclass(frozen=True)
class GoModule:
    """A Go module whose programs the images carry, at a fixed version, with how its packages
    are built: build tags, `-X name=value` link flags (version stamping), and the version its
    local-path replace directives (`=> ../api`) are pinned to in the wrapper module."""

    path: str
    version: str
    packages: tuple[str, ...]
    tags: tuple[str, ...] = ()
    link_vars: tuple[tuple[str, str], ...] = ()
    replace_local: str | None = None
    name: str = ""

    def ref(self) -> str:
        return f"{self.path}@{self.version}"


@dataclass(frozen=True)
class BusyboxSource:
    """busybox built from a Debian source package (.dsc pinned by sha256) with Debian's config
    of one flavour plus options it leaves off; require_applets are checked in `--list`."""

    comment: str
    dsc: str
    dsc_sha256: str
    flavour: str
    enable: tuple[str, ...]
    require_applets: tuple[str, ...]

    def key(self) -> str:
        """A short name for this configuration (build dirs and stamps)."""
        text = " ".join([self.dsc_sha256, self.flavour, *self.enable])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    go_builds: tuple[GoBuildSpec, ...] = ()
    module_files: tuple[ModuleFileSpec, ...] = ()
    busybox_source: str | None = None
    concat: tuple[ConcatSpec, ...] = ()

    def go_modules(self) -> set[str]:
        """The names of the Go modules this layer builds from or takes files of."""
        return {item.module for item in self.go_builds} | {
            item.module for item in self.module_files
        }


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
    go: GoModule | None = None
    busybox_source: BusyboxSource | None = None
    # Every Go module by name: {"": go} for a single [go] table, else the [go.NAME] tables.
    go_modules: Mapping[str, GoModule] = field(default_factory=dict)


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
    _table(
        raw,
        "top level",
        {"layers", "images", "unbuildable", "go", "busybox_source"},
        {"layers", "images"},
    )
    go_modules = _load_go_modules(raw["go"]) if "go" in raw else {}
    go = go_modules.get("")
    busybox = _load_busybox_source(raw["busybox_source"]) if "busybox_source" in raw else None
    layers = {name: _load_layer(name, value, files_dir) for name, value in raw["layers"].items()}
    for layer in layers.values():
        if (layer.go_builds or layer.module_files) and not go_modules:
            raise BuildError(f"catalog: layers.{layer.name} uses the Go module; add a [go] table")
        if layer.busybox_source and busybox is None:
            raise BuildError(f"catalog: layers.{layer.name} needs a [busybox_source] table")
        for name in layer.go_modules():
            if name not in go_modules:
                raise BuildError(
                    f"catalog: layers.{layer.name}: no Go module {name!r}; "
                    f"the catalog has {sorted(go_modules)}"
                )
        for build in layer.go_builds:
            if build.package not in go_modules[build.module].packages:
                where = "go.packages" if not build.module else f"go.{build.module}.packages"
                raise BuildError(f"catalog: layers.{layer.name}: {build.package} is not in {where}")
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
    return Catalog(
        layers=layers,
        images=images,
        unbuildable=unbuildable,
        go=go,
        busybox_source=busybox,
        go_modules=go_modules,
    )


def _load_busybox_source(value: Any) -> BusyboxSource:
    keys = {"comment", "dsc", "dsc_sha256", "flavour", "enable", "require_applets"}
    table = _table(value, "busybox_source", keys, keys)
    if not table["dsc"].endswith(".dsc") or not table["dsc"].startswith(("http://", "https://")):
        raise BuildError(f"catalog: busybox_source.dsc must be the URL of a .dsc: {table['dsc']}")
    if len(table["dsc_sha256"]) != 64 or set(table["dsc_sha256"]) - set("0123456789abcdef"):
        raise BuildError("catalog: busybox_source.dsc_sha256 must be 64 lowercase hex digits")
    bad = [option for option in table["enable"] if not option.startswith("CONFIG_")]
    if bad:
        raise BuildError(f"catalog: busybox_source.enable: {bad} are not CONFIG_ options")
    return BusyboxSource(
        comment=table["comment"],
        dsc=table["dsc"],
        dsc_sha256=table["dsc_sha256"],
        flavour=table["flavour"],
        enable=tuple(table["enable"]),
        require_applets=tuple(table["require_applets"]),
    )


def _load_go_modules(value: Any) -> dict[str, GoModule]:
    """A single module ([go] with module/version/packages, named "") or several ([go.NAME]
    tables, each naming its module; layers say which one with `module = "NAME"`)."""
    if isinstance(value, dict) and "module" in value:
        return {"": _load_go(value, "go", "")}
    if not isinstance(value, dict) or not value:
        raise BuildError("catalog: go must be a module table or tables of modules ([go.NAME])")
    return {name: _load_go(table, f"go.{name}", name) for name, table in value.items()}


def _load_go(value: Any, where: str, name: str) -> GoModule:
    keys = {"module", "version", "packages"}
    table = _table(value, where, keys | {"tags", "link_vars", "replace_local"}, keys)
    module, version = table["module"], table["version"]
    if not version.startswith("v"):
        raise BuildError(f"catalog: {where}.version must be a tag like v1.37.2, not {version!r}")
    # A module's root can be a main package too (etcd's server, coredns).
    outside = [
        package
        for package in table["packages"]
        if package != module and not package.startswith(module + "/")
    ]
    if outside:
        raise BuildError(f"catalog: {where}.packages {outside} are not in the module {module}")
    link_vars = table.get("link_vars", {})
    if not isinstance(link_vars, dict) or not all(
        isinstance(v, str) and "." in k and not set(k + v) & set(" '\"\\")
        for k, v in link_vars.items()
    ):
        raise BuildError(
            f"catalog: {where}.link_vars must map package.Variable names to plain strings"
        )
    replace_local = table.get("replace_local")
    if replace_local is not None and not str(replace_local).startswith("v"):
        raise BuildError(f"catalog: {where}.replace_local must be a version, not {replace_local!r}")
    return GoModule(
        path=module,
        version=version,
        packages=tuple(table["packages"]),
        tags=tuple(table.get("tags", [])),
        link_vars=tuple(sorted(link_vars.items())),
        replace_local=replace_local,
        name=name,
    )


def _load_layer(name: str, value: Any, files_dir: Path) -> LayerRecipe:
    where = f"layers.{name}"
    table = _table(
        value,
        where,
        {
            "comment",
            "packages",
            "copy",
            "files",
            "busybox_applets",
            "paths",
            "append",
            "go_build",
            "module_files",
            "busybox_source",
            "concat",
        },
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
            {"path", "type", "mode", "uid", "gid", "target", "content", "capabilities"},
            {"path"},
        )
        kind = spec.get("type")
        if kind not in (None, "dir", "file", "symlink"):
            raise BuildError(f"catalog: {where}: unknown path type {kind!r}")
        if (kind == "symlink") != ("target" in spec):
            raise BuildError(f"catalog: {where}: {spec['path']}: target goes with symlinks")
        capabilities = tuple(spec.get("capabilities", []))
        unknown = [name for name in capabilities if name not in CAPABILITY_BITS]
        if unknown:
            raise BuildError(f"catalog: {where}: {spec['path']}: unknown capabilities {unknown}")
        paths.append(
            PathSpec(
                path=_absolute(spec["path"], where),
                kind=kind,
                mode=_mode(spec.get("mode"), where),
                uid=spec.get("uid"),
                gid=spec.get("gid"),
                target=spec.get("target", ""),
                content=spec.get("content", ""),
                capabilities=capabilities,
            )
        )
    appends = []
    for item in table.get("append", []):
        spec = _table(item, f"{where}.append", {"path", "text"}, {"path", "text"})
        appends.append(AppendSpec(path=_absolute(spec["path"], where), text=spec["text"]))
    go_builds = tuple(
        GoBuildSpec(
            package=spec["package"],
            to=_absolute(spec["to"], where),
            mode=_mode(spec.get("mode"), where),
            module=spec.get("module", ""),
        )
        for spec in (
            _table(
                item, f"{where}.go_build", {"package", "to", "mode", "module"}, {"package", "to"}
            )
            for item in table.get("go_build", [])
        )
    )
    module_files = tuple(
        ModuleFileSpec(
            path=_absolute("/" + spec["path"], where).lstrip("/"),
            to=_absolute(spec["to"], where),
            mode=_mode(spec.get("mode"), where),
            module=spec.get("module", ""),
        )
        for spec in (
            _table(item, f"{where}.module_files", {"path", "to", "mode", "module"}, {"path", "to"})
            for item in table.get("module_files", [])
        )
    )
    concat = []
    for item in table.get("concat", []):
        keys = {"package", "directory", "suffix", "to"}
        spec = _table(item, f"{where}.concat", keys, keys)
        if spec["package"] not in packages:
            raise BuildError(f"catalog: {where}: concat from {spec['package']!r}, not in packages")
        concat.append(
            ConcatSpec(
                package=spec["package"],
                directory=_absolute(spec["directory"], where),
                suffix=spec["suffix"],
                to=_absolute(spec["to"], where),
            )
        )
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
        go_builds=go_builds,
        module_files=module_files,
        busybox_source=_absolute(table["busybox_source"], where)
        if "busybox_source" in table
        else None,
        concat=tuple(concat),
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
