"""Metadata persistence: atomic files and the state store."""
