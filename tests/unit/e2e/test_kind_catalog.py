"""The kind images' catalog (e2e/images/kind-catalog.toml) and what imagelab learned for it:
several Go modules with build tags, version stamps and local replaces, directory copies, CA
bundles, file capabilities."""

import struct
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from imagelab.catalog import ConcatSpec, CopySpec, GoBuildSpec, GoModule, PathSpec, load_catalog
from imagelab.environment import IMAGES_DIR, BuildError
from imagelab.gobuild import (
    GoBinary,
    binary_name,
    build_stamp,
    link_flags,
    wrapper_go_mod,
    wrapper_name,
)
from imagelab.layers import build_layer, file_capabilities, layer_tar

from tests.unit.e2e.elf_fixture import make_elf64
from tests.unit.e2e.reports import recipe
from tests.unit.e2e.test_layers import TRIPLET, fake_package

KIND_CATALOG = IMAGES_DIR / "kind-catalog.toml"
KUBEADM_CONSTANTS = Path(
    "/var/cache/cri-py/go/mod/k8s.io/kubernetes@v1.37.2/cmd/kubeadm/app/constants/constants.go"
)

# kubeadm v1.37.2: cmd/kubeadm/app/images/images.go over constants.go (DefaultEtcdVersion
# 3.7.0-0, CoreDNSVersion v1.14.6; the default repository gets /coredns for CoreDNS).
KUBEADM_IMAGES = {
    "registry.k8s.io/kube-apiserver:v1.37.2",
    "registry.k8s.io/kube-controller-manager:v1.37.2",
    "registry.k8s.io/kube-scheduler:v1.37.2",
    "registry.k8s.io/kube-proxy:v1.37.2",
    "registry.k8s.io/etcd:3.7.0-0",
    "registry.k8s.io/coredns/coredns:v1.14.6",
}

ETCD_GO_MOD = """module go.etcd.io/etcd/server/v3

go 1.26

toolchain go1.26.5

require (
	go.etcd.io/etcd/api/v3 v3.7.0
	go.etcd.io/etcd/client/v3 v3.7.0
)

replace (
	go.etcd.io/etcd/api/v3 => ../api
	go.etcd.io/etcd/client/v3 => ../client/v3
)

replace example.com/fork => ./third_party/fork
"""


def kind_refs() -> dict[str, tuple[str, ...]]:
    catalog = load_catalog(KIND_CATALOG)
    return {str(ref): image.layers for image in catalog.images for ref in image.refs}


def test_kind_catalog_has_every_image_kubeadm_pulls_plus_cni_and_storage() -> None:
    refs = kind_refs()

    assert set(refs) >= KUBEADM_IMAGES
    assert {
        "docker.io/cri-py-lab/kindnet:v1",
        "docker.io/rancher/local-path-provisioner:v0.0.30",
    } <= set(refs)


@pytest.mark.skipif(
    not KUBEADM_CONSTANTS.is_file(), reason="k8s.io/kubernetes@v1.37.2 not in the Go module cache"
)
def test_kind_catalog_tags_are_kubeadms_own_constants() -> None:
    text = KUBEADM_CONSTANTS.read_text()

    assert 'DefaultEtcdVersion = "3.7.0-0"' in text
    assert 'CoreDNSVersion = "v1.14.6"' in text
    assert 'PauseVersion = "3.10.2"' in text
    # pause is built by the main catalog, in the same registry.
    main = load_catalog()
    assert "registry.k8s.io/pause:3.10.2" in {str(r) for i in main.images for r in i.refs}


def test_kind_images_put_each_program_where_kubeadm_and_the_manifests_run_it() -> None:
    catalog = load_catalog(KIND_CATALOG)
    placed = {
        build.to: (catalog.go_modules[build.module].ref(), build.package)
        for layer in catalog.layers.values()
        for build in layer.go_builds
    }

    # kubeadm's static pods run `kube-apiserver`, `etcd`, ... through PATH; its kube-proxy
    # DaemonSet runs /usr/local/bin/kube-proxy; kind's storage manifest `local-path-provisioner`.
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
        assert placed[f"/usr/local/bin/{name}"] == (
            "k8s.io/kubernetes@v1.37.2",
            f"k8s.io/kubernetes/cmd/{name}",
        )
    assert placed["/usr/local/bin/etcd"][0] == "go.etcd.io/etcd/server/v3@v3.7.0"
    assert placed["/usr/local/bin/etcdctl"][0] == "go.etcd.io/etcd/etcdctl/v3@v3.7.0"
    assert placed["/coredns"][0] == "github.com/coredns/coredns@v1.14.6"
    assert placed["/usr/bin/local-path-provisioner"][0].endswith("@v0.0.30")
    kubernetes = catalog.go_modules["kubernetes"]
    assert dict(kubernetes.link_vars)["k8s.io/component-base/version.gitVersion"] == "v1.37.2"
    assert set(kubernetes.tags) == {"selinux", "notest", "grpcnotrace"}


