"""The API's request signature: HMAC-SHA256 over the method, path, time, nonce and body.

The string to sign is five lines joined by ``\\n``::

    POST
    /api/v1/orders?x=1          (path and, if any, the query string exactly as sent)
    1764680000                  (X-Ks-Timestamp: Unix seconds)
    4f1c0e…                     (X-Ks-Nonce: 16-64 characters of [A-Za-z0-9_-], new for every request)
    e3b0c442…                   (hex SHA-256 of the raw body; of b"" for a GET)

and the signature is the lowercase hex HMAC-SHA256 of it under the key's secret, sent in
``X-Ks-Signature`` beside ``X-Ks-Key`` (the app key). Callbacks to the reseller are signed
the same way with the same secret. Used by both sides: the server (``auth``), the kamengsite
upstream connector and the tests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

KEY_HEADER = "X-Ks-Key"
TIMESTAMP_HEADER = "X-Ks-Timestamp"
NONCE_HEADER = "X-Ks-Nonce"
SIGNATURE_HEADER = "X-Ks-Signature"
WINDOW_SECONDS = 60
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join((method.upper(), path, str(timestamp), nonce, hashlib.sha256(body or b"").hexdigest()))


def signature(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = string_to_sign(method, path, timestamp, nonce, body).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(app_key: str, secret: str, method: str, path: str, body: bytes = b"", *,
                   timestamp: int | None = None, nonce: str | None = None) -> dict:
    """The four headers that sign one request (``path`` with its query string, as sent)."""
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {KEY_HEADER: app_key, TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature(secret, method, path, timestamp, nonce, body)}


def matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), (given or "").strip().lower().encode())
