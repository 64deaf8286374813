"""Golden tests for what CDI devices change in a container's OCI spec: `golden/<case>.request.json`
(the container's config fields, the CDI spec files by path, the host's nodes) in,
`golden/<case>.spec.json` out: the parts of the built spec CDI touches (process env and user,
mounts, linux.devices, the device cgroup rules, annotations, hooks), or `{"error": ...}`.

The spec is built by `spec.build.build_spec` from `SpecInputs` whose devices include the CDI
nodes, then `apply_injection` runs: the path CreateContainer takes. Regenerate after a
deliberate change with `CRI_PY_REGENERATE_GOLDEN=1 pytest tests/unit/cdi` and read the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.cdi.edits import (
    HostNode,
    apply_injection,
    check_supported,
    ordered_edits,
    plan_injection,
)
from cri_py.cdi.names import requested_devices
from cri_py.cdi.spec import CdiSpec, parse_spec
from cri_py.errors import CriError, FailedPrecondition
from cri_py.model.container import ContainerConfig
from cri_py.spec.build import SpecInputs, build_spec
from cri_py.store.codec import from_data

GOLDEN = Path(__file__).parent / "golden"
SPEC_GOLDEN = Path(__file__).parents[1] / "spec" / "golden"
REGENERATE = os.environ.get("CRI_PY_REGENERATE_GOLDEN") == "1"
CASES = sorted(p.name.removesuffix(".request.json") for p in GOLDEN.glob("*.request.json"))


def base_inputs() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (SPEC_GOLDEN / "kubelet_500m_64mi_cgroup.request.json").read_text()
    )
    return data


def find(specs: list[CdiSpec], kind: str, name: str) -> CdiSpec:
    for spec in reversed(specs):  # later files win, as a later dir does
        if spec.kind == kind and name in spec.devices:
            return spec
    raise FailedPrecondition(f"CDI device {kind}={name} is not defined")


def translate(request: dict[str, Any]) -> dict[str, Any]:
    inputs_data = base_inputs()
    inputs_data["config"] = {**inputs_data["config"], **request.get("config", {})}
    inputs_data.update(request.get("inputs", {}))
    inputs = from_data(SpecInputs, inputs_data)
    config: ContainerConfig = inputs.config
    try:
        specs = [parse_spec(data, path) for path, data in request["cdi_specs"].items()]
        names = requested_devices(config.cdi_devices, config.annotations)
        sources = ordered_edits([(n, find(specs, n.kind, n.name)) for n in names])
        check_supported(sources)
        host = {p: HostNode(*node) for p, node in request.get("host_nodes", {}).items()}
        injection = plan_injection(
            sources,
            host,
            request.get("real_paths", {}),
            [d.container_path for d in config.devices],
            [m.container_path for m in config.mounts],
        )
        inputs = dataclasses.replace(inputs, devices=inputs.devices + injection.device_nodes)
        spec = build_spec(inputs)
        apply_injection(spec, injection)
    except CriError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {
        "process.env": spec["process"]["env"],
        "process.user": spec["process"]["user"],
        "mounts": spec["mounts"],
        "linux.devices": spec["linux"].get("devices", []),
        "linux.resources.devices": spec["linux"]["resources"]["devices"],
        "annotations": spec["annotations"],
        # Only where a device brings hooks (the other cases' files stay as they were).
        **({"hooks": spec["hooks"]} if "hooks" in spec else {}),
    }


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES)
def test_cdi_edits_match_golden(case: str) -> None:
    request = json.loads((GOLDEN / f"{case}.request.json").read_text())
    actual = translate(request)
    expected_file = GOLDEN / f"{case}.spec.json"
    if REGENERATE:
        expected_file.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(expected_file.read_text())


def test_without_devices_the_spec_is_untouched() -> None:
    request = {"cdi_specs": {}}
    assert (
        translate(request)["annotations"]
        == build_spec(from_data(SpecInputs, base_inputs()))["annotations"]
    )
