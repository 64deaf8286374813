"""runtime.v1.ImageService: nothing built yet; every RPC answers UNIMPLEMENTED via the guard."""

from __future__ import annotations


class ImageServicer:
    """The RPCs of runtime.v1.ImageService built so far (see `Guarded` for the rest)."""
