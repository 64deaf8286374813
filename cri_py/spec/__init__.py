"""Pure translation of a CRI container request into an OCI runtime spec (no I/O in here)."""
