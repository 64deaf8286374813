from pathlib import Path

import pytest
from imagelab.catalog import Reference, load_catalog
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
