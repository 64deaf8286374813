"""Debian packages: which version apt would install, `apt-get download` once, `dpkg-deb -x`
once, both cached under CACHE_DIR; and the library packages a package depends on, which is
where the shared libraries of its binaries are found."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imagelab.environment import BuildError, run


@dataclass(frozen=True)
class Candidate:
    """What apt would install for a package name."""

    version: str
    arch: str
    section: str

    @property
    def is_library(self) -> bool:
        # Debian puts shared libraries in section libs (zlib1g too, whose name lacks "lib").
        return self.section.rsplit("/", 1)[-1] in ("libs", "oldlibs")


@dataclass(frozen=True)
class Package:
    """One unpacked Debian package at the version apt considers the candidate."""

    name: str
    version: str
    arch: str
    tree: Path
    depends: tuple[str, ...]


def parse_depends(field_text: str) -> list[str]:
    """Package names from a Depends field: first alternative, no version or arch qualifier."""
    names = []
    for clause in field_text.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


class DebianPackages:
    """Fetches and unpacks .deb files under CACHE_DIR; a package version is fetched once."""

    def __init__(self, cache_dir: Path) -> None:
        self.debs = cache_dir / "debs"
        self.trees = cache_dir / "trees"
        self.debs.mkdir(parents=True, exist_ok=True)
        self.trees.mkdir(parents=True, exist_ok=True)
        self.packages: dict[str, Package] = {}
        self.candidates: dict[str, Candidate | None] = {}

    def with_library_depends(self, roots: Iterable[str]) -> dict[str, Package]:
        """The named packages plus, transitively, every library package they depend on (Depends
        and Pre-Depends, section libs): the places where the shared libraries their binaries
        need can be found. Other dependencies (debconf, iproute2, ...) are not fetched."""
        roots = sorted(set(roots))
        self.resolve(roots)
        wanted: set[str] = set()
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name not in wanted:
                wanted.add(name)
                stack += [dep for dep in self.packages[name].depends if self._is_library(dep)]
        return {name: self.packages[name] for name in sorted(wanted)}

    def resolve(self, roots: Iterable[str]) -> None:
        """Fetch roots and their library dependencies, one breadth-first level at a time: each
        apt-cache call costs about half a second, so all names of a level go in one call."""
        frontier = sorted(set(roots) - set(self.packages))
        while frontier:
            self._fetch(frontier)
            depends = {dep for name in frontier for dep in self.packages[name].depends}
            self._lookup(sorted(depends))
            frontier = sorted(
                dep for dep in depends if dep not in self.packages and self._is_library(dep)
            )

    def _is_library(self, name: str) -> bool:
        found = self.candidates.get(name)
        return found is not None and found.is_library

    def _fetch(self, names: list[str]) -> None:
        names = [name for name in names if name not in self.packages]
        if not names:
            return
        self._lookup(names)
        candidates: dict[str, Candidate] = {}
        for name in names:
            found = self.candidates[name]
            if found is None:
                raise BuildError(
                    f"apt knows no candidate for {name}; run `apt-get update` (or fix the catalog)"
                )
            candidates[name] = found
        missing = [
            name for name, found in candidates.items() if not self._deb_path(name, found).exists()
        ]
        if missing:
            print(f"  apt-get download {' '.join(missing)}", flush=True)
            specs = [f"{name}={candidates[name].version}" for name in missing]
            # Sandbox user root: the cache dir is root's and _apt could not write into it.
            run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *specs],
                cwd=self.debs,
            )
        for name, found in candidates.items():
            deb = self._deb_path(name, found)
            tree = self.trees / deb.stem
            if not tree.is_dir():
                partial = self.trees / f".partial-{deb.stem}"
                shutil.rmtree(partial, ignore_errors=True)
                run(["dpkg-deb", "-x", str(deb), str(partial)])
                partial.rename(tree)
            fields = run(["dpkg-deb", "--field", str(deb), "Depends", "Pre-Depends"])
            depends = set()
            for line in fields.splitlines():
                depends.update(parse_depends(line.partition(":")[2]))
            self.packages[name] = Package(
                name, found.version, found.arch, tree, tuple(sorted(depends))
            )

    def _lookup(self, names: list[str]) -> None:
        """Ask apt for the candidates of names not asked about yet; virtual packages (which
        have none) are remembered as None."""
        names = [name for name in names if name not in self.candidates]
        if not names:
            return
        out = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *names],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        ).stdout
        for stanza in out.split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in stanza.splitlines()
                if ": " in line and line[0] != " "
            )
            name = fields.get("Package")
            if name in names and self.candidates.get(name) is None:
                self.candidates[name] = Candidate(
                    fields["Version"], fields["Architecture"], fields.get("Section", "")
                )
        for name in names:
            self.candidates.setdefault(name, None)

    def _deb_path(self, name: str, found: Candidate) -> Path:
        # apt-get download's file name: the epoch's ':' is URL-quoted.
        return self.debs / f"{name}_{found.version.replace(':', '%3a')}_{found.arch}.deb"
