"""Stub: being written (issue 10)."""
