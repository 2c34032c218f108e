"""Test and bench tooling: not part of the installed campaign_worker package."""
