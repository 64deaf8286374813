"""Go programs the images carry (agnhost, nnp), built from their source in one Go module fetched
through the module proxy, and files taken from that module's source tree. Builds are cached by
a stamp naming everything that decides the bytes; the Go caches are build-tools.sh's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from imagelab.catalog import GoModule
from imagelab.environment import BuildError, run

# The Go caches e2e/build-tools.sh fills (GOMODCACHE, GOCACHE): kubelet's build has already
# compiled most of what agnhost imports.
GO_CACHE_DIR = Path(os.environ.get("GO_CACHE_DIR", "/var/cache/cri-py/go"))

# -trimpath, no VCS stamp, no cgo, stripped: the same module version and Go toolchain always
# give the same binary, hence the same layer digest.
LDFLAGS = "-s -w"

# kubernetes' go.mod replaces each staging module (k8s.io/api, ...) with ./staging/src/...,
# which a module fetched from the proxy cannot use.
_STAGING = re.compile(r"^\s*(k8s\.io/\S+)\s*=>\s*\./staging/src/", re.MULTILINE)
# Any replace directive to a local path (etcd's `go.etcd.io/etcd/api/v3 => ../api`).
_LOCAL_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)\s*=>\s*(\.{1,2}/\S*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GoBinary:
    """A built program: where it is and what it was built from."""

    package: str
    path: Path
    stamp: str


def go_command() -> str:
    """The Go toolchain: $GO, else `go` on PATH, else Debian-less /usr/local/go (as CI installs)."""
    explicit = os.environ.get("GO")
    if explicit:
        return explicit
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )
    if found is None:
        raise BuildError(
            "no Go toolchain (go on PATH or /usr/local/go/bin/go); the lab builds agnhost"
        )
    return found


def go_environment(go_cache: Path = GO_CACHE_DIR) -> dict[str, str]:
    """build-tools.sh's deterministic Go environment: proxy only, local toolchain only, the
    shared caches, no user go env, no workspace, no VCS stamping."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GO") and key not in ("CGO_ENABLED",)
    }
    env.update(
        GOENV="off",
        GOTOOLCHAIN="local",
        GOPROXY=os.environ.get("GOPROXY", "https://proxy.golang.org,direct"),
        GOMODCACHE=str(go_cache / "mod"),
        GOCACHE=str(go_cache / "build"),
        GOPATH=str(go_cache / "gopath"),
        GOFLAGS="-buildvcs=false -mod=readonly",
        GOWORK="off",
        GO111MODULE="on",
        CGO_ENABLED="0",
    )
    return env


def wrapper_go_mod(module: GoModule, upstream_go_mod: str) -> str:
    """go.mod of a module that requires module@version, with each staging module replaced by its
    published tag (v0.X.Y for kubernetes v1.X.Y), as build-tools.sh's kubelet wrapper does; with
    module.replace_local, every local-path replace is pinned to that version instead (etcd's
    sibling modules share its tag)."""
    go_version = re.search(r"^go (\S+)$", upstream_go_mod, re.MULTILINE)
    godebug = re.findall(r"^godebug [^(].*$", upstream_go_mod, re.MULTILINE)
    lines = [
        "module cri-py.local/lab-images",
        "",
        f"go {go_version.group(1) if go_version else '1.26'}",
        "",
        *godebug,
        "",
        f"require {module.path} {module.version}",
    ]
    if module.replace_local is not None:
        local = sorted({name for name, _ in _LOCAL_REPLACE.findall(upstream_go_mod)})
        if not local:
            raise BuildError(
                f"{module.ref()}: replace_local is set, its go.mod has no local replace"
            )
        tag = module.replace_local
        lines += ["", "replace (", *(f"\t{name} => {name} {tag}" for name in local), ")"]
        return "\n".join(lines) + "\n"
    staging = sorted(set(_STAGING.findall(upstream_go_mod)))
    if staging:
        if not module.version.startswith("v1."):
            raise BuildError(f"{module.path}: staging replaces need a v1.X.Y tag")
        tag = "v0." + module.version.removeprefix("v1.")
        lines += ["", "replace (", *(f"\t{name} => {name} {tag}" for name in staging), ")"]
    return "\n".join(lines) + "\n"


def link_flags(module: GoModule) -> str:
    """-ldflags: stripped, plus the module's `-X package.name=value` (version stamping)."""
    return " ".join([LDFLAGS, *(f"-X {name}={value}" for name, value in module.link_vars)])


def build_stamp(module: GoModule, package: str, go_version: str) -> str:
    """Everything that decides a binary's bytes; a cached binary with another stamp is rebuilt."""
    tags = f" -tags={','.join(module.tags)}" if module.tags else ""
    return (
        f"{package}@{module.version} {go_version} CGO_ENABLED=0 -trimpath{tags}"
        f" -ldflags={link_flags(module)}\n"
    )


def binary_name(module: GoModule, package: str) -> str:
    """The cached binary's file name: the package's last element (the one before it when that
    is a major version suffix, go.etcd.io/etcd/server/v3 -> server-v3) and the version."""
    parts = package.split("/")
    name = parts[-1]
    if re.fullmatch(r"v\d+", name) and len(parts) > 1:
        name = f"{parts[-2]}-{name}"
    return f"{name}@{module.version}"


