"""The container's root filesystem as a mount description: an overlay of the image's layers
with a per-container upper and work dir (the launcher mounts it inside the container's own
mount namespace, so it vanishes with the container's last process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# mount(2) copies at most one page of option data.
MAX_OPTIONS_BYTES = 4095


def overlay_mount(
    layers: Sequence[str], upper: str, work: str, empty_lower: str, nodev: bool = False
) -> dict[str, Any]:
    """`layers` lowest first (as the image lists them); overlay wants `lowerdir` uppermost
    first. An image without layers gets an empty dir as its only lower layer (overlay needs
    one). `nodev`: device nodes on the rootfs cannot be opened (a container whose device
    rules the node cannot enforce, `cri_py.spec.devices.devices_unconfined`)."""
    lower = ":".join(reversed(layers)) if layers else empty_lower
    options = [f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"]
    if len(",".join(options)) > MAX_OPTIONS_BYTES:
        raise ValueError(
            f"overlay options of {len(','.join(options))} bytes exceed a page "
            f"({len(layers)} layers); too many layers for one mount"
        )
    # A flag, not overlay data: the launcher's mount_step turns it into MS_NODEV.
    if nodev:
        options.append("nodev")
    return {"type": "overlay", "source": "overlay", "options": options}
