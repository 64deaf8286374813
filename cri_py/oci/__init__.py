"""Pure: an OCI runtime spec turned into what the launcher does, step by step."""
