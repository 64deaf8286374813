from __future__ import annotations

import json
from typing import Any

import pytest

from cri_py.cdi.spec import (
    CdiSpecError,
    ContainerEdits,
    DeviceNodeEdit,
    HookEdit,
    MountEdit,
    load_document,
    parse_spec,
)

YAML = b"""
cdiVersion: "1.0.0"
kind: vendor.com/gpu
annotations: {owner: driver}
containerEdits:
  env: [VENDOR_LIB=/usr/lib/vendor]
  mounts:
    - {hostPath: /usr/lib/libvendor.so, containerPath: /usr/lib/libvendor.so,
       options: [ro, nosuid, nodev, bind]}
devices:
  - name: "0"
    annotations: {bus: "0000:01:00.0"}
    containerEdits:
      deviceNodes:
        - {path: /dev/vgpu0, hostPath: /dev/vgpu0, type: c, major: 195, minor: 0,
           fileMode: 0660, permissions: rw, uid: 0, gid: 44}
      additionalGids: [44]
      hooks:
        - {hookName: createContainer, path: /usr/bin/vendor-hook, args: [vendor-hook, x],
           env: [A=1], timeout: 5}
"""


def spec(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cdiVersion": "0.3.0",
        "kind": "vendor.com/gpu",
        "devices": [{"name": "gpu0", "containerEdits": {"env": ["A=1"]}}],
    }
    data.update(overrides)
    return data


def device(**edits: Any) -> list[dict[str, Any]]:
    return [{"name": "gpu0", "containerEdits": edits}]


def test_a_yaml_spec_is_read_field_by_field() -> None:
    parsed = parse_spec(load_document(YAML, "/etc/cdi/gpu.yaml"), "/etc/cdi/gpu.yaml")
    assert (parsed.version, parsed.kind, parsed.path) == (
        "1.0.0",
        "vendor.com/gpu",
        "/etc/cdi/gpu.yaml",
    )
    assert parsed.edits == ContainerEdits(
        env=("VENDOR_LIB=/usr/lib/vendor",),
        mounts=(
            MountEdit(
                "/usr/lib/libvendor.so",
                "/usr/lib/libvendor.so",
                ("ro", "nosuid", "nodev", "bind"),
            ),
        ),
    )
    assert parsed.devices["0"] == ContainerEdits(
        device_nodes=(
            DeviceNodeEdit(
                path="/dev/vgpu0",
                host_path="/dev/vgpu0",
                type="c",
                major=195,
                minor=0,
                file_mode=0o660,
                permissions="rw",
                uid=0,
                gid=44,
            ),
        ),
        hooks=(
            HookEdit("createContainer", "/usr/bin/vendor-hook", ("vendor-hook", "x"), ("A=1",), 5),
        ),
        additional_gids=(44,),
    )


def test_a_json_spec_reads_the_same() -> None:
    data = json.dumps(spec(devices=device(env=["A=1"], deviceNodes=[{"path": "/dev/x"}])))
    parsed = parse_spec(load_document(data.encode(), "/x.json"), "/x.json")
    assert parsed.devices["gpu0"].device_nodes == (DeviceNodeEdit(path="/dev/x"),)


