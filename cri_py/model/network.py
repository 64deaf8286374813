"""The pod network's readiness, as a network backend (CNI or the built-in bridge) reports it.

A value only: `cri_py.network` decides it, `cri_py.runtime.node` turns it into the
NetworkReady condition kubelet reads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkState:
    ready: bool
    reason: str = ""
    message: str = ""
