"""Where the lab keeps things and how it runs tools: paths, the registry address, the fixed
build timestamp, the error type every lab step raises, and the subprocess wrapper."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parent.parent
E2E_DIR = IMAGES_DIR.parent
CATALOG_PATH = IMAGES_DIR / "catalog.toml"
FILES_DIR = IMAGES_DIR / "files"
APT_PACKAGES = E2E_DIR / "apt-packages.txt"

REGISTRY = "127.0.0.1:5000"
LAB_DIR = Path(os.environ.get("CRI_PY_LAB_DIR", "/var/lib/cri-py-lab"))
CACHE_DIR = Path(os.environ.get("CRI_PY_LAB_CACHE", "/var/cache/cri-py-lab"))
SUMMARY_PATH = LAB_DIR / "images.json"

# Every timestamp in the images (file mtimes, config "created") is this instant, so the same
# Debian package versions always give byte-identical layers and the same digests.
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"

# Debian architecture -> (multiarch triplet, OCI architecture, OCI variant).
ARCHITECTURES: dict[str, tuple[str, str, str | None]] = {
    "amd64": ("x86_64-linux-gnu", "amd64", None),
    "arm64": ("aarch64-linux-gnu", "arm64", "v8"),
}


class BuildError(Exception):
    """Something the person running the lab has to fix; the message says what."""


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a tool and return its stdout; a failure becomes a BuildError naming the command."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except FileNotFoundError:
        raise BuildError(
            f"{argv[0]} not found; install the lab's packages: "
            f"apt-get install -y $(cat {APT_PACKAGES})"
        ) from None
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def debian_architecture() -> str:
    """This machine's Debian architecture: the packages fetched and the images built are for it."""
    arch = run(["dpkg", "--print-architecture"]).strip()
    if arch not in ARCHITECTURES:
        raise BuildError(f"architecture {arch} is not in ARCHITECTURES; add its multiarch triplet")
    return arch
