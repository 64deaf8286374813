import json
from pathlib import Path

from imagelab.catalog import ImageRecipe, Reference
from imagelab.oci import MEDIA_MANIFEST, OciLayout, canonical_json, runtime_config, sha256


def test_oci_layout_names_references_and_stores_blobs_by_digest(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    manifest = canonical_json({"schemaVersion": 2})

    descriptor = layout.add_blob(manifest, MEDIA_MANIFEST)
    layout.name("image-0", descriptor)
    layout.write_index()

    assert descriptor == {"mediaType": MEDIA_MANIFEST, "digest": sha256(manifest), "size": 19}
    blob = tmp_path / "blobs" / "sha256" / descriptor["digest"].removeprefix("sha256:")
    assert blob.read_bytes() == manifest
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "image-0"}
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_runtime_config_writes_exposed_ports_as_the_oci_map() -> None:
    recipe = ImageRecipe(
        refs=(Reference.parse("registry.k8s.io/e2e-test-images/nginx:1.14-2"),),
        layers=(),
        config={"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": ["80/tcp"]},
        index=True,
        upstream="",
        critest="",
    )

    assert runtime_config(recipe) == {
        "Cmd": ["nginx", "-g", "daemon off;"],
        "ExposedPorts": {"80/tcp": {}},
    }
