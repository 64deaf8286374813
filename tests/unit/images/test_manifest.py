"""Manifests, indexes and configs parse strictly; the host's platform is picked from an index;
chain IDs and the image user follow the OCI and containerd rules."""

from __future__ import annotations

import json

import pytest

from cri_py.errors import FailedPrecondition
from cri_py.images import manifest as m
from cri_py.model.image import RuntimeConfig

from .fakes import file, make_image, make_index, make_layer, sha256

AMD64 = m.Platform("linux", "amd64")
ARM64 = m.Platform("linux", "arm64", "v8")
ARMV7 = m.Platform("linux", "arm", "v7")


def test_oci_and_docker_manifests_parse() -> None:
    layer = make_layer([file("a", b"x")])
    for docker in (False, True):
        image = make_image([layer], docker=docker)
        parsed = m.parse_manifest(image.manifest)
        assert isinstance(parsed, m.Manifest)
        assert parsed.media_type == (m.DOCKER_MANIFEST if docker else m.OCI_MANIFEST)
        assert parsed.config.digest == image.id
        assert parsed.layers == (m.Descriptor(layer.media_type, layer.digest, len(layer.blob)),)


def test_media_type_from_header_or_shape_when_the_document_has_none() -> None:
    doc = {"schemaVersion": 2, "manifests": []}
    assert isinstance(m.parse_manifest(json.dumps(doc).encode()), m.Index)
    assert isinstance(m.parse_manifest(json.dumps(doc).encode(), m.DOCKER_MANIFEST_LIST), m.Index)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
        (json.dumps({"mediaType": m.OCI_MANIFEST}).encode(), "no layers"),
        (
            json.dumps(
                {
                    "mediaType": m.OCI_MANIFEST,
                    "config": {"digest": "sha256:xyz", "size": 1},
                    "layers": [],
                }
            ).encode(),
            "expected 64 lowercase hex digits",
        ),
        (
            json.dumps(
                {
                    "mediaType": m.OCI_MANIFEST,
                    "config": {"digest": sha256(b""), "size": -1},
                    "layers": [],
                }
            ).encode(),
            "non-negative",
        ),
        (
            json.dumps(
                {
                    "mediaType": m.OCI_MANIFEST,
                    "config": {"digest": sha256(b""), "size": 0},
                    "layers": [{"mediaType": "text/html", "digest": sha256(b""), "size": 0}],
                }
            ).encode(),
            "not an image layer",
        ),
        (b" " * (m.MAX_MANIFEST_BYTES + 1), "more than"),
    ],
)
def test_bad_manifests_are_rejected(document: bytes, reason: str) -> None:
    with pytest.raises(FailedPrecondition, match=reason):
        m.parse_manifest(document)


def _index(*platforms: m.Platform) -> m.Index:
    images = [(p, make_image([make_layer([file(str(p))])], label=str(p))) for p in platforms]
    parsed = m.parse_manifest(make_index(images))
    assert isinstance(parsed, m.Index)
    return parsed


def test_select_platform_picks_the_host() -> None:
    index = _index(m.Platform("linux", "arm64", "v8"), AMD64, m.Platform("windows", "amd64"))
    assert m.select_platform(index, AMD64).platform == AMD64
    assert m.select_platform(index, ARM64).platform == m.Platform("linux", "arm64", "v8")


def test_select_platform_arm64_variant_v8_equals_none() -> None:
    index = _index(m.Platform("linux", "arm64"))
    assert m.select_platform(index, ARM64).platform == m.Platform("linux", "arm64")


def test_select_platform_arm_prefers_the_newest_variant_that_fits() -> None:
    index = _index(m.Platform("linux", "arm", "v5"), m.Platform("linux", "arm", "v6"))
    assert m.select_platform(index, ARMV7).platform == m.Platform("linux", "arm", "v6")
    with pytest.raises(FailedPrecondition):
        m.select_platform(
            _index(m.Platform("linux", "arm", "v8")), m.Platform("linux", "arm", "v6")
        )


def test_select_platform_exact_variant_beats_no_variant_and_first_wins_among_equals() -> None:
    first = _index(AMD64, AMD64)
    assert m.select_platform(first, AMD64) == first.manifests[0]
    index = _index(m.Platform("linux", "arm"), ARMV7)
    assert m.select_platform(index, ARMV7).platform == ARMV7


def test_select_platform_skips_attestations_and_says_what_is_offered() -> None:
    index = m.Index(
        m.OCI_INDEX,
        (
            m.Descriptor("application/vnd.in-toto+json", sha256(b"a"), 1, AMD64),
            m.Descriptor(m.OCI_MANIFEST, sha256(b"b"), 1, m.Platform("linux", "s390x")),
        ),
    )
    with pytest.raises(FailedPrecondition, match=r"linux/amd64.*offered: linux/amd64, linux/s390x"):
        m.select_platform(index, AMD64)


def test_image_config_parses_runtime_fields() -> None:
    layer = make_layer([file("a")])
    image = make_image([layer], user="1002:users", cmd=("echo", "hi"), label="x")
    config = m.parse_image_config(image.config)
    assert config.diff_ids == (layer.diff_id,)
    assert config.platform == AMD64
    assert config.runtime == RuntimeConfig(
        user="1002:users",
        env=("PATH=/bin",),
        cmd=("echo", "hi"),
        working_dir="/",
        stop_signal="SIGTERM",
        exposed_ports=("80/tcp",),
        labels={"label": "x"},
    )


@pytest.mark.parametrize(
    "doc",
    [
        {"rootfs": {"type": "other", "diff_ids": []}},
        {"rootfs": {"type": "layers", "diff_ids": ["nope"]}},
        {"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Env": "PATH=/"}},
    ],
)
def test_bad_image_configs_are_rejected(doc: dict[str, object]) -> None:
    with pytest.raises(FailedPrecondition):
        m.parse_image_config(json.dumps(doc).encode())


def test_layer_count_must_match_diff_ids() -> None:
    layer = make_layer([file("a")])
    image = make_image([layer, layer])
    manifest = m.parse_manifest(make_image([layer]).manifest)
    assert isinstance(manifest, m.Manifest)
    with pytest.raises(FailedPrecondition, match="1 layers but the image config has 2"):
        m.check_layers_match(manifest, m.parse_image_config(image.config))


def test_chain_ids_follow_the_oci_formula() -> None:
    a, b, c = sha256(b"a"), sha256(b"b"), sha256(b"c")
    ab = sha256(f"{a} {b}".encode())
    assert m.chain_ids([a, b, c]) == (a, ab, sha256(f"{ab} {c}".encode()))
    assert m.chain_ids([]) == ()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (None, "")),
        ("1002", (1002, "")),
        ("1003:users", (1003, "")),
        ("www-data", (None, "www-data")),
        ("www-data:users", (None, "www-data")),
        ("0", (0, "")),
    ],
)
def test_user_of_splits_uid_and_username(user: str, expected: tuple[int | None, str]) -> None:
    assert m.user_of(user) == expected
