from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.cdi.registry import CdiRegistry, host_node
from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.model.container import ContainerConfig, ContainerMetadata, Device, Mount
from cri_py.oci.hooks import Hook


def write(path: Path, kind: str, devices: dict[str, dict[str, Any]], **top: Any) -> None:
    data = {
        "cdiVersion": "0.6.0",
        "kind": kind,
        "devices": [{"name": n, "containerEdits": e} for n, e in devices.items()],
        **top,
    }
    path.write_text(json.dumps(data))


def asking(*devices: str, **fields: Any) -> ContainerConfig:
    return ContainerConfig(
        metadata=ContainerMetadata(name="c"), image="busybox", cdi_devices=devices, **fields
    )


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    return etc, run


def test_a_later_dir_overrides_an_earlier_one(dirs: tuple[Path, Path]) -> None:
    etc, run = dirs
    write(etc / "a.json", "vendor.com/gpu", {"0": {"env": ["WHO=etc"]}, "1": {"env": ["ONE=1"]}})
    write(run / "b.json", "vendor.com/gpu", {"0": {"env": ["WHO=run"]}})
    registry = CdiRegistry([str(etc), str(run)])
    assert registry.inject(asking("vendor.com/gpu=0")).env == ("WHO=run",)
    assert registry.inject(asking("vendor.com/gpu=1")).env == ("ONE=1",)


def test_two_files_of_one_dir_defining_a_device_make_it_unusable(dirs: tuple[Path, Path]) -> None:
    etc, run = dirs
    write(run / "a.json", "vendor.com/gpu", {"0": {"env": ["A=1"]}})
    (run / "b.yaml").write_text(
        "cdiVersion: 0.6.0\nkind: vendor.com/gpu\n"
        "devices: [{name: '0', containerEdits: {env: [B=1]}}]\n"
    )
    registry = CdiRegistry([str(etc), str(run)])
    with pytest.raises(
        FailedPrecondition, match=r"vendor.com/gpu=0 is defined twice.*a.json and .*b.yaml"
    ):
        registry.inject(asking("vendor.com/gpu=0"))


def test_unknown_devices_name_the_dirs_and_the_broken_files(dirs: tuple[Path, Path]) -> None:
    etc, run = dirs
    write(etc / "a.json", "vendor.com/gpu", {"0": {"env": ["A=1"]}})
    (run / "broken.yaml").write_text("cdiVersion: 0.6.0\nkind: vendor.com/nic\ndevices: []\n")
    (run / "notes.txt").write_text("not a spec")
    (run / "sub").mkdir()
    write(run / "sub" / "ignored.json", "vendor.com/nic", {"eth0": {"env": ["N=1"]}})
    registry = CdiRegistry([str(etc), str(run)])
    with pytest.raises(FailedPrecondition) as raised:
        registry.inject(asking("vendor.com/nic=eth0"))
    message = str(raised.value)
    assert f"vendor.com/nic=eth0 is not defined by any spec in {etc}, {run}" in message
    assert f"{run}/broken.yaml: no devices" in message
    # Only *.json and *.yaml directly in a dir are specs.
    assert [Path(e[0]).name for e in registry.catalog().listing] == ["a.json", "broken.yaml"]


def test_specs_are_read_again_when_a_file_changes(dirs: tuple[Path, Path]) -> None:
    etc, run = dirs
    registry = CdiRegistry([str(etc), str(run)])
    with pytest.raises(FailedPrecondition):
        registry.inject(asking("vendor.com/gpu=0"))
    write(run / "a.json", "vendor.com/gpu", {"0": {"env": ["V=1"]}})
    assert registry.inject(asking("vendor.com/gpu=0")).env == ("V=1",)
    first = registry.catalog()
    assert registry.catalog() is first  # nothing changed: not read again
    write(run / "a.json", "vendor.com/gpu", {"0": {"env": ["V=22"]}})
    assert registry.inject(asking("vendor.com/gpu=0")).env == ("V=22",)
    (run / "a.json").unlink()
    with pytest.raises(FailedPrecondition, match="not defined"):
        registry.inject(asking("vendor.com/gpu=0"))


def test_missing_dirs_are_no_specs(tmp_path: Path) -> None:
    registry = CdiRegistry([str(tmp_path / "none")])
    assert not registry.inject(asking())
    with pytest.raises(FailedPrecondition):
        registry.inject(asking("vendor.com/gpu=0"))


