from pathlib import Path

import pytest
from imagelab.catalog import ImageRecipe, Reference, load_catalog
from imagelab.environment import BuildError

# Every image reference critest v1.37.0 pulls on Linux/amd64 (pkg/validate, pkg/framework,
# pkg/benchmark defaults), as read from cri-tools' source.
CRITEST_IMAGES = {
    "registry.k8s.io/e2e-test-images/busybox:1.29-2",
    "registry.k8s.io/e2e-test-images/nginx:1.14-2",
    "registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
    "registry.k8s.io/e2e-test-images/nonewprivs:1.3",
    "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
    "gcr.io/k8s-staging-cri-tools/test-image-tag:all",
    "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-3:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
    "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest",
    "public.ecr.aws/docker/library/busybox:1.35.0-glibc",
    "public.ecr.aws/docker/library/busybox:1-uclibc",
    "public.ecr.aws/docker/library/busybox:1",
    "public.ecr.aws/docker/library/busybox:1-glibc",
    "public.ecr.aws/docker/library/busybox:1-musl",
}
DIGEST_PINNED = (
    "gcr.io/k8s-staging-cri-tools/test-image-digest"
    "@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf"
)


def test_reference_keeps_its_name_under_a_host_prefixed_lab_repository() -> None:
    ref = Reference.parse("registry.k8s.io/e2e-test-images/busybox:1.29-2")

    assert ref.lab() == "127.0.0.1:5000/registry.k8s.io/e2e-test-images/busybox:1.29-2"
    assert ref.lab_repository() == "registry.k8s.io/e2e-test-images/busybox"


def test_reference_without_tag_means_latest() -> None:
    assert str(Reference.parse("docker.io/library/busybox")) == "docker.io/library/busybox:latest"


def test_reference_port_in_host_is_not_a_tag() -> None:
    ref = Reference.parse("localhost:5000/team/app")

    assert (ref.host, ref.repository, ref.tag) == ("localhost:5000", "team/app", "latest")


@pytest.mark.parametrize("text", ["busybox:1.29", "library/busybox", DIGEST_PINNED])
def test_reference_rejects_names_without_host_and_digests(text: str) -> None:
    with pytest.raises(BuildError):
        Reference.parse(text)


def test_catalog_covers_every_image_critest_pulls() -> None:
    catalog = load_catalog()
    built = {str(ref) for image in catalog.images for ref in image.refs}

    assert CRITEST_IMAGES - built == set()
    assert [item.ref for item in catalog.unbuildable] == [DIGEST_PINNED]


def test_catalog_user_images_match_critests_expectations() -> None:
    users = {
        str(ref): image.config.get("User") for image in load_catalog().images for ref in image.refs
    }

    # pkg/validate/consts.go: imageUserUID 1002, imageUserUsername "www-data",
    # imageUserUIDGroup 1003, imageUserUsernameGroup "www-data", imagePredefinedGroupUID 1000;
    # images/build: USER 1002, www-data, 1003:1004, www-data:1004.
    prefix = "gcr.io/k8s-staging-cri-tools/"
    assert users[prefix + "test-image-user-uid:latest"] == "1002"
    assert users[prefix + "test-image-user-username:latest"] == "www-data"
    assert users[prefix + "test-image-user-uid-group:latest"] == "1003:1004"
    assert users[prefix + "test-image-user-username-group:latest"] == "www-data:1004"
    assert users[prefix + "test-image-predefined-group:latest"] == "1000"


def test_catalog_same_tags_share_an_image_and_list_images_differ() -> None:
    images = {str(ref): image for image in load_catalog().images for ref in image.refs}
    prefix = "gcr.io/k8s-staging-cri-tools/"

    tags = {id(images[f"{prefix}test-image-tags:{tag}"]) for tag in (1, 2, 3)}
    listed = {images[f"{prefix}test-image-{n}:latest"].layers for n in (1, 2, 3)}

    assert len(tags) == 1
    assert len(listed) == 3


