"""The daemon's life: startup checks, the gRPC server on the unix socket, graceful stop.

Startup refuses, with a message saying why, when not root, when another cri-py holds the run
dir's lock, or when a live process answers on the socket. A stale socket file is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

import cri_py
from cri_py.api import api_pb2 as pb
from cri_py.config import Config
from cri_py.errors import StartupError
from cri_py.images.admin import socket_path as admin_socket_path
from cri_py.images.service import ImageService
from cri_py.linux import features
from cri_py.linux.cgroupfs import Cgroupfs
from cri_py.linux.systemd import SystemdClient, SystemdError, systemd_is_init
from cri_py.log import get_logger
from cri_py.network.bridge import BuiltinNetwork
from cri_py.network.hostports import HostPorts
from cri_py.network.selector import NetworkSelector
from cri_py.runtime.cgroups import CgroupManager
from cri_py.runtime.containers import ContainerService
from cri_py.runtime.node import NodeState
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.systemd_cgroups import SystemdCgroupManager
from cri_py.server.admin import AdminServer
from cri_py.server.guard import Observer, service_handler
from cri_py.server.images import ImageServicer
from cri_py.server.reload import Reloader
from cri_py.server.runtime import RuntimeServicer
from cri_py.streaming.server import StreamServer

log = get_logger("cri_py.daemon")

# kubelet's own client limit; larger messages (e.g. ExecSync output) are refused by it anyway.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SOCKET_MODE = 0o660
STOP_GRACE_SECONDS = 5.0


def check_root() -> None:
    if os.geteuid() != 0:
        raise StartupError(
            "cri-py must run as root: it creates namespaces, mounts and cgroups "
            f"(running as uid {os.geteuid()})"
        )


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on `<run_dir>/cri-py.lock` (with our PID in it) while serving."""
    path = run_dir / "cri-py.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(
                f"another cri-py (pid {holder}) is running with run dir {run_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def claim_socket(path: Path) -> None:
    """Removes a stale socket file; refuses when a live process is accepting on it."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            raise StartupError(f"cannot check socket {path}: {e}") from None
    else:
        raise StartupError(f"socket {path} is held by a live process; is cri-py already running?")
    finally:
        probe.close()
    path.unlink()


def build_server(
    config: Config,
    node: NodeState,
    sandboxes: SandboxService,
    images: ImageService | None = None,
    containers: ContainerService | None = None,
    streams: StreamServer | None = None,
    observe: Observer | None = None,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    services = pb.DESCRIPTOR.services_by_name
    server.add_generic_rpc_handlers(
        [
            service_handler(
                services["RuntimeService"],
                pb,
                RuntimeServicer(config, node, sandboxes, containers, streams),
                observe,
            ),
            service_handler(
                services["ImageService"],
                pb,
                ImageServicer(images or ImageService(config), sandboxes.handlers.names()),
                observe,
            ),
        ]
    )
    return server


def start_sandboxes(
    config: Config, hostports: HostPorts, cgroups: CgroupManager | None
) -> SandboxService:
    """The sandbox service, with the bridge ensured and state recovered from the last run.

    The built-in bridge is made even when a CNI config exists: it is cheap, and the node stays
    ready for new pods if that config is removed later."""
    network = BuiltinNetwork(config.network, Path(config.root_dir) / "network")
    if not config.network.builtin:
        log.info(
            "built-in network off: pods wait for a CNI config", dir=config.network.cni_conf_dir
        )
    else:
        try:
            state = network.ensure_bridge()
        except OSError as e:
            log.error("built-in network unusable", bridge=config.network.bridge, error=str(e))
        else:
            log.info("built-in network", bridge=config.network.bridge, ready=state.ready)
    sandboxes = SandboxService(config, NetworkSelector(config.network, network), hostports, cgroups)
    sandboxes.recover()
    sandboxes.start_template()
    # Probed once, here, so Status answers from the cache (pods with their own users need it).
    problem = features.user_namespaces_problem(config.root_dir)
    if problem:
        log.warning("user namespaces unavailable; not advertised", reason=problem)
    else:
        log.info("user namespaces available", probe_dir=config.root_dir)
    return sandboxes


def start_cgroups(config: Config) -> CgroupManager | None:
    """The cgroup manager over this host's hierarchies; without any, containers run
    unconfined (and stats are empty) rather than not at all."""
    try:
        fs = Cgroupfs.from_host()
    except OSError as e:
        log.error("no cgroup hierarchy; containers get no limits", error=str(e))
        return None
    driver = config.cgroups.driver
    if driver in ("", "systemd"):
        client, problem = connect_systemd()
        if client is not None:
            manager = SystemdCgroupManager(
                fs, client, config.cgroups.pids_limit, config.cgroups.default_slice
            )
            log.info(
                "cgroups",
                driver="systemd",
                chosen="configured" if driver else "detected",
                mode=fs.mode.value,
                systemd=manager.version,
                default_slice=config.cgroups.default_slice,
            )
            return manager
        if driver == "systemd":
            raise StartupError(f"cgroups.driver is systemd, but {problem}")
        log.info("cgroups: systemd driver not usable", reason=problem)
    log.info(
        "cgroups",
        driver="cgroupfs",
        chosen="configured" if driver else "detected",
        mode=fs.mode.value,
        default_parent=config.cgroups.default_parent,
    )
    return CgroupManager(fs, config.cgroups.pids_limit)


def connect_systemd() -> tuple[SystemdClient | None, str]:
    """A client of systemd when PID 1 is systemd and answers on the system bus, else why not."""
    if not systemd_is_init():
        return None, "PID 1 is not systemd"
    client = SystemdClient()
    try:
        client.version()
    except SystemdError as e:
        client.close()
        return None, f"systemd does not answer on the system bus ({e})"
    return client, ""


# At most this many CRI calls block at once (execs, stops, pulls' disk work...); more wait.
BLOCKING_CALL_THREADS = 256


async def serve(config: Config, load: Callable[[], Config] | None = None) -> None:
    """Runs the daemon until SIGTERM or SIGINT; the socket is removed on the way out.

    `load` reads the config files again (as at startup, flags winning): SIGHUP calls it and
    applies what can change while running (`cri_py.server.reload`)."""
    check_root()
    # Blocking CRI calls run on the loop's default executor. ExecSync holds a thread for the
    # whole command and StopContainer for the grace period, so asyncio's default pool (CPUs +
    # 4 threads) let a pod's looping PreStop hooks delay every other call on the node: the
    # kill of a sidecar came seconds late. The pool only starts threads as calls need them.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=BLOCKING_CALL_THREADS, thread_name_prefix="cri-py-call")
    )
    # State and sockets are root's alone; the socket itself is opened up to 0660 below.
    os.umask(0o077)
    run_dir, root_dir, sock = Path(config.run_dir), Path(config.root_dir), Path(config.socket)
    for directory in (run_dir, root_dir, sock.parent):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        claim_socket(sock)
        node = NodeState(root_dir)
        hostports = HostPorts(asyncio.get_running_loop(), config.network.hostport_max_connections)
        cgroups = start_cgroups(config)
        loaded = config  # what a SIGHUP's reload compares the files with
        if cgroups is not None:
            # The driver in use, for RuntimeConfig (kubelet's cgroupDriver follows it).
            config = dataclasses.replace(
                config, cgroups=dataclasses.replace(config.cgroups, driver=cgroups.driver)
            )
        sandboxes = await asyncio.to_thread(start_sandboxes, config, hostports, cgroups)
        images = ImageService(config)
        containers = ContainerService(
            config, sandboxes, images, asyncio.get_running_loop(), cgroups
        )
        sandboxes.before_stop = containers.stop_sandbox_containers
        sandboxes.after_stop = containers.sandbox_stopped
        sandboxes.before_remove = containers.remove_sandbox_containers
        sandboxes.shim_started = containers.sandbox_shim_started
        sandboxes.on_event = containers.sandbox_event
        await asyncio.to_thread(containers.recover)
        # NRI plugins, when enabled: after recovery, so they synchronize with every pod.
        # NRI and the metrics endpoint are off by default: their modules (prometheus_client,
        # ~4 MiB; NRI's protobufs) are imported only when configured on.
        nri = None
        if config.nri.enable:
            from cri_py.nri.hooks import start_nri

            nri = await asyncio.to_thread(
                start_nri, config.nri, sandboxes, containers, cri_py.__version__
            )
        streams = StreamServer(config.stream, containers)
        await streams.start()
        metrics = None
        if config.metrics.address:
            from cri_py.server.prometheus import start_metrics

            metrics = start_metrics(config, sandboxes, containers, images)
        observe = metrics[0].observe_rpc if metrics else None
        server = build_server(config, node, sandboxes, images, containers, streams, observe)
        server.add_insecure_port(f"unix://{sock}")
        await server.start()
        # `cri-py images import|export|tag` and the `ctr` stand-in reach the image service here.
        admin = AdminServer(admin_socket_path(run_dir), images, asyncio.get_running_loop())
        admin.start()
        try:
            os.chown(sock, 0, 0)
            os.chmod(sock, SOCKET_MODE)
            log.info("serving", version=cri_py.__version__, socket=str(sock), pid=os.getpid())
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            if load is not None:
                reloader = Reloader(loaded, load, images, sandboxes.network)
                loop.add_signal_handler(signal.SIGHUP, reloader.reload)
            await stop.wait()
            log.info("stopping", grace_seconds=STOP_GRACE_SECONDS)
        finally:
            # Event streams end first, cleanly: the grace below is for unary calls.
            containers.events.close()
            await server.stop(STOP_GRACE_SECONDS)
            await asyncio.to_thread(admin.close)
            if metrics:
                await asyncio.to_thread(metrics[1].close)
            await streams.close()
            # Shims (and so pods) keep running: they are not the daemon's to stop.
            # Removed containers' cleanups and lease releases, still on the loop (bounded:
            # the next start finishes what is left).
            await containers.drain()
            if nri is not None:
                nri.adaptation.stop()
            containers.close()
            sandboxes.close()
            sock.unlink(missing_ok=True)
            log.info("stopped")
