"""Image references parse and normalise as Docker, containerd and kubelet users expect."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cri_py.errors import InvalidArgument
from cri_py.images.reference import (
    Reference,
    explicit_tag_or_digest,
    parse_image_id,
    parse_reference,
    pull_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("someone/tool:v2", "docker.io/someone/tool:v2"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        (
            "registry.k8s.io/e2e-test-images/busybox:1.29-2",
            "registry.k8s.io/e2e-test-images/busybox:1.29-2",
        ),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("127.0.0.1:5000/registry.k8s.io/pause:3.10", "127.0.0.1:5000/registry.k8s.io/pause:3.10"),
        ("host:5000/a/b/c", "host:5000/a/b/c:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"gcr.io/x/y:tag@{DIGEST}", f"gcr.io/x/y:tag@{DIGEST}"),
        ("a_b-c__d/f.g---h:T_1.x-y", "docker.io/a_b-c__d/f.g---h:T_1.x-y"),
    ],
)
def test_references_normalise_like_docker(text: str, normalised: str) -> None:
    assert str(parse_reference(text)) == normalised


def test_reference_parts() -> None:
    ref = parse_reference("localhost:5000/team/app:v1")
    assert ref == Reference(domain="localhost:5000", path="team/app", tag="v1")
    assert ref.name == "localhost:5000/team/app"
    assert ref.object == "v1"
    assert ref.tagged() == "localhost:5000/team/app:v1"
    assert ref.with_digest(DIGEST) == f"localhost:5000/team/app@{DIGEST}"


def test_pull_reference_with_tag_and_digest_keeps_only_the_digest() -> None:
    ref = pull_reference(f"gcr.io/x/y:tag@{DIGEST}")
    assert (ref.tag, ref.digest) == ("", DIGEST)
    assert ref.object == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Busybox",  # uppercase path
        "busybox:",  # empty tag
        "busybox:-x",  # tag must start with a word character
        "busybox:" + "x" * 129,
        "busybox@sha256:abc",  # short digest
        "busybox@sha256:" + "AB" * 32,  # uppercase hex
        "busybox@md5:" + "ab" * 16,  # unsupported algorithm
        "a//b",
        "-a/b",
        "a/b/",
        "/a",
        " busybox",
        "busy box",
        "a..b/c",
        "a_b.c/d",  # a dot makes it a domain, and domains have no underscore
        "host:port/x",
        "gcr.io/" + "a" * 250,  # name longer than 255
        ":tag",
    ],
)
def test_malformed_references_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(text)


def test_image_ids() -> None:
    hex64 = "ab" * 32
    assert parse_image_id(hex64) == f"sha256:{hex64}"
    assert parse_image_id(f"sha256:{hex64}") == f"sha256:{hex64}"
    assert parse_image_id("sha512:" + "cd" * 64) == "sha512:" + "cd" * 64
    assert parse_image_id("busybox") is None
    assert parse_image_id("sha256:abc") is None


@pytest.mark.parametrize(
    ("text", "explicit"),
    [("busybox", False), ("busybox:1", True), ("host:5000/a", False), (f"a@{DIGEST}", True)],
)
def test_explicit_tag_or_digest(text: str, explicit: bool) -> None:
    assert explicit_tag_or_digest(text) is explicit


_component = st.from_regex(r"[a-z0-9]{1,5}([._-][a-z0-9]{1,5}){0,2}", fullmatch=True)


@given(
    domain=st.sampled_from(["", "registry.k8s.io/", "localhost:5000/", "gcr.io/"]),
    path=st.lists(_component, min_size=1, max_size=3).map("/".join),
    tag=st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
)
def test_normalising_is_idempotent(domain: str, path: str, tag: str) -> None:
    # Without a domain, a first component with a dot is read as a host (as Docker does), and
    # "0_0.0" is no valid host: such names are rejected, which the next test allows.
    assume(domain or "." not in path.split("/")[0])
    text = domain + path + (f":{tag}" if tag else "")
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert ref.tag == (tag or "latest")


@given(st.text(max_size=40))
def test_any_text_parses_or_is_invalid_argument(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_reference(text)
