"""A container's cgroup: its path, creating it with its limits and device rules, the paths the
shim needs to put the container in it, removing it, and UpdateContainerResources.

One source of truth: the spec's `linux.resources` (`cri_py.spec.resources`), written to
config.json, is what `runtime/cgroups.py` `CgroupManager` applies, at create and at update
(`update_container_resources`); this module decides when, and keeps the record in step.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Mapping
from typing import Any

from cri_py.errors import FailedPrecondition, Internal, InvalidArgument
from cri_py.log import get_logger
from cri_py.model.container import ContainerRecord, ContainerState
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.model.sandbox import SandboxRecord
from cri_py.runtime.cgroups import (
    CgroupManager,
    device_rules_problem,
    update_container_resources,
)
from cri_py.runtime.container_table import ContainerTable
from cri_py.runtime.stats_reader import UsageReader
from cri_py.shim import messages

log = get_logger("cri_py.containers")


class ContainerResources:
    """Without a `CgroupManager` (no cgroup access) containers get no cgroup of their own."""

    def __init__(
        self,
        table: ContainerTable,
        cgroups: CgroupManager | None,
        usage: UsageReader | None,
        default_parent: str,
    ) -> None:
        self._table = table
        self._cgroups = cgroups
        self._usage = usage
        self._default_parent = default_parent

    @property
    def enabled(self) -> bool:
        return self._cgroups is not None

    def cgroup_path(self, sandbox: SandboxRecord, container_id: str) -> str:
        """Under the pod cgroup cri-py made, else under kubelet's parent (or our default);
        "" without cgroups."""
        if self._cgroups is None:
            return ""
        return self._cgroups.container_cgroup(
            sandbox.cgroup or sandbox.config.cgroup_parent, container_id, self._default_parent
        )

    def device_rules_problem(self) -> str:
        """Why device rules cannot be enforced on this host ("" when they can)."""
        return device_rules_problem(self._cgroups)

    def support_for(self, resources: Resources, container_id: str) -> CgroupSupport:
        """What this node adds to the container's spec or leaves out (`CgroupSupport`);
        huge page limits it cannot apply are logged."""
        if self._cgroups is None:
            return CgroupSupport()
        self._cgroups.warn_unapplied(resources, container_id)
        return self._cgroups.support

    def create(self, cgroup: str, resources: Mapping[str, Any]) -> None:
        """The cgroup with the spec's `linux.resources`: its limits and its device rules (v1
        devices.* files, or a v2 BPF program)."""
        assert self._cgroups is not None
        try:
            self._cgroups.create(cgroup, resources)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ERANGE):
                raise InvalidArgument(f"cgroup {cgroup}: {e.strerror}") from None
            raise Internal(f"creating cgroup {cgroup}: {e}") from None

    def in_cgroup(self, request: messages.Create, cgroup: str) -> messages.Create:
        """`request` with what the shim's create needs to put the container's init in its
        cgroup."""
        assert self._cgroups is not None
        return dataclasses.replace(
            request,
            cgroup_procs=tuple(self._cgroups.procs_files(cgroup)),
            oom_file=self._cgroups.oom_file(cgroup),
            cgroup_mounts=tuple(self._cgroups.mount_sources(cgroup)),
        )

    def remove(self, container_id: str, cgroup: str) -> None:
        if self._usage is not None:
            self._usage.forget(container_id)
        if self._cgroups is None or not cgroup:
            return
        try:
            self._cgroups.remove(cgroup)
        except OSError as e:
            log.error("cannot remove a container's cgroup", cgroup=cgroup, error=str(e))

    def update(self, container_id: str, resources: Resources) -> None:
        """UpdateContainerResources: the merged values through the spec's translation into
        config.json, then that object into the live cgroup (all or nothing: config.json goes
        back if the kernel refuses), then the record, so ContainerStatus and a restarted daemon
        report what the cgroup holds. Fields left 0 keep their current value."""
        registry = self._table.registry
        store = self._table.store
        with registry.operation_on(container_id) as record:
            full = record.id
            if record.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(
                    f"container {full} is {record.state.name}; only a created or running "
                    "container's resources can change"
                )
            if self._cgroups is None or not record.cgroup:
                raise FailedPrecondition(f"container {full} has no cgroup to update")
            try:
                merged = update_container_resources(
                    self._cgroups,
                    record.cgroup,
                    store.dir_of(full),
                    record.config.resources,
                    resources,
                )
            except FileNotFoundError as e:
                raise FailedPrecondition(f"container {full}: its cgroup is gone ({e})") from None
            record = dataclasses.replace(
                record, config=dataclasses.replace(record.config, resources=merged)
            )
            store.save(record)
            config = record.config

            def with_config(current: ContainerRecord) -> ContainerRecord:
                return dataclasses.replace(current, config=config)

            registry.update(full, with_config)
        log.info("container resources updated", container=full)
