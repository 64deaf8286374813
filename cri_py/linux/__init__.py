"""The syscall edge: the only package that touches ctypes. Decisions live elsewhere."""
