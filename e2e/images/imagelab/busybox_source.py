"""busybox rebuilt from Debian's source package with applets Debian's configuration leaves out
(the node e2e suite runs `nmeter`): the .dsc pinned by sha256, its files checked against it,
Debian's own build rules for one flavour, the result cached by a stamp. The layer that carries
it is layers.py's."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.request
from pathlib import Path

from imagelab.catalog import BusyboxSource
from imagelab.environment import BuildError, run


def dsc_files(dsc_text: str) -> dict[str, str]:
    """File name -> sha256 from a .dsc's Checksums-Sha256 field."""
    files: dict[str, str] = {}
    in_field = False
    for line in dsc_text.splitlines():
        if line.startswith("Checksums-Sha256:"):
            in_field = True
            continue
        if in_field:
            if not line.startswith(" "):
                break
            digest, _, name = line.split()
            files[name] = digest
    if not files:
        raise BuildError("the .dsc has no Checksums-Sha256 field")
    return files


def enable_options(config_text: str, options: tuple[str, ...]) -> str:
    """Debian's flavour config with each `# CONFIG_X is not set` turned into `CONFIG_X=y`."""
    for option in options:
        line = re.compile(rf"^# {re.escape(option)} is not set$", re.MULTILINE)
        config_text, count = line.subn(f"{option}=y", config_text)
        if count != 1 and f"\n{option}=y\n" not in config_text:
            raise BuildError(f"busybox_source: {option} is not an option of Debian's config")
    return config_text


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BusyboxBuilder:
    """Fetches, builds and caches one busybox; `binary()` is cheap once built."""

    def __init__(self, spec: BusyboxSource, cache_dir: Path) -> None:
        self.spec = spec
        self.sources = cache_dir / "sources"
        name = spec.dsc.rsplit("/", 1)[-1].removesuffix(".dsc")
        self.output = cache_dir / "built" / f"{name}-{spec.flavour}-{spec.key()}" / "busybox"

    def stamp(self) -> str:
        compiler = run(["gcc", "--version"]).splitlines()[0]
        return (
            f"{self.spec.dsc} sha256:{self.spec.dsc_sha256} {self.spec.flavour} "
            f"{' '.join(self.spec.enable)} {compiler}\n"
        )

    def binary(self) -> Path:
        stamp_path = self.output.with_name("stamp")
        stamp = self.stamp()
        if self.output.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
            return self.output
        dsc = self._fetch()
        work = self.output.parent / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        print(
            f"  busybox: building {dsc.name} ({self.spec.flavour}, +{self.spec.enable})", flush=True
        )
        run(["dpkg-source", "--no-copy", "-x", str(dsc), str(work)], timeout=300)
        config = work / "debian" / "config" / "pkg" / self.spec.flavour
        config.write_text(enable_options(config.read_text(), self.spec.enable))
        jobs = os.cpu_count() or 2
        nice = ["nice", "-n", os.environ.get("BUILD_NICE", "10")]
        # Debian's rules build one flavour without debhelper: configure (silentoldconfig, then
        # a diff against the flavour config, so an option that drags in others fails here),
        # then make with Debian's hardening flags and version string.
        run(
            [
                *nice,
                "make",
                "-f",
                "debian/rules",
                f"b/{self.spec.flavour}/.stamp-build",
                f"DEB_BUILD_OPTIONS=parallel={jobs} nocheck",
            ],
            cwd=work,
            timeout=3600,
        )
        built = work / "b" / self.spec.flavour / "busybox"
        applets = run([str(built), "--list"], timeout=30).split()
        missing = sorted(set(self.spec.require_applets) - set(applets))
        if missing:
            raise BuildError(f"busybox_source: the build lacks applets {missing}")
        partial = self.output.with_name(".partial-busybox")
        # Debian's rules build with -g and SKIP_STRIP; dh_strip strips the packaged binary the
        # same way when it builds the .deb.
        run(
            [
                "strip",
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
                "-o",
                str(partial),
                str(built),
            ]
        )
        partial.rename(self.output)
        stamp_path.write_text(stamp)
        shutil.rmtree(work, ignore_errors=True)
        return self.output

    def _fetch(self) -> Path:
        """The .dsc (checked against the catalog's sha256) and the files it lists (checked
        against the .dsc), downloaded once into the sources cache."""
        self.sources.mkdir(parents=True, exist_ok=True)
        base = self.spec.dsc.rsplit("/", 1)[0]
        dsc = self._download(self.spec.dsc, self.spec.dsc_sha256)
        for name, digest in dsc_files(dsc.read_text()).items():
            self._download(f"{base}/{name}", digest)
        return dsc

    def _download(self, url: str, digest: str) -> Path:
        path = self.sources / url.rsplit("/", 1)[-1]
        if path.is_file() and _sha256(path) == digest:
            return path
        print(f"  fetch {url}", flush=True)
        partial = path.with_name(f".partial-{path.name}")
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                partial.write_bytes(response.read())
        except OSError as error:
            raise BuildError(f"cannot fetch {url}: {error}") from None
        if _sha256(partial) != digest:
            partial.unlink()
            raise BuildError(f"{url}: sha256 differs from {digest}")
        partial.rename(path)
        return path