def wrapper_name(module: GoModule) -> str:
    """The wrapper module's directory: one per module version and set of packages (two catalogs
    building other packages of one module do not undo each other's go.sum)."""
    base = f"{module.path.replace('/', '_')}@{module.version}"
    packages = hashlib.sha256(" ".join(sorted(module.packages)).encode()).hexdigest()[:8]
    return f"{base}-{packages}"


class GoBuilder:
    """Builds the catalog's Go packages once per stamp into cache_dir/go/bin, through a wrapper
    module kept in cache_dir/go/wrapper (its go.sum makes warm runs need no network)."""

    def __init__(self, module: GoModule, cache_dir: Path, go_cache: Path = GO_CACHE_DIR) -> None:
        self.module = module
        self.root = cache_dir / "go"
        self.wrapper = self.root / "wrapper" / wrapper_name(module)
        self.bin = self.root / "bin"
        self.env = go_environment(go_cache)
        self._go_command: str | None = None
        self._source: Path | None = None
        self._go_version: str | None = None

    @property
    def go(self) -> str:
        """The toolchain, looked up when first needed (images without Go programs need none)."""
        if self._go_command is None:
            self._go_command = go_command()
        return self._go_command

    def _go(self, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        return run([self.go, *args], cwd=cwd or self.wrapper, timeout=timeout, env=self.env)

    def go_version(self) -> str:
        if self._go_version is None:
            self._go_version = self._go("env", "GOVERSION", cwd=self.root).strip()
        return self._go_version

    def source(self) -> Path:
        """The module's source tree in GOMODCACHE (fetched through the proxy once)."""
        if self._source is None:
            self.root.mkdir(parents=True, exist_ok=True)
            info = json.loads(
                self._go("mod", "download", "-json", self.module.ref(), cwd=self.root)
            )
            if "Error" in info or not info.get("Dir"):
                raise BuildError(f"go mod download {self.module.ref()}: {info.get('Error')}")
            self._source = Path(info["Dir"])
            self._prepare_wrapper(Path(info["GoMod"]).read_text())
        return self._source

    def _prepare_wrapper(self, upstream_go_mod: str) -> None:
        go_mod = wrapper_go_mod(self.module, upstream_go_mod)
        path = self.wrapper / "go.mod"
        # `go get` rewrites go.mod, so .complete keeps the text it started from.
        complete = self.wrapper / ".complete"
        if path.is_file() and complete.is_file() and complete.read_text() == go_mod:
            return
        self.wrapper.mkdir(parents=True, exist_ok=True)
        complete.unlink(missing_ok=True)
        path.write_text(go_mod)
        (self.wrapper / "go.sum").unlink(missing_ok=True)
        # `go get` of every package the catalog builds records the build list and go.sum; the
        # versions come from the module's own go.mod files, not from the day of the run.
        packages = [f"{package}@{self.module.version}" for package in self.module.packages]
        print(f"  go get {' '.join(packages)}", flush=True)
        env = {**self.env, "GOFLAGS": "-buildvcs=false"}
        run([self.go, "get", *packages], cwd=self.wrapper, timeout=1800, env=env)
        got = self._go("list", "-m", "-f", "{{.Version}}", self.module.path).strip()
        if got != self.module.version:
            raise BuildError(
                f"the wrapper resolved {self.module.path} {got}, not {self.module.version}"
            )
        complete.write_text(go_mod)

    def binary(self, package: str) -> GoBinary:
        """The built package (a main package of the module), building it if the cache lacks it."""
        if package not in self.module.packages:
            raise BuildError(f"{package} is not in the catalog's go.packages")
        self.source()
        output = self.bin / binary_name(self.module, package)
        stamp_path = output.with_name(output.name + ".stamp")
        stamp = build_stamp(self.module, package, self.go_version())
        if output.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
            return GoBinary(package, output, stamp)
        self.bin.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".partial-{output.name}")
        print(f"  go build {package}@{self.module.version} (cold: minutes)", flush=True)
        nice = ["nice", "-n", os.environ.get("BUILD_NICE", "10")] if shutil.which("nice") else []
        run(
            [
                *nice,
                self.go,
                "build",
                "-trimpath",
                *(["-tags", ",".join(self.module.tags)] if self.module.tags else []),
                "-ldflags",
                link_flags(self.module),
                "-o",
                str(partial),
                package,
            ],
            cwd=self.wrapper,
            timeout=3600,
            env=self.env,
        )
        partial.rename(output)
        stamp_path.write_text(stamp)
        return GoBinary(package, output, stamp)

    def module_file(self, path: str) -> Path:
        """A file of the module's source tree (path relative to the module root)."""
        source = self.source()
        found = (source / path.lstrip("/")).resolve()
        if not found.is_file() or source.resolve() not in found.parents:
            raise BuildError(f"{self.module.ref()} has no file {path}")
        return found
