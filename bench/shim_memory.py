"""What a pod's shim costs in memory: the pages it keeps private after its fork from the shim
template, by mapping, at each step of a pod's life.

Runs the same throw-away cri-py as bench/compare.py, then for one pod prints the shim's
Private_Dirty / Pss (kB, from /proc/<pid>/smaps) after RunPodSandbox, after each of N
containers' create and start, and at rest; the template's own set before any pod and after;
and, for the shim at rest, the mappings its private pages are in. Pages a shim has not
written stay shared with the template (Shared_Dirty), whatever the number of pods; each page
it writes is copied, so Private_Dirty is what every more pod costs.

Usage (as root): .venv/bin/python bench/shim_memory.py [--containers N]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import BUSYBOX, TIMEOUT, Bench, create_container, pull
from runtimes import PAUSE_IMAGE, CriPy, cleanup_host, processes, write_cni_conflist

from cri_py.api import api_pb2 as pb

FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    return values


def private_by_mapping(pid: int) -> collections.Counter[str]:
    """Private_Dirty kB per mapping name ([heap], [anon], a library's path)."""
    totals: collections.Counter[str] = collections.Counter()
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            name = fields[5] if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Private_Dirty:":
            totals[name] += int(fields[1])
    return totals


def show(label: str, pid: int) -> None:
    values = rollup(pid)
    print(f"{label:<34} " + "  ".join(f"{k} {values.get(k, 0):6d}" for k in FIELDS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=3)
    args = parser.parse_args()
    cleanup_host()
    rt = CriPy()
    bench = Bench([rt], 1, "mem")
    try:
        write_cni_conflist()
        rt.start()
        for image in (BUSYBOX, PAUSE_IMAGE):
            pull(rt, image)
        stub = rt.runtime_stub()
        (template,) = rt.shim_pids(processes())
        show("template, before any pod", template)
        pod, container = bench.configs(rt)
        sandbox_id = stub.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod), timeout=TIMEOUT
        ).pod_sandbox_id
        shim = min(set(rt.shim_pids(processes())) - {template})
        time.sleep(0.5)
        show("shim after RunPodSandbox", shim)
        for n in range(args.containers):
            container.metadata.name = f"c{n}"
            cid = create_container(stub, sandbox_id, pod, container)
            time.sleep(0.3)
            show(f"shim after CreateContainer {n + 1}", shim)
            stub.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
            time.sleep(0.3)
            show(f"shim after StartContainer {n + 1}", shim)
        time.sleep(5)
        show("shim at rest (5 s later)", shim)
        show("template, after", template)
        print("shim at rest, Private_Dirty by mapping (kB):")
        for name, kb in private_by_mapping(shim).most_common(8):
            print(f"  {kb:6d}  {name}")
        bench.remove_all(rt)
    finally:
        rt.stop()
        cleanup_host()
    return 0


if __name__ == "__main__":
    sys.exit(main())
