"""Entrypoints: the Celery app and tasks, and the operator CLI. Thin by design."""
