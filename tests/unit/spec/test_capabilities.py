from __future__ import annotations

import pytest

from cri_py.errors import InvalidArgument
from cri_py.spec.capabilities import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    capability_name,
    container_capabilities,
)


def test_default_set_is_the_classic_fourteen() -> None:
    caps = container_capabilities((), ())
    assert set(caps["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert len(DEFAULT_CAPABILITIES) == 14
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["inheritable"] == caps["ambient"] == []
    assert "CAP_SYS_ADMIN" not in caps["bounding"]


@pytest.mark.parametrize("name", ["net_admin", "NET_ADMIN", "CAP_NET_ADMIN", " cap_net_admin "])
def test_names_with_or_without_prefix(name: str) -> None:
    assert capability_name(name) == "CAP_NET_ADMIN"
    assert "CAP_NET_ADMIN" in container_capabilities((name,), ())["effective"]


def test_drop_removes_from_every_set() -> None:
    caps = container_capabilities((), ("NET_RAW",))
    assert "CAP_NET_RAW" not in caps["bounding"] + caps["effective"] + caps["permitted"]


def test_add_all_then_drop_one() -> None:
    caps = container_capabilities(("ALL",), ("CHOWN",))
    assert set(caps["bounding"]) == set(ALL_CAPABILITIES) - {"CAP_CHOWN"}


def test_drop_all_then_add_one() -> None:
    assert container_capabilities(("KILL",), ("ALL",))["bounding"] == ["CAP_KILL"]
    assert container_capabilities((), ("all",))["bounding"] == []


def test_sets_are_in_kernel_bit_order() -> None:
    caps = container_capabilities(("SYS_ADMIN", "BPF"), ())
    assert caps["bounding"] == sorted(caps["bounding"], key=ALL_CAPABILITIES.index)


def test_ambient_capabilities_are_in_every_set() -> None:
    caps = container_capabilities((), ("ALL",), ambient=("NET_BIND_SERVICE",))
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        assert caps[key] == ["CAP_NET_BIND_SERVICE"]


def test_privileged_gets_every_capability_whatever_is_dropped() -> None:
    caps = container_capabilities((), ("ALL",), privileged=True)
    assert caps["bounding"] == list(ALL_CAPABILITIES)


def test_unknown_capability_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="CAP_BOGUS"):
        container_capabilities(("CAP_BOGUS",), ())
