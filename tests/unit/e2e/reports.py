"""Test data shared by the e2e tooling tests: Ginkgo-style JUnit reports, layer recipes."""

from __future__ import annotations

from imagelab.catalog import LayerRecipe

_BODIES = {
    "passed": "",
    "failed": '<failure message="boom" type="failed">[FAILED] boom</failure>',
    "error": '<error message="panic"/>',
    "skipped": '<skipped message="skipped"/>',
}


def junit(
    *cases: tuple[str, str], suite: str = "CRI validation", before: str = "[BeforeSuite]"
) -> str:
    """A Ginkgo-style report: (name, "passed" | "failed" | "error" | "skipped") per case, after
    the suite node `before` (which passed)."""
    rows = "".join(
        f'<testcase name="{name}" classname="{suite}">{_BODIES[status]}</testcase>'
        for name, status in cases
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="{suite}">'
        f'<testcase name="{before}"></testcase>{rows}</testsuite></testsuites>'
    )


def recipe(**fields: object) -> LayerRecipe:
    """A layer recipe with nothing in it but `fields`."""
    defaults: dict[str, object] = {
        "name": "test",
        "comment": "",
        "packages": (),
        "copies": (),
        "files": None,
        "busybox_applets": None,
        "paths": (),
        "appends": (),
    }
    defaults.update(fields)
    return LayerRecipe(**defaults)  # type: ignore[arg-type]
