"""Checking a signed API request: key, time window, signature, then the nonce (replay refused).

The nonce is remembered only after the signature holds, so nobody without the secret can fill
the table; the unique (app key, nonce) pair refuses a replay in every process at once.
Nonces older than twice the window are swept (``sweep_nonces``, a periodic job).
"""

from __future__ import annotations

import datetime
import time

import peewee

from ..i18n import _
from ..models import utcnow
from . import keys, signing
from .errors import ApiError
from .models import ApiKey, ApiNonce


def authenticate(request, *, site_id: int, instance_secret: str, now: float | None = None) -> ApiKey:
    """The active key that signed this Flask ``request`` for ``site_id``; raises ApiError otherwise."""
    headers = request.headers
    app_key = headers.get(signing.KEY_HEADER, "")
    timestamp = headers.get(signing.TIMESTAMP_HEADER, "")
    nonce = headers.get(signing.NONCE_HEADER, "")
    given = headers.get(signing.SIGNATURE_HEADER, "")
    if not (app_key and timestamp and nonce and given):
        raise ApiError("missing_signature", _("Sign the request: the %(headers)s headers are required",
                                              headers=", ".join((signing.KEY_HEADER, signing.TIMESTAMP_HEADER,
                                                                 signing.NONCE_HEADER, signing.SIGNATURE_HEADER))))
    key = keys.find_active(app_key)
    if key is None or key.site_id != site_id:  # another site's key is no key here
        raise ApiError("invalid_key", _("Unknown or revoked app key"))
    now = time.time() if now is None else now
    if not timestamp.isdigit() or abs(now - int(timestamp)) > signing.WINDOW_SECONDS:
        raise ApiError("timestamp_out_of_window", _("%(header)s must be the current Unix time (±%(n)s s)",
                                                    header=signing.TIMESTAMP_HEADER, n=signing.WINDOW_SECONDS))
    if not signing.NONCE_RE.match(nonce):
        raise ApiError("missing_signature", _("%(header)s must be 16-64 letters, digits, '-' or '_'",
                                              header=signing.NONCE_HEADER))
    path = signed_path(request)
    expected = signing.signature(keys.secret_for(key, instance_secret), request.method, path, timestamp, nonce,
                                 request.get_data(cache=True))
    if not signing.matches(expected, given):
        raise ApiError("invalid_signature", _("The signature does not match the request"))
    _remember_nonce(app_key, nonce)
    keys.touch(key)
    return key


def signed_path(request) -> str:
    """The path and the query string exactly as the client sent it (percent-encoded), as signed."""
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def _remember_nonce(app_key: str, nonce: str):
    try:
        ApiNonce.create(app_key=app_key, nonce=nonce, created_at=utcnow())
    except peewee.IntegrityError:
        raise ApiError("nonce_replayed", _("This nonce was already used: every request needs a new one")) from None


def sweep_nonces(now: datetime.datetime | None = None) -> int:
    """Forget nonces older than twice the window (they can no longer pass the time check)."""
    cutoff = (now or utcnow()) - datetime.timedelta(seconds=2 * signing.WINDOW_SECONDS)
    return ApiNonce.delete().where(ApiNonce.created_at < cutoff).execute()
