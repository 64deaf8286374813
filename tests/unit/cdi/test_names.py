from __future__ import annotations

import pytest

from cri_py.cdi.names import CdiNameError, QualifiedName, parse_qualified_name, requested_devices
from cri_py.errors import InvalidArgument


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vendor.com/gpu=0", QualifiedName("vendor.com", "gpu", "0")),
        ("nvidia.com/gpu=GPU-4a3f:mig_1.2", QualifiedName("nvidia.com", "gpu", "GPU-4a3f:mig_1.2")),
        ("a1/b_c.d=x", QualifiedName("a1", "b_c.d", "x")),
    ],
)
def test_fully_qualified_names_parse(name: str, expected: QualifiedName) -> None:
    parsed = parse_qualified_name(name)
    assert parsed == expected
    assert str(parsed) == name
    assert parsed.kind == f"{expected.vendor}/{expected.device_class}"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("gpu0", "not a fully-qualified"),
        ("/dev/gpu0", "not a fully-qualified"),
        ("vendor.com=gpu0", "not vendor/class"),
        ("vendor.com/=x", "empty class"),
        ("1vendor/gpu=x", "must start with a letter"),
        ("vendor-/gpu=x", "must end with a letter or digit"),
        ("ven dor/gpu=x", "invalid character ' '"),
        ("vendor/gpu=", "empty device name"),
        ("vendor/gpu=-x", "must start and end"),
        ("vendor/gpu=a/b", "invalid character '/'"),
        ("vendor/gpu=a=b", "invalid character '='"),
    ],
)
def test_malformed_names_are_refused_with_the_rule(name: str, reason: str) -> None:
    with pytest.raises(CdiNameError, match=reason):
        parse_qualified_name(name)


def test_requested_devices_take_annotations_then_cdi_devices_each_once() -> None:
    annotations = {
        "cdi.k8s.io/zeta_1": "vendor.com/gpu=2",
        "cdi.k8s.io/alpha_0": "vendor.com/gpu=0,vendor.com/gpu=1",
        "other.io/x": "not-a-device",
    }
    names = requested_devices(["vendor.com/gpu=1", "vendor.com/nic=eth"], annotations)
    assert [str(n) for n in names] == [
        "vendor.com/gpu=0",
        "vendor.com/gpu=1",
        "vendor.com/gpu=2",
        "vendor.com/nic=eth",
    ]


def test_a_malformed_request_is_invalid_argument_naming_its_source() -> None:
    with pytest.raises(InvalidArgument, match=r"annotation cdi.k8s.io/p_0"):
        requested_devices([], {"cdi.k8s.io/p_0": "vendor.com/gpu=0,"})
    with pytest.raises(InvalidArgument, match=r"'gpu0' in CDI_devices"):
        requested_devices(["gpu0"], {})


def test_no_request_is_no_device() -> None:
    assert requested_devices([], {"io.kubernetes.x": "y"}) == ()