def test_coredns_runs_as_nonroot_with_the_bind_capability_upstream_sets() -> None:
    catalog = load_catalog(KIND_CATALOG)
    image = next(i for i in catalog.images if "coredns" in str(i.refs[0]))
    caps = [p for name in image.layers for p in catalog.layers[name].paths if p.capabilities]

    assert image.config["User"] == "65532:65532"
    assert [(p.path, p.capabilities) for p in caps] == [("/coredns", ("cap_net_bind_service",))]


def test_kube_proxy_iptables_names_go_through_the_wrapper() -> None:
    catalog = load_catalog(KIND_CATALOG)
    links = {p.path: p.target for p in catalog.layers["netfilter"].paths}

    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables"):
        assert links[f"/usr/sbin/{name}"] == "iptables-wrapper"
    assert links["/usr/sbin/iptables-legacy"] == "xtables-legacy-multi"
    assert links["/usr/sbin/ip6tables-nft-restore"] == "xtables-nft-multi"
    wrapper = IMAGES_DIR / "files/iptables-wrapper/usr/sbin/iptables-wrapper"
    assert wrapper.stat().st_mode & 0o111


# --- several Go modules in one catalog ---------------------------------------------------------

MINIMAL_IMAGE = (
    '[[images]]\nrefs = ["docker.io/library/x:1"]\nlayers = ["base"]\nconfig = {}\n'
    'index = true\nupstream = "x"\ncritest = "x"\n'
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text + "\n" + MINIMAL_IMAGE)
    return path


def test_named_go_modules_are_loaded_with_their_build_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[go.etcd]\nmodule = "go.etcd.io/etcd/server/v3"\nversion = "v3.7.0"\n'
        'packages = ["go.etcd.io/etcd/server/v3"]\nreplace_local = "v3.7.0"\n'
        '[go.tool]\nmodule = "example.com/tool"\nversion = "v1.0.0"\n'
        'packages = ["example.com/tool/cmd/t"]\ntags = ["netgo"]\n'
        '[go.tool.link_vars]\n"main.version" = "v1.0.0"\n\n'
        '[layers.base]\ncomment = "x"\ngo_build = [\n'
        '  { module = "etcd", package = "go.etcd.io/etcd/server/v3", to = "/etcd" },\n'
        '  { module = "tool", package = "example.com/tool/cmd/t", to = "/t" },\n]\n',
    )

    catalog = load_catalog(path, tmp_path)

    assert catalog.go is None
    assert catalog.go_modules["tool"].link_vars == (("main.version", "v1.0.0"),)
    assert catalog.go_modules["tool"].tags == ("netgo",)
    assert catalog.go_modules["etcd"].replace_local == "v3.7.0"
    assert [b.module for b in catalog.layers["base"].go_builds] == ["etcd", "tool"]


@pytest.mark.parametrize(
    ("go_build", "message"),
    [
        (
            '{ module = "nope", package = "example.com/tool/cmd/t", to = "/t" }',
            "no Go module 'nope'",
        ),
        (
            '{ module = "tool", package = "example.com/tool/cmd/u", to = "/t" }',
            r"not in go\.tool\.packages",
        ),
        # A catalog of named modules has no unnamed one.
        ('{ package = "example.com/tool/cmd/t", to = "/t" }', "no Go module ''"),
    ],
)
def test_go_builds_must_name_a_declared_module_and_package(
    tmp_path: Path, go_build: str, message: str
) -> None:
    path = write(
        tmp_path,
        '[go.tool]\nmodule = "example.com/tool"\nversion = "v1.0.0"\n'
        'packages = ["example.com/tool/cmd/t"]\n\n'
        f'[layers.base]\ncomment = "x"\ngo_build = [{go_build}]\n',
    )

    with pytest.raises(BuildError, match=message):
        load_catalog(path, tmp_path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[go.tool.link_vars]\n"main.v" = "a b"\n', "link_vars"),
        ('[go.tool.link_vars]\nnodot = "x"\n', "link_vars"),
        ('replace_local = "latest"\n', "replace_local"),
        ('tagz = ["x"]\n', "tagz"),
    ],
)
def test_bad_go_module_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    settings, _, tables = extra.partition("[")
    text = (
        '[go.tool]\nmodule = "example.com/tool"\nversion = "v1.0.0"\n'
        f'packages = ["example.com/tool"]\n{settings}'
        + (f"[{tables}" if tables else "")
        + '\n[layers.base]\ncomment = "x"\n'
    )

    with pytest.raises(BuildError, match=message):
        load_catalog(write(tmp_path, text), tmp_path)


