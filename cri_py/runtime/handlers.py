"""Runtime handlers (RuntimeClass): the config's `runtimes` by name, the default handler ""
(today's behaviour unless `runtimes.""` changes it), the features Status reports for each,
and the handler's rules a pod or container is held to. A pod keeps its handler's name in its
record; its containers get that handler's settings, looked up when each is created.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cri_py.config import Config, RuntimeHandlerConfig
from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.linux import features
from cri_py.model.container import ContainerConfig, ProfileType, SecurityProfile

DEFAULT_HANDLER = ""
# A handler's `default_seccomp_profile` naming a file: "localhost/etc/p.json" is /etc/p.json.
LOCALHOST = "localhost/"


@dataclass(frozen=True)
class HandlerFeatures:
    name: str
    recursive_read_only_mounts: bool
    user_namespaces: bool


class RuntimeHandlers:
    def __init__(self, config: Config) -> None:
        self._handlers = dict(config.runtimes)
        self._handlers.setdefault(DEFAULT_HANDLER, RuntimeHandlerConfig())
        self._root_dir = config.root_dir

    def names(self) -> list[str]:
        """The default handler first, then the others by name."""
        return sorted(self._handlers, key=lambda n: (n != DEFAULT_HANDLER, n))

    def get(self, name: str) -> RuntimeHandlerConfig:
        """A handler by name; RunPodSandbox's InvalidArgument for one not configured."""
        try:
            return self._handlers[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.names())
            raise InvalidArgument(
                f"runtime handler {name!r} is not configured (configured: {known})"
            ) from None

    def of_pod(self, name: str, sandbox_id: str) -> RuntimeHandlerConfig:
        """The handler a pod was started with, for one of its containers."""
        handler = self._handlers.get(name)
        if handler is None:
            raise FailedPrecondition(
                f"pod sandbox {sandbox_id} runs with runtime handler {name!r}, which is no "
                "longer configured; restore it in `runtimes` or recreate the pod"
            )
        return handler

    def features(self) -> list[HandlerFeatures]:
        """Each handler's features: its switch and what the kernel can do (probed once)."""
        rro = features.recursive_read_only_mounts()
        userns = not features.user_namespaces_problem(self._root_dir)
        return [
            HandlerFeatures(
                name=name,
                recursive_read_only_mounts=rro and self._handlers[name].recursive_read_only_mounts,
                user_namespaces=userns and self._handlers[name].user_namespaces,
            )
            for name in self.names()
        ]


def check_pod(handler: RuntimeHandlerConfig, name: str, user_namespace: bool) -> None:
    if user_namespace and not handler.user_namespaces:
        raise FailedPrecondition(
            f"runtime handler {name!r} does not allow pods with their own user namespace "
            "(hostUsers: false)"
        )


def container_config(
    handler: RuntimeHandlerConfig, name: str, config: ContainerConfig
) -> ContainerConfig:
    """The container's config as the spec builder should see it under `handler`: its
    seccomp default when the request sets none, after the handler's refusals."""
    if not handler.recursive_read_only_mounts:
        for mount in config.mounts:
            if mount.recursive_read_only:
                raise FailedPrecondition(
                    f"mount {mount.container_path}: runtime handler {name!r} does not allow "
                    "recursive read-only mounts"
                )
    default = handler.default_seccomp_profile
    if config.seccomp is None and not config.seccomp_profile_path and default:
        if default.startswith(LOCALHOST):
            path = "/" + default.removeprefix(LOCALHOST).lstrip("/")
            profile = SecurityProfile(ProfileType.LOCALHOST, path)
            config = dataclasses.replace(config, seccomp=profile)
        else:
            config = dataclasses.replace(config, seccomp_profile_path=default)
    return config
