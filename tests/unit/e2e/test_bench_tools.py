"""The bench's readers: critest's benchmark output (bench/critest_bench.py) and the per-call
breakdown of py-spy's collapsed stacks (bench/profile.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import critest_bench  # noqa: E402


def load_profile() -> ModuleType:
    """bench/profile.py by path: `import profile` could be the standard library's."""
    spec = importlib.util.spec_from_file_location("bench_profile", BENCH / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_profile = load_profile()


def lifecycle(names: list[str], *points_ms: list[float]) -> dict[str, object]:
    """critest's LifecycleBenchmarksResultsSet, as it writes it."""
    return {
        "operationsNames": names,
        "numParallel": 1,
        "datapoints": [
            {"sampleIndex": i, "operationsDurationsNs": [int(ms * 1e6) for ms in point]}
            for i, point in enumerate(points_ms)
        ],
    }


def ginkgo_report(durations_ns: list[int]) -> list[dict[str, object]]:
    experiment = {
        "Name": "start-container-benchmark",
        "Measurements": [
            {
                "Type": "Duration",
                "Name": "create PodSandbox and container",
                "Durations": durations_ns,
            }
        ],
    }
    entry = {"Name": "start-container-benchmark", "Value": {"AsJSON": json.dumps(experiment)}}
    return [{"SpecReports": [{"ReportEntries": None}, {"ReportEntries": [entry]}]}]


def write_outputs(out: Path) -> Path:
    files = {
        "pod_benchmark_data.json": lifecycle(["CreatePod", "StopPod"], [40, 30], [42, 31]),
        "container_benchmark_data.json": lifecycle(["CreateContainer"], [50.5]),
        "image_lifecycle_benchmark_data.json": lifecycle(["PullImage"], [120]),
        "image_listing_benchmark_data.json": lifecycle(["ListImages"], [0.7]),
    }
    for name, data in files.items():
        (out / name).write_text(json.dumps(data))
    report = out / "report.json"
    report.write_text(json.dumps(ginkgo_report([154_400_000])))
    return report


def test_critest_durations_come_back_in_ms_by_operation(tmp_path: Path) -> None:
    measures = critest_bench.parse(tmp_path, write_outputs(tmp_path))
    assert measures["critest pod: CreatePod"] == [40.0, 42.0]
    assert measures["critest pod: StopPod"] == [30.0, 31.0]
    assert measures["critest container: CreateContainer"] == [50.5]
    assert measures["critest image list: ListImages"] == [0.7]
    assert measures[critest_bench.FROM_SCRATCH] == [154.4]


def test_a_benchmark_critest_skipped_is_an_error_not_a_missing_row(tmp_path: Path) -> None:
    report = write_outputs(tmp_path)
    (tmp_path / "container_benchmark_data.json").unlink()
    with pytest.raises(RuntimeError, match=r"container_benchmark_data\.json"):
        critest_bench.parse(tmp_path, report)
    write_outputs(tmp_path)
    report.write_text(json.dumps([{"SpecReports": []}]))
    with pytest.raises(RuntimeError, match="from-scratch"):
        critest_bench.parse(tmp_path, report)


def test_params_run_each_lifecycle_one_at_a_time() -> None:
    params = critest_bench.params(5, "nginx", ["busybox", "pause"])
    assert params["containersNumber"] == params["podsNumber"] == params["imagesNumber"] == 5
    assert params["containersNumberParallel"] == params["podsNumberParallel"] == 1
    assert params["imagePullingBenchmarkImage"] == "nginx"
    assert params["imageListingBenchmarkImages"] == ["busybox", "pause"]


def test_breakdown_counts_each_sample_once_for_its_deepest_call(tmp_path: Path) -> None:
    process = 'process 1:"python -m cri_py.shim x"'
    create = "Containers.create (cri_py/shim/containers.py:182)"
    setup = "Containers.create.<locals>.<lambda> (cri_py/shim/containers.py:229)"
    stacks = [
        f"{process};serve (z.py:84);{create};receive_ready (cri_py/shim/sync.py:81) 30",
        f"{process};serve (z.py:84);{create};fork_child (s.py:121);{setup};run_init (l.py:486) 10",
        f'process 9:"python -m cri_py.cli serve";{"ContainerLifecycle._remove_exited (c.py:3)"} 4',
    ]
    collapsed = tmp_path / "profile.txt"
    collapsed.write_text("\n".join(stacks) + "\n")
    text = bench_profile.breakdown(collapsed, calls=2, rate=100)
    # 30 samples at 100 Hz over 2 calls: 150 ms each under the shim's create; the setup
    # process's 10 samples count for it alone (50 ms), not for the create above them.
    assert "== shim: create: 150.0 ms per call" in text
    assert "150.00 ms  receive_ready:81" in text
    assert "== shim: setup process: 50.0 ms per call" in text
    assert "== RemoveContainer: 20.0 ms per call" in text
    assert "(itself)" in text


def test_scale_measures_become_p50_series_against_the_number_of_pods() -> None:
    import report

    samples = {
        "scale N=10: RunPodSandbox": {"cri-py": [30.0, 32.0, 40.0], "containerd": [80.0]},
        "scale N=1: RunPodSandbox": {"cri-py": [28.0], "containerd": []},
        "scale N=1: daemon RSS (MiB)": {"cri-py": [76.5]},
        "RunPodSandbox": {"cri-py": [1.0]},
    }
    series = report.scale_series(samples)
    assert series == {
        "RunPodSandbox": {"cri-py": [(1, 28.0), (10, 32.0)], "containerd": [(10, 80.0)]},
        "daemon RSS (MiB)": {"cri-py": [(1, 76.5)]},
    }
