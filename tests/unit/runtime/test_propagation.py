"""A volume's propagation needs the host path on a mount that can carry it."""

from __future__ import annotations

import pytest

from cri_py.errors import FailedPrecondition
from cri_py.linux.mountinfo import parse
from cri_py.model.container import Mount, Propagation
from cri_py.runtime.propagation import check_propagation

# / private, /shared rshared, /slave a slave, /var/lib/kubelet a bind under private /var/lib.
MOUNTINFO = parse("""\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
50 27 254:0 /srv/a /shared rw shared:3 - ext4 /dev/vda rw
51 27 254:0 /srv/b /slave rw master:3 - ext4 /dev/vda rw
52 27 254:0 /srv/c /var/lib rw - ext4 /dev/vda rw
""")


def mount(host_path: str, propagation: Propagation) -> Mount:
    return Mount(container_path="/mnt", host_path=host_path, propagation=propagation)


@pytest.mark.parametrize(
    ("host_path", "propagation"),
    [
        ("/shared/x", Propagation.BIDIRECTIONAL),
        ("/shared/x", Propagation.HOST_TO_CONTAINER),
        ("/slave/x", Propagation.HOST_TO_CONTAINER),
        ("/var/lib/x", Propagation.PRIVATE),
        ("/etc", Propagation.PRIVATE),
    ],
)
def test_what_the_host_mount_can_carry_is_accepted(
    host_path: str, propagation: Propagation
) -> None:
    check_propagation([mount(host_path, propagation)], {}, MOUNTINFO)


def test_bidirectional_on_a_private_or_slave_mount_is_refused_naming_the_mount() -> None:
    for host_path, on in (("/var/lib/kubelet/pods/p/v", "/var/lib"), ("/slave/x", "/slave")):
        with pytest.raises(FailedPrecondition, match=f"{on} is not shared"):
            check_propagation([mount(host_path, Propagation.BIDIRECTIONAL)], {}, MOUNTINFO)


def test_host_to_container_on_a_private_mount_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match=r"HostToContainer.*/ is private"):
        check_propagation([mount("/etc/x", Propagation.HOST_TO_CONTAINER)], {}, MOUNTINFO)


def test_the_resolved_host_path_is_what_is_checked() -> None:
    # /link -> /shared/x: the symlink's own place (on /) does not matter.
    check_propagation(
        [mount("/link", Propagation.BIDIRECTIONAL)], {"/link": "/shared/x"}, MOUNTINFO
    )
    with pytest.raises(FailedPrecondition):
        check_propagation(
            [mount("/shared/link", Propagation.BIDIRECTIONAL)],
            {"/shared/link": "/etc/x"},
            MOUNTINFO,
        )


def test_image_volumes_have_no_host_path_to_check() -> None:
    image = Mount(container_path="/v", image="busybox", propagation=Propagation.HOST_TO_CONTAINER)
    check_propagation([image], {}, MOUNTINFO)
