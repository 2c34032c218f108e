"""Adapters: the outside world (MongoDB, template files, Prometheus, logging, clocks)."""
