"""The cri-py test-image lab: builds the images critest needs from Debian packages.

e2e/build_images.py is the command; these modules are its parts, one concern each:
environment (paths, tools), catalog (what to build), debian (packages), elf (library needs),
layers (layer content and tars), oci (image layout and images), registry (push and inspect),
smoke (run pulled images in chroots), gobuild (Go programs from their module's source),
busybox_source (busybox from Debian's source package with extra applets).
"""
