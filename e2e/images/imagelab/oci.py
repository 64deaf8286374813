"""OCI image layout: blobs by digest, image configs, manifests, single-platform indexes and
named references (what `skopeo copy oci:DIR:NAME` reads); and the builder that stacks catalog
layers into images, building each distinct layer once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagelab.busybox_source import BusyboxBuilder
from imagelab.catalog import Catalog, ImageRecipe
from imagelab.debian import DebianPackages, Package
from imagelab.environment import ARCHITECTURES, CACHE_DIR, CREATED
from imagelab.gobuild import GoBuilder
from imagelab.layers import Entry, build_layer, gzip_deterministic, layer_tar

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces: the same document always hashes to the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciLayout:
    """An OCI image layout directory: blobs by digest and an index.json of named references."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.references: list[dict[str, Any]] = []

    def add_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        path = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def name(self, ref_name: str, descriptor: dict[str, Any]) -> None:
        annotations = {"org.opencontainers.image.ref.name": ref_name}
        self.references.append({**descriptor, "annotations": annotations})

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": self.references}
        (self.root / "index.json").write_bytes(canonical_json(index))


@dataclass(frozen=True)
class BuiltLayer:
    name: str
    comment: str
    diff_id: str
    blob: dict[str, Any]
    packages: tuple[str, ...]
    source_builds: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltImage:
    recipe: ImageRecipe
    oci_ref: str
    top: dict[str, Any]  # the descriptor pushed: the index, or the manifest
    image_id: str  # the config digest, which is what CRI runtimes report as the image ID
    size: int


def runtime_config(recipe: ImageRecipe) -> dict[str, Any]:
    """The catalog's config in OCI form (ExposedPorts is a set, written as a map to {})."""
    config = dict(recipe.config)
    if "ExposedPorts" in config:
        config["ExposedPorts"] = {port: {} for port in config["ExposedPorts"]}
    return config


def image_config(
    recipe: ImageRecipe,
    layers: list[BuiltLayer],
    packages: Mapping[str, Package],
    arch: str,
) -> dict[str, Any]:
    config = runtime_config(recipe)
    used = sorted({name for layer in layers for name in layer.packages})
    # Provenance: which Debian package versions this image's files came from.
    config["Labels"] = {
        "io.cri-py.lab.debian-packages": " ".join(
            f"{name}={packages[name].version}" for name in used
        ),
        "io.cri-py.lab.stands-in-for": recipe.upstream,
    }
    built = sorted({source for layer in layers for source in layer.source_builds})
    if built:
        # What the programs not taken from binary packages were built from (and with).
        config["Labels"]["io.cri-py.lab.source-builds"] = "; ".join(built)
    _, oci_arch, variant = ARCHITECTURES[arch]
    document: dict[str, Any] = {
        "architecture": oci_arch,
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": CREATED,
                "created_by": f"cri-py e2e/build_images.py: layer {layer.name}",
                "comment": layer.comment,
            }
            for layer in layers
        ],
    }
    if variant:
        document["variant"] = variant
    return document


class ImageBuilder:
    """Builds every image of the catalog into one OCI layout, sharing identical layers."""

    def __init__(
        self, catalog: Catalog, packages: DebianPackages, layout: OciLayout, arch: str
    ) -> None:
        self.catalog = catalog
        self.debian = packages
        self.layout = layout
        self.arch = arch
        self.triplet = ARCHITECTURES[arch][0]
        # Keyed by the stack of layer names up to and including the layer: a layer's content
        # depends on what is below it (libraries already present are not copied again).
        self.layers: dict[tuple[str, ...], BuiltLayer] = {}
        self.views: dict[tuple[str, ...], dict[str, Entry]] = {(): {}}
        self.packages: dict[str, Package] = {}
        used = {name for image in catalog.images for name in image.layers}
        # One builder per Go module a used layer builds from (each needs its toolchain
        # and wrapper module only then).
        wanted = {module for name in used for module in catalog.layers[name].go_modules()}
        self.go: dict[str, GoBuilder] = {
            name: GoBuilder(module, CACHE_DIR)
            for name, module in catalog.go_modules.items()
            if name in wanted
        }
        self.busybox: BusyboxBuilder | None = None
        if catalog.busybox_source is not None and any(
            catalog.layers[name].busybox_source for name in used
        ):
            self.busybox = BusyboxBuilder(catalog.busybox_source, CACHE_DIR)
        packages.resolve(sorted({pkg for name in used for pkg in catalog.layers[name].packages}))

    def layer(self, stack: tuple[str, ...]) -> BuiltLayer:
        if stack in self.layers:
            return self.layers[stack]
        below = self._view(stack[:-1])
        recipe = self.catalog.layers[stack[-1]]
        packages = self.debian.with_library_depends(recipe.packages)
        self.packages.update(packages)
        tree = build_layer(
            recipe,
            below,
            packages,
            self.triplet,
            go=self.go or None,
            busybox=self.busybox.binary if self.busybox is not None else None,
        )
        tar = layer_tar(tree)
        blob = self.layout.add_blob(gzip_deterministic(tar), MEDIA_LAYER)
        built = BuiltLayer(
            recipe.name,
            recipe.comment,
            sha256(tar),
            blob,
            tuple(sorted(tree.packages_used)),
            tuple(sorted(tree.source_builds)),
        )
        self.layers[stack] = built
        self.views[stack] = {**below, **tree.entries}
        print(
            f"  layer {recipe.name:<24} {blob['size'] / 1e6:6.2f} MB  {blob['digest'][:19]}",
            flush=True,
        )
        return built

    def _view(self, stack: tuple[str, ...]) -> dict[str, Entry]:
        """All entries of the layers in stack, upper ones overriding lower ones."""
        if stack not in self.views:
            self.layer(stack)
        return self.views[stack]

    def image(self, recipe: ImageRecipe, oci_ref: str) -> BuiltImage:
        layers = [self.layer(recipe.layers[: depth + 1]) for depth in range(len(recipe.layers))]
        config = self.layout.add_blob(
            canonical_json(image_config(recipe, layers, self.packages, self.arch)), MEDIA_CONFIG
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config,
            "layers": [layer.blob for layer in layers],
        }
        top = self.layout.add_blob(canonical_json(manifest), MEDIA_MANIFEST)
        if recipe.index:
            _, oci_arch, variant = ARCHITECTURES[self.arch]
            platform = {"architecture": oci_arch, "os": "linux"}
            if variant:
                platform["variant"] = variant
            index = {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [{**top, "platform": platform}],
            }
            top = self.layout.add_blob(canonical_json(index), MEDIA_INDEX)
        self.layout.name(oci_ref, top)
        size = config["size"] + sum(layer.blob["size"] for layer in layers)
        return BuiltImage(recipe, oci_ref, top, config["digest"], size)
