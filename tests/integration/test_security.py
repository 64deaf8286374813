"""Security context against a real daemon: what a default container cannot do (mount, load a
module, see host processes, write /proc/sys, read a masked path), capabilities add / drop,
run_as_user and the reported user, seccomp RuntimeDefault / Localhost / Unconfined,
privileged containers only in privileged pods.

Shares test_containers' lab (its daemon config, bridge and registry); skips the same way.
"""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_container_cgroups import verbose_info
from .test_containers import BUSYBOX, Lab
from .test_containers import lab as lab

pytestmark = needs_root

# CapEff of the default 14 capabilities: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
# SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
DEFAULT_CAPS = 0xA80425FB
CAP_NET_BIND_SERVICE = 1 << 10
CAP_NET_ADMIN = 1 << 12
CAP_NET_RAW = 1 << 13
CAP_SYS_MODULE = 1 << 16


def create(
    lab: Lab,
    sandbox_id: str,
    name: str,
    command: list[str],
    security: pb.LinuxContainerSecurityContext | None = None,
) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(security_context=security),
    )
    return (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
            ),
            timeout=30,
        )
        .container_id
    )


def running(lab: Lab, pod: str, name: str, **security: object) -> str:
    context = pb.LinuxContainerSecurityContext(**security)  # type: ignore[arg-type]
    cid = create(lab, pod, name, ["sleep", "1000"], context)
    lab.start(cid)
    return cid


def status_field(lab: Lab, cid: str, key: str) -> int:
    text = lab.exec(cid, "cat", "/proc/self/status").stdout.decode()
    (line,) = [line for line in text.splitlines() if line.startswith(f"{key}:")]
    return int(line.split()[1], 16 if key.startswith("Cap") else 10)


def test_a_default_container_is_contained(lab: Lab) -> None:
    pod = lab.run_pod("sec-default")
    cid = running(lab, pod, "plain")
    assert status_field(lab, cid, "CapEff") == DEFAULT_CAPS
    bounding = status_field(lab, cid, "CapBnd")
    assert bounding == DEFAULT_CAPS and not bounding & CAP_SYS_MODULE  # no module loading
    mount = lab.exec(cid, "mount", "-t", "tmpfs", "tmpfs", "/tmp")
    assert mount.exit_code != 0 and b"denied" in mount.stderr.lower()
    sysctl = lab.exec(cid, "sh", "-c", "echo 1 > /proc/sys/kernel/domainname")
    assert sysctl.exit_code != 0 and b"Read-only file system" in sysctl.stderr
    # Masked (with /dev/null): present on the host, empty in the container.
    assert Path("/proc/interrupts").read_text()
    assert lab.exec(cid, "cat", "/proc/interrupts").stdout == b""
    assert lab.exec(cid, "ls", "/sys/firmware").stdout == b""
    # Its own PID namespace: the sleep (PID 1) and what the exec runs, nothing of the host's.
    pids = [p for p in lab.exec(cid, "ls", "/proc").stdout.split() if p.isdigit()]
    assert b"1" in pids and len(pids) <= 4, pids
    lab.remove_pod(pod)


def test_capabilities_add_and_drop_show_in_capeff(lab: Lab) -> None:
    pod = lab.run_pod("sec-caps")
    add = running(lab, pod, "add", capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))
    assert status_field(lab, add, "CapEff") == DEFAULT_CAPS | CAP_NET_ADMIN
    assert lab.exec(add, "brctl", "addbr", "foobar").exit_code == 0
    drop = running(lab, pod, "drop", capabilities=pb.Capability(drop_capabilities=["CAP_NET_RAW"]))
    assert status_field(lab, drop, "CapEff") == DEFAULT_CAPS & ~CAP_NET_RAW
    none = running(lab, pod, "none", capabilities=pb.Capability(drop_capabilities=["ALL"]))
    assert status_field(lab, none, "CapBnd") == 0
    lab.remove_pod(pod)


def test_a_file_capability_works_for_non_root_under_no_new_privs(lab: Lab) -> None:
    # kubeadm's CoreDNS Deployment: a non-root user, allowPrivilegeEscalation false, only
    # NET_BIND_SERVICE added; the image's /coredns carries `cap_net_bind_service+ep`. With
    # no_new_privs, execve grants a file capability only if it was permitted before the exec.
    pod = lab.run_pod("sec-filecap")
    cid = running(
        lab,
        pod,
        "filecap",
        run_as_user=pb.Int64Value(value=1001),
        no_new_privs=True,
        capabilities=pb.Capability(
            add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["ALL"]
        ),
    )
    # A copy of the image's busybox with the file capability, made from the host.
    root = Path(f"/proc/{int(verbose_info(lab, cid)['pid'])}/root")
    (root / "capable").mkdir()
    capable = root / "capable" / "busybox"  # busybox runs the applet its name says
    capable.write_bytes((root / "bin" / "busybox").read_bytes())
    capable.chmod(0o755)
    # vfs_cap_data revision 2, effective flag; permitted: CAP_NET_BIND_SERVICE (bit 10).
    os.setxattr(capable, "security.capability", struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))
    assert status_field(lab, cid, "NoNewPrivs") == 1
    assert status_field(lab, cid, "CapEff") == 0  # a plain program: nothing effective
    got = lab.exec(cid, "/capable/busybox", "cat", "/proc/self/status")
    assert got.exit_code == 0, got.stderr
    (line,) = [line for line in got.stdout.decode().splitlines() if line.startswith("CapEff:")]
    assert int(line.split()[1], 16) == CAP_NET_BIND_SERVICE
    # Nothing beyond what the container was given: a file that asks for NET_ADMIN too (and
    # is marked effective, so expects all it asks for) is refused by execve.
    os.setxattr(
        capable,
        "security.capability",
        struct.pack("<5I", 0x02000001, (1 << 10) | CAP_NET_ADMIN, 0, 0, 0),
    )
    refused = lab.exec(cid, "/capable/busybox", "cat", "/proc/self/status")
    assert refused.exit_code != 0 and b"CapEff" not in refused.stdout
    assert b"not permitted" in refused.stderr.lower(), refused.stderr
    lab.remove_pod(pod)


