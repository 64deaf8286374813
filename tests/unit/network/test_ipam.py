"""Pod address choice and the persisted allocation table."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_py.errors import ResourceExhausted
from cri_py.network.ipam import Allocations, choose_address, gateway_of


def test_gateway_is_the_first_address_with_the_subnet_prefix() -> None:
    assert str(gateway_of("10.88.0.0/16")) == "10.88.0.1/16"


def test_first_pod_address_skips_network_and_gateway() -> None:
    assert choose_address("10.88.0.0/16", []) == "10.88.0.2"


def test_addresses_go_round_robin_after_the_last_one_given() -> None:
    assert choose_address("10.0.0.0/29", ["10.0.0.2"], last="10.0.0.4") == "10.0.0.5"
    # Wraps past the end (10.0.0.7 is broadcast) to the first free one.
    assert choose_address("10.0.0.0/29", ["10.0.0.2"], last="10.0.0.6") == "10.0.0.3"


def test_full_subnet_is_resource_exhausted() -> None:
    used = [f"10.0.0.{i}" for i in range(2, 7)]
    with pytest.raises(ResourceExhausted, match="no free address"):
        choose_address("10.0.0.0/29", used)


def test_allocations_survive_a_reload_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "allocations.json"
    first = Allocations(path, "10.0.0.0/29")
    a = first.allocate("sandbox-a")
    b = first.allocate("sandbox-b")
    assert a != b
    reloaded = Allocations(path, "10.0.0.0/29")
    assert reloaded.owned() == {a: "sandbox-a", b: "sandbox-b"}
    c = reloaded.allocate("sandbox-c")
    assert c not in (a, b)


def test_allocate_is_idempotent_per_sandbox_and_release_frees(tmp_path: Path) -> None:
    table = Allocations(tmp_path / "a.json", "10.0.0.0/29")
    ip = table.allocate("s")
    assert table.allocate("s") == ip
    assert table.address_of("s") == ip
    table.release("s")
    table.release("s")
    assert table.owned() == {}
    assert Allocations(tmp_path / "a.json", "10.0.0.0/29").owned() == {}
