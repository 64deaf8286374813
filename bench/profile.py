"""Where cri-py's time goes in a pod's life: py-spy samples the daemon and every process it
starts (the shims, from their interpreter start on) while a client runs pod lifecycles.

Runs the same throw-away cri-py as bench/compare.py (own state, the bench CNI conflist,
cgroups under /cri-py-bench), then writes to <out>: `profile.txt` (py-spy's collapsed stacks),
`flame.svg`, and prints the functions with the most samples, inclusive, per process kind.

Usage (as root): .venv/bin/python bench/profile.py [--pods N] [--rate HZ] [--out DIR]
py-spy comes with the `bench` extra (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import BUSYBOX, Bench, pull
from runtimes import PAUSE_IMAGE, CriPy, cleanup_host, write_cni_conflist


def top_frames(collapsed: Path, limit: int) -> str:
    """Inclusive sample counts per function, split by process (py-spy's first frame)."""
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        process = "shim" if "cri_py.shim" in frames[0] else "daemon"
        count = int(count_text)
        totals[process] += count
        for frame in set(frames[1:]):
            inclusive[process][frame] += count
    out = []
    for process, counter in inclusive.items():
        out.append(f"== {process}: {totals[process]} samples")
        for frame, count in counter.most_common(limit):
            out.append(f"{count * 100 / totals[process]:5.1f}%  {frame}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pod lifecycles to sample")
    parser.add_argument(
        "--lists", type=int, default=0, help="instead: N pods present, sample List*/Status calls"
    )
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path(__file__).resolve().parent / "results" / f"profile-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    cleanup_host()
    rt = CriPy()
    bench = Bench([rt], 1, "prof")
    try:
        write_cni_conflist()
        rt.start()
        for image in (BUSYBOX, PAUSE_IMAGE):
            pull(rt, image)
        bench.lifecycles(rt, 2)  # warm-up
        bench.samples.clear()
        common = ["--pid", str(rt.pid), "--subprocesses", "--rate", str(args.rate), "--nonblocking"]
        common += ["--idle"] if args.idle else []
        spies = [
            subprocess.Popen([py_spy, "record", *common, "--format", fmt, "-o", str(out / name)])
            for fmt, name in (("raw", "profile.txt"), ("flamegraph", "flame.svg"))
        ]
        time.sleep(1.5)  # py-spy attached
        if args.lists:
            bench.lists(args.lists, args.pods)
        else:
            bench.lifecycles(rt, args.pods)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
    finally:
        rt.stop()
        cleanup_host()
    for measure, by_runtime in bench.samples.items():
        values = sorted(by_runtime["cri-py"])
        print(f"{measure}: p50 {values[len(values) // 2]:.1f} (under the profiler)")
    print(top_frames(out / "profile.txt", args.top))
    print(f"profile: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
