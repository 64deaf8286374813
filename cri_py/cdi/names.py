"""CDI device names: `vendor/class=name` (the "fully-qualified" name kubelet and DRA send),
their syntax rules, and the device requests a container carries in its annotations
(`cdi.k8s.io/<plugin>_<device ID>: vendor/class=a,vendor/class=b`). Pure.

Rules as the CDI specification states them: a vendor and a class start with a letter, end with
a letter or digit and hold letters, digits, `_`, `-` and `.` in between; a device name starts
and ends with a letter or digit and may also hold `:` in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cri_py.errors import InvalidArgument

ANNOTATION_PREFIX = "cdi.k8s.io/"


class CdiNameError(ValueError):
    """A name that breaks the CDI syntax; the message says which rule."""


@dataclass(frozen=True)
class QualifiedName:
    vendor: str
    device_class: str
    name: str

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.device_class}"

    def __str__(self) -> str:
        return f"{self.vendor}/{self.device_class}={self.name}"


def _is_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_alphanumeric(c: str) -> bool:
    return _is_letter(c) or ("0" <= c <= "9")


def check_vendor_or_class(what: str, value: str) -> None:
    if not value:
        raise CdiNameError(f"empty {what}")
    if not _is_letter(value[0]):
        raise CdiNameError(f"{what} {value!r} must start with a letter")
    if not _is_alphanumeric(value[-1]):
        raise CdiNameError(f"{what} {value!r} must end with a letter or digit")
    for c in value[1:-1]:
        if not (_is_alphanumeric(c) or c in "_-."):
            raise CdiNameError(f"invalid character {c!r} in {what} {value!r}")


def check_device_name(value: str) -> None:
    if not value:
        raise CdiNameError("empty device name")
    if not _is_alphanumeric(value[0]) or not _is_alphanumeric(value[-1]):
        raise CdiNameError(f"device name {value!r} must start and end with a letter or digit")
    for c in value[1:-1]:
        if not (_is_alphanumeric(c) or c in "_-.:"):
            raise CdiNameError(f"invalid character {c!r} in device name {value!r}")


def parse_kind(kind: str) -> tuple[str, str]:
    """A spec's `kind` (`vendor/class`) as (vendor, class)."""
    vendor, slash, device_class = kind.partition("/")
    if not slash:
        raise CdiNameError(f"kind {kind!r} is not vendor/class")
    check_vendor_or_class("vendor", vendor)
    check_vendor_or_class("class", device_class)
    return vendor, device_class


def parse_qualified_name(device: str) -> QualifiedName:
    """`vendor/class=name`, checked; CdiNameError names the rule broken."""
    kind, equals, name = device.partition("=")
    if not equals:
        raise CdiNameError(
            f"{device!r} is not a fully-qualified CDI device name (vendor/class=name)"
        )
    vendor, device_class = parse_kind(kind)
    check_device_name(name)
    return QualifiedName(vendor, device_class, name)


def requested_devices(
    cdi_devices: Iterable[str], annotations: Mapping[str, str]
) -> tuple[QualifiedName, ...]:
    """The devices a container asks for: the CDI annotations' (keys in sorted order, each
    value a comma-separated list) then the CRI's `CDI_devices`, each once, in first-seen order
    (containerd's order). A malformed name is the client's error (InvalidArgument)."""
    names: list[tuple[str, str]] = []
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            names += [(f"annotation {key}", d) for d in annotations[key].split(",")]
    names += [("CDI_devices", d) for d in cdi_devices]
    result: dict[str, QualifiedName] = {}
    for source, device in names:
        try:
            parsed = parse_qualified_name(device)
        except CdiNameError as e:
            raise InvalidArgument(f"CDI device {device!r} in {source}: {e}") from None
        result.setdefault(str(parsed), parsed)
    return tuple(result.values())
