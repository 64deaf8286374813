"""Image references: parse and normalise them the way Docker and containerd users expect.

Pure: strings in, frozen values out. `busybox` becomes `docker.io/library/busybox:latest`;
what the registry client does with a reference (mirrors, endpoints) is `registry.py`'s business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cri_py.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
OFFICIAL_PREFIX = "library/"
# The distribution spec's limit on a repository name, domain included.
MAX_NAME_LENGTH = 255

# The grammar of github.com/distribution/reference, which Docker, containerd and kubelet share.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[0-9a-f]+$")


def validate_digest(digest: str) -> str:
    """Returns `digest` when it is `algorithm:hex` with a supported algorithm, else raises."""
    if not _DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidArgument(f"digest {digest!r}: unsupported algorithm {algorithm!r}")
    if len(encoded) != length or not _HEX_RE.match(encoded):
        raise InvalidArgument(f"digest {digest!r}: expected {length} lowercase hex digits")
    return digest


@dataclass(frozen=True)
class Reference:
    """A normalised reference: `domain/path`, plus a tag, a digest, or both."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository name with its domain: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def tagged(self) -> str:
        """`name:tag` (empty when the reference has no tag)."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> str:
        """`name@digest`: the form of a CRI repo digest."""
        return f"{self.name}@{digest}"


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a domain if it has a dot or a port, or is
    `localhost`, or is not lowercase (so that it cannot be a path component)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse_reference(text: str) -> Reference:
    """Parses and normalises an image reference; raises InvalidArgument when malformed.

    A reference with a digest and no tag stays without a tag; one with neither gets `latest`.
    A reference with both keeps both here; `pull_reference` decides what a pull records.
    """
    if not text:
        raise InvalidArgument("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"invalid image reference {text!r}: contains whitespace")
    remainder, at, digest = text.partition("@")
    if at:
        validate_digest(digest)
    # A tag is after the last colon, provided no slash follows it (else it is a port).
    colon = remainder.rfind(":")
    tag = ""
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid image reference {text!r}: bad tag {tag!r}")
    if not remainder:
        raise InvalidArgument(f"invalid image reference {text!r}: no repository name")
    domain, path = _split_domain(remainder)
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid image reference {text!r}: bad domain {domain!r}")
    if not _PATH_RE.match(path):
        reason = "must be lowercase" if path != path.lower() else "bad repository name"
        raise InvalidArgument(f"invalid image reference {text!r}: {reason} {path!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid image reference {text!r}: name longer than {MAX_NAME_LENGTH} characters"
        )
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def pull_reference(text: str) -> Reference:
    """The reference a pull resolves and records: with both a tag and a digest, the digest wins
    and the tag is dropped (containerd's rule: `name:tag@digest` is pinned content, the tag only
    a comment), so the image gets the repo digest and no repo tag."""
    ref = parse_reference(text)
    if ref.tag and ref.digest:
        return Reference(domain=ref.domain, path=ref.path, digest=ref.digest)
    return ref


def parse_image_id(text: str) -> str | None:
    """`sha256:<64 hex>` or a bare 64-hex string as an image ID, else None."""
    if _HEX_RE.match(text) and len(text) == _HEX_LENGTHS["sha256"]:
        return f"sha256:{text}"
    algorithm, sep, encoded = text.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    if sep and length is not None and len(encoded) == length and _HEX_RE.match(encoded):
        return text
    return None


def explicit_tag_or_digest(text: str) -> bool:
    """Whether the user wrote a tag or digest (`busybox:1` yes, `busybox` no, `host:5000/a` no)."""
    remainder, at, _ = text.partition("@")
    return bool(at) or remainder.rfind(":") > remainder.rfind("/")
