"""Images as kubelet and crictl meet them: a real `cri-py serve` pulls through its mirror config
from the lab registry on 127.0.0.1:5000, unpacks as root, survives kill -9, and removes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_py.api import api_pb2 as pb

from .conftest import Daemon, needs_root, start_daemon

MIRROR = "127.0.0.1:5000"
IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
REPOSITORY, TAG = IMAGE.rsplit(":", 1)
CONFIG = f"""
registries:
  registry.k8s.io:
    mirrors: ["http://{MIRROR}/registry.k8s.io"]
images:
  pinned: ["{IMAGE}"]
"""
CRICTL = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin" / "crictl"


def _lab_has_image() -> str:
    """Empty when the lab registry serves IMAGE, else why not."""
    url = f"http://{MIRROR}/v2/{REPOSITORY}/manifests/{TAG}"
    request = urllib.request.Request(
        url,
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.index.v1+json, "
            "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.docker.distribution.manifest.list.v2+json"
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=3):
            return ""
    except urllib.error.HTTPError as e:
        return f"{MIRROR} has no {IMAGE} yet (HTTP {e.code}); run `make images`"
    except OSError as e:
        return f"no lab registry on {MIRROR} ({e}); run `make registry images`"


pytestmark = [
    needs_root,
    pytest.mark.skipif(bool(_lab_has_image()), reason=_lab_has_image() or "lab registry ready"),
]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "daemon", CONFIG)
    try:
        yield d
    finally:
        d.stop()


def spec(image: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=image)


def test_pull_status_list_fsinfo_remove_through_the_mirror(daemon: Daemon) -> None:
    images = daemon.images()
    image_ref = images.PullImage(pb.PullImageRequest(image=spec(IMAGE)), timeout=120).image_ref
    assert image_ref.startswith("sha256:") and len(image_ref) == 71
    status = images.ImageStatus(pb.ImageStatusRequest(image=spec(IMAGE), verbose=True))
    image = status.image
    assert image.id == image_ref and list(image.repo_tags) == [IMAGE]
    (repo_digest,) = image.repo_digests
    assert repo_digest.startswith(f"{REPOSITORY}@sha256:")
    assert image.pinned and image.size > 1_000_000
    for name in (image_ref, repo_digest, IMAGE):
        assert images.ImageStatus(pb.ImageStatusRequest(image=spec(name))).image == image
    info = json.loads(status.info["info"])
    assert info["config"]["rootfs"]["diff_ids"]
    listed = images.ListImages(pb.ListImagesRequest()).images
    assert [i.id for i in listed] == [image_ref]

    # As root the layers keep their owners and modes: busybox is root's, and executable.
    layers = [Path(layer["path"]) for layer in info["layers"]]
    assert all(p.parent == daemon.root_dir / "images" / "layers" for p in layers)
    binaries = [p / "bin" / "busybox" for p in layers if (p / "bin" / "busybox").exists()]
    assert binaries, f"no bin/busybox in {layers}"
    mode = binaries[0].stat()
    assert (mode.st_uid, mode.st_gid) == (0, 0) and mode.st_mode & stat.S_IXUSR

    usage = images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]
    assert usage.fs_id.mountpoint == str(daemon.root_dir / "images")
    assert usage.used_bytes.value > image.size and usage.inodes_used.value > 10

    images.RemoveImage(pb.RemoveImageRequest(image=spec(IMAGE)))
    images.RemoveImage(pb.RemoveImageRequest(image=spec(IMAGE)))
    assert not images.ImageStatus(pb.ImageStatusRequest(image=spec(image_ref))).HasField("image")
    assert not any((daemon.root_dir / "images" / "layers").iterdir())
    assert not any(p.is_file() for p in (daemon.root_dir / "images" / "blobs").rglob("*"))
    after = images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]
    assert after.used_bytes.value == 0


def test_pulled_image_survives_kill_9(tmp_path: Path) -> None:
    base = tmp_path / "daemon"
    daemon = start_daemon(base, CONFIG)
    try:
        image_ref = daemon.images().PullImage(pb.PullImageRequest(image=spec(IMAGE)), timeout=120)
        daemon.stop(signal.SIGKILL)
        daemon = start_daemon(base, CONFIG)
        image = daemon.images().ImageStatus(pb.ImageStatusRequest(image=spec(IMAGE))).image
        assert image.id == image_ref.image_ref
    finally:
        daemon.stop()


@pytest.mark.skipif(not CRICTL.exists(), reason=f"no crictl at {CRICTL} (make tools)")
def test_crictl_pull_images_inspecti_rmi(daemon: Daemon) -> None:
    def crictl(*args: str) -> str:
        endpoint = f"unix://{daemon.socket}"
        command = [str(CRICTL), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint]
        result = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"crictl {' '.join(args)}: {result.stderr}"
        return result.stdout

    assert "Image is up to date for sha256:" in crictl("pull", IMAGE)
    listing = crictl("images")
    assert REPOSITORY in listing and TAG in listing
    inspected = json.loads(crictl("inspecti", IMAGE))
    assert inspected["status"]["repoTags"] == [IMAGE]
    assert inspected["info"]["imageSpec"]["rootfs"]["type"] == "layers"
    image_id = inspected["status"]["id"]
    assert json.loads(crictl("inspecti", image_id[7:19]))["status"]["id"] == image_id
    assert "Deleted:" in crictl("rmi", IMAGE)
    assert REPOSITORY not in crictl("images")
