"""Held-out data for bench figures (see README.md)."""
