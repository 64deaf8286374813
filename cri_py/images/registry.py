"""The OCI distribution client: talking to the endpoints `endpoints` lists, and fetching.

Owns HTTP (httpx), TLS clients per endpoint setting, answering auth challenges (bearer tokens,
cached; basic) and verification of what comes over the wire: manifests are checked against
their digest before they are parsed, blobs are hashed and sized while they stream into the
content store's writer (which refuses to commit a mismatch). Which endpoints and credentials
apply is `endpoints`' (pure); what to fetch, and in which order, is the puller's business;
where bytes land is the store's.

httpx is imported on the first request, not with this module: with its dependencies it is ~5-10
MiB of the daemon's memory, which a node that pulls nothing does not need (the first pull pays
its import, a few tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit

from cri_py.config import ImagesConfig, RegistryHost
from cri_py.errors import CriError
from cri_py.images.endpoints import (
    Challenge,
    Credentials,
    Endpoint,
    EndpointError,
    basic_authorization,
    combine_errors,
    endpoints_for,
    parse_challenge,
)
from cri_py.images.manifest import ACCEPTED_TYPES, MAX_MANIFEST_BYTES, Descriptor
from cri_py.images.reference import Reference
from cri_py.log import get_logger

if TYPE_CHECKING:
    import httpx

# httpx's package imports its command line client (rich, click, pygments: ~5 MiB and ~50 ms more
# for the first pull) whenever those happen to be installed, as in a dev venv. The daemon never
# runs it; marked absent, it is skipped by httpx's own fallback for when they are missing.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

log = get_logger("cri_py.images.registry")

CONNECT_TIMEOUT_SECONDS = 30.0
# Docker's token spec: a token without `expires_in` lives 60 s; renew a little early.
TOKEN_TTL_SECONDS = 60.0
TOKEN_RENEW_MARGIN_SECONDS = 5.0
USER_AGENT = "cri-py"

_T = TypeVar("_T")


@dataclass
class _CachedAuth:
    header: str
    expires: float


class Sink(Protocol):
    """Where a blob's bytes go (the content store's writer): it hashes and sizes as it goes."""

    def write(self, data: bytes) -> None: ...


ProgressCallback = Callable[[int], None]


class RegistryClient:
    """Fetches manifests and blobs for references, trying each endpoint in order.

    `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """

    def __init__(
        self,
        registries: Mapping[str, RegistryHost],
        images: ImagesConfig,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._registries = registries
        self._progress_timeout = images.progress_timeout_seconds
        self._transport = transport
        self._clients: dict[bool | str, httpx.AsyncClient] = {}
        self._auth: dict[tuple[str, str, str], _CachedAuth] = {}

    def set_registries(self, registries: Mapping[str, RegistryHost]) -> None:
        """New mirrors and credentials (a config reload); fetches under way keep their
        endpoints, cached tokens stay keyed by the credentials they came from."""
        self._registries = registries

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def endpoints(self, ref: Reference, credentials: Credentials | None) -> tuple[Endpoint, ...]:
        return endpoints_for(ref, self._registries, credentials)

    def _client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        client = self._clients.get(endpoint.verify)
        if client is None:
            import httpx

            verify: ssl.SSLContext | bool
            if isinstance(endpoint.verify, str):
                verify = ssl.create_default_context(cafile=endpoint.verify)
            else:
                verify = endpoint.verify
            client = httpx.AsyncClient(
                verify=verify,
                transport=self._transport,
                follow_redirects=True,  # blob storage redirects; httpx drops auth cross-origin
                timeout=httpx.Timeout(
                    CONNECT_TIMEOUT_SECONDS,
                    connect=CONNECT_TIMEOUT_SECONDS,
                    read=self._progress_timeout,
                ),
                headers={"User-Agent": USER_AGENT},
            )
            self._clients[endpoint.verify] = client
        return client

    # -- requests with authentication --

    def _auth_key(self, endpoint: Endpoint, ref: Reference) -> tuple[str, str, str]:
        return (endpoint.base_url, endpoint.repository(ref), endpoint.credentials.fingerprint())

    async def _send(
        self, endpoint: Endpoint, ref: Reference, url: str, headers: Mapping[str, str]
    ) -> httpx.Response:
        """GET `url` as a stream, answering one auth challenge; the caller closes the response."""
        import httpx

        client = self._client(endpoint)
        key = self._auth_key(endpoint, ref)
        request_headers = dict(headers)
        cached = self._auth.get(key)
        if endpoint.credentials.registry_token:
            request_headers["Authorization"] = f"Bearer {endpoint.credentials.registry_token}"
        elif cached is not None and cached.expires > time.monotonic():
            request_headers["Authorization"] = cached.header
        try:
            response = await client.send(
                client.build_request("GET", url, headers=request_headers), stream=True
            )
            if response.status_code != 401 or endpoint.credentials.registry_token:
                return response
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            await response.aclose()
            header, ttl = await self._answer(client, endpoint, ref, challenge)
            self._auth[key] = _CachedAuth(
                header, time.monotonic() + max(ttl - TOKEN_RENEW_MARGIN_SECONDS, 1.0)
            )
            request_headers["Authorization"] = header
            return await client.send(
                client.build_request("GET", url, headers=request_headers), stream=True
            )
        except httpx.TimeoutException as e:
            raise EndpointError("unavailable", f"timed out: {type(e).__name__}") from None
        except httpx.TransportError as e:
            raise EndpointError("unavailable", f"cannot connect: {e or type(e).__name__}") from None

    async def _answer(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        ref: Reference,
        challenge: Challenge | None,
    ) -> tuple[str, float]:
        """The Authorization header that answers `challenge`, and how long it stays good."""
        credentials = endpoint.credentials
        if challenge is None:
            raise EndpointError("auth", "401 Unauthorized without a WWW-Authenticate challenge")
        if challenge.scheme == "basic":
            if not credentials.username:
                raise EndpointError("auth", "registry wants basic auth and no credentials given")
            return basic_authorization(credentials), TOKEN_TTL_SECONDS
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise EndpointError("auth", f"unsupported auth challenge {challenge.scheme!r}")
        realm = challenge.params["realm"]
        realm_scheme = urlsplit(realm).scheme
        if realm_scheme not in ("http", "https"):
            raise EndpointError("auth", f"token realm {realm!r} is not an http(s) URL")
        scope = challenge.params.get("scope") or f"repository:{endpoint.repository(ref)}:pull"
        service = challenge.params.get("service", "")
        # The realm is the registry's word, and any host: credentials (a password, an identity
        # token) never go to one in clear text. The token is asked for anonymously instead,
        # which is enough for public images; a private one then fails, saying why.
        withheld = realm_scheme == "http" and bool(
            credentials.username or credentials.identity_token
        )
        if withheld:
            log.warning("credentials withheld from a plain-http token realm", realm=realm)
            credentials = Credentials()
        if credentials.identity_token:
            response = await client.post(
                realm,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": credentials.identity_token,
                    "service": service,
                    "scope": scope,
                    "client_id": USER_AGENT,
                },
            )
        else:
            params = {"scope": scope}
            if service:
                params["service"] = service
            headers = (
                {"Authorization": basic_authorization(credentials)} if credentials.username else {}
            )
            response = await client.get(realm, params=params, headers=headers)
        if response.status_code in (401, 403) and withheld:
            raise EndpointError(
                "auth",
                f"token endpoint {realm} refused an anonymous request ({response.status_code}); "
                "credentials are never sent to a plain-http token realm",
            )
        if response.status_code in (401, 403):
            raise EndpointError(
                "auth", f"token endpoint refused the credentials ({response.status_code})"
            )
        if response.status_code != 200:
            raise EndpointError("unavailable", f"token endpoint answered {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = body.get("expires_in")
        except (ValueError, AttributeError):
            token, expires_in = None, None
        if not isinstance(token, str) or not token:
            raise EndpointError("auth", "token endpoint answered without a token")
        ttl = TOKEN_TTL_SECONDS
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            ttl = max(float(expires_in), TOKEN_TTL_SECONDS)
        return f"Bearer {token}", ttl

    @staticmethod
    def _status_error(response: httpx.Response, what: str) -> EndpointError:
        code = response.status_code
        if code == 404:
            return EndpointError("not_found", f"{what} not found (404)")
        if code in (401, 403):
            return EndpointError("auth", f"{what}: access denied ({code})")
        return EndpointError("unavailable", f"{what}: registry answered {code}")

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body's chunks; fails when no byte arrives for the progress timeout (a stalled
        transfer), never because the whole transfer is slow."""
        import httpx

        iterator = response.aiter_bytes().__aiter__()
        while True:
            try:
                async with asyncio.timeout(self._progress_timeout):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise EndpointError(
                    "unavailable", f"transfer stalled: no data for {self._progress_timeout:g}s"
                ) from None
            except httpx.TimeoutException:
                raise EndpointError(
                    "unavailable", f"transfer stalled: no data for {self._progress_timeout:g}s"
                ) from None
            except httpx.TransportError as e:
                raise EndpointError("unavailable", f"transfer broken: {e!r}") from None
            yield chunk

    async def _try_endpoints(
        self,
        endpoints: Sequence[Endpoint],
        what: str,
        attempt: Callable[[Endpoint], Awaitable[_T]],
    ) -> tuple[Endpoint, _T]:
        errors: list[tuple[Endpoint, EndpointError]] = []
        for endpoint in endpoints:
            try:
                return endpoint, await attempt(endpoint)
            except EndpointError as e:
                log.debug("endpoint failed", what=what, endpoint=str(endpoint), error=str(e))
                errors.append((endpoint, e))
        raise combine_errors(what, errors)

    # -- manifests --

    async def fetch_manifest(
        self, ref: Reference, endpoints: Sequence[Endpoint], digest: str = "", size: int = -1
    ) -> tuple[Endpoint, FetchedManifest]:
        """Fetches the manifest `ref` names (or `digest` in ref's repository), verified.

        With a digest (from the reference or an index), the body must hash to it (and have
        `size` bytes when given); by tag, it must match the registry's Docker-Content-Digest
        when the registry sends one. Returns the endpoint that answered.
        """
        obj = digest or ref.object
        target = replace(ref, tag="", digest=digest) if digest else ref

        async def attempt(endpoint: Endpoint) -> FetchedManifest:
            url = endpoint.url(ref, "manifests", obj)
            response = await self._send(endpoint, ref, url, {"Accept": ", ".join(ACCEPTED_TYPES)})
            try:
                if response.status_code != 200:
                    raise self._status_error(response, f"manifest {target}")
                body = bytearray()
                async for chunk in self._chunks(response):
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise EndpointError(
                            "invalid", f"manifest larger than {MAX_MANIFEST_BYTES} bytes"
                        )
                data = bytes(body)
                expected = target.digest or response.headers.get("Docker-Content-Digest", "")
                actual = _digest_of(data, expected or "sha256:")
                if expected and actual != expected:
                    raise EndpointError(
                        "invalid", f"manifest digest mismatch: expected {expected}, got {actual}"
                    )
                if size >= 0 and len(data) != size:
                    raise EndpointError(
                        "invalid", f"manifest size mismatch: expected {size}, got {len(data)}"
                    )
                content_type = response.headers.get("Content-Type", "")
                return FetchedManifest(data=data, digest=actual, media_type=content_type)
            finally:
                await response.aclose()

        return await self._try_endpoints(endpoints, f"pull {target}", attempt)

    # -- blobs --

    async def fetch_blob(
        self,
        ref: Reference,
        endpoints: Sequence[Endpoint],
        descriptor: Descriptor,
        open_sink: Callable[[], BlobSink],
        progress: ProgressCallback | None = None,
    ) -> Endpoint:
        """Streams a blob into a fresh sink from `open_sink`, trying endpoints in order.

        The sink verifies size and digest on commit; a sink that fails (mismatch, stalled or
        broken transfer) is aborted so nothing unverified is left, and the next endpoint tried.
        """

        async def attempt(endpoint: Endpoint) -> None:
            url = endpoint.url(ref, "blobs", descriptor.digest)
            response = await self._send(endpoint, ref, url, {"Accept-Encoding": "identity"})
            sink = open_sink()
            try:
                if response.status_code != 200:
                    raise self._status_error(response, f"blob {descriptor.digest}")
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != descriptor.size:
                    raise EndpointError(
                        "invalid",
                        f"blob {descriptor.digest}: registry announces {length} bytes, "
                        f"manifest says {descriptor.size}",
                    )
                async for chunk in self._chunks(response):
                    try:
                        sink.write(chunk)
                    except CriError as e:
                        raise EndpointError("invalid", str(e)) from None
                    if progress is not None:
                        progress(len(chunk))
                try:
                    await sink.commit()
                except CriError as e:
                    raise EndpointError("invalid", str(e)) from None
            except BaseException:
                sink.abort()
                raise
            finally:
                await response.aclose()

        endpoint, _ = await self._try_endpoints(
            endpoints, f"blob {descriptor.digest} of {ref}", attempt
        )
        return endpoint


class BlobSink(Sink, Protocol):
    async def commit(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    digest: str
    media_type: str


def _digest_of(data: bytes, like: str) -> str:
    """The digest of `data` with the algorithm of `like` (`sha256:...` / `sha512:...`)."""
    algorithm = like.partition(":")[0] or "sha256"
    if algorithm not in ("sha256", "sha512"):
        raise EndpointError("invalid", f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
