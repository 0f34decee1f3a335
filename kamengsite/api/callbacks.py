"""Signed status callbacks to resellers (a core plugin): queued on delivery and refund, retried with backoff."""