def test_replace_local_pins_every_local_replace_to_the_version() -> None:
    module = GoModule(
        "go.etcd.io/etcd/server/v3",
        "v3.7.0",
        ("go.etcd.io/etcd/server/v3",),
        replace_local="v3.7.0",
    )

    go_mod = wrapper_go_mod(module, ETCD_GO_MOD)

    assert "require go.etcd.io/etcd/server/v3 v3.7.0\n" in go_mod
    assert "\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.7.0\n" in go_mod
    assert "\tgo.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 v3.7.0\n" in go_mod
    assert "\texample.com/fork => example.com/fork v3.7.0\n" in go_mod
    assert "../" not in go_mod and "./third_party" not in go_mod


def test_replace_local_without_local_replaces_is_an_error() -> None:
    module = GoModule("example.com/t", "v1.0.0", ("example.com/t",), replace_local="v1.0.0")

    with pytest.raises(BuildError, match="no local replace"):
        wrapper_go_mod(module, "module example.com/t\n\ngo 1.22\n")


def test_tags_and_version_stamps_reach_the_link_flags_and_the_stamp() -> None:
    plain = GoModule("example.com/t", "v1.0.0", ("example.com/t",))
    stamped = GoModule(
        "example.com/t", "v1.0.0", ("example.com/t",), tags=("a", "b"), link_vars=(("main.V", "1"),)
    )

    assert link_flags(plain) == "-s -w"
    assert link_flags(stamped) == "-s -w -X main.V=1"
    assert " -tags=a,b " in build_stamp(stamped, "example.com/t", "go1.26.8")
    assert build_stamp(plain, "example.com/t", "go1.26.8") != build_stamp(
        stamped, "example.com/t", "go1.26.8"
    )


def test_binary_and_wrapper_names_keep_modules_apart() -> None:
    etcd = GoModule("go.etcd.io/etcd/server/v3", "v3.7.0", ("go.etcd.io/etcd/server/v3",))
    etcdctl = GoModule("go.etcd.io/etcd/etcdctl/v3", "v3.7.0", ("go.etcd.io/etcd/etcdctl/v3",))
    agnhost = GoModule("k8s.io/kubernetes", "v1.37.2", ("k8s.io/kubernetes/test/images/agnhost",))
    control = GoModule("k8s.io/kubernetes", "v1.37.2", ("k8s.io/kubernetes/cmd/kube-apiserver",))

    assert binary_name(etcd, etcd.packages[0]) == "server-v3@v3.7.0"
    assert binary_name(etcdctl, etcdctl.packages[0]) == "etcdctl-v3@v3.7.0"
    assert binary_name(agnhost, agnhost.packages[0]) == "agnhost@v1.37.2"
    # Two catalogs building other packages of one module keep separate wrappers (go.sum).
    assert wrapper_name(agnhost) != wrapper_name(control)
    assert wrapper_name(agnhost).startswith("k8s.io_kubernetes@v1.37.2-")


# --- layers: directory copies, concatenated bundles, capabilities --------------------------------


def test_copying_a_directory_takes_the_tree_with_links_and_library_needs(tmp_path: Path) -> None:
    libdir = f"/usr/lib/{TRIPLET}"
    packages = {
        "ext": fake_package(
            tmp_path,
            "ext",
            {
                f"{libdir}/xtables/libxt_foo.so": make_elf64(None, ["libbar.so.1"]),
                f"{libdir}/xtables/libxt_FOO.so": "libxt_foo.so",
                f"{libdir}/xtables/sub/data": b"d",
            },
        ),
        "libbar1": fake_package(
            tmp_path, "libbar1", {f"{libdir}/libbar.so.1": make_elf64(None, [])}
        ),
    }
    layer = recipe(
        packages=("ext",),
        copies=(CopySpec("ext", "/usr/lib/{triplet}/xtables", "/usr/lib/{triplet}/xtables", None),),
    )

    tree = build_layer(layer, {}, packages, TRIPLET)

    assert tree.entries[f"{libdir}/xtables"].kind == "dir"
    assert tree.entries[f"{libdir}/xtables/libxt_foo.so"].kind == "file"
    assert tree.entries[f"{libdir}/xtables/libxt_FOO.so"].target == "libxt_foo.so"
    assert tree.entries[f"{libdir}/xtables/sub/data"].content() == b"d"
    # libxt_foo.so is dlopened; what it needs comes along.
    assert f"{libdir}/libbar.so.1" in tree.entries


