"""The distribution client against in-process fake registries: anonymous, bearer and basic
auth, mirrors in order then the host, and verification of everything it fetches."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from cri_py.config import ImagesConfig, RegistryHost
from cri_py.errors import FailedPrecondition, NotFound, Unavailable
from cri_py.images.endpoints import Credentials
from cri_py.images.manifest import Descriptor, Manifest, parse_manifest
from cri_py.images.reference import parse_reference
from cri_py.images.registry import RegistryClient
from cri_py.images.store import ContentStore

from .fakes import Network, Registry, sha256, simple_image

HOST = "registry.test"
REF = parse_reference(f"{HOST}/team/app:v1")


def client(
    network: Network, registries: dict[str, RegistryHost] | None = None, timeout: float = 5.0
) -> RegistryClient:
    return RegistryClient(
        registries or {}, ImagesConfig(progress_timeout_seconds=timeout), network.transport()
    )


async def fetch_all(
    registry_client: RegistryClient, store: ContentStore, creds: Credentials | None = None
) -> None:
    """Manifest, config and layers of REF into `store`."""
    endpoints = registry_client.endpoints(REF, creds)
    _, fetched = await registry_client.fetch_manifest(REF, endpoints)
    manifest = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(manifest, Manifest)
    for descriptor in (manifest.config, *manifest.layers):
        await registry_client.fetch_blob(
            REF,
            endpoints,
            descriptor,
            lambda d=descriptor: store.blob_writer(d.digest, d.size),  # type: ignore[misc]
        )


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "images")


def blobs_in(store: ContentStore) -> set[str]:
    return {f"{d.name}:{p.name}" for d in store.blobs_dir.iterdir() for p in d.iterdir()}


async def test_anonymous_pull_fetches_manifest_and_verified_blobs(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    registry.push("team/app", "v1", image)
    c = client(Network(registry))
    await fetch_all(c, store)
    assert blobs_in(store) == set(image.blobs)
    assert list(store.ingest_dir.iterdir()) == []
    accept = registry.requests[0].headers["Accept"]
    assert "application/vnd.oci.image.index.v1+json" in accept
    assert "application/vnd.docker.distribution.manifest.v2+json" in accept
    await c.aclose()


async def test_bearer_challenge_fetches_one_token_and_reuses_it(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer")
    registry.push("team/app", "v1", simple_image())
    await fetch_all(client(Network(registry)), store)
    assert len(registry.token_requests) == 1
    token_request = registry.token_requests[0]
    assert token_request.url.params["scope"] == "repository:team/app:pull"
    assert token_request.url.params["service"] == HOST
    assert "Authorization" not in token_request.headers  # anonymous token
    assert all(
        r.headers.get("Authorization", "").startswith("Bearer ") for r in registry.requests[1:]
    )


async def test_a_token_the_registry_no_longer_accepts_is_renewed(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer")
    registry.push("team/app", "v1", simple_image())
    c = client(Network(registry))
    await fetch_all(c, store)
    registry.tokens.clear()  # expired or revoked
    _, fetched = await c.fetch_manifest(REF, c.endpoints(REF, None))
    assert fetched.data and len(registry.token_requests) == 2


async def test_bearer_with_credentials_sends_them_to_the_token_endpoint(
    store: ContentStore,
) -> None:
    registry = Registry(HOST, auth="bearer", users={"alice": "secret"})
    registry.push("team/app", "v1", simple_image())
    await fetch_all(client(Network(registry)), store, Credentials.create("alice", "secret"))
    expected = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert registry.token_requests[0].headers["Authorization"] == expected


async def test_bearer_with_wrong_credentials_fails_clearly(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer", users={"alice": "secret"})
    registry.push("team/app", "v1", simple_image())
    with pytest.raises(FailedPrecondition, match="refused the credentials"):
        await fetch_all(client(Network(registry)), store, Credentials.create("alice", "wrong"))


@pytest.mark.parametrize(
    "creds", [Credentials.create("alice", "secret"), Credentials(identity_token="refresh-me")]
)
async def test_credentials_never_go_to_a_plain_http_token_realm(
    store: ContentStore, creds: Credentials
) -> None:
    registry = Registry(HOST, auth="bearer", users={"alice": "secret"})
    registry.realm_scheme = "http"
    registry.push("team/app", "v1", simple_image())
    with pytest.raises(FailedPrecondition, match="never sent to a plain-http token realm"):
        await fetch_all(client(Network(registry)), store, creds)
    (request,) = registry.token_requests  # asked anonymously, once
    assert request.method == "GET" and request.url.scheme == "http"
    assert "Authorization" not in request.headers
    assert b"secret" not in request.content and b"refresh-me" not in request.content
    assert "secret" not in str(request.url) and "refresh-me" not in str(request.url)
    assert blobs_in(store) == set()


async def test_an_anonymous_token_from_a_plain_http_realm_still_pulls(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer")  # public: anyone gets a token
    registry.realm_scheme = "http"
    image = simple_image()
    registry.push("team/app", "v1", image)
    await fetch_all(client(Network(registry)), store, Credentials.create("alice", "secret"))
    assert blobs_in(store) == set(image.blobs)
    assert all("Authorization" not in r.headers for r in registry.token_requests)


async def test_identity_token_is_exchanged_with_a_refresh_grant(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer", users={"alice": "secret"})
    registry.push("team/app", "v1", simple_image())
    await fetch_all(client(Network(registry)), store, Credentials(identity_token="refresh-me"))
    request = registry.token_requests[0]
    assert request.method == "POST"
    assert b"grant_type=refresh_token" in request.content


async def test_registry_token_is_sent_as_bearer(store: ContentStore) -> None:
    registry = Registry(HOST, auth="bearer")
    registry.tokens.add("given")
    registry.push("team/app", "v1", simple_image())
    await fetch_all(client(Network(registry)), store, Credentials(registry_token="given"))
    assert registry.token_requests == []
    assert {r.headers["Authorization"] for r in registry.requests} == {"Bearer given"}


async def test_basic_auth_from_auth_config(store: ContentStore) -> None:
    registry = Registry(HOST, auth="basic", users={"bob": "pw"})
    registry.push("team/app", "v1", simple_image())
    auth = base64.b64encode(b"bob:pw").decode()
    await fetch_all(client(Network(registry)), store, Credentials.create(auth=auth))
    assert blobs_in(store)


async def test_basic_auth_without_credentials_fails_clearly(store: ContentStore) -> None:
    registry = Registry(HOST, auth="basic", users={"bob": "pw"})
    registry.push("team/app", "v1", simple_image())
    with pytest.raises(FailedPrecondition, match="basic auth and no credentials"):
        await fetch_all(client(Network(registry)), store)


async def test_mirrors_are_tried_in_order_then_the_host(store: ContentStore) -> None:
    empty_mirror = Registry("mirror-b.test")
    host = Registry(HOST)
    image = simple_image()
    host.push("team/app", "v1", image)
    network = Network(empty_mirror, host)
    registries = {
        HOST: RegistryHost(mirrors=("http://mirror-a.test", "http://mirror-b.test/registry.test"))
    }
    await fetch_all(client(network, registries), store)
    assert network.refused[0] == "mirror-a.test"
    assert empty_mirror.requests[0].url.path == "/v2/registry.test/team/app/manifests/v1"
    assert host.requests[0].url.path == "/v2/team/app/manifests/v1"
    assert blobs_in(store) == set(image.blobs)


async def test_a_mirror_serves_the_image_under_its_prefix(store: ContentStore) -> None:
    mirror = Registry("127.0.0.1:5000")
    image = simple_image()
    mirror.push(f"{HOST}/team/app", "v1", image)
    network = Network(mirror)
    registries = {HOST: RegistryHost(mirrors=("http://127.0.0.1:5000/registry.test",))}
    await fetch_all(client(network, registries), store)
    assert network.refused == []  # the host itself was never needed
    assert blobs_in(store) == set(image.blobs)


async def test_not_found_everywhere_is_not_found_naming_each_endpoint(store: ContentStore) -> None:
    network = Network(Registry("mirror.test"), Registry(HOST))
    registries = {HOST: RegistryHost(mirrors=("http://mirror.test",))}
    with pytest.raises(NotFound, match=r"http://mirror.test: .*404.*https://registry.test: .*404"):
        await fetch_all(client(network, registries), store)


async def test_unreachable_everywhere_is_unavailable(store: ContentStore) -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        await fetch_all(client(Network()), store)


async def test_blob_with_wrong_digest_is_rejected_and_nothing_stored(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    registry.push("team/app", "v1", image)
    layer = image.layers[0]
    forged = bytearray(layer.blob)
    forged[-1] ^= 0xFF
    registry.tamper[layer.digest] = bytes(forged)
    with pytest.raises(FailedPrecondition, match="blob digest mismatch"):
        await fetch_all(client(Network(registry)), store)
    assert layer.digest not in blobs_in(store)
    assert list(store.ingest_dir.iterdir()) == []


async def test_blob_longer_than_declared_is_rejected(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    registry.push("team/app", "v1", image)
    registry.tamper[image.layers[1].digest] = image.layers[1].blob + b"extra"
    with pytest.raises(FailedPrecondition, match=r"more than the \d+ bytes"):
        await fetch_all(client(Network(registry)), store)
    assert list(store.ingest_dir.iterdir()) == []


async def test_manifest_with_wrong_digest_is_rejected(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    registry.push("team/app", "v1", image)
    other = simple_image("other")
    registry.manifests[("team/app", image.digest)] = (other.manifest, other.media_type)
    ref = parse_reference(f"{HOST}/team/app@{image.digest}")
    c = client(Network(registry))
    with pytest.raises(FailedPrecondition, match="manifest digest mismatch"):
        await c.fetch_manifest(ref, c.endpoints(ref, None))


async def test_a_stalled_transfer_fails_and_a_slow_one_does_not(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    big = image.layers[0]
    registry.push("team/app", "v1", image)
    c = client(Network(registry), timeout=0.3)
    endpoints = c.endpoints(REF, None)
    descriptor = Descriptor(big.media_type, big.digest, len(big.blob))
    registry.stall_after = 0
    with pytest.raises(Unavailable, match=r"stalled: no data for 0\.3s"):
        await c.fetch_blob(
            REF, endpoints, descriptor, lambda: store.blob_writer(big.digest, len(big.blob))
        )
    assert list(store.ingest_dir.iterdir()) == []
    registry.stall_after = None
    registry.chunk_delay = 0.1  # each chunk within the deadline, the whole longer than it
    payload = b"x" * 5 * 1024
    digest = sha256(payload)
    registry.blobs[("team/app", digest)] = payload
    seen: list[int] = []
    await c.fetch_blob(
        REF,
        endpoints,
        Descriptor("x", digest, len(payload)),
        lambda: store.blob_writer(digest, len(payload)),
        seen.append,
    )
    assert sum(seen) == len(payload) and store.has_blob(digest)


async def test_blob_storage_redirect_is_followed(store: ContentStore) -> None:
    registry = Registry(HOST)
    image = simple_image()
    registry.push("team/app", "v1", image)
    storage = Registry("storage.test")
    original = registry.handle

    async def redirecting(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path:
            digest = request.url.path.rsplit("/", 1)[1]
            storage.blobs[("x", digest)] = registry.blobs[("team/app", digest)]
            return httpx.Response(
                307, headers={"Location": f"https://storage.test/v2/x/blobs/{digest}"}
            )
        return await original(request)

    registry.handle = redirecting  # type: ignore[method-assign]
    await fetch_all(client(Network(registry, storage)), store)
    assert blobs_in(store) == set(image.blobs)
