"""The daemon's part in a container's OCI hooks (`cri_py.oci.hooks`): the final spec's hooks
checked at CreateContainer, the time the create and start calls wait for the shim's hooks on
top of their own, and the poststop hooks, which the daemon runs itself in the runtime's
namespaces when the container is removed (its `config.json` is still there: a container that
died while the daemon was down gets its poststop hooks when it is removed after the restart).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.log import get_logger
from cri_py.oci import hooks as oci_hooks
from cri_py.shim.hooks import run_hooks_logged

log = get_logger(__name__)

# The shim's own wait for the init (sync.SYNC_TIMEOUT_SECONDS) plus slack for the call.
_SHIM_SLACK_SECONDS = 15.0


def check_hooks(spec: Mapping[str, Any]) -> oci_hooks.Hooks:
    """The hooks of the spec about to be written, or InvalidArgument naming the bad one (NRI's
    and CDI's hooks land here as well as the spec builder's)."""
    try:
        return oci_hooks.hooks_from_spec(spec)
    except oci_hooks.HookError as e:
        raise InvalidArgument(f"OCI hooks: {e}") from e


def read_hooks(bundle: Path) -> tuple[oci_hooks.Hooks, dict[str, str]]:
    """The hooks and annotations of a container's `config.json` (none when it is gone or
    unreadable: it was checked when written)."""
    try:
        spec = json.loads((bundle / "config.json").read_text())
        return oci_hooks.hooks_from_spec(spec), dict(spec.get("annotations") or {})
    except (OSError, ValueError, AttributeError):
        return oci_hooks.Hooks(), {}


def create_call_seconds(base: float, hooks: oci_hooks.Hooks) -> float:
    extra = oci_hooks.budget(hooks.runtime_create + hooks.create_container)
    return base + extra + (_SHIM_SLACK_SECONDS if extra else 0.0)


def start_call_seconds(base: float, hooks: oci_hooks.Hooks) -> float:
    extra = oci_hooks.budget(hooks.start_container + hooks.poststart)
    return base + extra + (_SHIM_SLACK_SECONDS if extra else 0.0)


def run_poststop(container_id: str, bundle: Path) -> None:
    """The poststop hooks, each in turn; a failure is logged and changes nothing (the spec)."""
    hooks, annotations = read_hooks(bundle)
    if not hooks.poststop:
        return
    state = oci_hooks.state(container_id, "stopped", 0, str(bundle), annotations)

    def warn(message: str) -> None:
        log.warning("OCI hook failed", container=container_id, error=message)

    failed = run_hooks_logged("poststop", hooks.poststop, state, warn, threaded=True)
    log.info("poststop hooks ran", container=container_id, hooks=len(hooks.poststop), failed=failed)
