#!/usr/bin/env python3
"""Build the test images critest and the node e2e suite need and push them to the lab registry.

Owns the lab's commands: build every image in e2e/images/catalog.toml and push, under its
original name, what the registry at 127.0.0.1:5000 does not already hold (`make images`);
check the registry's content against the catalog; pull images back and run them in chroots.
The work is done by the modules in e2e/images/imagelab/ (packages, ELF, layers, OCI layout,
registry, smoke tests); the registry process belongs to e2e/registry.sh. Standard library only.
Files come from Debian packages; agnhost and nnp are built from their Go source in the
k8s.io/kubernetes module (Go toolchain and module proxy), busybox with `nmeter` from Debian's
source package (gcc); both builds are cached.

    python3 e2e/build_images.py             build everything, push what the registry lacks
    python3 e2e/build_images.py --check     `skopeo inspect` every reference, compare configs
    python3 e2e/build_images.py --smoke     pull images back, unpack them, run them in chroots
    python3 e2e/build_images.py --list      each reference and its name in the lab registry
    python3 e2e/build_images.py --markdown  the image table of e2e/README.md

`--catalog e2e/images/kind-catalog.toml` does the same for the images of a kind cluster of
cri-py nodes (`make kind-images`).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "images"))

from imagelab.catalog import Catalog, load_catalog
from imagelab.debian import DebianPackages
from imagelab.environment import (
    CACHE_DIR,
    CATALOG_PATH,
    LAB_DIR,
    SUMMARY_PATH,
    BuildError,
    debian_architecture,
)
from imagelab.oci import BuiltImage, ImageBuilder, OciLayout, runtime_config
from imagelab.registry import push, registry_digest, skopeo_inspect
from imagelab.smoke import smoke


def build_and_push(
    catalog: Catalog, *, force: bool, only: str | None, summary_path: Path = SUMMARY_PATH
) -> int:
    started = time.monotonic()
    images = [
        image for image in catalog.images if only is None or any(only in str(r) for r in image.refs)
    ]
    if not images:
        raise BuildError(f"no image reference contains {only!r}; see --list")
    registry_digest(images[0].refs[0])  # fail early, before any work, when there is no registry
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (
        open(CACHE_DIR / ".lock", "w") as lock,
        tempfile.TemporaryDirectory(prefix="cri-py-lab-oci-") as scratch,
    ):
        # One build at a time per cache: the Go wrapper module and the busybox build
        # directory are rewritten in place.
        fcntl.flock(lock, fcntl.LOCK_EX)
        layout = OciLayout(Path(scratch))
        builder = ImageBuilder(catalog, DebianPackages(CACHE_DIR), layout, debian_architecture())
        built = []
        for number, recipe in enumerate(images):
            print(f"image {recipe.refs[0]}", flush=True)
            built.append(builder.image(recipe, f"image-{number}"))
        layout.write_index()
        summary, pushed = push_missing(layout, built, force=force)
    if only is None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(summary)} references: {pushed} pushed, {len(summary) - pushed} unchanged, "
        f"in {time.monotonic() - started:.1f}s"
        + (f"; summary in {summary_path}" if only is None else "")
    )
    for item in catalog.unbuildable:
        print(f"not built: {item.ref}\n  {item.reason}")
    return 0


def push_missing(
    layout: OciLayout, built: list[BuiltImage], *, force: bool
) -> tuple[list[dict[str, Any]], int]:
    """Push each reference whose digest in the registry differs from ours (re-runs are cheap);
    returns what the registry now holds, for SUMMARY_PATH, and how many were pushed."""
    summary = []
    pushed = 0
    for image in built:
        digest = image.top["digest"]
        for ref in image.recipe.refs:
            state = "unchanged"
            if force or registry_digest(ref) != digest:
                push(layout.root, image, ref)
                if registry_digest(ref) != digest:
                    raise BuildError(f"{ref.lab()} does not hold {digest} after the push")
                pushed += 1
                state = "pushed"
            print(f"  {state:<9} {ref.lab()}  {digest[:19]}", flush=True)
            summary.append(
                {
                    "ref": str(ref),
                    "lab_ref": ref.lab(),
                    "digest": digest,
                    "media_type": image.top["mediaType"],
                    "image_id": image.image_id,
                    "size": image.size,
                }
            )
    return summary, pushed


def check(catalog: Catalog) -> int:
    """Every catalog reference is in the lab registry with the config the catalog declares."""
    failures = 0
    for recipe in catalog.images:
        for ref in recipe.refs:
            try:
                inspected = skopeo_inspect(ref)
                config = skopeo_inspect(ref, "--config").get("config", {})
            except BuildError as error:
                failures += 1
                print(f"MISSING  {ref.lab()}: {error}")
                continue
            wrong = {
                key: config.get(key)
                for key, value in runtime_config(recipe).items()
                if config.get(key) != value
            }
            if wrong:
                failures += 1
                print(f"WRONG    {ref.lab()}: config differs from the catalog: {wrong}")
            else:
                layers = len(inspected.get("Layers") or [])
                print(f"OK       {ref.lab()}  {inspected['Digest'][:19]}  {layers} layer(s)")
    for item in catalog.unbuildable:
        print(f"EXPECTED {item.ref}: not in the lab ({item.reason.split(':')[0]})")
    total = sum(len(recipe.refs) for recipe in catalog.images)
    print(f"{total - failures} of {total} references OK")
    return 1 if failures else 0


def list_references(catalog: Catalog) -> int:
    """Each reference critest uses and the name it has in the lab registry."""
    for recipe in catalog.images:
        for ref in recipe.refs:
            print(f"{ref}  ->  {ref.lab()}")
    for item in catalog.unbuildable:
        print(f"{item.ref}  ->  (not built: {item.reason.split(':')[0]})")
    return 0


def markdown(catalog: Catalog) -> int:
    """The image table of e2e/README.md, from the catalog's own words."""
    print("| image reference | built from (Debian packages) | what critest checks with it |")
    print("| --- | --- | --- |")
    for recipe in catalog.images:
        layers = [catalog.layers[name] for name in recipe.layers]
        packages = sorted({package for layer in layers for package in layer.packages})
        for build in (build for layer in layers for build in layer.go_builds):
            module = catalog.go_modules[build.module]
            packages.append(f"Go: {build.package} @{module.version}")
        if catalog.busybox_source is not None and any(layer.busybox_source for layer in layers):
            source = catalog.busybox_source
            packages.append(f"busybox source ({source.flavour}, +{', '.join(source.enable)})")
        refs = "<br>".join(f"`{ref}`" for ref in recipe.refs)
        built = ", ".join(packages) + f"<br>in place of {recipe.upstream}"
        print(f"| {refs} | {built} | {recipe.critest} |")
    for item in catalog.unbuildable:
        print(f"| `{item.ref}` | not built | {item.reason} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="inspect every reference in the lab registry"
    )
    mode.add_argument(
        "--smoke", action="store_true", help="pull, unpack and run images in chroots (root)"
    )
    mode.add_argument("--list", action="store_true", help="print each reference and its lab name")
    mode.add_argument("--markdown", action="store_true", help="print the README's image table")
    parser.add_argument(
        "--force", action="store_true", help="push even when the registry has the same digest"
    )
    parser.add_argument(
        "--only", metavar="TEXT", help="only images with a reference containing TEXT"
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        default=CATALOG_PATH,
        help="the catalog to build (default: e2e/images/catalog.toml; `make kind-images` "
        "builds e2e/images/kind-catalog.toml); its summary goes to "
        f"{LAB_DIR}/<catalog name>.json (images.json for the default)",
    )
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        if args.check:
            return check(catalog)
        if args.smoke:
            return smoke(catalog, args.only)
        if args.list:
            return list_references(catalog)
        if args.markdown:
            return markdown(catalog)
        summary_path = (
            SUMMARY_PATH
            if args.catalog.resolve() == CATALOG_PATH.resolve()
            else LAB_DIR / f"{args.catalog.stem}.json"
        )
        return build_and_push(catalog, force=args.force, only=args.only, summary_path=summary_path)
    except BuildError as error:
        print(f"build_images.py: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
