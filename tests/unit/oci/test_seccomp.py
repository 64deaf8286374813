from __future__ import annotations

import pytest

from cri_py.oci import seccomp as s
from cri_py.oci.seccomp import ArgCondition, SeccompError, SeccompRule, seccomp_filter
from cri_py.spec.seccomp_default import BY_CAPABILITY, default_profile

# critest's "block hostname" profile, as a user would write it.
BLOCK_HOSTNAME = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
}


def test_errno_action_defaults_to_eperm() -> None:
    result = seccomp_filter(BLOCK_HOSTNAME)
    assert result.default_action == s.SCMP_ACT_ALLOW
    assert result.rules == (SeccompRule("sethostname", 0x00050001),)


def test_errno_ret_and_architectures_are_translated() -> None:
    result = seccomp_filter(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
        }
    )
    assert result.default_action == 0x00050026
    assert result.architectures == ("x86_64", "x86")
    assert [r.syscall for r in result.rules] == ["read", "write"]


def test_rules_with_the_default_action_are_left_out() -> None:
    profile = {**BLOCK_HOSTNAME, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert seccomp_filter(profile).rules == ()


def test_conditions_on_distinct_arguments_make_one_rule() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "value": 7, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"},
                    {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"},
                ],
            }
        ],
    }
    (rule,) = seccomp_filter(profile).rules
    assert rule.conditions == (ArgCondition(0, 7, 7, 0), ArgCondition(1, 4, 0))


def test_conditions_on_the_same_argument_make_one_rule_each() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                ],
            }
        ],
    }
    rules = seccomp_filter(profile).rules
    assert [r.conditions for r in rules] == [(ArgCondition(0, 4, 0),), (ArgCondition(0, 4, 8),)]


def test_docker_single_name_form_is_accepted() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"name": "chmod", "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    assert seccomp_filter(profile).rules == (SeccompRule("chmod", s.SCMP_ACT_KILL_PROCESS),)


@pytest.mark.parametrize(
    "profile",
    [
        {"defaultAction": "SCMP_ACT_NOTIFY"},
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]},
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["x"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "?"}]}
            ],
        },
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {
                    "names": ["x"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 6, "op": "SCMP_CMP_EQ"}],
                }
            ],
        },
    ],
)
def test_profiles_we_cannot_load_are_refused(profile: dict[str, object]) -> None:
    with pytest.raises(SeccompError):
        seccomp_filter(profile)


def _allowed(profile: dict[str, object]) -> set[str]:
    return {r.syscall for r in seccomp_filter(profile).rules if not r.conditions}


def test_default_profile_allows_the_common_and_blocks_the_dangerous() -> None:
    allowed = _allowed(default_profile({"CAP_CHOWN", "CAP_SETUID"}))
    assert {"read", "write", "openat", "execve", "clone", "futex", "socket"} - allowed == {"clone"}
    for blocked in ("keyctl", "add_key", "request_key", "kexec_load", "init_module",
                    "finit_module", "delete_module", "mount", "umount2", "unshare", "setns",
                    "ptrace", "bpf", "reboot", "swapon", "userfaultfd", "sethostname"):  # fmt: skip
        assert blocked not in allowed


def test_default_profile_restricts_clone_without_sys_admin() -> None:
    rules = seccomp_filter(default_profile(set())).rules
    clone = [r for r in rules if r.syscall == "clone"]
    assert clone and all(r.conditions[0].op == 7 for r in clone)
    (clone3,) = [r for r in rules if r.syscall == "clone3"]
    assert clone3.action == 0x00050000 | 38  # ENOSYS: callers fall back to clone


def test_default_profile_follows_the_capabilities() -> None:
    allowed = _allowed(default_profile({"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}))
    assert {"mount", "unshare", "setns", "sethostname", "clone", "clone3", "ptrace"} <= allowed
    assert "init_module" not in allowed


def test_default_profile_blocks_io_uring_even_with_every_capability() -> None:
    io_uring = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
    assert not io_uring & _allowed(default_profile(set()))
    every = set(BY_CAPABILITY)
    assert not io_uring & _allowed(default_profile(every))
    rules = seccomp_filter(default_profile(every)).rules
    assert not [r for r in rules if r.syscall in io_uring]  # no conditional rule either


def test_default_profile_allows_pidfd_getfd_only_with_sys_ptrace() -> None:
    assert "pidfd_getfd" not in _allowed(default_profile({"CAP_KILL", "CAP_SYS_ADMIN"}))
    assert "pidfd_getfd" in _allowed(default_profile({"CAP_SYS_PTRACE"}))
    assert "pidfd_open" in _allowed(default_profile(set()))  # signalling by pidfd stays
