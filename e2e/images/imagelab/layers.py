"""One layer's content: files copied from packages with the shared libraries they need, files
from e2e/images/files, busybox applet links, inline entries, appends; and the layer as a
deterministic tar (fixed mtimes, sorted, hard links after their targets) and gzip blob."""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imagelab.catalog import CAPABILITY_BITS, LayerRecipe, PathSpec
from imagelab.debian import Package
from imagelab.elf import read_elf_dependencies
from imagelab.environment import EPOCH, FILES_DIR, BuildError, run
from imagelab.gobuild import GoBuilder


@dataclass
class Entry:
    """One tar entry. A file's content is in memory (data) or in an unpacked package (source);
    a symlink's target is its link text; a hard link's target is the absolute path it links to."""

    kind: str  # "dir" | "file" | "symlink" | "hardlink"
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes | None = None
    source: Path | None = None
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.source is not None:
            return self.source.read_bytes()
        raise BuildError(f"a {self.kind} entry has no content")


@dataclass
class LayerTree:
    entries: dict[str, Entry] = field(default_factory=dict)
    packages_used: set[str] = field(default_factory=set)
    source_builds: set[str] = field(default_factory=set)

    def put(self, path: str, entry: Entry) -> None:
        """Add or replace an entry; missing parent directories are added as 0755 root dirs."""
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in self.entries:
            self.entries[parent] = Entry("dir", 0o755)
            parent = posixpath.dirname(parent)
        self.entries[path] = entry


def content_of(path: str, tree: LayerTree, lower: Mapping[str, Entry]) -> tuple[Entry, bytes]:
    """The file at path as this layer (else the layers below) has it, following hard links."""
    for _ in range(8):
        entry = tree.entries.get(path) or lower.get(path)
        if entry is None:
            raise BuildError(f"append: no {path} in this layer or below")
        if entry.kind == "hardlink":
            path = entry.target
            continue
        if entry.kind != "file":
            raise BuildError(f"append: {path} is a {entry.kind}, not a file")
        return entry, entry.content()
    raise BuildError(f"append: hard link loop at {path}")


def package_path(package: Package, path: str) -> Path:
    return package.tree / path.lstrip("/")


def link_destination(path: str, link: str) -> str:
    """Where a symlink at path with link text link points, inside the same root."""
    if link.startswith("/"):
        return posixpath.normpath(link)
    return posixpath.normpath(posixpath.join(posixpath.dirname(path), link))


