"""The Go side of the image lab: the wrapper module that lets a proxy-fetched kubernetes build,
the stamp that decides when a cached binary is rebuilt, and Go programs placed in layers."""

import json
from pathlib import Path

import pytest
from imagelab.catalog import GoBuildSpec, GoModule, ModuleFileSpec
from imagelab.environment import BuildError
from imagelab.gobuild import GoBinary, build_stamp, go_environment, wrapper_go_mod
from imagelab.layers import build_layer

from tests.unit.e2e.elf_fixture import make_elf64
from tests.unit.e2e.reports import recipe

KUBERNETES = GoModule("k8s.io/kubernetes", "v1.37.2", ("k8s.io/kubernetes/test/images/agnhost",))

UPSTREAM_GO_MOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
	k8s.io/api v0.0.0
	github.com/spf13/cobra v1.10.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_wrapper_pins_each_staging_module_to_its_published_tag() -> None:
    go_mod = wrapper_go_mod(KUBERNETES, UPSTREAM_GO_MOD)

    assert "require k8s.io/kubernetes v1.37.2\n" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.37.2\n" in go_mod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2\n" in go_mod
    # kubernetes' own runtime defaults and Go version carry over to the main module.
    assert "\ngo 1.26.0\n" in go_mod
    assert "\ngodebug default=go1.26\n" in go_mod
    assert "./staging" not in go_mod


def test_wrapper_of_a_module_without_staging_has_no_replaces() -> None:
    module = GoModule("example.com/tool", "v0.3.0", ("example.com/tool/cmd/x",))

    go_mod = wrapper_go_mod(module, "module example.com/tool\n\ngo 1.22\n")

    assert "replace" not in go_mod
    assert "require example.com/tool v0.3.0\n" in go_mod


def test_stamp_changes_with_the_go_toolchain_and_the_version() -> None:
    package = "k8s.io/kubernetes/test/images/agnhost"
    newer = GoModule("k8s.io/kubernetes", "v1.37.3", KUBERNETES.packages)

    stamps = {
        build_stamp(KUBERNETES, package, "go1.26.8"),
        build_stamp(KUBERNETES, package, "go1.26.9"),
        build_stamp(newer, package, "go1.26.8"),
    }

    assert len(stamps) == 3


def test_go_environment_is_build_tools_caches_without_user_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOFLAGS", "-mod=mod")
    monkeypatch.setenv("GOOS", "windows")
    monkeypatch.setenv("CGO_ENABLED", "1")

    env = go_environment(tmp_path)

    assert env["GOMODCACHE"] == str(tmp_path / "mod")
    assert env["GOCACHE"] == str(tmp_path / "build")
    assert env["GOFLAGS"] == "-buildvcs=false -mod=readonly"
    assert env["CGO_ENABLED"] == "0"
    assert (env["GOTOOLCHAIN"], env["GOENV"], env["GOWORK"]) == ("local", "off", "off")
    assert "GOOS" not in env


class FakeGo:
    """What build_layer asks of a GoBuilder, over files in a temp dir."""

    def __init__(self, root: Path) -> None:
        self.module = KUBERNETES
        self.root = root
        self.binary_path = root / "agnhost"
        self.binary_path.write_bytes(make_elf64(None, []))
        (root / "src" / "test").mkdir(parents=True)
        (root / "src" / "test" / "localhost.crt").write_text("CERT")

    def go_version(self) -> str:
        return "go1.26.8"

    def binary(self, package: str) -> GoBinary:
        return GoBinary(package, self.binary_path, "stamp")

    def module_file(self, path: str) -> Path:
        return self.root / "src" / path


def test_go_programs_and_module_files_land_in_the_layer(tmp_path: Path) -> None:
    layer = recipe(
        name="agnhost",
        go_builds=(GoBuildSpec(KUBERNETES.packages[0], "/agnhost", None),),
        module_files=(ModuleFileSpec("test/localhost.crt", "/localhost.crt", None),),
    )

    tree = build_layer(layer, {}, {}, "x86_64-linux-gnu", go=FakeGo(tmp_path))  # type: ignore[arg-type]

    binary, cert = tree.entries["/agnhost"], tree.entries["/localhost.crt"]
    assert (binary.mode, binary.content()) == (0o755, (tmp_path / "agnhost").read_bytes())
    assert (cert.mode, cert.content()) == (0o644, b"CERT")
    assert tree.source_builds == {"k8s.io/kubernetes@v1.37.2 (go1.26.8)"}


def test_a_go_program_keeps_a_declared_setuid_mode(tmp_path: Path) -> None:
    layer = recipe(
        name="agnhost",
        go_builds=(GoBuildSpec(KUBERNETES.packages[0], "/usr/local/bin/nnp", 0o4755),),
    )

    tree = build_layer(layer, {}, {}, "x86_64-linux-gnu", go=FakeGo(tmp_path))  # type: ignore[arg-type]

    assert tree.entries["/usr/local/bin/nnp"].mode == 0o4755


def test_a_go_layer_without_a_go_builder_is_a_build_error() -> None:
    layer = recipe(
        name="agnhost", go_builds=(GoBuildSpec(KUBERNETES.packages[0], "/agnhost", None),)
    )

    with pytest.raises(BuildError, match="Go"):
        build_layer(layer, {}, {}, "x86_64-linux-gnu")


def test_a_go_build_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    go = FakeGo(tmp_path)
    go.binary_path.write_text(json.dumps({"not": "a binary"}))
    layer = recipe(
        name="agnhost", go_builds=(GoBuildSpec(KUBERNETES.packages[0], "/agnhost", None),)
    )

    with pytest.raises(BuildError, match="not an ELF"):
        build_layer(layer, {}, {}, "x86_64-linux-gnu", go=go)  # type: ignore[arg-type]
