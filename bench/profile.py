"""Where cri-py's time goes in a pod's life: py-spy samples the daemon and every process it
starts (the shims, from their interpreter start on) while a client runs pod lifecycles.

Runs the same throw-away cri-py as bench/compare.py (own state, the bench CNI conflist,
cgroups under /cri-py-bench), then writes to <out>: `profile.txt` (py-spy's collapsed stacks),
`flame.svg`, and prints the functions with the most samples, inclusive, per process kind, then
the breakdown of each call: milliseconds per call under each step of RunPodSandbox,
CreateContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox (with --idle, so that
waits count: fsync, a shim's reply, a CNI plugin).

--shim samples the other side: one pod's shim (and the setup processes it forks, up to their
execve) while N containers are created, started, stopped and removed in that pod.

Usage (as root): .venv/bin/python bench/profile.py [--pods N] [--rate HZ] [--idle] [--shim]
                 [--out DIR]
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import BUSYBOX, TIMEOUT, Bench, create_container, pull
from runtimes import PAUSE_IMAGE, CriPy, cleanup_host, processes, write_cni_conflist

from cri_py.api import api_pb2 as pb


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


# Where each call's time goes: its entry frame in the daemon (or the shim, --shim) and the
# frames one and two levels under it that the breakdown groups by.
CALLS = {
    "RunPodSandbox": "SandboxService._create ",
    "CreateContainer": "ContainerLifecycle._create ",
    "StartContainer": "ContainerLifecycle.start ",
    "RemoveContainer": "ContainerLifecycle._remove_exited ",
    "RemoveContainer, after the answer": "Removals._finish ",
    "StopPodSandbox": "SandboxService.stop ",
    "RemovePodSandbox": "SandboxService.remove ",
    "shim: create": "Containers.create ",
    "shim: setup process": "Containers.create.<locals>.<lambda> ",
    "shim: start": "Containers.start ",
    "shim: remove": "Containers.remove ",
}


def short(frame: str) -> str:
    """`name (path/file.py:123)` -> `name:123`."""
    name, _, where = frame.partition(" (")
    return f"{name}:{where.rstrip(')').rpartition(':')[2]}" if where else name


def breakdown(collapsed: Path, calls: int, rate: int, depth: int = 2, limit: int = 12) -> str:
    """Milliseconds per call under each step of every entry frame of CALLS. A sample counts
    for the deepest entry frame in its stack: a setup process forked by the shim's create shows
    the create's frames above its own, and is counted as the setup process only."""
    per_sample_ms = 1000.0 / rate
    steps: dict[str, collections.Counter[str]] = {call: collections.Counter() for call in CALLS}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        deepest = None
        for i, frame in enumerate(frames):
            for call, root in CALLS.items():
                if frame.startswith(root):
                    deepest = (call, i)
        if deepest is None:
            continue
        call, at = deepest
        below = frames[at + 1 : at + 1 + depth]
        steps[call][" > ".join(short(f) for f in below) or "(itself)"] += int(count_text)
    out = []
    for call, root in CALLS.items():
        total = sum(steps[call].values())
        if not total:
            continue
        out.append(f"== {call}: {total * per_sample_ms / calls:.1f} ms per call ({root.strip()})")
        for step, count in steps[call].most_common(limit):
            out.append(f"{count * per_sample_ms / calls:6.2f} ms  {step}")
    return "\n".join(out)


def shim_lifecycles(rt: CriPy, bench: Bench, count: int, spy: Callable[[int], None]) -> None:
    """N containers through their life in one pod; `spy(shim_pid)` starts sampling the pod's
    shim once the pod runs."""
    stub = rt.runtime_stub()
    before = set(rt.shim_pids(processes()))
    sandbox_id, first, _ = bench.start_pod(rt, stub)
    pod, container = bench.configs(rt)
    spy(min(set(rt.shim_pids(processes())) - before))  # the shim, older than its pod's init
    for n in range(count):
        container.metadata.name = f"c{n}"
        cid = create_container(stub, sandbox_id, pod, container)
        stub.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        stub.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=TIMEOUT)
        stub.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
    bench.stop_pod(stub, sandbox_id, first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pod lifecycles to sample")
    parser.add_argument(
        "--lists", type=int, default=0, help="instead: N pods present, sample List*/Status calls"
    )
    parser.add_argument(
        "--shim", action="store_true", help="instead: one pod's shim, --pods containers in it"
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
    spies: list[subprocess.Popen[bytes]] = []

    def spy(pid: int) -> None:
        common = ["--pid", str(pid), "--subprocesses", "--rate", str(args.rate), "--nonblocking"]
        common += ["--idle"] if args.idle else []
        for fmt, name in (("raw", "profile.txt"), ("flamegraph", "flame.svg")):
            command = [py_spy, "record", *common, "--format", fmt, "-o", str(out / name)]
            spies.append(subprocess.Popen(command))
        time.sleep(1.5)  # py-spy attached

    try:
        write_cni_conflist()
        rt.start()
        for image in (BUSYBOX, PAUSE_IMAGE):
            pull(rt, image)
        bench.lifecycles(rt, 2)  # warm-up
        bench.samples.clear()
        if args.shim:
            shim_lifecycles(rt, bench, args.pods, spy)
        else:
            spy(rt.pid)
            if args.lists:
                bench.lists(args.lists, args.pods)
            else:
                bench.lifecycles(rt, args.pods)
        for process in spies:
            process.send_signal(signal.SIGINT)
        for process in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
    finally:
        for process in spies:
            if process.poll() is None:
                process.kill()
                process.wait()
        rt.stop()
        cleanup_host()
    for measure, by_runtime in bench.samples.items():
        values = sorted(by_runtime["cri-py"])
        print(f"{measure}: p50 {values[len(values) // 2]:.1f} (under the profiler)")
    print(top_frames(out / "profile.txt", args.top))
    if not args.lists:
        print(breakdown(out / "profile.txt", args.pods, args.rate))
    print(f"profile: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
