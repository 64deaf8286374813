"""What a container inherits from its image: the `config` object of an OCI image config.

A value only: `cri_py.images.manifest` parses it out of the image config, `cri_py.spec.build`
reads it when it builds a container's spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuntimeConfig:
    """What a container inherits from its image (the `config` object of the image config)."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
