"""The lab registry as seen by the builder: the digest it holds for a reference (plain HTTP
on loopback), pushes with skopeo, `skopeo inspect`. The process itself is e2e/registry.sh's."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from imagelab.catalog import Reference
from imagelab.environment import REGISTRY, BuildError, run
from imagelab.oci import MEDIA_INDEX, MEDIA_MANIFEST, BuiltImage

MANIFEST_ACCEPT = ", ".join(
    [
        MEDIA_INDEX,
        MEDIA_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# Loopback traffic must never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def registry_digest(ref: Reference, registry: str = REGISTRY) -> str | None:
    """The digest the registry holds for ref (None when it has none)."""
    url = f"http://{registry}/v2/{ref.lab_repository()}/manifests/{ref.tag}"
    request = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_ACCEPT})
    try:
        with _OPENER.open(request, timeout=10) as response:
            digest: str | None = response.headers.get("Docker-Content-Digest")
            return digest
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise BuildError(f"registry answered {error.code} for {url}") from None
    except urllib.error.URLError as error:
        raise BuildError(
            f"no registry at http://{registry} ({error.reason}); start it: make registry"
        ) from None


def push(layout: Path, image: BuiltImage, ref: Reference) -> None:
    """Copy an image from the OCI layout to the registry, byte for byte (--preserve-digests
    fails rather than let skopeo rewrite a manifest); --all keeps an index with its manifests."""
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if image.recipe.index:
        argv.append("--all")
    run([*argv, f"oci:{layout}:{image.oci_ref}", f"docker://{ref.lab()}"])


def skopeo_inspect(ref: Reference, *extra: str) -> dict[str, Any]:
    """`skopeo inspect` of the reference in the lab registry (with --config: the image config)."""
    output = run(
        ["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref.lab()}"], timeout=60
    )
    result: dict[str, Any] = json.loads(output)
    return result