def test_device_nodes_take_type_and_numbers_from_the_host(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    fifo = etc.parent / "fifo"
    os.mkfifo(fifo)
    nodes = [
        {"path": "/dev/null"},
        {"path": "/dev/other-null", "hostPath": "/dev/null", "permissions": "r"},
        {"path": "/dev/pipe", "hostPath": str(fifo)},
    ]
    write(etc / "a.json", "vendor.com/gpu", {"0": {"deviceNodes": nodes}})
    injection = CdiRegistry([str(etc)]).inject(asking("vendor.com/gpu=0"))
    summary = [(n.path, n.type, n.major, n.minor, n.cgroup_access) for n in injection.device_nodes]
    assert summary == [
        ("/dev/null", "c", 1, 3, True),
        ("/dev/other-null", "c", 1, 3, True),
        ("/dev/pipe", "p", 0, 0, False),
    ]


def test_a_missing_host_node_or_mount_source_fails_naming_the_device_and_file(
    dirs: tuple[Path, Path],
) -> None:
    etc, _ = dirs
    write(etc / "a.json", "vendor.com/gpu", {"0": {"deviceNodes": [{"path": "/dev/nope-cdi"}]}})
    mount = {"hostPath": "/nonexistent/lib.so", "containerPath": "/lib.so", "options": ["bind"]}
    write(etc / "b.json", "vendor.com/lib", {"so": {"mounts": [mount]}})
    write(
        etc / "c.json",
        "vendor.com/file",
        {"x": {"deviceNodes": [{"path": "/dev/x", "hostPath": str(etc / "a.json")}]}},
    )
    registry = CdiRegistry([str(etc)])
    with pytest.raises(
        FailedPrecondition,
        match=r"vendor.com/gpu=0 \(.*a.json\): host device /dev/nope-cdi: No such file",
    ):
        registry.inject(asking("vendor.com/gpu=0"))
    with pytest.raises(
        FailedPrecondition,
        match=r"vendor.com/lib=so \(.*b.json\): mount source /nonexistent/lib.so does not exist",
    ):
        registry.inject(asking("vendor.com/lib=so"))
    with pytest.raises(FailedPrecondition, match="not a device node"):
        registry.inject(asking("vendor.com/file=x"))


def test_a_devices_hooks_are_injected_and_other_devices_of_the_file_have_none(
    dirs: tuple[Path, Path],
) -> None:
    etc, _ = dirs
    hook = {"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk", "args": ["ctk", "x"]}
    write(etc / "a.json", "vendor.com/gpu", {"0": {"hooks": [hook]}, "1": {"env": ["OK=1"]}})
    registry = CdiRegistry([str(etc)])
    injected = registry.inject(asking("vendor.com/gpu=0"))
    assert injected.hooks == (("createContainer", Hook("/usr/bin/nvidia-ctk", ("ctk", "x"))),)
    other = registry.inject(asking("vendor.com/gpu=1"))
    assert other.env == ("OK=1",) and other.hooks == ()


def test_cdi_edits_at_the_requests_own_paths_conflict(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    mount = {"hostPath": str(etc), "containerPath": "/data", "options": ["rbind"]}
    write(
        etc / "a.json",
        "vendor.com/gpu",
        {"0": {"deviceNodes": [{"path": "/dev/null"}], "mounts": [mount]}},
    )
    registry = CdiRegistry([str(etc)])
    with pytest.raises(
        FailedPrecondition, match="request's devices both put a device at /dev/null"
    ):
        registry.inject(
            asking("vendor.com/gpu=0", devices=(Device("/dev/null", "/dev/null", "rw"),))
        )
    with pytest.raises(FailedPrecondition, match="request's mounts both mount /data"):
        registry.inject(asking("vendor.com/gpu=0", mounts=(Mount("/data", "/tmp"),)))


def test_annotations_request_devices_too(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    write(etc / "a.json", "vendor.com/gpu", {"0": {"env": ["A=1"]}})
    registry = CdiRegistry([str(etc)])
    injection = registry.inject(asking(annotations={"cdi.k8s.io/gpu_0": "vendor.com/gpu=0"}))
    assert injection.devices == ("vendor.com/gpu=0",)
    with pytest.raises(InvalidArgument):
        registry.inject(asking(annotations={"cdi.k8s.io/gpu_0": "gpu0"}))


def test_host_node_reads_char_devices() -> None:
    node = host_node("/dev/null")
    assert (node.type, node.major, node.minor) == ("c", 1, 3)
    with pytest.raises(ValueError, match="not a device node"):
        host_node("/")


def test_a_node_whose_type_differs_from_the_hosts_is_refused(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    node = {"path": "/dev/disk", "hostPath": "/dev/null", "type": "b"}
    write(etc / "a.json", "vendor.com/gpu", {"0": {"deviceNodes": [node]}})
    with pytest.raises(
        FailedPrecondition, match=r"/dev/disk is type 'b' but host node /dev/null is 'c'"
    ):
        CdiRegistry([str(etc)]).inject(asking("vendor.com/gpu=0"))
