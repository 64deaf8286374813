"""Endpoints and credentials for a reference (mirrors first, request credentials to the host
only), the auth field of a CRI AuthConfig, and auth challenges: pure, no network."""

from __future__ import annotations

import base64

import pytest

from cri_py.config import RegistryHost
from cri_py.errors import InvalidArgument
from cri_py.images.endpoints import Credentials, Endpoint, endpoints_for, parse_challenge
from cri_py.images.reference import parse_reference

HOST = "registry.test"
REF = parse_reference(f"{HOST}/team/app:v1")


def test_bad_auth_field_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        Credentials.create(auth="%%%")
    with pytest.raises(InvalidArgument):
        Credentials.create(auth=base64.b64encode(b"no-colon").decode())
    # Found by tests/integration/test_fuzz.py: non-ASCII text was a ValueError (INTERNAL).
    with pytest.raises(InvalidArgument):
        Credentials.create(auth="\x80")
    with pytest.raises(InvalidArgument):
        Credentials.create(auth=base64.b64encode(b"\xff:x").decode())
    # A bearer token goes into a header: non-ASCII was a UnicodeEncodeError (INTERNAL).
    with pytest.raises(InvalidArgument, match="registry_token"):
        Credentials.create(registry_token="\x80")
    with pytest.raises(InvalidArgument, match="registry_token"):
        Credentials.create(registry_token="a\r\nX-Injected: 1")


def test_request_credentials_go_to_the_host_only() -> None:
    registries = {
        HOST: RegistryHost(mirrors=("https://mirror.test/p",), username="static", password="s"),
        "mirror.test": RegistryHost(username="m", password="mp", ca_file="/etc/ca.pem"),
    }
    mine = Credentials.create("kubelet", "pw")
    mirror, host = endpoints_for(REF, registries, mine)
    assert mirror == Endpoint(
        "https://mirror.test", "p", True, "/etc/ca.pem", Credentials("m", "mp")
    )
    assert host.credentials == mine and host.base_url == "https://registry.test"
    assert endpoints_for(REF, registries)[1].credentials == Credentials("static", "s")


@pytest.mark.parametrize(
    ("image", "config", "url"),
    [
        ("busybox", RegistryHost(), "https://registry-1.docker.io"),
        ("localhost:5000/a", RegistryHost(), "http://localhost:5000"),
        ("127.0.0.1:5000/a", RegistryHost(), "http://127.0.0.1:5000"),
        ("[::1]:5000/a", RegistryHost(), "http://[::1]:5000"),
        ("registry.test/a", RegistryHost(plain_http=True), "http://registry.test"),
        ("registry.test/a", RegistryHost(insecure_skip_verify=True), "https://registry.test"),
    ],
)
def test_host_endpoint(image: str, config: RegistryHost, url: str) -> None:
    ref = parse_reference(image)
    (endpoint,) = endpoints_for(ref, {ref.domain: config})
    assert endpoint.base_url == url
    assert endpoint.verify is (not config.insecure_skip_verify)


def test_parse_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="x"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None
