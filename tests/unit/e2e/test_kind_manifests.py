"""kind-config/manifests/: the CNI and storage manifests kind applies on a cri-py cluster, read
the way kind v0.33.0 reads them (installcni: template only with its marker, the one field
PodSubnet; patch only with its marker, appending to the first container's env), and checked
against the images the lab builds for them."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from imagelab.catalog import load_catalog
from imagelab.environment import IMAGES_DIR

from tests.unit.e2e.conftest import E2E_DIR

MANIFESTS = E2E_DIR.parent / "kind-config" / "manifests"


def lab_refs() -> set[str]:
    refs = set()
    for path in (IMAGES_DIR / "catalog.toml", IMAGES_DIR / "kind-catalog.toml"):
        refs |= {str(ref) for image in load_catalog(path).images for ref in image.refs}
    return refs


def render_cni(pod_subnet: str) -> list[dict[str, Any]]:
    text = (MANIFESTS / "default-cni.yaml").read_text()
    # kind renders it with text/template; `{{ .PodSubnet }}` is the only action in the file.
    assert text.count("{{") == text.count("{{ .PodSubnet }}") == 1
    return [doc for doc in yaml.safe_load_all(text.replace("{{ .PodSubnet }}", pod_subnet)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_cni_manifest_carries_both_of_kinds_markers() -> None:
    text = (MANIFESTS / "default-cni.yaml").read_text()

    assert "would you kindly template this file" in text
    assert "would you kindly patch this file" in text


def test_kindnet_daemonset_runs_on_every_node_in_the_host_network() -> None:
    docs = render_cni("10.244.0.0/16")
    daemonset = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]  # control plane, not-ready nodes
    assert container["securityContext"]["privileged"] is True
    assert container["image"] in lab_refs()
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_SUBNET"]["value"] == "10.244.0.0/16"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # kind's JSON patch appends CONTROL_PLANE_ENDPOINT to /spec/template/spec/containers/0/env.
    assert isinstance(container["env"], list)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert mounts["cni-cfg"] == volumes["cni-cfg"] == "/etc/cni/net.d"
    assert mounts["xtables-lock"] == volumes["xtables-lock"] == "/run/xtables.lock"
    assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount")["metadata"]["name"]


def test_kindnet_may_read_nodes_and_nothing_else() -> None:
    docs = render_cni("10.244.0.0/16")
    role = by_kind(docs, "ClusterRole")
    binding = by_kind(docs, "ClusterRoleBinding")

    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "kindnet"


def test_dual_stack_pod_subnet_renders_as_one_string() -> None:
    container = by_kind(render_cni("10.244.0.0/16,fd00:10:244::/56"), "DaemonSet")["spec"][
        "template"
    ]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert env["POD_SUBNET"] == "10.244.0.0/16,fd00:10:244::/56"


def test_storage_is_the_default_class_standard_served_by_lab_images() -> None:
    docs = list(yaml.safe_load_all((MANIFESTS / "default-storage.yaml").read_text()))
    storage_class = by_kind(docs, "StorageClass")
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    helper_pod = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["helperPod.yaml"])

    assert storage_class["metadata"]["name"] == "standard"
    annotations = storage_class["metadata"]["annotations"]
    assert annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["provisioner"] == "rancher.io/local-path"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    refs = lab_refs()
    helper_image = container["command"][container["command"].index("--helper-image") + 1]
    assert {container["image"], helper_image, helper_pod["spec"]["containers"][0]["image"]} <= refs
    assert helper_image == helper_pod["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("name", ["default-cni.yaml", "default-storage.yaml"])
def test_every_image_a_manifest_names_is_built_by_the_lab(name: str) -> None:
    text = (MANIFESTS / name).read_text()
    images = {
        line.split("image:", 1)[1].strip()
        for line in text.splitlines()
        if line.strip().startswith("image:")
    }

    assert images and images <= lab_refs()
    assert not any(Path(image).name.startswith("kindest") for image in images)
