"""The API's errors: a stable ``code`` for programs, a ``message`` for people, and the HTTP status.

Every error answers ``{"ok": false, "error": {"code": …, "message": …}}``. Codes are never
renamed (docs/api.md lists them); messages may change and follow the site's language.
"""

from __future__ import annotations

from flask import jsonify

from ..errors import KamengsiteError

#: code → HTTP status. The codes a client can rely on.
CODES = {
    "missing_signature": 401,
    "invalid_key": 401,
    "timestamp_out_of_window": 401,
    "nonce_replayed": 401,
    "invalid_signature": 401,
    "forbidden": 403,
    "not_found": 404,
    "invalid_request": 400,
    "out_of_stock": 409,
    "not_on_sale": 409,
    "insufficient_balance": 402,
    "not_cancellable": 409,
    "idempotency_conflict": 409,
    "rate_limited": 429,
    "callback_url_refused": 400,
    "internal_error": 500,
}


class ApiError(KamengsiteError):
    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        if code not in CODES:
            raise ValueError(f"unknown API error code {code!r}")
        self.code = code
        self.message = message
        self.status = status or CODES[code]

    def response(self):
        return error_response(self.code, self.message, self.status)


def error_response(code: str, message: str, status: int | None = None):
    response = jsonify(ok=False, error={"code": code, "message": message})
    response.status_code = status or CODES[code]
    return response