class LibraryFinder:
    """Finds sonames and loaders in unpacked packages, in the directories the dynamic loader
    searches by default (Debian's loader knows the multiarch dirs without an ld.so.cache)."""

    def __init__(self, packages: Mapping[str, Package], triplet: str) -> None:
        self.packages = packages
        self.dirs = (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib", "/lib64")

    def locations(self, soname: str) -> list[str]:
        return [f"{directory}/{soname}" for directory in self.dirs]

    def find(self, path: str) -> Package | None:
        for package in self.packages.values():
            candidate = package_path(package, path)
            if candidate.is_symlink() or candidate.exists():
                return package
        return None


def copy_with_links(tree: LayerTree, package: Package, path: str) -> Path:
    """Copy path from a package, keeping each symlink hop on the way (libfoo.so.1 ->
    libfoo.so.1.2.3) so that the soname resolves in the image; returns the real file."""
    for _ in range(40):
        source = package_path(package, path)
        if source.is_symlink():
            link = os.readlink(source)
            tree.put(path, Entry("symlink", 0o777, target=link))
            path = link_destination(path, link)
            continue
        if not source.is_file():
            raise BuildError(f"{package.name} has no file {path}")
        # Modes as the package ships them; owners always root, as package files are.
        tree.put(path, Entry("file", source.lstat().st_mode & 0o7777, source=source))
        tree.packages_used.add(package.name)
        return source
    raise BuildError(f"{package.name}: symlink loop at {path}")


def resolve_in_package(package: Package, path: str, *, directory: bool = False) -> Path:
    """The regular file (or, with directory, the file or directory) behind path inside the
    package, following symlinks within it."""
    for _ in range(40):
        source = package_path(package, path)
        if not source.is_symlink():
            if not (source.is_file() or (directory and source.is_dir())):
                raise BuildError(f"{package.name} has no file {path}")
            return source
        path = link_destination(path, os.readlink(source))
    raise BuildError(f"{package.name}: symlink loop at {path}")


def file_capabilities(names: tuple[str, ...]) -> bytes:
    """The security.capability xattr `setcap NAMES+ep` writes: struct vfs_cap_data revision 2
    (magic with the effective flag, then permitted/inheritable words for capabilities 0-31
    and 32-63), little-endian."""
    permitted = 0
    for name in names:
        permitted |= 1 << CAPABILITY_BITS[name]
    magic = 0x02000000 | 0x1  # VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    words = (magic, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)
    return b"".join(word.to_bytes(4, "little") for word in words)


def add_shared_libraries(
    tree: LayerTree,
    lower: Mapping[str, Entry],
    roots: list[tuple[str, Path]],
    finder: LibraryFinder,
) -> None:
    """Copy the dynamic loader and every shared library the root ELF files need, recursively,
    unless the layer or a lower one already has them."""

    def present(path: str) -> bool:
        return path in tree.entries or path in lower

    queue = list(roots)
    seen: set[Path] = set()
    while queue:
        who, source = queue.pop()
        if source in seen:
            continue
        seen.add(source)
        elf = read_elf_dependencies(source.read_bytes())
        if elf is None:
            continue
        wanted = []
        if elf.interpreter:
            wanted.append((elf.interpreter, [elf.interpreter]))
        wanted += [(soname, finder.locations(soname)) for soname in elf.needed]
        for name, locations in wanted:
            if any(present(location) for location in locations):
                continue
            for location in locations:
                package = finder.find(location)
                if package is not None:
                    real = copy_with_links(tree, package, location)
                    queue.append((f"{name} (from {package.name})", real))
                    break
            else:
                raise BuildError(
                    f"{who} needs {name}, which none of {sorted(finder.packages)} ships; add the "
                    f"package that does to the layer's packages{installed_owner_hint(name)}"
                )


def installed_owner_hint(name: str) -> str:
    """Which installed package ships a file called name, as a hint for the catalog's author."""
    try:
        owners = subprocess.run(
            ["dpkg", "-S", name], capture_output=True, text=True, stdin=subprocess.DEVNULL
        ).stdout.strip()
    except OSError:
        return ""
    return f" (on this machine: {owners})" if owners else ""


def busybox_applets(binary: Path) -> list[str]:
    """The applets a busybox binary provides, asked from the binary itself."""
    try:
        listing = run([str(binary), "--list"], timeout=30)
    except (BuildError, OSError) as error:
        raise BuildError(f"cannot run {binary} --list on this machine: {error}") from None
    return sorted(name for name in listing.split() if name != "busybox")


def build_layer(
    recipe: LayerRecipe,
    lower: Mapping[str, Entry],
    packages: Mapping[str, Package],
    triplet: str,
    files_dir: Path = FILES_DIR,
    go: GoBuilder | Mapping[str, GoBuilder] | None = None,
    busybox: Callable[[], Path] | None = None,
) -> LayerTree:
    """The entries of one layer, in the order the catalog documents: copies (with their
    shared libraries), the busybox source build, Go programs and module files, the files
    directory, busybox applet links, inline paths, appends."""
    tree = LayerTree()
    _add_copies(tree, recipe, lower, packages, triplet)
    if recipe.busybox_source:
        if busybox is None:
            raise BuildError(f"{recipe.name}: needs busybox built from source, none was given")
        built = busybox()
        tree.put(recipe.busybox_source, Entry("file", 0o755, source=built))
        tree.source_builds.add(f"busybox from {built.parent.name}")
        add_shared_libraries(
            tree, lower, [("busybox (source build)", built)], LibraryFinder(packages, triplet)
        )
    if recipe.go_builds or recipe.module_files:
        if go is None:
            raise BuildError(f"{recipe.name}: builds Go programs, but no Go module was given")
        _add_go(tree, recipe, go)
    if recipe.files:
        _add_directory(tree, files_dir / recipe.files)
    if recipe.busybox_applets:
        _add_busybox_applets(tree, recipe.busybox_applets)
    for spec in recipe.paths:
        _apply_path(tree, spec, recipe.name)
    for append in recipe.appends:
        entry, data = content_of(append.path, tree, lower)
        tree.put(
            append.path,
            Entry("file", entry.mode, entry.uid, entry.gid, data=data + append.text.encode()),
        )
    return tree


def _add_copies(
    tree: LayerTree,
    recipe: LayerRecipe,
    lower: Mapping[str, Entry],
    packages: Mapping[str, Package],
    triplet: str,
) -> None:
    elf_roots = []
    for copy in recipe.copies:
        package = packages[copy.package]
        # "{triplet}": the multiarch directory (/usr/lib/x86_64-linux-gnu/...).
        path, to = (text.replace("{triplet}", triplet) for text in (copy.path, copy.to))
        source = resolve_in_package(package, path, directory=True)
        if source.is_dir():
            elf_roots += _copy_tree(tree, package, source, to, copy.mode)
            continue
        mode = copy.mode if copy.mode is not None else source.lstat().st_mode & 0o7777
        tree.put(to, Entry("file", mode, source=source))
        tree.packages_used.add(package.name)
        elf_roots.append((f"{copy.package}:{path}", source))
    for concat in recipe.concat:
        package = packages[concat.package]
        root = resolve_in_package(package, concat.directory, directory=True)
        parts = sorted(
            path for path in root.rglob("*") if path.is_file() and path.name.endswith(concat.suffix)
        )
        if not parts:
            raise BuildError(f"{package.name} has no *{concat.suffix} under {concat.directory}")
        data = b"".join(part.read_bytes().rstrip(b"\n") + b"\n" for part in parts)
        tree.put(concat.to, Entry("file", 0o644, data=data))
        tree.packages_used.add(package.name)
    add_shared_libraries(tree, lower, elf_roots, LibraryFinder(packages, triplet))


def _copy_tree(
    tree: LayerTree, package: Package, root: Path, to: str, mode: int | None
) -> list[tuple[str, Path]]:
    """A directory of a package, with everything under it (symlinks kept as they are, files
    with their modes unless mode is given); returns the files, whose ELF needs are added."""
    tree.put(to, Entry("dir", 0o755))
    tree.packages_used.add(package.name)
    files = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative = Path(directory).relative_to(root)
        for name in dirnames:
            if Path(directory, name).is_symlink():
                target = os.readlink(Path(directory, name))
                tree.put(
                    f"{to}/{(relative / name).as_posix()}", Entry("symlink", 0o777, target=target)
                )
            else:
                tree.put(f"{to}/{(relative / name).as_posix()}", Entry("dir", 0o755))
        for name in sorted(filenames):
            host = Path(directory, name)
            path = posixpath.normpath(f"{to}/{(relative / name).as_posix()}")
            if host.is_symlink():
                tree.put(path, Entry("symlink", 0o777, target=os.readlink(host)))
            elif host.is_file():
                file_mode = mode if mode is not None else host.lstat().st_mode & 0o7777
                tree.put(path, Entry("file", file_mode, source=host))
                files.append((f"{package.name}:{path}", host))
    return files


def _add_go(
    tree: LayerTree, recipe: LayerRecipe, builders: GoBuilder | Mapping[str, GoBuilder]
) -> None:
    def builder(module: str) -> GoBuilder:
        if not isinstance(builders, Mapping):
            return builders
        if module not in builders:
            raise BuildError(f"{recipe.name}: no builder for the Go module {module!r}")
        return builders[module]

    for build in recipe.go_builds:
        go = builder(build.module)
        binary = go.binary(build.package)
        if read_elf_dependencies(binary.path.read_bytes()) is None:
            raise BuildError(f"{build.package}: {binary.path} is not an ELF file")
        mode = build.mode if build.mode is not None else 0o755
        tree.put(build.to, Entry("file", mode, source=binary.path))
        tree.source_builds.add(f"{go.module.ref()} ({go.go_version()})")
    for item in recipe.module_files:
        go = builder(item.module)
        source = go.module_file(item.path)
        mode = item.mode if item.mode is not None else 0o644
        tree.put(item.to, Entry("file", mode, data=source.read_bytes()))
        tree.source_builds.add(f"{go.module.ref()} ({go.go_version()})")


def _add_directory(tree: LayerTree, root: Path) -> None:
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative = Path(directory).relative_to(root)
        if relative != Path("."):
            tree.put("/" + relative.as_posix(), Entry("dir", 0o755))
        for name in sorted(filenames):
            host = Path(directory, name)
            path = "/" + (relative / name).as_posix()
            if host.is_symlink():
                tree.put(path, Entry("symlink", 0o777, target=os.readlink(host)))
            else:
                # Git keeps only the executable bit, so that is all we take from the checkout.
                mode = 0o755 if os.access(host, os.X_OK) else 0o644
                tree.put(path, Entry("file", mode, data=host.read_bytes()))


def _add_busybox_applets(tree: LayerTree, binary_path: str) -> None:
    binary = tree.entries.get(binary_path)
    if binary is None or binary.source is None:
        raise BuildError(f"busybox_applets: {binary_path} is not a file copied into the layer")
    directory = posixpath.dirname(binary_path)
    for applet in busybox_applets(binary.source):
        tree.put(f"{directory}/{applet}", Entry("hardlink", binary.mode, target=binary_path))


def _apply_path(tree: LayerTree, spec: PathSpec, layer: str) -> None:
    if spec.kind is None:
        entry = tree.entries.get(spec.path)
        if entry is None:
            raise BuildError(f"{layer}: {spec.path} has no type and is not in the layer")
        entry.mode = spec.mode if spec.mode is not None else entry.mode
        entry.uid = spec.uid if spec.uid is not None else entry.uid
        entry.gid = spec.gid if spec.gid is not None else entry.gid
        if spec.capabilities:
            if entry.kind != "file":
                raise BuildError(f"{layer}: capabilities on {spec.path}, a {entry.kind}")
            entry.xattrs["security.capability"] = file_capabilities(spec.capabilities)
        return
    default_mode = {"dir": 0o755, "file": 0o644, "symlink": 0o777}[spec.kind]
    tree.put(
        spec.path,
        Entry(
            spec.kind,
            spec.mode if spec.mode is not None else default_mode,
            spec.uid or 0,
            spec.gid or 0,
            data=spec.content.encode() if spec.kind == "file" else None,
            target=spec.target,
        ),
    )


def layer_tar(tree: LayerTree) -> bytes:
    """The layer as an uncompressed tar, byte-identical for identical trees."""
    buffer = io.BytesIO()
    # A hard link's target must come earlier in the archive than the link: write every other
    # entry first, in path order, then the hard links.
    ordered = sorted(tree.entries.items(), key=lambda item: (item[1].kind == "hardlink", item[0]))
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in ordered:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = EPOCH
            if entry.xattrs:
                # PAX headers are text: tarfile writes them as UTF-8, and reading them back
                # with surrogateescape (as cri-py's unpacker does) gives the exact bytes.
                info.pax_headers = {
                    f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
                    for name, value in sorted(entry.xattrs.items())
                }
            content = None
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
            elif entry.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = entry.target.lstrip("/")
            else:
                content = entry.content()
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    out = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same tar always gives the same blob.
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as compressed:
        compressed.write(data)
    return out.getvalue()
