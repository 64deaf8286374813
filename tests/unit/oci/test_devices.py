from __future__ import annotations

import pytest

from cri_py.oci.cgroups import Write
from cri_py.oci.devices import v1_device_rule, v1_device_writes
from cri_py.spec.devices import DEFAULT_RULES


def test_rules_become_kernel_syntax_with_wildcards() -> None:
    assert v1_device_rule({"allow": False, "access": "rwm"}) == "a *:* rwm"
    assert v1_device_rule({"type": "c", "major": 136, "access": "rwm"}) == "c 136:* rwm"
    assert v1_device_rule({"type": "b", "major": 8, "minor": 0, "access": "r"}) == "b 8:0 r"
    assert v1_device_rule({"type": "c", "access": "m"}) == "c *:* m"


def test_default_rules_deny_everything_first_then_allow() -> None:
    writes = v1_device_writes(DEFAULT_RULES)
    assert writes[0] == Write("devices", "devices.deny", "a *:* rwm")
    assert Write("devices", "devices.allow", "c 1:3 rwm") in writes
    assert all(w.file == "devices.allow" for w in writes[1:])


@pytest.mark.parametrize("rule", [{"type": "x"}, {"type": "c", "access": "rwx"}])
def test_malformed_rules_are_refused(rule: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        v1_device_rule(rule)
