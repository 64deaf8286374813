"""The runtime side of NRI (github.com/containerd/nri v0.12): plugins connect to a unix socket (or
are started from the plugin dir with a socket of their own), register with a name and an
index, are configured (their event subscription) and synchronized (the pods and containers
that exist), then get the events they subscribed to, in index order.

As containerd: one event at a time across all plugins; a plugin that times out, hangs up or
garbles the protocol is disconnected and the event goes on without it; a plugin that answers
an event with an error fails it (and with it the CRI call, for the events that can fail).
A plugin's Synchronize holds the events back, so every container either is in the set it is
synchronized with or reaches it as an event afterwards (none is lost in between).

What the events carry and what becomes of adjustments is `hooks.py`'s; the framing is
`connection.py`'s.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from cri_py.errors import StartupError
from cri_py.log import get_logger
from cri_py.nri import api_pb2 as api
from cri_py.nri import ttrpc
from cri_py.nri.adjust import (
    AdjustmentError,
    Owners,
    apply_adjustment,
    apply_resources,
    nri_resources,
    spec_resources,
)
from cri_py.nri.connection import RUNTIME_SERVICE_NAME, CallError, PluginConnection

log = get_logger("cri_py.nri")

# What the runtime tells plugins it speaks (the version of the API vendored in protos/nri/).
NRI_VERSION = "v0.12.2"
# All the events a plugin may subscribe to (NRI's ValidEvents: bits 1..LAST-1).
VALID_EVENTS = (1 << (api.LAST - 1)) - 1
PLUGIN_INDEX = re.compile(r"^[0-9]{2}$")
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
# Objects per Synchronize message when the whole state does not fit one ttrpc message.
SYNC_CHUNK = 256

R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class Settings:
    socket_path: str = "/var/run/nri/nri.sock"
    plugin_path: str = "/opt/nri/plugins"
    plugin_config_path: str = "/etc/nri/conf.d"
    registration_timeout: float = 5.0
    request_timeout: float = 2.0


class PluginError(Exception):
    """A plugin refused an event (answered it with an error), or its adjustment is refused."""


def event_bit(event: int) -> int:
    return 1 << (event - 1)


class Plugin:
    """One connected plugin."""

    def __init__(
        self,
        connection: PluginConnection,
        index: str = "",
        name: str = "",
        config: str = "",
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.connection = connection
        self.index = index
        self.name = name
        self.config = config
        self.process = process
        self.events = 0
        self.registered = threading.Event()
        self.registration_error = ""

    @property
    def full_name(self) -> str:
        return f"{self.index or '??'}-{self.name or 'plugin'}"

    @property
    def closed(self) -> bool:
        return self.connection.closed

    def subscribed(self, event: int) -> bool:
        return bool(self.events & event_bit(event))

    def close(self) -> None:
        self.connection.close()
        if self.process is not None and self.process.poll() is None:
            # A plugin we started is ours to end (containerd kills it too).
            with contextlib.suppress(OSError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


Snapshot = Callable[[], tuple[list[api.PodSandbox], list[api.Container]]]
Updater = Callable[[Sequence[api.ContainerUpdate]], list[api.ContainerUpdate]]


class Adaptation:
    def __init__(
        self,
        settings: Settings,
        runtime_name: str,
        runtime_version: str,
        snapshot: Snapshot,
        update: Updater,
    ) -> None:
        self.settings = settings
        self._runtime_name = runtime_name
        self._runtime_version = runtime_version
        self._snapshot = snapshot
        self._update = update
        # One event at a time; a Synchronize holds it too.
        self._events = threading.RLock()
        self._plugins: list[Plugin] = []
        # Every plugin connected and not yet refused, admitted or not (closed on stop).
        self._connected: set[Plugin] = set()
        self._connected_lock = threading.Lock()
        # Containers whose CreateContainer went through but that are not listed yet.
        self._creating: dict[str, api.Container] = {}
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._updates_lock = threading.Lock()

    # --- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the plugins in the plugin dir, then listens for plugins that connect."""
        for plugin in self._launch_plugins():
            self._thread(self._admit, plugin, "nri-admit")
        path = Path(self.settings.socket_path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(16)
        except OSError as e:
            listener.close()
            raise StartupError(f"NRI socket {path}: {e.strerror or e}") from None
        self._listener = listener
        self._thread(self._accept_loop, listener, "nri-accept")
        log.info("NRI listening", socket=str(path), plugin_path=self.settings.plugin_path)

    def _thread(self, target: Callable[..., None], arg: Any, name: str) -> None:
        threading.Thread(target=target, args=(arg,), name=name, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.settings.socket_path)
        with self._connected_lock:
            plugins, self._connected = self._connected, set()
        with self._events:
            plugins |= set(self._plugins)
            self._plugins = []
        for plugin in plugins:
            plugin.close()  # and a plugin we started is killed

    def plugins(self) -> list[str]:
        """The active plugins, in invocation order."""
        with self._events:
            self._prune()
            return [p.full_name for p in self._plugins]

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            plugin = self._connect(sock)
            self._thread(self._admit, plugin, "nri-admit")

    def _launch_plugins(self) -> list[Plugin]:
        """The executables `NN-name` of the plugin dir, each started with its own socket."""
        directory = Path(self.settings.plugin_path)
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as e:
            log.error("NRI plugin dir unreadable", path=str(directory), error=str(e))
            return []
        plugins = []
        for entry in entries:
            if not entry.is_file() or not os.access(entry, os.X_OK):
                continue
            index, _, name = entry.name.partition("-")
            if not PLUGIN_INDEX.match(index) or not PLUGIN_NAME.match(name):
                log.warning("NRI plugin skipped: not named NN-name", path=str(entry))
                continue
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                env = {
                    "NRI_PLUGIN_NAME": name,
                    "NRI_PLUGIN_IDX": index,
                    "NRI_PLUGIN_SOCKET": str(theirs.fileno()),
                    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                }
                process = subprocess.Popen(
                    [str(entry)],
                    env=env,
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as e:
                log.error("NRI plugin did not start", path=str(entry), error=str(e))
                ours.close()
                continue
            finally:
                theirs.close()
            plugin = self._connect(ours, index, name, process)
            plugin.config = self._plugin_config(index, name)
            log.info("NRI plugin started", plugin=plugin.full_name, pid=process.pid)
            plugins.append(plugin)
        return plugins

    def _plugin_config(self, index: str, name: str) -> str:
        directory = Path(self.settings.plugin_config_path)
        for candidate in (directory / f"{index}-{name}.conf", directory / f"{name}.conf"):
            try:
                return candidate.read_text()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("NRI plugin config unreadable", path=str(candidate), error=str(e))
                return ""
        return ""

    def _connect(
        self,
        sock: socket.socket,
        index: str = "",
        name: str = "",
        process: subprocess.Popen[bytes] | None = None,
    ) -> Plugin:
        plugin: Plugin | None = None

        def plugin_name() -> str:
            return plugin.full_name if plugin is not None else "plugin"

        def handle(service: str, method: str, payload: bytes) -> tuple[bytes, int, str]:
            assert plugin is not None
            return self._serve(plugin, service, method, payload)

        connection = PluginConnection(sock, handle, f"{index}-{name}" if name else "plugin")
        plugin = Plugin(connection, index, name, process=process)
        with self._connected_lock:
            if self._stopping.is_set():
                connection.close()
            self._connected.add(plugin)

        def forget() -> None:
            with self._connected_lock:
                self._connected.discard(plugin)

        connection.on_close(forget)
        connection.on_close(lambda: log.info("NRI plugin connection closed", plugin=plugin_name()))
        connection.start()
        return plugin

    # --- registration ------------------------------------------------------------------------

    def _admit(self, plugin: Plugin) -> None:
        """Registration, configuration, synchronization; then the plugin gets events."""
        try:
            if not plugin.registered.wait(self.settings.registration_timeout):
                raise PluginError("registration timed out")
            if plugin.registration_error:
                plugin.connection.wait_closed(1.0)  # after the plugin is told why
                raise PluginError(plugin.registration_error)
            self._configure(plugin)
            with self._events:
                if self._stopping.is_set():
                    raise PluginError("the runtime is stopping")
                updates = self._synchronize(plugin)
                self._plugins.append(plugin)
                self._plugins.sort(key=lambda p: p.index)
                self._prune()
                order = [p.full_name for p in self._plugins]
            log.info("NRI plugin synchronized", plugin=plugin.full_name, order=order)
            self._apply_updates_later(updates, plugin.full_name)
        except (PluginError, CallError) as e:
            log.error("NRI plugin refused", plugin=plugin.full_name, error=str(e))
            plugin.close()

    def _serve(
        self, plugin: Plugin, service: str, method: str, payload: bytes
    ) -> tuple[bytes, int, str]:
        if service != RUNTIME_SERVICE_NAME:
            return b"", ttrpc.Code.UNIMPLEMENTED, f"service {service}"
        if method == "RegisterPlugin":
            request = api.RegisterPluginRequest.FromString(payload)
            return self._register(plugin, request)
        if method == "UpdateContainers":
            update_request = api.UpdateContainersRequest.FromString(payload)
            if update_request.evict:
                log.warning(
                    "NRI plugin asked for evictions; cri-py does not evict",
                    plugin=plugin.full_name,
                    containers=[e.container_id for e in update_request.evict],
                )
            failed = self._apply_updates(update_request.update, plugin.full_name)
            return api.UpdateContainersResponse(failed=failed).SerializeToString(), 0, ""
        return b"", ttrpc.Code.UNIMPLEMENTED, f"method {method}"

    def _register(
        self, plugin: Plugin, request: api.RegisterPluginRequest
    ) -> tuple[bytes, int, str]:
        if plugin.registered.is_set():
            return b"", ttrpc.Code.FAILED_PRECONDITION, "plugin already registered"
        if plugin.process is None:  # a plugin we started has its name and index from us
            if not PLUGIN_NAME.match(request.plugin_name):
                plugin.registration_error = f"invalid plugin name {request.plugin_name!r}"
            elif not PLUGIN_INDEX.match(request.plugin_idx):
                plugin.registration_error = (
                    f"invalid plugin index {request.plugin_idx!r}, must be 2 digits"
                )
            else:
                plugin.name, plugin.index = request.plugin_name, request.plugin_idx
                plugin.connection.name = plugin.full_name
        if plugin.registration_error:
            plugin.connection.close_after_reply = True
            plugin.registered.set()
            return b"", ttrpc.Code.INVALID_ARGUMENT, plugin.registration_error
        plugin.registered.set()
        log.info(
            "NRI plugin registered",
            plugin=plugin.full_name,
            nri_version=request.NRI_version or "unknown",
            pid=plugin.connection.peer_pid(),
        )
        return api.Empty().SerializeToString(), 0, ""

    def _configure(self, plugin: Plugin) -> None:
        request = api.ConfigureRequest(
            config=plugin.config,
            runtime_name=self._runtime_name,
            runtime_version=self._runtime_version,
            registration_timeout=int(self.settings.registration_timeout * 1000),
            request_timeout=int(self.settings.request_timeout * 1000),
            NRI_version=NRI_VERSION,
        )
        reply = plugin.connection.call(
            "Configure", request, api.ConfigureResponse, self.settings.request_timeout
        )
        events = reply.events or VALID_EVENTS
        if events & ~VALID_EVENTS:
            raise PluginError(f"invalid plugin events 0x{events & ~VALID_EVENTS:x}")
        plugin.events = events

    def _synchronize(self, plugin: Plugin) -> list[api.ContainerUpdate]:
        """Sends the pods and containers that exist (and the ones being created), in one
        message or, when that is too large for ttrpc, in several with `more` set."""
        pods, containers = self._snapshot()
        listed = {c.id for c in containers}
        containers += [c for c in self._creating.values() if c.id not in listed]
        request = api.SynchronizeRequest(pods=pods, containers=containers)
        if request.ByteSize() <= ttrpc.MAX_MESSAGE_LENGTH - 4096:
            chunks = [request]
        else:
            items: list[tuple[str, Any]] = [("pod", p) for p in pods] + [
                ("container", c) for c in containers
            ]
            chunks = []
            for start in range(0, len(items), SYNC_CHUNK):
                part = items[start : start + SYNC_CHUNK]
                chunks.append(
                    api.SynchronizeRequest(
                        pods=[x for kind, x in part if kind == "pod"],
                        containers=[x for kind, x in part if kind == "container"],
                        more=start + SYNC_CHUNK < len(items),
                    )
                )
        reply = api.SynchronizeResponse()
        for chunk in chunks:
            reply = plugin.connection.call(
                "Synchronize", chunk, api.SynchronizeResponse, self.settings.request_timeout
            )
            if chunk.more and (reply.update or not reply.more):
                raise PluginError("plugin does not handle split sync requests")
        return list(reply.update)

    # --- events ------------------------------------------------------------------------------

    def _prune(self) -> None:
        closed = [p for p in self._plugins if p.closed]
        if closed:
            self._plugins = [p for p in self._plugins if not p.closed]
            for plugin in closed:
                log.info("NRI plugin disconnected", plugin=plugin.full_name)
                plugin.close()

    def wants(self, event: int) -> bool:
        """Whether any plugin subscribed to `event` (no lock: a plugin joining now is
        synchronized with the state this event leads to)."""
        return any(p.subscribed(event) and not p.closed for p in list(self._plugins))

    def _subscribers(self, event: int) -> Iterator[Plugin]:
        self._prune()
        for plugin in list(self._plugins):
            if plugin.subscribed(event) and not plugin.closed:
                yield plugin

    def _call(self, plugin: Plugin, method: str, request: Message, reply: type[R]) -> R | None:
        """One event to one plugin: its reply, or None when the plugin is gone (it is then
        disconnected and the event goes on without it). A plugin's error is a PluginError."""
        try:
            return plugin.connection.call(method, request, reply, self.settings.request_timeout)
        except CallError as e:
            if e.fatal:
                log.error(
                    "NRI plugin disconnected: failed to handle an event",
                    plugin=plugin.full_name,
                    event=method,
                    error=str(e),
                )
                plugin.close()
                return None
            if e.code == ttrpc.Code.UNIMPLEMENTED and method in _STATE_CHANGE_EVENTS:
                return self._state_change(plugin, method, request, reply)
            raise PluginError(
                f"NRI plugin {plugin.full_name} failed {method}: {_reason(e)}"
            ) from None

    def _state_change(self, plugin: Plugin, method: str, request: Any, reply: type[R]) -> R | None:
        """An older plugin without the dedicated RPC: the event as a StateChange."""
        event = api.StateChangeEvent(event=_STATE_CHANGE_EVENTS[method])
        event.pod.CopyFrom(request.pod)
        if "container" in request.DESCRIPTOR.fields_by_name:
            event.container.CopyFrom(request.container)
        if self._call(plugin, "StateChange", event, api.Empty) is None:
            return None
        return reply()

    def _notify(self, event: int, method: str, request: Message, reply: type[Message]) -> None:
        with self._events:
            for plugin in self._subscribers(event):
                self._call(plugin, method, request, reply)

    def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._notify(
            api.RUN_POD_SANDBOX,
            "RunPodSandbox",
            api.RunPodSandboxRequest(pod=pod),
            api.RunPodSandboxResponse,
        )

    def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._notify(
            api.STOP_POD_SANDBOX,
            "StopPodSandbox",
            api.StopPodSandboxRequest(pod=pod),
            api.StopPodSandboxResponse,
        )

    def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._notify(
            api.REMOVE_POD_SANDBOX,
            "RemovePodSandbox",
            api.RemovePodSandboxRequest(pod=pod),
            api.RemovePodSandboxResponse,
        )

    def update_pod_sandbox(
        self, pod: api.PodSandbox, overhead: api.LinuxResources, resources: api.LinuxResources
    ) -> None:
        request = api.UpdatePodSandboxRequest(
            pod=pod, overhead_linux_resources=overhead, linux_resources=resources
        )
        self._notify(
            api.UPDATE_POD_SANDBOX, "UpdatePodSandbox", request, api.UpdatePodSandboxResponse
        )

    def post_update_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self._notify(
            api.POST_UPDATE_POD_SANDBOX,
            "PostUpdatePodSandbox",
            api.PostUpdatePodSandboxRequest(pod=pod),
            api.PostUpdatePodSandboxResponse,
        )

    def create_container(
        self,
        pod: api.PodSandbox,
        describe: Callable[[dict[str, Any]], api.Container],
        spec: dict[str, Any],
    ) -> dict[str, Any]:
        """The spec after every subscribed plugin's adjustment, each plugin shown the spec as
        the ones before it left it. A refusal or a conflict is a PluginError."""
        owners = Owners()
        consulted: list[api.PluginInstance] = []
        adjustments = api.ContainerAdjustment()
        pristine = describe(spec)
        updates: list[api.ContainerUpdate] = []
        with self._events:
            for plugin in self._subscribers(api.CREATE_CONTAINER):
                consulted.append(api.PluginInstance(name=plugin.name, index=plugin.index))
                request = api.CreateContainerRequest(pod=pod, container=describe(spec))
                reply = self._call(plugin, "CreateContainer", request, api.CreateContainerResponse)
                if reply is None:
                    continue
                if reply.evict:
                    log.warning(
                        "NRI plugin asked for evictions; cri-py does not evict",
                        plugin=plugin.full_name,
                        containers=[e.container_id for e in reply.evict],
                    )
                if reply.HasField("adjust"):
                    try:
                        apply_adjustment(spec, reply.adjust, plugin.full_name, owners)
                    except AdjustmentError as e:
                        raise PluginError(
                            f"NRI plugin {plugin.full_name}: adjustment refused: {e}"
                        ) from None
                    adjustments.MergeFrom(reply.adjust)
                updates.extend(reply.update)
            self._validate(pod, pristine, adjustments, updates, consulted)
            self._creating[pristine.id] = describe(spec)
        self._apply_updates_later(updates, "CreateContainer")
        return spec

    def _validate(
        self,
        pod: api.PodSandbox,
        container: api.Container,
        adjust: api.ContainerAdjustment,
        updates: list[api.ContainerUpdate],
        consulted: list[api.PluginInstance],
    ) -> None:
        request = api.ValidateContainerAdjustmentRequest(
            pod=pod, container=container, adjust=adjust, update=updates, plugins=consulted
        )
        for plugin in self._subscribers(api.VALIDATE_CONTAINER_ADJUSTMENT):
            reply = self._call(
                plugin,
                "ValidateContainerAdjustment",
                request,
                api.ValidateContainerAdjustmentResponse,
            )
            if reply is not None and reply.reject:
                raise PluginError(
                    f"NRI validator {plugin.full_name} rejected the adjustments: {reply.reason}"
                )

    def container_created(self, container_id: str) -> None:
        """The container is listed by the runtime now (or never will be)."""
        with self._events:
            self._creating.pop(container_id, None)

    def post_create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._notify(
            api.POST_CREATE_CONTAINER,
            "PostCreateContainer",
            api.PostCreateContainerRequest(pod=pod, container=container),
            api.PostCreateContainerResponse,
        )

    def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._notify(
            api.START_CONTAINER,
            "StartContainer",
            api.StartContainerRequest(pod=pod, container=container),
            api.StartContainerResponse,
        )

    def post_start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._notify(
            api.POST_START_CONTAINER,
            "PostStartContainer",
            api.PostStartContainerRequest(pod=pod, container=container),
            api.PostStartContainerResponse,
        )

    def update_container(
        self, pod: api.PodSandbox, container: api.Container, resources: api.LinuxResources
    ) -> api.LinuxResources:
        """The resources to apply: the request's, with what plugins changed for this
        container (later plugins see earlier changes; a field belongs to one plugin)."""
        owners = Owners()
        updates: list[api.ContainerUpdate] = []
        with self._events:
            for plugin in self._subscribers(api.UPDATE_CONTAINER):
                request = api.UpdateContainerRequest(
                    pod=pod, container=container, linux_resources=resources
                )
                reply = self._call(plugin, "UpdateContainer", request, api.UpdateContainerResponse)
                if reply is None:
                    continue
                for update in reply.update:
                    if update.container_id != container.id:
                        updates.append(update)
                        continue
                    try:
                        resources = _merged_resources(
                            resources, update.linux.resources, owners, plugin.full_name
                        )
                    except AdjustmentError as e:
                        if update.ignore_failure:
                            continue
                        raise PluginError(f"NRI plugin {plugin.full_name}: {e}") from None
        self._apply_updates_later(updates, "UpdateContainer")
        return resources

    def post_update_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._notify(
            api.POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            api.PostUpdateContainerRequest(pod=pod, container=container),
            api.PostUpdateContainerResponse,
        )

    def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        updates: list[api.ContainerUpdate] = []
        with self._events:
            for plugin in self._subscribers(api.STOP_CONTAINER):
                request = api.StopContainerRequest(pod=pod, container=container)
                reply = self._call(plugin, "StopContainer", request, api.StopContainerResponse)
                if reply is not None:
                    updates.extend(reply.update)
        self._apply_updates_later(updates, "StopContainer")

    def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        with self._events:
            self._creating.pop(container.id, None)
            for plugin in self._subscribers(api.REMOVE_CONTAINER):
                request = api.RemoveContainerRequest(pod=pod, container=container)
                self._call(plugin, "RemoveContainer", request, api.RemoveContainerResponse)

    # --- updates plugins ask for ---------------------------------------------------------------

    def _apply_updates(
        self, updates: Sequence[api.ContainerUpdate], source: str
    ) -> list[api.ContainerUpdate]:
        if not updates:
            return []
        with self._updates_lock:
            failed = self._update(updates)
        if failed:
            log.warning(
                "NRI container updates failed",
                source=source,
                containers=[u.container_id for u in failed],
            )
        return failed

    def _apply_updates_later(self, updates: Sequence[api.ContainerUpdate], source: str) -> None:
        """Updates of other containers an event's answer asked for: applied on their own
        thread, after the event (the container may be the one the event holds)."""
        if updates:
            self._thread(self._apply_updates_quietly, (list(updates), source), "nri-update")

    def _apply_updates_quietly(self, work: tuple[list[api.ContainerUpdate], str]) -> None:
        self._apply_updates(*work)  # failures are logged there


_STATE_CHANGE_EVENTS = {
    "RunPodSandbox": api.RUN_POD_SANDBOX,
    "PostUpdatePodSandbox": api.POST_UPDATE_POD_SANDBOX,
    "StopPodSandbox": api.STOP_POD_SANDBOX,
    "RemovePodSandbox": api.REMOVE_POD_SANDBOX,
    "PostCreateContainer": api.POST_CREATE_CONTAINER,
    "StartContainer": api.START_CONTAINER,
    "PostStartContainer": api.POST_START_CONTAINER,
    "PostUpdateContainer": api.POST_UPDATE_CONTAINER,
    "RemoveContainer": api.REMOVE_CONTAINER,
}


def _reason(error: CallError) -> str:
    return error.reason


def _merged_resources(
    base: api.LinuxResources, change: api.LinuxResources, owners: Owners, plugin: str
) -> api.LinuxResources:
    """`base` with the set fields of `change` (each field owned by one plugin)."""
    target = spec_resources(base)
    apply_resources(target, change, lambda field, key: owners.claim(field, plugin, key))
    return nri_resources(target)
