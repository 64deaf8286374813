"""The streaming server: Exec/Attach/PortForward sessions reached through one-time URLs."""
