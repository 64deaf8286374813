"""Images: references, manifests, registry endpoints and client, pulls, the name catalog, the
content store and layer unpacking.

`cri_py.images.service.ImageService` is the one entry point the server and the container side
use; the modules under it each own one step of a pull.
"""
