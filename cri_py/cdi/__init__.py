"""CDI, the Container Device Interface: device specs written by vendors (`names.py` the device
names, `spec.py` a spec file checked and typed, `edits.py` what devices change in a container's
OCI spec; all pure) and the node's specs as `registry.py` `CdiRegistry` reads them."""
