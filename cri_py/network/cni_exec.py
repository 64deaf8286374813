"""CNI, the acting half: reading the config dir, running plugin executables (each with a
timeout), ADD and DEL over a network list, and the per-pod cache that gives DEL exactly what ADD
used even when the config dir changed in between (libcni keeps the same kind of cache).

What the plugins get and what their answers mean is decided in `cni`; which network a pod gets
is decided in `selector`. Blocking: call from worker threads, never the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_py.log import get_logger
from cri_py.network.cni import (
    ERROR_UNKNOWN_CONTAINER,
    CniPluginError,
    Invocation,
    NetworkConfigList,
    PodIdentity,
    chains_results,
    del_gets_prev_result,
    error_code,
    is_config_file,
    parse_config,
    parse_result,
    plugin_config,
    plugin_env,
    plugin_error,
)
from cri_py.store.atomic import read_json_written, write_json_atomic

log = get_logger("cri_py.network.cni")

# In the sandbox's state dir; present from just before ADD until DEL succeeded.
CACHE_FILE = "cni.json"
# After a kill, how long to wait for the plugin's pipes to close before giving up on them.
REAP_SECONDS = 5.0

Signature = tuple[tuple[str, int, int, int], ...]


def read_config_dir(path: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """The candidate files of a config dir as (path, content), and the unreadable ones with
    the reason. A missing dir is simply empty."""
    files: list[tuple[str, bytes]] = []
    unreadable: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return files, unreadable
    for name in names:
        if not is_config_file(name):
            continue
        file = path / name
        try:
            if file.is_file():
                files.append((str(file), file.read_bytes()))
        except OSError as e:
            unreadable.append((str(file), f"cannot read: {e.strerror}"))
    return files, unreadable


def config_dir_signature(path: Path) -> Signature:
    """What changes when a config file is added, removed, renamed or rewritten: cheap enough
    (a listdir and a stat per file) to check on every Status call."""
    entries = []
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    for name in names:
        if not is_config_file(name):
            continue
        with contextlib.suppress(OSError):
            st = os.stat(path / name)
            entries.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(entries)


class PluginRunner:
    """Finds plugins in the bin dirs and runs them, killing one that outlives `timeout`."""

    def __init__(
        self,
        bin_dirs: Sequence[str],
        timeout: float,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.timeout = timeout
        self._base_env = dict(os.environ if base_env is None else base_env)

    def find(self, plugin_type: str) -> Path | None:
        for directory in self.bin_dirs:
            candidate = Path(directory) / plugin_type
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        return None

    def missing(self, network: NetworkConfigList) -> list[str]:
        """The plugin types of `network` with no executable in any bin dir."""
        return [t for t in dict.fromkeys(network.plugin_types) if self.find(t) is None]

    def run(self, plugin_type: str, command: str, invocation: Invocation, stdin: bytes) -> bytes:
        """One plugin execution; its stdout on success, CniPluginError otherwise."""
        path = self.find(plugin_type)
        if path is None:
            raise CniPluginError(
                plugin_type, command, f"no executable in {', '.join(self.bin_dirs)}"
            )
        env = plugin_env(command, invocation, self.bin_dirs, self._base_env)
        # Its own session: on timeout the plugin and whatever it started (iptables, an IPAM
        # plugin) are killed together, and nothing else.
        process = subprocess.Popen(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=REAP_SECONDS)
            if process.poll() is None:  # pragma: no cover - SIGKILL always ends it
                process.kill()
                process.wait()
            raise CniPluginError(
                plugin_type, command, f"did not finish within {self.timeout:g}s and was killed"
            ) from None
        if process.returncode != 0:
            raise CniPluginError(
                plugin_type,
                command,
                plugin_error(plugin_type, command, stdout, stderr, process.returncode),
                code=error_code(stdout),
            )
        return stdout

    def add(self, network: NetworkConfigList, invocation: Invocation) -> dict[str, Any]:
        """ADD through the chain, each plugin getting the previous one's result; the last
        result is the network's."""
        result: dict[str, Any] = {}
        chaining = chains_results(network.cni_version)
        for plugin in network.plugins:
            plugin_type = str(plugin["type"])
            config = plugin_config(
                network, plugin, invocation.capabilities, result if chaining and result else None
            )
            out = self.run(plugin_type, "ADD", invocation, json.dumps(config).encode())
            answer = parse_result(out, plugin_type)
            if answer:
                result = answer
        return result

    def delete(
        self,
        network: NetworkConfigList,
        invocation: Invocation,
        prev_result: Mapping[str, Any] | None,
    ) -> None:
        """DEL through the chain in reverse. Every plugin gets its DEL even when one fails (so
        one broken plugin does not strand another's resources); the first failure is raised at
        the end. Error 3 (container unknown) means nothing is left to clean: not a failure."""
        first: CniPluginError | None = None
        previous = (
            prev_result if prev_result and del_gets_prev_result(network.cni_version) else None
        )
        for plugin in reversed(network.plugins):
            plugin_type = str(plugin["type"])
            config = plugin_config(network, plugin, invocation.capabilities, previous)
            try:
                self.run(plugin_type, "DEL", invocation, json.dumps(config).encode())
            except CniPluginError as e:
                if e.cni_code == ERROR_UNKNOWN_CONTAINER:
                    log.info("CNI DEL: container already unknown", plugin=plugin_type)
                    continue
                log.warning("CNI DEL failed", plugin=plugin_type, error=str(e))
                first = first or e
        if first is not None:
            raise first


