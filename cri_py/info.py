"""`cri-py info`: what this node's cri-py is and what it is doing, for an operator.

Counts, readiness and the network mode come from the running daemon over its socket (Status
verbose and the List calls, as crictl would ask); the config summary, cgroup mode and leak check
are read on this host, so they print even when the daemon is down. `render` is pure.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

import cri_py
from cri_py.config import Config
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode

CALL_TIMEOUT_SECONDS = 5.0

_CGROUP_MODES = {
    CgroupMode.V1: "v1",
    CgroupMode.HYBRID: "hybrid (controllers on v1, a cgroup2 mount beside them)",
    CgroupMode.V2: "v2 (unified)",
}


@dataclass(frozen=True)
class DaemonReport:
    """What the running daemon answered."""

    version: str
    conditions: Sequence[tuple[str, bool, str, str]]  # type, status, reason, message
    network: str  # "cni" or "builtin"
    pods: Mapping[str, int]
    containers: Mapping[str, int]
    images: int
    shims: int | None


@dataclass(frozen=True)
class InfoReport:
    config: Config
    config_files: Sequence[Path]
    cgroup_mode: str
    daemon: DaemonReport | None
    daemon_problem: str = ""  # why `daemon` is None
    leaks: Sequence[str] | None = None  # None: the check itself failed
    leak_problem: str = ""


def _counts(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n)
    return f"{total} ({parts})" if parts else str(total)


def render(report: InfoReport) -> str:
    config = report.config
    lines = [f"cri-py {cri_py.__version__}"]
    files = ", ".join(str(p) for p in report.config_files) or "none (embedded defaults)"
    registries = ", ".join(
        f"{host} ({len(r.mirrors)} mirror{'s' if len(r.mirrors) != 1 else ''})"
        for host, r in sorted(config.registries.items())
    )
    metrics = "off"
    if config.metrics.address and config.metrics.port:
        metrics = f"http://{config.metrics.address}:{config.metrics.port}/metrics"
    elif config.metrics.address:
        metrics = f"on {config.metrics.address}, a port chosen at start (see the daemon's log)"
    lines += [
        "config:",
        f"  files: {files}",
        f"  socket: {config.socket}",
        f"  root_dir: {config.root_dir}  run_dir: {config.run_dir}",
        f"  log: {config.log_level} ({config.log_format})",
        f"  cgroup parent: {config.cgroups.default_parent}",
        f"  built-in network: bridge {config.network.bridge}, subnet {config.network.subnet}",
        f"  CNI: conf dir {config.network.cni_conf_dir}, "
        f"bin dirs {', '.join(config.network.cni_bin_dirs)}",
        f"  registries: {registries or 'none configured'}",
        f"  pinned images: {', '.join(config.images.pinned) or 'none'}",
        f"  metrics: {metrics}",
        f"cgroups: {report.cgroup_mode}",
    ]
    daemon = report.daemon
    if daemon is None:
        lines.append(f"daemon: not running ({report.daemon_problem})")
    else:
        lines.append(f"daemon: running, {daemon.version}, on {config.socket}")
        for kind, status, reason, message in daemon.conditions:
            state = "true" if status else f"false ({reason}: {message})"
            lines.append(f"  {kind}: {state}")
        mode = "CNI" if daemon.network == "cni" else f"built-in bridge {config.network.bridge}"
        lines += [
            f"  network mode: {mode}",
            f"  pods: {_counts(daemon.pods)}",
            f"  containers: {_counts(daemon.containers)}",
            f"  images: {daemon.images}",
            f"  shims: {'unknown' if daemon.shims is None else daemon.shims}",
        ]
    if report.leaks is None:
        lines.append(f"leaks: check failed ({report.leak_problem})")
    elif not report.leaks:
        lines.append("leaks: none")
    else:
        lines.append(f"leaks: {len(report.leaks)}")
        lines += [f"  {leak}" for leak in report.leaks]
    return "\n".join(lines) + "\n"


def ask_daemon(socket: str) -> DaemonReport:
    """Status (verbose), ListPodSandbox, ListContainers and ListImages over the CRI socket;
    grpc.RpcError when nothing answers."""
    from cri_py.api import api_pb2 as pb
    from cri_py.api import api_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        runtime = pb_grpc.RuntimeServiceStub(channel)
        images = pb_grpc.ImageServiceStub(channel)
        version = runtime.Version(pb.VersionRequest(), timeout=CALL_TIMEOUT_SECONDS)
        status = runtime.Status(pb.StatusRequest(verbose=True), timeout=CALL_TIMEOUT_SECONDS)
        pods = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT_SECONDS)
        containers = runtime.ListContainers(
            pb.ListContainersRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
        image_list = images.ListImages(pb.ListImagesRequest(), timeout=CALL_TIMEOUT_SECONDS)
    shims = status.info.get("shims", "")
    return DaemonReport(
        version=f"{version.runtime_name} {version.runtime_version}",
        conditions=[(c.type, c.status, c.reason, c.message) for c in status.status.conditions],
        network=status.info.get("network", ""),
        pods=collections.Counter(
            pb.PodSandboxState.Name(p.state).removeprefix("SANDBOX_").lower() for p in pods.items
        ),
        containers=collections.Counter(
            pb.ContainerState.Name(c.state).removeprefix("CONTAINER_").lower()
            for c in containers.containers
        ),
        images=len(image_list.images),
        shims=int(shims) if shims.isdigit() else None,
    )


def gather(config: Config, config_files: Sequence[Path]) -> InfoReport:
    """Everything `render` prints, from this host and the daemon (if it answers)."""
    try:
        cgroup_mode = _CGROUP_MODES[Cgroupfs.from_host().mode]
    except OSError as e:
        cgroup_mode = f"unknown ({e})"
    daemon: DaemonReport | None = None
    problem = ""
    if not Path(config.socket).exists():
        problem = f"no socket at {config.socket}"
    else:
        try:
            daemon = ask_daemon(config.socket)
        except grpc.RpcError as e:
            problem = f"{config.socket} does not answer: {e.code().name}: {e.details()}"
    leaks: list[str] | None = None
    leak_problem = ""
    try:
        from cri_py.runtime.leaks import find_leaks

        leaks = [str(leak) for leak in find_leaks(config)]
    except Exception as e:  # a diagnostic tool reports its own failure and goes on
        leak_problem = repr(e)
    return InfoReport(
        config=config,
        config_files=config_files,
        cgroup_mode=cgroup_mode,
        daemon=daemon,
        daemon_problem=problem,
        leaks=leaks,
        leak_problem=leak_problem,
    )
