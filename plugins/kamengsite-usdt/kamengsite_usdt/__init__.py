"""USDT (TRC20) payment channel for kamengsite, through an epusdt-style gateway.

Protocol (see ``../shared/reference/payments.md``, "USDT (TRC20) through an epusdt-style gateway"):

* signature: lowercase MD5 of the sorted (bytewise) ``k=v`` pairs joined by ``&`` of every
  non-empty field except ``signature``, with the API token appended directly (no ``&``);
* create: ``POST {api}/api/v1/order/create-transaction`` with the JSON body
  ``{order_id, amount, notify_url, redirect_url, signature}``; ``amount`` is CNY yuan sent as a
  JSON number written without trailing zeros (``15``, ``15.5``, ``15.01``) — the text that is
  signed. The answer ``{status_code: 200, data: {trade_id, order_id, amount, actual_amount,
  token, expiration_time, payment_url}}`` sends the buyer to ``payment_url``;
* notification: ``POST`` JSON ``{trade_id, order_id, amount, actual_amount, token,
  block_transaction_id, signature, status}``. The signature covers the **raw text** of each
  value as received (``100`` and ``"100.00"`` sign differently; ``actual_amount`` may be a
  string), so the body is parsed keeping every number's original text. ``status == 2`` means
  paid; ``amount`` (CNY) is a Decimal → fen compared to the order by ``orders.mark_paid``;
  the gateway trade number is ``trade_id``. The reply is exactly ``ok`` (``fail``, HTTP 400,
  for anything refused).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import urllib.request
from dataclasses import dataclass

from kamengsite.hookspecs import hookimpl
from kamengsite.payments import (Channel, Notification, PaymentAction, PaymentError, PayType, Rejection,
                                 yuan_to_fen)

log = logging.getLogger(__name__)

CREATE_PATH = "/api/v1/order/create-transaction"
DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 20
MAX_NOTIFY_BYTES = 64 * 1024
PAID_STATUS = "2"
URL_RE = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see, e.g. USDT (TRC20)"},
        "api": {"type": "string", "pattern": r"^https?://[^\s/]+",
                "description": "gateway base URL, e.g. https://usdt.example.com/"},
        "token": {"type": "string", "minLength": 8, "writeOnly": True,
                  "description": "API token (api_auth_token) of the gateway"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60,
                    "description": "seconds to wait for the gateway when creating a payment (default 10)"},
    },
    "required": ["api", "token"],
    "additionalProperties": False,
}


# -- signing -------------------------------------------------------------------------------


def sign_string(fields: dict) -> str:
    """``k=v&...`` of every non-empty field except ``signature``, keys sorted bytewise, raw values."""
    kept = {k: v for k, v in fields.items() if k != "signature" and v != ""}
    return "&".join(f"{k}={kept[k]}" for k in sorted(kept, key=lambda k: k.encode("utf-8")))


def signature(fields: dict, token: str) -> str:
    """Lowercase MD5 of ``sign_string(fields) + token``; every value must already be its text."""
    return hashlib.md5((sign_string(fields) + token).encode("utf-8")).hexdigest()


def amount_text(fen: int) -> str:
    """Fen → yuan written as the gateway writes numbers: no trailing zeros (1500 → ``15``, 1550 → ``15.5``)."""
    if not isinstance(fen, int) or fen <= 0:
        raise ValueError(f"amount {fen!r} fen is not a positive integer")
    whole, cents = divmod(fen, 100)
    return str(whole) if cents == 0 else f"{whole}.{cents:02d}".rstrip("0")


# -- raw-text JSON -------------------------------------------------------------------------


class _Refused(ValueError):
    pass


class _Raw(str):
    """A JSON number kept as the exact text it was sent as."""


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(f"field {key!r} sent twice")
        seen[key] = value
    return seen


def _refuse_constant(name):
    raise _Refused(f"{name} is not a number")


def parse_raw_json(body: bytes) -> dict:
    """The top-level JSON object with every value as the text that was signed.

    Numbers keep their original text (``100`` stays ``"100"``, ``15.625`` stays ``"15.625"``),
    strings are their decoded value, booleans ``true``/``false``. ``null``, arrays, nested
    objects, duplicate keys, ``NaN``/``Infinity`` and anything but a JSON object raise ValueError.
    """
    text = body.decode("utf-8")
    data = json.loads(text, parse_float=_Raw, parse_int=_Raw, parse_constant=_refuse_constant,
                      object_pairs_hook=_no_duplicates)
    if not isinstance(data, dict):
        raise _Refused("body is not a JSON object")
    fields = {}
    for key, value in data.items():
        if isinstance(value, bool):
            fields[key] = "true" if value else "false"
        elif isinstance(value, str):  # strings and raw number text
            fields[key] = str(value)
        else:
            raise _Refused(f"field {key!r} is not a string or number")
    return fields


# -- the HTTP call (injectable) ------------------------------------------------------------


def post_json(url: str, body: bytes, timeout: float) -> bytes:
    """POST ``body`` as JSON and return the response body; raises on network errors and non-2xx."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "kamengsite-usdt/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (schema)
        return response.read(MAX_RESPONSE_BYTES)