@pytest.mark.parametrize(
    ("data", "needs"),
    [
        (
            spec(
                devices=device(mounts=[{"hostPath": "/a", "containerPath": "/a", "type": "tmpfs"}])
            ),
            "0.4.0",
        ),
        (spec(devices=device(deviceNodes=[{"path": "/dev/a", "hostPath": "/dev/b"}])), "0.5.0"),
        (spec(devices=[{"name": "0gpu", "containerEdits": {"env": ["A=1"]}}]), "0.5.0"),
        (spec(annotations={"a": "b"}), "0.6.0"),
        (
            spec(
                devices=[
                    {"name": "g", "annotations": {"a": "b"}, "containerEdits": {"env": ["A=1"]}}
                ]
            ),
            "0.6.0",
        ),
        (spec(kind="vendor.com/gpu.v2"), "0.6.0"),
        (spec(containerEdits={"additionalGids": [5]}), "0.7.0"),
        (spec(devices=device(intelRdt={"closID": "x"})), "0.7.0"),
        (spec(devices=device(netDevices=[{"hostInterfaceName": "eth1", "name": "net1"}])), "1.1.0"),
        (spec(devices=device(intelRdt={"closID": "x", "enableMonitoring": True})), "1.1.0"),
    ],
)
def test_fields_need_the_version_that_introduced_them(data: dict[str, Any], needs: str) -> None:
    with pytest.raises(
        CdiSpecError, match=f"needs cdiVersion {needs} or later, the file says 0.3.0"
    ):
        parse_spec(data, "/f.json")
    parse_spec({**data, "cdiVersion": needs}, "/f.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (spec(cdiVersion="0.2.0"), "cdiVersion '0.2.0' is not one cri-py reads"),
        (spec(cdiVersion="2.0.0"), "cdiVersion '2.0.0'"),
        (spec(kind="gpu"), "kind: kind 'gpu' is not vendor/class"),
        (spec(devices=[]), "no devices"),
        (spec(extra=1), "spec: unknown field 'extra'"),
        (
            spec(devices=device(env=["A=1"], deviceNodes=[{"path": "/dev/a", "typo": 1}])),
            "unknown field 'typo'",
        ),
        (spec(devices=[{"name": "gpu0", "containerEdits": {}}]), "has no container edits"),
        (spec(devices=[{"name": "gpu0"}]), "has no container edits"),
        (spec(devices=device(env=["=x"])), r"env\[0\]: '=x' is not NAME=value"),
        (spec(devices=device(env=["NOEQUALS"])), "is not NAME=value"),
        (spec(devices=device(deviceNodes=[{"path": "dev/a"}])), "must be an absolute path"),
        (spec(devices=device(deviceNodes=[{"path": "/dev/../etc/a"}])), "without '..'"),
        (
            spec(devices=device(deviceNodes=[{"path": "/dev/a", "type": "x"}])),
            "'x' is not b, c, u or p",
        ),
        (
            spec(devices=device(deviceNodes=[{"path": "/dev/a", "permissions": "rwx"}])),
            "'rwx' is not some of",
        ),
        (
            spec(devices=device(deviceNodes=[{"path": "/dev/a", "major": -1}])),
            "expected an integer",
        ),
        (spec(devices=device(deviceNodes=[{"path": "/dev/a", "fileMode": 0o170000}])), "fileMode"),
        (spec(devices=device(mounts=[{"hostPath": "", "containerPath": "/a"}])), "hostPath: empty"),
        (spec(devices=device(mounts=[{"hostPath": "/a", "containerPath": "a"}])), "containerPath"),
        (
            spec(devices=device(hooks=[{"hookName": "preStart", "path": "/h"}])),
            "'preStart' is not one of",
        ),
        (
            spec(devices=device(hooks=[{"hookName": "poststop", "path": ""}])),
            r"hooks\[0\].path: empty",
        ),
        (
            spec(devices=[{"name": "gpu0", "containerEdits": {"env": ["A=1"]}}] * 2),
            "device 'gpu0' defined twice",
        ),
        (
            spec(devices=[{"name": "gpu 0", "containerEdits": {"env": ["A=1"]}}]),
            "invalid character",
        ),
        ("just text", "spec: expected a mapping"),
    ],
)
def test_malformed_specs_are_refused_saying_where(data: Any, message: str) -> None:
    with pytest.raises(CdiSpecError, match=message):
        parse_spec(data, "/f.json")


def test_edits_cri_py_cannot_make_are_kept_by_name() -> None:
    data = spec(
        cdiVersion="1.1.0",
        devices=device(
            intelRdt={"closID": "x"}, netDevices=[{"hostInterfaceName": "a", "name": "b"}]
        ),
    )
    assert parse_spec(data, "/f.json").devices["gpu0"].unsupported == ("intelRdt", "netDevices")


def test_unparsable_text_names_its_format() -> None:
    with pytest.raises(CdiSpecError, match="not valid JSON"):
        load_document(b'{"cdiVersion": ', "/x.json")
    with pytest.raises(CdiSpecError, match="not valid YAML"):
        load_document(b"a: [", "/x.yaml")
    with pytest.raises(CdiSpecError, match="larger than"):
        load_document(b" " * (5 << 20), "/x.yaml")
