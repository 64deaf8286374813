"""`kind load` on a cri-py node, against a real `cri-py serve`: an image exported with
`cri-py images export`, removed, turned into a `docker save` tarball and loaded back with the
`ctr` stand-in exactly as kind v0.33.0 runs it (the tar on stdin), is seen at once by crictl
and the CRI, retagged as kind retags, and runs; a hostile archive changes nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab, read_log, remove_cgroup_parent

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/import-{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyti\n  subnet: 10.72.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)
CRICTL = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin" / "crictl"
BIN = Path(sys.executable).parent
LOADED = "kind.test/loaded:1.0"
# kind v0.33.0, pkg/cluster/nodeutils/util.go: LoadImageArchive's and ReTagImage's commands.
KIND_IMPORT = (
    "--namespace=k8s.io",
    "images",
    "import",
    "--all-platforms",
    "--digests",
    "--snapshotter=overlayfs",
    "-",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("import"), CONFIG, cgroup_parent=CGROUP_PARENT) as opened:
        yield opened
    remove_cgroup_parent(CGROUP_PARENT)


def node_env(lab: Lab) -> dict[str, str]:
    """What the stand-ins need to find this daemon (on a node, the default config does)."""
    path = lab.daemon.root_dir.parent / "node.yaml"
    daemon = lab.daemon
    settings = {
        "root_dir": str(daemon.root_dir),
        "run_dir": str(daemon.run_dir),
        "socket": str(daemon.socket),
    }
    path.write_text(yaml.safe_dump(settings))
    return {**os.environ, "CRI_PY_CONFIG": str(path), "CRI_PY_CONFIG_DIR": "/nonexistent"}


def run(lab: Lab, *argv: str, stdin: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    with open(stdin or os.devnull, "rb") as source:
        return subprocess.run(
            list(argv), stdin=source, env=node_env(lab), capture_output=True, timeout=300
        )


def crictl(lab: Lab, *args: str) -> subprocess.CompletedProcess[bytes]:
    endpoint = lab.daemon.address
    command = [str(CRICTL), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint]
    return subprocess.run([*command, *args], capture_output=True, timeout=60, check=False)


def docker_save(oci_export: bytes, repo_tag: str) -> bytes:
    """The export rewritten as Docker 20.10's `docker save` writes it (what kind feeds ctr):
    `<config hex>.json`, `<n>/layer.tar` uncompressed, `manifest.json`, `repositories`."""
    with tarfile.open(fileobj=io.BytesIO(oci_export)) as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        (image,) = json.loads(read("manifest.json"))
        config = read(image["Config"])
        layers = [read(path) for path in image["Layers"]]
    out = io.BytesIO()
    config_name = image["Config"].rsplit("/", 1)[1] + ".json"
    layer_names = [f"{i:02d}{secrets.token_hex(4)}/layer.tar" for i in range(len(layers))]
    repository, tag = repo_tag.rsplit(":", 1)
    files = {
        config_name: config,
        **{
            name: gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
            for name, blob in zip(layer_names, layers, strict=True)
        },
        "manifest.json": json.dumps(
            [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
        ).encode(),
        "repositories": json.dumps({repository: {tag: "x"}}).encode(),
    }
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.skipif(not CRICTL.exists(), reason=f"no crictl at {CRICTL} (make tools)")
def test_kind_load_into_a_running_daemon_then_run_the_image(lab: Lab, tmp_path: Path) -> None:
    images = lab.daemon.images()
    status = images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=BUSYBOX), verbose=True)
    )
    image_id = status.image.id
    layer_dirs = [Path(la["path"]) for la in json.loads(status.info["info"])["layers"]]

    # Exported through the daemon, then removed: the load must bring everything back.
    exported = tmp_path / "busybox-oci.tar"
    result = run(
        lab, str(BIN / "cri-py"), "images", "export", "--config", os.devnull, "--config-dir",
        "/nonexistent", "--run-dir", str(lab.daemon.run_dir), "--root-dir",
        str(lab.daemon.root_dir), "--output", str(exported), BUSYBOX,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=BUSYBOX)))
    assert not any(path.exists() for path in layer_dirs)
    archive = tmp_path / "images.tar"
    archive.write_bytes(docker_save(exported.read_bytes(), LOADED))

    # kind's getSnapshotter, then LoadImageArchive with the tar on stdin.
    dump = run(lab, str(BIN / "cri-py-containerd"), "config", "dump")
    assert dump.returncode == 0 and b'snapshotter = "overlayfs"' in dump.stdout
    started = time.monotonic()
    loaded = run(lab, str(BIN / "cri-py-ctr"), *KIND_IMPORT, stdin=archive)
    seconds = time.monotonic() - started
    assert loaded.returncode == 0, loaded.stderr
    assert f"unpacking {LOADED} (sha256:".encode() in loaded.stdout
    print(f"ctr import of {archive.stat().st_size} bytes: {seconds:.2f}s")

    # kind's ImageID / ImageTags: `crictl inspecti` by name and by docker's image ID.
    for name in (LOADED, image_id):
        inspected = crictl(lab, "inspecti", name)
        assert inspected.returncode == 0, inspected.stderr
        found = json.loads(inspected.stdout)["status"]
        assert found["id"] == image_id
        assert found["repoTags"] == [LOADED]
        assert any("/import-" in digest for digest in found["repoDigests"])
    assert all(path.is_dir() for path in layer_dirs)
    # ReTagImage, as kind runs it when the node has the ID but not the name.
    retag = run(
        lab, str(BIN / "cri-py-ctr"), "--namespace=k8s.io", "images", "tag", "--force",
        image_id, "kind.test/loaded:retagged",
    )  # fmt: skip
    assert retag.returncode == 0, retag.stderr
    tags = json.loads(crictl(lab, "inspecti", image_id).stdout)["status"]["repoTags"]
    assert sorted(tags) == [LOADED, "kind.test/loaded:retagged"]

    # And it runs.
    pod = lab.run_pod("loaded")
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="loaded"),
        image=pb.ImageSpec(image=LOADED),
        command=["sh", "-c", "echo loaded-and-running"],
        log_path="loaded.log",
    )
    container_id = (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
            ),
            timeout=30,
        )
        .container_id
    )
    lab.start(container_id)
    assert lab.wait_exited(container_id).exit_code == 0
    assert ("stdout", "F", "loaded-and-running") in read_log(lab, pod, "loaded")
    lab.remove_pod(pod)
    lab.pods.remove(pod)


def test_a_hostile_archive_loaded_with_ctr_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("../../../../../../tmp/cri-py-import-escape")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"owned"))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()],
            },
        }
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (
            ("c.json", config),
            ("l/layer.tar", layer.getvalue()),
            ("manifest.json", b'[{"Config":"c.json","Layers":["l/layer.tar"]}]'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "evil.tar"
    archive.write_bytes(out.getvalue())
    images = lab.daemon.images()
    before = images.ListImages(pb.ListImagesRequest()).images
    result = run(lab, str(BIN / "cri-py-ctr"), *KIND_IMPORT, stdin=archive)
    assert result.returncode == 1
    assert b"rejected" in result.stderr and b"cri-py-import-escape" in result.stderr
    assert images.ListImages(pb.ListImagesRequest()).images == before
    assert not Path("/tmp/cri-py-import-escape").exists()
    store = lab.daemon.root_dir / "images"
    assert not any((store / "ingest").iterdir())
    assert not [p for p in (store / "layers").iterdir() if p.name.startswith(".")]
