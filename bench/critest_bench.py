"""critest's own benchmarks (`critest -benchmark`, cri-tools v1.37.0) against one runtime: a
measurement nobody here wrote, run by bench/compare.py beside its own (scenario `critest`).

critest runs its five benchmark specs with the counts of a params file and writes each
operation's durations to JSON files (pod, container, image lifecycle, image listing); the fifth,
a pod with a running container from scratch (run, create, start, then stop and remove the pod),
is one gmeasure sample per run, read from ginkgo's JSON report. Every duration comes back in ms
under a measure name of its own ("critest container: CreateContainer", ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

TOOLS_BIN = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin"
CRITEST = TOOLS_BIN / "critest"
# Which JSON file holds which group of critest's operations.
FILES = {
    "pod_benchmark_data.json": "critest pod",
    "container_benchmark_data.json": "critest container",
    "image_lifecycle_benchmark_data.json": "critest image",
    "image_listing_benchmark_data.json": "critest image list",
}
FROM_SCRATCH = "critest: pod + running container from scratch, pod stopped and removed"


def params(samples: int, pull_image: str, list_images: list[str]) -> dict[str, Any]:
    """critest's benchmarking params: `samples` of each lifecycle, one at a time (the
    parallel forms would measure the machine's two cores more than the runtime)."""
    return {
        "containersNumber": samples,
        "containersNumberParallel": 1,
        "podsNumber": samples,
        "podsNumberParallel": 1,
        "imagesNumber": samples,
        "imagesNumberParallel": 1,
        "imagePullingBenchmarkImage": pull_image,
        "imageListingBenchmarkImages": list_images,
    }


def parse(out_dir: Path, report: Path) -> dict[str, list[float]]:
    """Durations in ms by measure name, from critest's output dir and ginkgo's JSON report."""
    measures: dict[str, list[float]] = {}
    for name, group in FILES.items():
        path = out_dir / name
        if not path.exists():
            raise RuntimeError(f"critest wrote no {name}: did a benchmark spec skip?")
        data = json.loads(path.read_text())
        operations = data["operationsNames"]
        for point in data["datapoints"]:
            for operation, ns in zip(operations, point["operationsDurationsNs"], strict=True):
                measures.setdefault(f"{group}: {operation}", []).append(ns / 1e6)
    for suite in json.loads(report.read_text()):
        for spec in suite.get("SpecReports") or []:
            for entry in spec.get("ReportEntries") or []:
                value = entry.get("Value") or {}
                if not value.get("AsJSON"):
                    continue
                for measurement in json.loads(value["AsJSON"]).get("Measurements") or []:
                    if measurement.get("Type") == "Duration":
                        durations = [ns / 1e6 for ns in measurement.get("Durations") or []]
                        measures.setdefault(FROM_SCRATCH, []).extend(durations)
    if FROM_SCRATCH not in measures:
        raise RuntimeError("critest's report has no pod+container-from-scratch measurement")
    return measures


def run(
    socket: Path, samples: int, pull_image: str, list_images: list[str]
) -> dict[str, list[float]]:
    """One `critest -benchmark` run against the runtime on `socket`; fails loudly when critest
    is missing or any spec fails (a benchmark that did not run is not a number)."""
    if not CRITEST.exists():
        raise RuntimeError(f"{CRITEST} missing: make tools-cri")
    with tempfile.TemporaryDirectory(prefix="cri-py-critest-bench.") as tmp:
        work = Path(tmp)
        params_file = work / "params.json"  # YAML is a superset of JSON
        params_file.write_text(json.dumps(params(samples, pull_image, list_images)))
        out_dir = work / "out"
        out_dir.mkdir()
        report = work / "report.json"
        endpoint = f"unix://{socket}"
        command = [
            str(CRITEST),
            "-benchmark",
            f"-runtime-endpoint={endpoint}",
            f"-image-endpoint={endpoint}",
            f"-benchmarking-params-file={params_file}",
            f"-benchmarking-output-dir={out_dir}",
            f"-ginkgo.json-report={report}",
            "-ginkgo.no-color",
        ]
        # cwd: critest looks for a crictl.yaml beside it and in its working directory.
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = done.stdout[-3000:]
            raise RuntimeError(f"critest -benchmark failed ({done.returncode}):\n{tail}")
        return parse(out_dir, report)
