"""The gRPC edge: servicers that validate, call services and map errors; nothing else."""