def test_catalog_rejects_an_unknown_key(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[layers.base]\ncomment = "x"\npakages = ["busybox"]\n\n'
        '[[images]]\nrefs = ["docker.io/library/x:1"]\nlayers = ["base"]\nconfig = {}\n'
        'index = true\nupstream = "x"\ncritest = "x"\n'
    )

    with pytest.raises(BuildError, match="pakages"):
        load_catalog(catalog, tmp_path)


def test_catalog_rejects_a_reference_listed_twice(tmp_path: Path) -> None:
    image = (
        '[[images]]\nrefs = ["docker.io/library/x:1"]\nlayers = ["base"]\nconfig = {}\n'
        'index = true\nupstream = "x"\ncritest = "x"\n'
    )
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[layers.base]\ncomment = "x"\n\n' + image + image)

    with pytest.raises(BuildError, match="listed twice"):
        load_catalog(catalog, tmp_path)


# Every image the node e2e suite v1.37.2's NodeConformance focus pulls on Linux/amd64
# (test/utils/image/manifest.go: BusyBox, Agnhost, AgnhostPrev, Nginx, Nonewprivs, NonRoot,
# GlibcDnsTesting, Pause), as read from the k8s.io/kubernetes module.
NODE_E2E_IMAGES = {
    "registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
    "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
    "registry.k8s.io/e2e-test-images/agnhost:2.55",
    "registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
    "registry.k8s.io/e2e-test-images/nonewprivs:1.4",
    "registry.k8s.io/e2e-test-images/nonroot:1.5",
    "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1",
    "registry.k8s.io/pause:3.10.2",
}


def images_by_ref() -> dict[str, ImageRecipe]:
    return {str(ref): image for image in load_catalog().images for ref in image.refs}


def test_catalog_covers_every_image_the_node_e2e_focus_pulls() -> None:
    assert NODE_E2E_IMAGES - set(images_by_ref()) == set()


def test_agnhost_is_built_from_its_source_with_what_specs_exec_in_it() -> None:
    catalog = load_catalog()
    agnhost = images_by_ref()["registry.k8s.io/e2e-test-images/agnhost:2.66.1"]
    layers = [catalog.layers[name] for name in agnhost.layers]
    placed = {copy.to for layer in layers for copy in layer.copies}
    placed |= {build.to for layer in layers for build in layer.go_builds}
    placed |= {item.to for layer in layers for item in layer.module_files}
    links = {spec.path: spec.target for layer in layers for spec in layer.paths if spec.target}
    builds = {build.package: build.to for layer in layers for build in layer.go_builds}

    assert catalog.go is not None and catalog.go.ref() == "k8s.io/kubernetes@v1.37.2"
    assert builds == {"k8s.io/kubernetes/test/images/agnhost": "/agnhost"}
    # container probes run /bin/bash, lifecycle hooks `curl`, HTTPS probes serve /localhost.crt.
    assert {
        "/bin/bash",
        "/usr/bin/curl",
        "/usr/bin/nc",
        "/localhost.crt",
        "/localhost.key",
    } <= placed
    assert {"/usr/bin/dig", "/usr/bin/nslookup"} <= placed
    # The entrypoint-tester specs run /agnhost-2.
    assert links["/agnhost-2"] == "agnhost"
    assert (agnhost.config["Entrypoint"], agnhost.config["Cmd"]) == (["/agnhost"], ["pause"])
    # AgnhostPrev only runs `agnhost pause`: one image under both tags.
    assert images_by_ref()["registry.k8s.io/e2e-test-images/agnhost:2.55"] == agnhost


