"""Runtime services: node state, sandboxes, containers, recovery, stats."""