def test_run_as_user_is_the_process_user_and_reported(lab: Lab) -> None:
    pod = lab.run_pod("sec-user")
    cid = running(
        lab,
        pod,
        "user",
        run_as_user=pb.Int64Value(value=1001),
        run_as_group=pb.Int64Value(value=1002),
        supplemental_groups=[1234],
    )
    assert lab.exec(cid, "id", "-u").stdout == b"1001\n"
    assert lab.exec(cid, "id", "-g").stdout == b"1002\n"
    assert lab.exec(cid, "id", "-G").stdout.split() == [b"1002", b"1234"]
    user = lab.status(cid).user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1001, 1002, [1002, 1234])
    # Not root: no effective capabilities (none were made ambient).
    assert status_field(lab, cid, "CapEff") == 0
    with pytest.raises(grpc.RpcError) as caught:
        running(lab, pod, "ghost", run_as_username="no-such-user")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    lab.remove_pod(pod)


def test_seccomp_runtime_default_blocks_what_unconfined_allows(lab: Lab, tmp_path: Path) -> None:
    pod = lab.run_pod("sec-seccomp")
    admin = pb.Capability(add_capabilities=["SYS_ADMIN"])
    default = running(lab, pod, "default", seccomp=pb.SecurityProfile(profile_type=0))
    assert status_field(lab, default, "Seccomp") == 2
    blocked = lab.exec(default, "unshare", "-U", "true")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    unconfined = running(lab, pod, "unconfined", seccomp=pb.SecurityProfile(profile_type=1))
    assert status_field(lab, unconfined, "Seccomp") == 0
    assert lab.exec(unconfined, "unshare", "-U", "true").exit_code == 0
    profile = tmp_path / "block-hostname.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    local = running(
        lab,
        pod,
        "local",
        capabilities=admin,
        seccomp=pb.SecurityProfile(profile_type=2, localhost_ref=str(profile)),
    )
    assert lab.exec(local, "hostname", "other").exit_code != 0
    with pytest.raises(grpc.RpcError) as caught:
        running(lab, pod, "relative", seccomp=pb.SecurityProfile(profile_type=2, localhost_ref="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    lab.remove_pod(pod)


def test_privileged_container_needs_a_privileged_pod(lab: Lab) -> None:
    pod = lab.run_pod("sec-unpriv")
    with pytest.raises(grpc.RpcError) as caught:
        running(lab, pod, "priv", privileged=True)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    lab.remove_pod(pod)


def io_uring_probe() -> bytes:
    """A static x86-64 ELF that calls io_uring_setup(1, &zeroed params) and exits 0 when it
    gets a ring, else with the errno (EPERM = 1). Hand-made: the lab's images have no tool
    that makes the call (busybox cannot), and the host needs no compiler."""
    code = bytes.fromhex(
        "4881ec80000000"  # sub rsp, 128: the io_uring_params (120 bytes)
        "31c0" "b980000000" "4889e7" "f3aa"  # xor eax,eax; mov ecx,128; mov rdi,rsp; rep stosb
        "bf01000000" "4889e6"  # mov edi, 1 (entries); mov rsi, rsp (params)
        "b8a9010000" "0f05"  # mov eax, 425 (io_uring_setup); syscall
        "4885c0" "7906"  # test rax, rax; jns ok
        "f7d8" "89c7" "eb02"  # neg eax; mov edi, eax (errno); jmp out
        "31ff"  # ok: xor edi, edi
        "b8e7000000" "0f05"  # out: mov eax, 231 (exit_group); syscall
    )  # fmt: skip
    base, header_size, phdr_size = 0x400000, 64, 56
    entry = base + header_size + phdr_size
    total = header_size + phdr_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, entry, header_size, 0, 0, header_size, phdr_size, 1, 64, 0, 0
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return header + load + code


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the io_uring probe is x86-64 code")
def test_seccomp_runtime_default_refuses_io_uring_that_unconfined_allows(
    lab: Lab, tmp_path: Path
) -> None:
    probe = tmp_path / "io-uring-probe"
    probe.write_bytes(io_uring_probe())
    probe.chmod(0o755)
    assert subprocess.run([probe]).returncode == 0, "io_uring is off on this host: no control"
    pod = lab.run_pod("sec-io-uring")
    results = {}
    for name, profile_type in (("default", 0), ("unconfined", 1)):
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sleep", "1000"],
            log_path=f"{name}.log",
            mounts=[pb.Mount(container_path="/probe", host_path=str(probe), readonly=True)],
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    seccomp=pb.SecurityProfile(profile_type=profile_type)  # type: ignore[arg-type]
                )
            ),
        )
        cid = (
            lab.daemon.runtime()
            .CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
                ),
                timeout=30,
            )
            .container_id
        )
        lab.start(cid)
        results[name] = lab.exec(cid, "/probe").exit_code
    assert results == {"default": 1, "unconfined": 0}  # EPERM under RuntimeDefault
    lab.remove_pod(pod)
