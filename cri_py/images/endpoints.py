"""Where a reference is fetched from, and as whom: the endpoints to try (the registry host's
mirrors, then the host), their TLS settings and credentials, how an auth challenge reads, and
how failures at every endpoint combine into one CRI error.

Pure: values in, values out. The HTTP, tokens and verification are `registry`'s.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cri_py.config import RegistryHost
from cri_py.errors import CriError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cri_py.images.reference import Reference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, from the CRI AuthConfig or the config file (never logged)."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    # An OAuth2 refresh token, exchanged at the token endpoint (Docker's "identitytoken").
    identity_token: str = field(default="", repr=False)
    # A bearer token sent as is.
    registry_token: str = field(default="", repr=False)

    @classmethod
    def create(
        cls,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
    ) -> Credentials:
        """Builds credentials; `auth` is base64 `user:password` (Docker config.json style) and
        fills username/password when they are not given."""
        if auth and not username:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
                raise InvalidArgument("auth: not base64 of 'username:password'") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth: decoded value has no ':' between user and password")
        if registry_token and not (registry_token.isascii() and registry_token.isprintable()):
            # It is sent as is in an HTTP header.
            raise InvalidArgument("registry_token: must be printable ASCII")
        return cls(username, password, identity_token, registry_token)

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token or self.registry_token)

    def fingerprint(self) -> str:
        """A stable, non-reversible key for caches and pull sharing."""
        material = "\0".join(
            (self.username, self.password, self.identity_token, self.registry_token)
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16] if self else ""


@dataclass(frozen=True)
class Endpoint:
    """One place a repository can be fetched from: a mirror or the registry host itself."""

    base_url: str  # scheme://host[:port], no trailing slash
    prefix: str  # a repository prefix on this endpoint (mirrors only), no slashes around
    mirror: bool
    verify: bool | str  # False: skip TLS verification; a str: a CA file
    credentials: Credentials = field(default_factory=Credentials, repr=False)

    def repository(self, ref: Reference) -> str:
        return f"{self.prefix}/{ref.path}" if self.prefix else ref.path

    def url(self, ref: Reference, kind: str, obj: str) -> str:
        return f"{self.base_url}/v2/{self.repository(ref)}/{kind}/{obj}"

    def __str__(self) -> str:
        return f"{self.base_url}/{self.prefix}" if self.prefix else self.base_url


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoints_for(
    ref: Reference,
    registries: Mapping[str, RegistryHost],
    request_credentials: Credentials | None = None,
) -> tuple[Endpoint, ...]:
    """The endpoints to try for `ref`, in order: its host's mirrors, then the host itself.

    Pure. Credentials from the CRI request (kubelet picks them for the image's registry) go to
    the host only, never to a mirror; a mirror gets the static credentials of a `registries`
    entry keyed by its own host:port, if any. Loopback hosts are plain HTTP (as Docker treats
    127.0.0.0/8 as insecure), and so is a host configured with `plain_http`.
    """
    host = registries.get(ref.domain) or RegistryHost()
    verify: bool | str = host.ca_file or not host.insecure_skip_verify
    endpoints: list[Endpoint] = []
    for mirror in host.mirrors:
        url = urlsplit(mirror)
        own = registries.get(url.netloc) or RegistryHost()
        endpoints.append(
            Endpoint(
                base_url=f"{url.scheme}://{url.netloc}",
                prefix=url.path.strip("/"),
                mirror=True,
                verify=(own.ca_file or not own.insecure_skip_verify)
                if url.netloc in registries
                else verify,
                credentials=_static_credentials(own),
            )
        )
    api_host = DOCKER_HUB_API if ref.domain == DOCKER_HUB else ref.domain
    scheme = "http" if host.plain_http or is_loopback(ref.domain) else "https"
    endpoints.append(
        Endpoint(
            base_url=f"{scheme}://{api_host}",
            prefix="",
            mirror=False,
            verify=verify,
            credentials=request_credentials or _static_credentials(host),
        )
    )
    return tuple(endpoints)


def _static_credentials(host: RegistryHost) -> Credentials:
    return Credentials.create(
        username=host.username,
        password=host.password,
        auth=host.auth,
        identity_token=host.identity_token,
    )


# --- errors from one endpoint, and how a set of them becomes one CRI error ----------------------


class EndpointError(Exception):
    """A failure of one endpoint; `kind` decides what the caller is told if all fail."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "not_found" | "auth" | "invalid" | "unavailable"


def combine_errors(what: str, errors: Sequence[tuple[Endpoint, EndpointError]]) -> CriError:
    """One CRI error for a fetch that failed everywhere, naming every endpoint's reason."""
    detail = "; ".join(f"{endpoint}: {error}" for endpoint, error in errors)
    kinds = {error.kind for _, error in errors}
    message = f"{what}: {detail}"
    if kinds == {"not_found"}:
        return NotFound(message)
    if "invalid" in kinds or "auth" in kinds:
        return FailedPrecondition(message)
    return Unavailable(message)


# --- authentication ---------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer" or "basic"
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parses `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {}
    for key, value in _CHALLENGE_PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


def basic_authorization(credentials: Credentials) -> str:
    """The `Authorization` header value for basic auth with `credentials`."""
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    return f"Basic {token}"
