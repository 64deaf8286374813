"""ListPodSandbox / ListContainers follow every state change (their summaries are cached per
record object: a change must never leave a stale summary behind)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import CGROUP_PARENT, ROOT, Lab, open_lab

pytestmark = needs_root

CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt9\n  subnet: 10.78.0.0/24\n  cni_conf_dir: /nonexistent\n"
    # test_containers' parent: open_lab clears it when the module ends.
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("lists"), CONFIG) as opened:
        yield opened


def states(lab: Lab) -> tuple[dict[str, int], dict[str, int]]:
    rt = lab.daemon.runtime()
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    containers = rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    return {p.id: p.state for p in pods}, {c.id: c.state for c in containers}


def test_lists_show_each_state_a_pod_and_its_container_go_through(lab: Lab, tmp_path: Path) -> None:
    rt = lab.daemon.runtime()
    pod = lab.run_pod("lists")
    assert states(lab) == ({pod: pb.SANDBOX_READY}, {})
    container = lab.create(pod, "c", ["sleep", "1000"])
    assert states(lab)[1] == {container: pb.CONTAINER_CREATED}
    lab.start(container)
    assert states(lab)[1] == {container: pb.CONTAINER_RUNNING}
    # A filtered list in between must not hide later changes from the unfiltered one.
    only = pb.ContainerFilter(id=container)
    listed = rt.ListContainers(pb.ListContainersRequest(filter=only), timeout=10).containers
    assert [c.state for c in listed] == [pb.CONTAINER_RUNNING]
    rt.StopContainer(pb.StopContainerRequest(container_id=container, timeout=0), timeout=30)
    assert states(lab)[1] == {container: pb.CONTAINER_EXITED}
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container), timeout=30)
    assert states(lab) == ({pod: pb.SANDBOX_READY}, {})
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert states(lab) == ({pod: pb.SANDBOX_NOTREADY}, {})
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    lab.pods.remove(pod)
    assert states(lab) == ({}, {})


def test_streamed_lists_answer_as_the_lists_do(lab: Lab) -> None:
    rt = lab.daemon.runtime()
    pods = [lab.run_pod(f"stream{i}") for i in range(2)]
    container = lab.create(pods[0], "c", ["sleep", "1000"])
    lab.start(container)
    streamed_pods = [
        p.id for r in rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest()) for p in r.pod_sandboxes
    ]
    assert sorted(streamed_pods) == sorted(pods)
    only = pb.PodSandboxFilter(id=pods[1])
    filtered = rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(filter=only), timeout=10)
    assert [p.id for r in filtered for p in r.pod_sandboxes] == [pods[1]]
    containers = rt.StreamContainers(pb.StreamContainersRequest(), timeout=10)
    assert [(c.id, c.state) for r in containers for c in r.containers] == [
        (container, pb.CONTAINER_RUNNING)
    ]
    stats = rt.StreamContainerStats(pb.StreamContainerStatsRequest(), timeout=10)
    assert [s.attributes.id for r in stats for s in r.container_stats] == [container]
    pod_stats = rt.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(), timeout=10)
    assert sorted(s.attributes.id for r in pod_stats for s in r.pod_sandbox_stats) == sorted(pods)
    for pod in pods:
        lab.remove_pod(pod)
    assert list(rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(), timeout=10)) == []
