"""Pull time of a multi-layer image from the lab registry into a cold image store.

Each run builds a fresh ImageService over an empty temp root (so every blob is downloaded,
verified and unpacked), pulls through the lab's mirror config, and is timed from the PullImage
call to its return. Prints one markdown table line:

    | images: pull <image> (<n> layers, <MB> MB) cold | min | p50 | max | runs |

Usage: .venv/bin/python bench/images.py [--image REF] [--runs N] [--mirror URL]
Needs the lab registry (`make registry images`); only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cri_py.config import Config, ImagesConfig, RegistryHost
from cri_py.images.reference import parse_reference
from cri_py.images.service import ImageService

DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
DEFAULT_MIRROR = "http://127.0.0.1:5000"


async def pull_once(image: str, mirror: str, root: Path) -> tuple[float, int, int]:
    """(seconds, layers, compressed bytes) of one cold pull."""
    domain = parse_reference(image).domain
    config = Config(
        root_dir=str(root),
        images=ImagesConfig(pinned=()),
        registries={domain: RegistryHost(mirrors=(f"{mirror}/{domain}",))},
    )
    service = ImageService(config)
    try:
        started = time.perf_counter()
        image_id = await service.pull(image)
        seconds = time.perf_counter() - started
        view = service.status(image_id)
        assert view is not None
        return seconds, len(service.rootfs(image_id).layers), view.size
    finally:
        await service.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    args = parser.parse_args()
    times: list[float] = []
    layers = size = 0
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="cri-py-bench-images-") as temp:
            seconds, layers, size = asyncio.run(pull_once(args.image, args.mirror, Path(temp)))
        times.append(seconds)
    privilege = "root" if os.geteuid() == 0 else "non-root"

    def ms(value: float) -> str:
        return f"{value * 1000:.0f} ms"

    print(
        f"| images: pull {args.image} ({layers} layers, {size / 1e6:.1f} MB) cold, {privilege} "
        f"| min {ms(min(times))} | p50 {ms(statistics.median(times))} | max {ms(max(times))} "
        f"| {args.runs} runs |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
