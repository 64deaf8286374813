"""Results of bench/compare.py: summary statistics, the markdown table, JSON and the PNG plot."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path

Samples = dict[str, dict[str, list[float]]]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "max": max(values),
    }


def unit(measure: str) -> str:
    if "MiB" in measure:
        return ""
    return " ms"


def cell(stats: dict[str, float] | None, measure: str) -> str:
    if stats is None:
        return "-"
    if stats["n"] == 1 or stats["min"] == stats["max"]:
        return f"{stats['p50']:.1f}{unit(measure)}"
    return (
        f"{stats['min']:.1f} / **{stats['p50']:.1f}** / {stats['p90']:.1f} / "
        f"{stats['max']:.1f}{unit(measure)} (n={stats['n']})"
    )


def markdown(summaries: dict[str, dict[str, dict[str, float]]], runtimes: list[str]) -> str:
    compare = len(runtimes) > 1
    head = "| measure | " + " | ".join(f"{r}: min / **p50** / p90 / max" for r in runtimes)
    lines = [head + (" | ratio p50 |" if compare else " |")]
    lines.append("|---" * (len(runtimes) + 1 + compare) + "|")
    for measure, by_runtime in summaries.items():
        cells = [cell(by_runtime.get(r), measure) for r in runtimes]
        row = f"| {measure} | " + " | ".join(cells)
        if compare:
            a, b = by_runtime.get(runtimes[0]), by_runtime.get(runtimes[1])
            ratio = f"{a['p50'] / b['p50']:.2f}" if a and b and b["p50"] else "-"
            row += f" | {ratio}"
        lines.append(row + " |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "kernel": platform.release()}
    for tool, args in {"containerd": ["--version"], "runc": ["--version"]}.items():
        try:
            text = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10).stdout
            found[tool] = text.splitlines()[0] if text else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found


def plot(samples: Samples, runtimes: list[str], path: Path) -> bool:
    """One panel per latency measure: each runtime's samples as a box with the points over it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measures = [
        m for m in samples if "MiB" not in m and "CPU" not in m and not m.startswith("scale ")
    ]
    if not measures:
        return True  # nothing to draw (a scale-only run): not a missing matplotlib
    cols = 4
    rows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    colors = ["#1f77b4", "#ff7f0e"]
    for ax, measure in zip(axes.flat, measures, strict=False):
        data = [samples[measure].get(r, []) for r in runtimes]
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, values in enumerate(data):
            xs = [i + 1 + (j % 7 - 3) * 0.03 for j in range(len(values))]
            ax.scatter(xs, values, s=8, alpha=0.6, color=colors[i % 2])
        ax.set_xticks(range(1, len(runtimes) + 1), runtimes)
        ax.set_title(measure if len(measure) < 40 else measure[:38] + "...", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(measures) :]:
        ax.axis("off")
    fig.suptitle("CRI call latency, " + " vs ".join(runtimes) + " (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def scale_series(samples: Samples) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The scale scenario's measures as series: what -> runtime -> [(N, p50)], N ascending."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for measure, by_runtime in samples.items():
        if not measure.startswith("scale N="):
            continue
        level_text, _, what = measure[len("scale N=") :].partition(": ")
        for runtime, values in by_runtime.items():
            if values:
                point = (int(level_text), percentile(values, 0.5))
                series.setdefault(what, {}).setdefault(runtime, []).append(point)
    for by_runtime in series.values():
        for points in by_runtime.values():
            points.sort()
    return series


def plot_scale(samples: Samples, runtimes: list[str], path: Path) -> bool:
    """One panel per scale measure: p50 against the number of pods, a line per runtime."""
    series = scale_series(samples)
    if not series:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.4), squeeze=False)
    for ax, (what, by_runtime) in zip(axes.flat, series.items(), strict=True):
        for runtime in runtimes:
            points = by_runtime.get(runtime, [])
            ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=runtime)
        ax.set_xscale("log")
        ax.set_xlabel("pods present", fontsize=8)
        ax.set_ylabel("MiB" if "MiB" in what else "ms (p50)", fontsize=8)
        ax.set_title(what, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("Scale: " + " vs ".join(runtimes) + " (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(out: Path, samples: Samples, meta: dict[str, object]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    runtimes = [str(r) for r in meta["runtimes"]]  # type: ignore[attr-defined]
    summaries = {
        measure: {r: summary(v) for r, v in by_runtime.items() if v}
        for measure, by_runtime in samples.items()
    }
    table = markdown(summaries, runtimes)
    (out / "results.md").write_text(table)
    data = {"meta": meta, "summary": summaries, "samples": samples}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    if not plot(samples, runtimes, out / "latency.png"):
        print("matplotlib missing: no plot (pip install -e '.[bench]')")
    plot_scale(samples, runtimes, out / "scale.png")
    return table
