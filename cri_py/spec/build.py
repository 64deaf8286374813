"""One container's OCI runtime spec from the CRI request, its sandbox and its image: the
composition of the small steps in this package, in the order a reader checks them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cri_py.model.container import (
    ContainerConfig,
    Propagation,
    SupplementalGroupsPolicy,
)
from cri_py.model.image import RuntimeConfig
from cri_py.model.resources import CgroupSupport
from cri_py.model.sandbox import SandboxConfig
from cri_py.oci.plan import SUPPLEMENTAL_GROUPS_POLICY_ANNOTATION
from cri_py.spec.capabilities import (
    DEFAULT_CAPABILITIES,
    capability_name,
    container_capabilities,
    is_all,
)
from cri_py.spec.devices import (
    DeviceNode,
    device_nodes,
    device_rules,
    devices_unconfined,
    without_device_rules,
)
from cri_py.spec.mounts import PodFiles, container_mounts, masked_paths, readonly_paths
from cri_py.spec.namespaces import container_namespaces
from cri_py.spec.process import (
    DEFAULT_RLIMITS,
    container_env,
    container_user,
    process_args,
    working_dir,
)
from cri_py.spec.resources import linux_resources
from cri_py.spec.security import (
    check_mac,
    check_privileged,
    container_seccomp,
    seccomp_profile,
)
from cri_py.spec.userns import linux_user_section, validate_container_user_namespace

OCI_VERSION = "1.2.0"


@dataclass(frozen=True)
class SpecInputs:
    """Everything the spec depends on, gathered (with any I/O) by the container service."""

    container_id: str
    sandbox_id: str
    config: ContainerConfig
    sandbox: SandboxConfig
    image: RuntimeConfig
    image_name: str
    rootfs: str
    # The pod's hostname ("" with host network: the container then has the host's).
    hostname: str = ""
    # Pinned pod namespaces by kind ("net", "ipc", "uts", "pid").
    pod_namespaces: Mapping[str, str] = field(default_factory=dict)
    files: PodFiles = field(default_factory=PodFiles)
    # Real paths of the CRI mounts' host paths (symlinks followed).
    resolved_mounts: Mapping[str, str] = field(default_factory=dict)
    # /proc/<pid>/ns/pid of the target container (PID mode TARGET).
    target_pid_path: str = ""
    # The parsed file of a Localhost seccomp profile (read by the container service).
    seccomp_localhost: Mapping[str, Any] | None = None
    # The container's cgroup (absolute from each hierarchy's root; "" = cgroups not managed).
    cgroups_path: str = ""
    # What the node adds to the CRI's resources (pids limit) or leaves out (no hugetlb).
    cgroup_support: CgroupSupport = field(default_factory=CgroupSupport)
    # Image volumes: container path -> the image's unpacked layer dirs, lowest first.
    image_volumes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # An empty dir overlay can use as a bottom layer (image volumes of fewer than 2 layers).
    empty_dir: str = ""
    # Device nodes for the container's /dev: the CRI's devices (and, privileged, the host's).
    devices: tuple[DeviceNode, ...] = ()
    # Why the node cannot enforce device rules ("" when it can): no devices controller, no
    # cgroups. An unprivileged container then loses CAP_MKNOD or is refused (spec/devices.py).
    device_rules_problem: str = ""
    # Whether the host enforces SELinux (linux/features.selinux_enabled): without it a pod's
    # SELinux options are ignored, as containerd and CRI-O do; with it they are refused (cri-py
    # cannot apply labels).
    selinux_enabled: bool = False
    # The pod's runtime handler's settings (config `runtimes`, cri_py.runtime.handlers): the
    # capabilities a container starts from, whether a privileged one gets the host's devices
    # (the caller leaves them out of `devices` too) and which annotations reach the spec.
    default_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    privileged_without_host_devices: bool = False
    pod_annotation_prefixes: tuple[str, ...] = ()
    container_annotation_prefixes: tuple[str, ...] = ("*",)


def passes(key: str, prefixes: Sequence[str]) -> bool:
    """An annotation key allowed by a handler's prefixes ("*" allows every key)."""
    return any(p == "*" or key.startswith(p.removesuffix("*")) for p in prefixes)