@dataclass(frozen=True)
class CachedAttachment:
    """What the cache keeps of one pod's ADD."""

    network: NetworkConfigList
    invocation: Invocation
    result: Mapping[str, Any] | None  # None: ADD started but never finished


def save_cache(state_dir: Path, attachment: CachedAttachment, durable: bool = True) -> None:
    inv = attachment.invocation
    write_json_atomic(
        state_dir / CACHE_FILE,
        {
            "network": attachment.network.to_data(),
            "source": attachment.network.source,
            "containerId": inv.container_id,
            "netns": inv.netns,
            "ifname": inv.ifname,
            "pod": {
                "namespace": inv.pod.namespace,
                "name": inv.pod.name,
                "uid": inv.pod.uid,
                "sandboxId": inv.pod.sandbox_id,
            },
            "capabilities": dict(inv.capabilities),
            "result": attachment.result,
        },
        durable=durable,
    )


def load_cache(state_dir: Path) -> CachedAttachment | None:
    # Empty: the intent written before an ADD, lost with the power before it reached the
    # disk; the netns went with it (libcni caches only results, and without an fsync).
    data = read_json_written(state_dir / CACHE_FILE)
    if data is None:
        return None
    pod = data["pod"]
    return CachedAttachment(
        network=parse_config(json.dumps(data["network"]), data.get("source", "")),
        invocation=Invocation(
            container_id=data["containerId"],
            netns=data["netns"],
            ifname=data["ifname"],
            pod=PodIdentity(pod["namespace"], pod["name"], pod["uid"], pod["sandboxId"]),
            capabilities=data.get("capabilities") or {},
        ),
        result=data.get("result"),
    )


class CniNetwork:
    """ADD and DEL of one pod on a network list, with the cache in the pod's state dir."""

    def __init__(self, runner: PluginRunner) -> None:
        self.runner = runner

    def setup(
        self, network: NetworkConfigList, invocation: Invocation, state_dir: Path
    ) -> Mapping[str, Any]:
        """ADD; the cache is written first, so a failure half-way (or a crash) still leaves
        `teardown` the config to DEL with."""
        # The intent needs no fsync: a crash of the daemon finds it in the page cache, and
        # a power loss takes the netns with it. The result must reach the disk (DEL needs it)
        # before the pod is answered: the caller syncs it with the pod's record
        # (`NetworkSelector.unsynced`), the two fsyncs at once.
        save_cache(state_dir, CachedAttachment(network, invocation, None), durable=False)
        result = self.runner.add(network, invocation)
        save_cache(state_dir, CachedAttachment(network, invocation, result), durable=False)
        log.info(
            "CNI ADD done",
            network=network.name,
            sandbox=invocation.container_id,
            plugins=",".join(network.plugin_types),
        )
        return result

    def teardown(self, state_dir: Path) -> None:
        """DEL with the cached config; the cache goes once DEL succeeded. Idempotent."""
        cached = load_cache(state_dir)
        if cached is None:
            return
        invocation = cached.invocation
        if invocation.netns and not os.path.exists(invocation.netns):
            # The pin is gone (reboot, or unpinned already): plugins clean up what is outside
            # the pod's namespace when CNI_NETNS is empty (SPEC.md, DEL).
            invocation = dataclasses.replace(invocation, netns="")
        self.runner.delete(cached.network, invocation, cached.result)
        (state_dir / CACHE_FILE).unlink(missing_ok=True)
        log.info("CNI DEL done", network=cached.network.name, sandbox=invocation.container_id)
