"""cri-py: a Kubernetes container runtime (CRI v1) written in Python."""

__version__ = "0.1.0"