@dataclass(frozen=True)
class UsdtPaymentAction(PaymentAction):
    """A redirect to the gateway's cashier that also carries what a QR view would show."""

    trade_id: str = ""
    wallet: str = ""           # the TRC20 address (``token`` in the gateway's answer)
    actual_amount: str = ""    # the exact USDT amount to send (raw text)
    expiration_time: str = ""


def _encode_create_body(fields: dict, amount: str) -> bytes:
    """JSON with ``amount`` written as a number with exactly the signed text."""
    parts = [f"{json.dumps(k)}:{amount if k == 'amount' else json.dumps(v, ensure_ascii=False)}"
             for k, v in fields.items()]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


class UsdtChannel(Channel):
    id = "usdt"
    name = "USDT (TRC20)"
    pay_types = (PayType("usdt", "USDT (TRC20)"),)
    devices = ("pc", "mobile")
    settings_schema = SETTINGS_SCHEMA
    success_body = "ok"
    failure_body = "fail"
    failure_status = 400

    def __init__(self, post=None):
        self._post = post  # None: the module's ``post_json`` (looked up at call time)

    def post(self, url: str, body: bytes, timeout: float) -> bytes:
        return (self._post or post_json)(url, body, timeout)

    # -- create ------------------------------------------------------------------------

    def create_request(self, profile, request) -> tuple[str, bytes]:
        """The URL and exact JSON body of the create-transaction call for ``request``."""
        amount = amount_text(request.amount_fen)
        fields = {"order_id": request.order_no, "amount": amount,
                  "notify_url": request.notify_url, "redirect_url": request.return_url}
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["signature"] = signature(fields, profile.get("token"))
        url = profile.get("api").rstrip("/") + CREATE_PATH
        return url, _encode_create_body(fields, amount)

    def create_payment(self, profile, request):
        url, body = self.create_request(profile, request)
        timeout = float(profile.get("timeout") or DEFAULT_TIMEOUT)
        try:
            raw = self.post(url, body, timeout)
        except Exception as exc:  # noqa: BLE001 - network, TLS, HTTP status: the buyer sees one message
            log.warning("usdt gateway call failed: profile=%s order=%s error=%s: %s",
                        profile.name, request.order_no, type(exc).__name__, exc)
            raise PaymentError("USDT 支付网关暂时无法连接，请稍后再试") from exc
        try:
            answer = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            data = answer.get("data") if isinstance(answer, dict) else None
            if str(answer.get("status_code")) != "200" or not isinstance(data, dict):
                raise ValueError(f"status_code={answer.get('status_code')!r} message={answer.get('message')!r}")
            payment_url = str(data.get("payment_url") or "")
            if not URL_RE.match(payment_url):
                raise ValueError(f"payment_url {payment_url[:100]!r} is not an http(s) URL")
            if str(data.get("order_id", request.order_no)) != request.order_no:
                raise ValueError(f"answer is about order {data.get('order_id')!r}")
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("usdt gateway refused or answered badly: profile=%s order=%s error=%s",
                        profile.name, request.order_no, exc)
            raise PaymentError("USDT 支付网关未能创建订单，请稍后再试或联系站长") from exc
        return UsdtPaymentAction("redirect", url=payment_url, trade_id=str(data.get("trade_id") or ""),
                                 wallet=str(data.get("token") or ""),
                                 actual_amount=str(data.get("actual_amount") or ""),
                                 expiration_time=str(data.get("expiration_time") or ""))

    # -- notifications ----------------------------------------------------------------

    def verify_notification(self, profile, notice, now):
        body = notice.body or b""
        if not body.strip():
            return Rejection("empty body (expected a JSON notification)")
        if len(body) > MAX_NOTIFY_BYTES:
            return Rejection("body too large")
        try:
            fields = parse_raw_json(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return Rejection(f"body is not an acceptable JSON object: {exc}")
        given = fields.get("signature", "")
        if not given:
            return Rejection("no signature")
        expected = signature(fields, profile.get("token"))
        if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8")):
            return Rejection("bad signature (MD5)")
        # Signed by the gateway from here on; now check that it is about our money.
        for name in ("trade_id", "order_id", "amount", "status"):
            if not fields.get(name, "").strip():
                return Rejection(f"missing {name}")
        try:
            amount_fen = yuan_to_fen(fields["amount"])
        except ValueError as exc:
            return Rejection(str(exc))
        status = fields["status"].strip()
        return Notification(order_no=fields["order_id"].strip(), amount_fen=amount_fen,
                            trade_no=fields["trade_id"].strip(),
                            status="paid" if status == PAID_STATUS else "unpaid", raw_status=status)


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [UsdtChannel()]


plugin = _Plugin()
