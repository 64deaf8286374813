"""The spec's `process`: args by the Kubernetes rules, env merge, working dir, user, rlimits.

Everything here is a value in, a value out; reading /etc/passwd in the rootfs is the launcher's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cri_py.errors import InvalidArgument

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# containerd's default: soft = hard = 1024 (lowering never needs a privilege, raising does).
DEFAULT_RLIMITS: tuple[dict[str, Any], ...] = (
    {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
)


def process_args(
    command: Sequence[str],
    args: Sequence[str],
    entrypoint: Sequence[str],
    image_cmd: Sequence[str],
) -> list[str]:
    """The container's argv (Kubernetes "Define a command and arguments for a container"):
    a `command` replaces the image's Entrypoint *and* Cmd; `args` alone replace only Cmd."""
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*entrypoint, *args]
    else:
        argv = [*entrypoint, *image_cmd]
    if not argv:
        raise InvalidArgument("no command specified: neither the container nor its image has one")
    return argv


def merge_env(*layers: Iterable[str]) -> list[str]:
    """`KEY=value` lists merged in order, later layers replacing a key in place (so the image's
    PATH keeps its position when the CRI overrides it), new keys appended."""
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            key, sep, value = entry.partition("=")
            if not key:
                continue
            merged[key] = f"{key}={value}" if sep else f"{key}="
    return list(merged.values())


def container_env(
    hostname: str, image_env: Iterable[str], cri_env: Iterable[tuple[str, str]]
) -> list[str]:
    """containerd's order: a default PATH, HOSTNAME, the image's env, then the CRI's (wins)."""
    base = [DEFAULT_PATH]
    if hostname:
        base.append(f"HOSTNAME={hostname}")
    return merge_env(base, image_env, (f"{k}={v}" for k, v in cri_env))


def container_user(
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: Sequence[int],
) -> dict[str, Any]:
    """The spec's `process.user`. Numbers are final; a `username` (a Docker USER string,
    `name`, `uid`, `name:group`, ...) is resolved by the launcher against the rootfs's
    /etc/passwd and /etc/group, because only the rootfs knows those names."""
    if run_as_group is not None and run_as_user is None and not run_as_username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    user: dict[str, Any] = {"uid": 0, "gid": 0}
    if run_as_user is not None:
        user["uid"] = run_as_user
        if run_as_group is not None:
            user["gid"] = run_as_group
        else:
            user["username"] = str(run_as_user)
    elif run_as_username:
        user["username"] = run_as_username
        if run_as_group is not None:
            user["username"] = f"{run_as_username}:{run_as_group}"
    elif image_user:
        name, _, group = image_user.partition(":")
        if name.isdigit() and group.isdigit():
            user["uid"], user["gid"] = int(name), int(group)
        else:
            user["username"] = image_user
    if supplemental_groups:
        user["additionalGids"] = list(supplemental_groups)
    return user


def working_dir(cri_dir: str, image_dir: str) -> str:
    cwd = cri_dir or image_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
    return cwd