def test_concat_joins_the_certificates_in_path_order(tmp_path: Path) -> None:
    packages = {
        "ca": fake_package(
            tmp_path,
            "ca",
            {
                "/usr/share/ca/b/Two.crt": b"TWO\n",
                "/usr/share/ca/a/One.crt": b"ONE",
                "/usr/share/ca/a/README": b"not a cert",
            },
        )
    }
    layer = recipe(
        packages=("ca",), concat=(ConcatSpec("ca", "/usr/share/ca", ".crt", "/etc/ssl/bundle.crt"),)
    )

    tree = build_layer(layer, {}, packages, TRIPLET)

    assert tree.entries["/etc/ssl/bundle.crt"].content() == b"ONE\nTWO\n"
    assert tree.entries["/etc/ssl/bundle.crt"].mode == 0o644


def test_concat_of_nothing_is_an_error(tmp_path: Path) -> None:
    packages = {"ca": fake_package(tmp_path, "ca", {"/usr/share/ca/README": b"x"})}
    layer = recipe(packages=("ca",), concat=(ConcatSpec("ca", "/usr/share/ca", ".crt", "/b"),))

    with pytest.raises(BuildError, match=r"no \*\.crt"):
        build_layer(layer, {}, packages, TRIPLET)


def test_file_capabilities_are_setcaps_bytes() -> None:
    # `setcap cap_net_bind_service+ep` writes revision 2 with the effective flag and bit 10.
    value = file_capabilities(("cap_net_bind_service",))

    magic, permitted, inheritable, permitted_hi, inheritable_hi = struct.unpack("<5I", value)
    assert magic == 0x02000001
    assert (permitted, inheritable, permitted_hi, inheritable_hi) == (1 << 10, 0, 0, 0)


class OneBinary:
    """What build_layer asks of a GoBuilder."""

    def __init__(self, root: Path) -> None:
        self.module = GoModule("example.com/dns", "v1.0.0", ("example.com/dns",), name="dns")
        self.path = root / "dns"
        self.path.write_bytes(make_elf64(None, []))

    def go_version(self) -> str:
        return "go1.26.8"

    def binary(self, package: str) -> GoBinary:
        return GoBinary(package, self.path, "stamp")


def test_a_capability_on_a_go_program_reaches_the_tar_as_an_xattr(tmp_path: Path) -> None:
    layer = recipe(
        go_builds=(GoBuildSpec("example.com/dns", "/coredns", None, "dns"),),
        paths=(PathSpec("/coredns", None, None, None, None, "", "", ("cap_net_bind_service",)),),
    )

    tree = build_layer(layer, {}, {}, TRIPLET, go={"dns": OneBinary(tmp_path)})  # type: ignore[dict-item]

    with tarfile.open(fileobj=BytesIO(layer_tar(tree))) as tar:
        member = tar.getmember("coredns")
        # Read back as cri-py's unpacker does (PAX, surrogateescape): setcap's exact bytes.
        raw = member.pax_headers["SCHILY.xattr.security.capability"]
        assert raw.encode("utf-8", "surrogateescape") == file_capabilities(
            ("cap_net_bind_service",)
        )
        assert member.mode == 0o755


def test_a_capability_on_a_directory_is_refused() -> None:
    layer = recipe(
        paths=(
            PathSpec("/d", "dir", None, None, None, "", ""),
            PathSpec("/d", None, None, None, None, "", "", ("cap_net_raw",)),
        )
    )

    with pytest.raises(BuildError, match="capabilities on /d"):
        build_layer(layer, {}, {}, TRIPLET)


def test_catalog_refuses_an_unknown_capability(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[layers.base]\ncomment = "x"\n'
        'paths = [{ path = "/x", type = "file", capabilities = ["cap_sys_admin"] }]\n',
    )

    with pytest.raises(BuildError, match="unknown capabilities"):
        load_catalog(path, tmp_path)
