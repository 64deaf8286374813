"""Pod networking: the built-in bridge network (pyroute2) and its address allocations."""
