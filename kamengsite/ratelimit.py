"""Rate limits: one counter store per process (memory), or shared by every process (Redis).

Keys always carry the site, so buyers of one site never use up another's
allowance. ``KAMENGSITE_RATELIMIT_URI`` (e.g. ``redis://127.0.0.1:6379/1``)
selects the shared store; several app processes then enforce one limit.
"""

from __future__ import annotations

import functools
import os
import threading

from flask import current_app, render_template, request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

_lock = threading.Lock()
_limiters: dict[str, MovingWindowRateLimiter] = {}


def limiter_for(uri: str | None = None) -> MovingWindowRateLimiter:
    uri = uri or os.environ.get("KAMENGSITE_RATELIMIT_URI") or "memory://"
    with _lock:
        limiter = _limiters.get(uri)
        if limiter is None:
            limiter = _limiters[uri] = MovingWindowRateLimiter(storage_from_string(uri))
    return limiter


def client_ip() -> str:
    return request.remote_addr or "-"


def allow(rule: str, scope: str, *identifiers: str) -> bool:
    """Count one hit of ``rule`` (e.g. "10/minute") for these identifiers; False once over the limit."""
    return limiter_for().hit(parse(rule), scope, *identifiers)


def limited(name: str, default: str, *, methods=("POST",)):
    """Decorate a view: over the limit per site and client IP, answer 429 with a page that says so.

    The rule is the instance's ``rate_limits[name]`` if set, else ``default`` (e.g. "10/minute").
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.method in methods:
                site = current_app.extensions["kamengsite.site"]
                rule = site.instance.rate_limits.get(name, default)
                if not allow(rule, name, site.slug, client_ip()):
                    return render_template("storefront/too_many.html"), 429
            return view(*args, **kwargs)

        return wrapper

    return decorate


def reset():
    """Forget every counter (tests; an operator lifting a lock-out)."""
    with _lock:
        for limiter in _limiters.values():
            limiter.storage.reset()
