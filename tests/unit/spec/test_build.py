"""Golden tests for the CRI -> OCI spec translation: `golden/<case>.request.json` (the
`SpecInputs`, as JSON) in, `golden/<case>.spec.json` out. A request the translation refuses
has `{"error": "<class>: <message>"}` as its expected output.

Regenerate the outputs after a deliberate change with `CRI_PY_REGENERATE_GOLDEN=1 pytest
tests/unit/spec` and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import CriError
from cri_py.spec.build import SpecInputs, build_spec
from cri_py.store.codec import from_data

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("CRI_PY_REGENERATE_GOLDEN") == "1"
CASES = sorted(p.name.removesuffix(".request.json") for p in GOLDEN.glob("*.request.json"))


def translate(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return build_spec(from_data(SpecInputs, request))
    except CriError as e:
        return {"error": f"{type(e).__name__}: {e}"}


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES)
def test_spec_matches_golden(case: str) -> None:
    request = json.loads((GOLDEN / f"{case}.request.json").read_text())
    actual = translate(request)
    expected_file = GOLDEN / f"{case}.spec.json"
    if REGENERATE:
        expected_file.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(expected_file.read_text())