def spec_annotations(inputs: SpecInputs) -> dict[str, str]:
    """The pod's and the client's annotations the handler lets through, plus the ones
    containerd sets (tools key on these names)."""
    sandbox = inputs.sandbox.metadata
    ours = {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": inputs.config.metadata.name,
        "io.kubernetes.cri.image-name": inputs.image_name,
        "io.kubernetes.cri.sandbox-id": inputs.sandbox_id,
        "io.kubernetes.cri.sandbox-name": sandbox.name,
        "io.kubernetes.cri.sandbox-namespace": sandbox.namespace,
        "io.kubernetes.cri.sandbox-uid": sandbox.uid,
    }
    if inputs.config.supplemental_groups_policy == SupplementalGroupsPolicy.STRICT:
        # The launcher resolves groups against the image's /etc/group: it reads this.
        ours[SUPPLEMENTAL_GROUPS_POLICY_ANNOTATION] = "Strict"
    pod = {
        k: v
        for k, v in inputs.sandbox.annotations.items()
        if passes(k, inputs.pod_annotation_prefixes)
    }
    container = {
        k: v
        for k, v in inputs.config.annotations.items()
        if passes(k, inputs.container_annotation_prefixes)
    }
    return {**pod, **container, **ours}


def build_spec(inputs: SpecInputs) -> dict[str, Any]:
    config, image = inputs.config, inputs.image
    privileged = config.privileged
    check_privileged(config, inputs.sandbox.privileged, config.metadata.name)
    check_mac(config, inputs.selinux_enabled)
    validate_container_user_namespace(
        config.user_namespace, inputs.sandbox.namespaces.user, config.mounts
    )
    capabilities = container_capabilities(
        config.add_capabilities,
        config.drop_capabilities,
        config.add_ambient_capabilities,
        privileged,
        inputs.default_capabilities,
    )
    if devices_unconfined(privileged, inputs.device_rules_problem):
        requested = [*config.add_capabilities, *config.add_ambient_capabilities]
        capabilities = without_device_rules(
            config.metadata.name,
            capabilities,
            {capability_name(n) for n in requested if not is_all(n)},
            inputs.devices,
            inputs.device_rules_problem,
        )
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": container_user(
            image.user,
            config.run_as_user,
            config.run_as_username,
            config.run_as_group,
            config.supplemental_groups,
        ),
        "args": process_args(config.command, config.args, image.entrypoint, image.cmd),
        "env": container_env(inputs.hostname, image.env, config.envs),
        "cwd": working_dir(config.working_dir, image.working_dir),
        "rlimits": [dict(r) for r in DEFAULT_RLIMITS],
        "capabilities": capabilities,
        "noNewPrivileges": config.no_new_privs,
    }
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": config.readonly_rootfs},
    }
    if inputs.hostname:
        spec["hostname"] = inputs.hostname
    spec["mounts"] = container_mounts(
        inputs.files,
        config.mounts,
        inputs.resolved_mounts,
        config.readonly_rootfs,
        privileged,
        inputs.image_volumes,
        inputs.empty_dir,
    )
    spec["annotations"] = spec_annotations(inputs)
    spec["linux"] = {
        "namespaces": container_namespaces(
            inputs.pod_namespaces,
            config.pid_mode,
            inputs.target_pid_path,
            inputs.sandbox.namespaces.pid,
        ),
        "maskedPaths": masked_paths(privileged, config.masked_paths),
        "readonlyPaths": readonly_paths(privileged, config.readonly_paths),
        # rslave: the host's later mounts reach the container, none of its mounts leak out.
        # A bidirectional CRI mount needs the container's tree to stay the host's peer
        # (containerd does the same).
        "rootfsPropagation": "rshared"
        if any(m.propagation == Propagation.BIDIRECTIONAL for m in config.mounts)
        else "rslave",
        **linux_user_section(inputs.sandbox.namespaces.user),
    }
    seccomp = container_seccomp(
        seccomp_profile(config), privileged, capabilities["bounding"], inputs.seccomp_localhost
    )
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    if inputs.devices:
        spec["linux"]["devices"] = device_nodes(inputs.devices)
    if inputs.cgroups_path:
        spec["linux"]["cgroupsPath"] = inputs.cgroups_path
        # What the cgroup gets, devices included: cri_py.runtime.cgroups applies this object.
        spec["linux"]["resources"] = {
            **linux_resources(config.resources, inputs.cgroup_support),
            "devices": device_rules(
                inputs.devices, privileged and not inputs.privileged_without_host_devices
            ),
        }
    if config.oom_score_adj:
        process["oomScoreAdj"] = config.oom_score_adj
    return spec
