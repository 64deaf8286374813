from __future__ import annotations

from cri_py.oci.capabilities import (
    CAP_SYS_ADMIN,
    CAPABILITY_NUMBERS,
    CapabilitySets,
    before_exec,
    sets_for_user,
)

KILL = CAPABILITY_NUMBERS["CAP_KILL"]
CHOWN = CAPABILITY_NUMBERS["CAP_CHOWN"]
NET_BIND = CAPABILITY_NUMBERS["CAP_NET_BIND_SERVICE"]
SYS_RESOURCE = CAPABILITY_NUMBERS["CAP_SYS_RESOURCE"]


def _sets(*, ambient: frozenset[int] = frozenset()) -> CapabilitySets:
    every = frozenset({KILL, CHOWN}) | ambient
    return CapabilitySets(every, every, every, ambient, ambient)


def test_from_spec_reads_names_as_bits() -> None:
    sets = CapabilitySets.from_spec({"bounding": ["CAP_CHOWN", "CAP_KILL"]})
    assert sets.bounding == {0, 5} and sets.effective == frozenset()


def test_root_keeps_the_spec_sets() -> None:
    assert sets_for_user(_sets(), 0) == _sets()


def test_non_root_has_no_effective_capabilities_without_ambient() -> None:
    result = sets_for_user(_sets(), 1000)
    assert result.effective == result.ambient == result.inheritable == frozenset()
    assert result.bounding == {KILL, CHOWN}
    # Permitted up to execve (the ceiling no_new_privs puts on a file's capabilities).
    assert result.permitted == {KILL, CHOWN}


def test_non_root_permitted_stays_within_the_bounding_set() -> None:
    sets = CapabilitySets(
        bounding=frozenset({KILL}), effective=frozenset(), permitted=frozenset({KILL, CHOWN})
    )
    assert sets_for_user(sets, 1000).permitted == {KILL}


def test_non_root_keeps_its_ambient_capabilities() -> None:
    result = sets_for_user(_sets(ambient=frozenset({NET_BIND})), 1000)
    assert result.effective == result.ambient == {NET_BIND}
    assert result.inheritable == {NET_BIND}
    assert result.permitted == {KILL, CHOWN, NET_BIND}


def test_before_exec_keeps_sys_admin_for_the_filter_and_stays_within_what_is_held() -> None:
    held = {KILL, CHOWN, CAP_SYS_ADMIN}
    wanted = CapabilitySets(*(frozenset({KILL, SYS_RESOURCE}),) * 3)
    result = before_exec(wanted, {CAP_SYS_ADMIN}, held)
    assert result.effective == result.permitted == {KILL, CAP_SYS_ADMIN}
    assert result.bounding == {KILL}  # SYS_RESOURCE is not ours to give
