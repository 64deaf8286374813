"""Which network a pod gets, and whether the node's network is ready.

A usable CNI config in the conf dir wins; without one, new pods get the built-in bridge. The dir
is re-read whenever it changed (checked on Status and RunPodSandbox), so a conflist written
after start takes effect without a restart. A pod keeps the network it was set up with (the
sandbox record says which), so its teardown never depends on what the dir holds later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cri_py.config import NetworkConfig
from cri_py.errors import InvalidArgument, Unavailable
from cri_py.linux.namespaces import run_in_netns
from cri_py.linux.netdev import set_link_up
from cri_py.log import get_logger
from cri_py.model.network import NetworkState
from cri_py.model.sandbox import SandboxConfig
from cri_py.network.bridge import BuiltinNetwork
from cri_py.network.cni import (
    ConfigChoice,
    Invocation,
    PodIdentity,
    choose_config,
    port_mappings,
    result_ips,
)
from cri_py.network.cni_exec import (
    CACHE_FILE,
    CniNetwork,
    PluginRunner,
    Signature,
    config_dir_signature,
    read_config_dir,
)
from cri_py.network.ipam import Allocations

log = get_logger("cri_py.network")

BUILTIN = "builtin"
CNI = "cni"
NOT_READY = "NetworkPluginNotReady"


class NetworkSelector:
    """The sandbox service's one network: dispatches each pod to CNI or the built-in bridge."""

    def __init__(
        self,
        config: NetworkConfig,
        builtin: BuiltinNetwork,
        runner: PluginRunner | None = None,
        loopback_up: Callable[[Path], None] | None = None,
    ) -> None:
        self._loopback_up = loopback_up or set_loopback_up
        self._conf_dir = Path(config.cni_conf_dir)
        self._builtin = builtin
        self._builtin_enabled = config.builtin
        self._runner = runner or PluginRunner(config.cni_bin_dirs, config.cni_timeout_seconds)
        self._cni = CniNetwork(self._runner)
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._choice = ConfigChoice(None)

    def set_cni_dirs(self, conf_dir: str, bin_dirs: Sequence[str]) -> None:
        """New CNI dirs (a config reload): the conf dir is read afresh on the next look; pods
        already set up keep their cached config and are torn down with it."""
        with self._lock:
            self._conf_dir = Path(conf_dir)
            self._runner.bin_dirs = tuple(bin_dirs)
            self._signature = None

    def uses_cni(self) -> bool:
        """Whether new pods get the CNI network (else the built-in bridge)."""
        return self.cni_config().config is not None

    @property
    def allocations(self) -> Allocations:
        """The built-in network's address table (CNI pods' addresses are their IPAM's)."""
        return self._builtin.allocations

    def cni_config(self) -> ConfigChoice:
        """The current CNI choice, re-read when the conf dir changed since the last look."""
        signature = config_dir_signature(self._conf_dir)
        with self._lock:
            if signature == self._signature:
                return self._choice
            files, unreadable = read_config_dir(self._conf_dir)
            choice = choose_config(files)
            choice = ConfigChoice(choice.config, tuple(unreadable) + choice.skipped)
            self._signature, self._choice = signature, choice
        for path, reason in choice.skipped:
            log.warning("CNI config skipped", file=path, reason=reason)
        if choice.config is not None:
            log.info(
                "CNI config in use",
                file=choice.config.source,
                network=choice.config.name,
                plugins=",".join(choice.config.plugin_types),
            )
        elif self._builtin_enabled:
            log.info("no CNI config; new pods use the built-in network", dir=str(self._conf_dir))
        else:
            log.info("no CNI config; new pods wait for one", dir=str(self._conf_dir))
        return choice

    def _cni_problem(self, choice: ConfigChoice) -> str:
        """Why the chosen CNI config cannot run now ("" when it can)."""
        assert choice.config is not None
        missing = self._runner.missing(choice.config)
        if not missing:
            return ""
        return (
            f"CNI network {choice.config.name} ({choice.config.source}): plugin "
            f"{', '.join(missing)} not found in {', '.join(self._runner.bin_dirs)}"
        )

    def _no_cni_message(self, choice: ConfigChoice) -> str:
        skipped = "; ".join(f"{path}: {reason}" for path, reason in choice.skipped)
        return (
            f"no usable CNI config in {self._conf_dir}"
            + (f" (skipped {skipped})" if skipped else "")
            + " and the built-in network is off (network.builtin: false)"
        )

    def state(self) -> NetworkState:
        choice = self.cni_config()
        if choice.config is not None:
            problem = self._cni_problem(choice)
            return NetworkState(False, NOT_READY, problem) if problem else NetworkState(True)
        if not self._builtin_enabled:
            return NetworkState(False, NOT_READY, self._no_cni_message(choice))
        builtin = self._builtin.state()
        if builtin.ready:
            return builtin
        skipped = "; ".join(f"{path}: {reason}" for path, reason in choice.skipped)
        return NetworkState(
            False,
            NOT_READY,
            f"no usable CNI config in {self._conf_dir}"
            + (f" (skipped {skipped})" if skipped else "")
            + f", and the built-in network is not ready: {builtin.message}",
        )

    def choose(self) -> str:
        """The network for a new pod; Unavailable when the CNI config cannot run now."""
        choice = self.cni_config()
        if choice.config is None:
            if not self._builtin_enabled:
                raise Unavailable(f"pod network not ready: {self._no_cni_message(choice)}")
            return BUILTIN
        problem = self._cni_problem(choice)
        if problem:
            raise Unavailable(f"pod network not ready: {problem}")
        return CNI

    def setup(
        self, kind: str, sandbox_id: str, netns: Path, state_dir: Path, config: SandboxConfig
    ) -> tuple[str, ...]:
        """Attaches the pod to network `kind`; returns its IPs, the primary first. On failure,
        partial work stays for `teardown` (registered by the caller before this) to undo."""
        if kind == BUILTIN:
            return (self._builtin.setup(sandbox_id, netns).ip,)
        if kind != CNI:
            raise InvalidArgument(f"unknown pod network kind {kind!r}")
        choice = self.cni_config()
        if choice.config is None:
            raise Unavailable(f"CNI config in {self._conf_dir} vanished while the pod started")
        m = config.metadata
        capabilities: Mapping[str, object] = {"portMappings": port_mappings(config.port_mappings)}
        invocation = Invocation(
            container_id=sandbox_id,
            netns=str(netns),
            pod=PodIdentity(m.namespace, m.name, m.uid, sandbox_id),
            capabilities=capabilities,
        )
        # containerd adds an implicit loopback network; doing it here needs no plugin for it.
        self._loopback_up(netns)
        result = self._cni.setup(choice.config, invocation, state_dir)
        return result_ips(result, invocation.ifname)

    def unsynced(self, kind: str, state_dir: Path) -> tuple[Path, ...]:
        """Files `setup` wrote without fsync that must reach the disk before the pod is
        answered (CNI's cache: DEL needs it after a power loss); the caller syncs them while
        it writes its own record, so that the two fsyncs overlap."""
        return (state_dir / CACHE_FILE,) if kind == CNI else ()

    def teardown(self, kind: str, sandbox_id: str, state_dir: Path) -> None:
        """Detaches the pod from the network it was set up with; idempotent."""
        if kind == CNI:
            self._cni.teardown(state_dir)
        else:
            self._builtin.teardown(sandbox_id)


def set_loopback_up(netns: Path) -> None:
    """Sets `lo` up in the pod's network namespace: two ioctls on a socket made there (a
    netlink session through pyroute2 cost ~1.5 ms more per pod)."""
    run_in_netns(netns, lambda: set_link_up("lo"))
