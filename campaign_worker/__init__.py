"""campaign-worker: runs multi-stage conversational campaigns on Celery and MongoDB."""

__version__ = "0.1.0"