def test_node_e2e_busybox_is_the_source_build_with_nmeter() -> None:
    catalog = load_catalog()
    busybox = images_by_ref()["registry.k8s.io/e2e-test-images/busybox:1.37.0-2"]
    base = catalog.layers[busybox.layers[0]]

    assert base.busybox_source == base.busybox_applets == "/bin/busybox"
    assert catalog.busybox_source is not None
    assert "nmeter" in catalog.busybox_source.require_applets
    assert "CONFIG_NMETER" in catalog.busybox_source.enable
    # critest's busybox stays Debian's binary package (its exact messages are checked).
    critest = images_by_ref()["registry.k8s.io/e2e-test-images/busybox:1.29-2"]
    assert catalog.layers[critest.layers[0]].busybox_source is None


def test_node_e2e_user_and_setuid_images_match_the_suite() -> None:
    catalog = load_catalog()
    images = images_by_ref()
    nnp = images["registry.k8s.io/e2e-test-images/nonewprivs:1.4"]
    nnp_builds = [build for name in nnp.layers for build in catalog.layers[name].go_builds]

    # security_context.go: runAsNonRoot with the image's user expects uid 1234.
    assert images["registry.k8s.io/e2e-test-images/nonroot:1.5"].config["User"] == "1234"
    assert [(b.package, b.to, b.mode) for b in nnp_builds] == [
        ("k8s.io/kubernetes/test/images/nonewprivs", "/usr/local/bin/nnp", 0o4755)
    ]
    assert nnp.config["Cmd"] == ["nnp"]


MINIMAL_IMAGE = (
    '[[images]]\nrefs = ["docker.io/library/x:1"]\nlayers = ["base"]\nconfig = {}\n'
    'index = true\nupstream = "x"\ncritest = "x"\n'
)


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text + "\n" + MINIMAL_IMAGE)
    return path


def test_catalog_rejects_a_go_build_of_a_package_not_declared(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        '[go]\nmodule = "k8s.io/kubernetes"\nversion = "v1.37.2"\n'
        'packages = ["k8s.io/kubernetes/test/images/agnhost"]\n\n'
        '[layers.base]\ncomment = "x"\n'
        'go_build = [{ package = "k8s.io/kubernetes/cmd/kubelet", to = "/kubelet" }]\n',
    )

    with pytest.raises(BuildError, match=r"not in go\.packages"):
        load_catalog(path, tmp_path)


def test_catalog_rejects_go_packages_outside_the_module(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        '[go]\nmodule = "k8s.io/kubernetes"\nversion = "v1.37.2"\n'
        'packages = ["example.com/other/cmd"]\n\n[layers.base]\ncomment = "x"\n',
    )

    with pytest.raises(BuildError, match="not in the module"):
        load_catalog(path, tmp_path)


def test_catalog_rejects_go_layers_without_a_go_table(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        '[layers.base]\ncomment = "x"\n'
        'module_files = [{ path = "test/images/agnhost/porter/localhost.crt", to = "/c" }]\n',
    )

    with pytest.raises(BuildError, match=r"\[go\]"):
        load_catalog(path, tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dsc_sha256", '"abc"', "64 lowercase hex"),
        ("dsc", '"http://deb.debian.org/busybox.tar.gz"', "URL of a .dsc"),
        ("enable", '["NMETER"]', "CONFIG_"),
    ],
)
def test_catalog_rejects_a_malformed_busybox_source(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    table = {
        "comment": '"x"',
        "dsc": '"http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.35.0-4.dsc"',
        "dsc_sha256": '"' + "0" * 64 + '"',
        "flavour": '"deb"',
        "enable": '["CONFIG_NMETER"]',
        "require_applets": '["nmeter"]',
        field: value,
    }
    text = "[busybox_source]\n" + "".join(f"{key} = {val}\n" for key, val in table.items())
    path = write_catalog(tmp_path, text + '\n[layers.base]\ncomment = "x"\n')

    with pytest.raises(BuildError, match=message):
        load_catalog(path, tmp_path)


def test_catalog_rejects_a_busybox_source_layer_without_the_table(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path, '[layers.base]\ncomment = "x"\nbusybox_source = "/bin/busybox"\n'
    )

    with pytest.raises(BuildError, match=r"\[busybox_source\]"):
        load_catalog(path, tmp_path)
