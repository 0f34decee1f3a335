"""A dujiao-next shop as an upstream, through its upstream (site-to-site 对接) API ``/api/v1/upstream``.

Followed (dujiao-next/dujiao-next): ``internal/http/handlers/upstream/upstream_handler.go`` (the
endpoints, request and answer fields, idempotency on ``downstream_order_no``, error codes),
``internal/upstream/adapter.go`` (the adapter's types: products, SKUs, order detail, fulfillment);
and dujiao-next/document ``docs/en/api/integration-open-api.md`` / ``integration-guide.md`` for the
signature, whose code file (``internal/upstream`` ``Sign``) is not in the stored sources.

* Headers ``Dujiao-Next-Api-Key``, ``Dujiao-Next-Timestamp`` (Unix seconds, ±60 s) and
  ``Dujiao-Next-Signature`` = lowercase hex HMAC-SHA256(api_secret,
  ``METHOD\\nPATH\\nTIMESTAMP\\nmd5_hex(body)``), PATH without the query string.
* Answers: ``{"ok": true, ...fields}``, or ``{"ok": false, "error_code", "error_message"}``.
* A ref is the upstream's SKU id (``skus[].id``); price is the SKU's ``price_amount`` (our member
  price there), stock ``stock_quantity`` (-1: unlimited).
* ``POST /orders`` with ``downstream_order_no`` = our idempotency key: the same key returns the
  existing order (``idempotent = True``); the order is paid from our wallet there at once (a
  failed payment is ``ok: false, error_code: payment_failed`` with HTTP 200). Delivery comes later
  (``GET /orders/:id``: ``fulfillment.payload``), so the answer is usually "pending" and
  ``upstream_order_no`` holds the upstream's numeric ``order_id`` that ``query_order`` needs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlsplit

from kamengsite.i18n import _l

from . import Connector, UpstreamError, UpstreamOrder, UpstreamProduct, stock_count, whole_number, yuan_to_fen

PREFIX = "/api/v1/upstream"
KEY_HEADER = "Dujiao-Next-Api-Key"
TIMESTAMP_HEADER = "Dujiao-Next-Timestamp"
SIGNATURE_HEADER = "Dujiao-Next-Signature"
PAGE_SIZE = 50
MAX_PAGES = 40
DONE = {"completed", "delivered", "fulfilled"}
FAILED = {"canceled", "cancelled", "refunded", "partially_refunded", "failed", "expired"}
RETRYABLE_CODES = {"internal_error"}


def sign(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    message = f"{method.upper()}\n{path}\n{timestamp}\n{hashlib.md5(body or b'').hexdigest()}"
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def localized(value) -> str:
    """A dujiao-next multilingual field ({"zh-CN": ..., "en": ...}) as one string, Chinese first."""
    if isinstance(value, dict):
        for key in ("zh-CN", "zh", "zh-TW", "en"):
            if value.get(key):
                return str(value[key])
        return next((str(v) for v in value.values() if v), "")
    return "" if value is None else str(value)


class DujiaoConnector(Connector):
    protocol = "dujiao"
    label = _l("dujiao-next shop (upstream API)")
    idempotent = True
    settings_schema = {
        "type": "object",
        "required": ["base_url", "api_key", "api_secret"],
        "properties": {
            "base_url": {"type": "string", "title": _l("Shop URL (https://...)"), "maxLength": 200},
            "api_key": {"type": "string", "title": _l("API key"), "maxLength": 128},
            "api_secret": {"type": "string", "title": _l("API secret"), "writeOnly": True, "maxLength": 128},
            "callback_url": {"type": "string", "title": _l("Callback URL (optional)"), "maxLength": 300},
        },
    }

    def call(self, method: str, path: str, payload: dict | None = None, *, allow_not_ok: bool = False) -> dict:
        url = self.base_url + PREFIX + path
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8") if payload is not None else b""
        timestamp = str(int(time.time()))
        headers = {KEY_HEADER: str(self.settings["api_key"]), TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(str(self.settings["api_secret"]), method, urlsplit(url).path, timestamp,
                                          body)}
        if body:
            headers["Content-Type"] = "application/json"
        response = self.http(method, url, body=body, headers=headers)
        answer = self.json_of(response)
        if not isinstance(answer, dict):
            raise UpstreamError("the upstream's answer is not an object", retryable=True)
        if answer.get("ok") is True or (allow_not_ok and response.status == 200 and answer.get("order_id")):
            return answer
        code = str(answer.get("error_code") or f"http_{response.status}")
        message = str(answer.get("error_message") or answer.get("message") or "")[:300]
        raise UpstreamError(f"{code}: {message}" if message else code,
                            retryable=code in RETRYABLE_CODES or response.status == 429)

    def ping(self) -> dict:
        answer = self.call("POST", "/ping")
        return {"name": str(answer.get("site_name") or ""), "balance": answer.get("balance")}

    # -- catalogue ----------------------------------------------------------------------------

    def products(self) -> list[UpstreamProduct]:
        found = []
        for page in range(1, MAX_PAGES + 1):
            answer = self.call("GET", f"/products?page={page}&page_size={PAGE_SIZE}")
            items = answer.get("items") or []
            for item in items:
                if isinstance(item, dict) and item.get("is_active", True):
                    found.extend(self._skus_of(item))
            if len(items) < PAGE_SIZE or page * PAGE_SIZE >= whole_number(answer.get("total", 0), "total"):
                break
        return found

    def _skus_of(self, item: dict) -> list[UpstreamProduct]:
        title = localized(item.get("title")) or str(item.get("slug") or item.get("id"))
        fields = self._fields_of(item.get("manual_form_schema"))
        kind = "card" if item.get("fulfillment_type") == "auto" else ("topup" if fields else "manual")
        result = []
        for sku in item.get("skus") or []:
            if not isinstance(sku, dict) or not sku.get("is_active", True):
                continue
            spec = sku.get("spec_values")
            spec_text = " ".join(localized(v) for v in spec.values()) if isinstance(spec, dict) else ""
            name = f"{title} · {spec_text}" if spec_text.strip() else title
            result.append(UpstreamProduct(str(whole_number(sku.get("id"), "SKU id")), name[:120],
                                          yuan_to_fen(sku.get("price_amount")), stock_count(sku.get("stock_quantity", 0)),
                                          kind, str(item.get("category_id") or ""), fields))
        return result

    @staticmethod
    def _fields_of(schema) -> list:
        entries = schema.get("fields") if isinstance(schema, dict) else schema
        if not isinstance(entries, list):
            return []
        return [{"name": str(f.get("key") or f.get("name")), "label": localized(f.get("label") or f.get("key")),
                 "required": bool(f.get("required", True))}
                for f in entries if isinstance(f, dict) and (f.get("key") or f.get("name"))]

    # -- orders -------------------------------------------------------------------------------

    def place_order(self, ref: str, quantity: int, idempotency_key: str, fields: dict | None = None) -> UpstreamOrder:
        payload = {"sku_id": whole_number(ref, "SKU id"), "quantity": int(quantity),
                   "downstream_order_no": idempotency_key, "trace_id": idempotency_key}
        if fields:
            payload["manual_form_data"] = dict(fields)
        if self.settings.get("callback_url"):
            payload["callback_url"] = str(self.settings["callback_url"])
        answer = self.call("POST", "/orders", payload, allow_not_ok=True)
        order_id = str(answer.get("order_id") or "")
        if answer.get("ok") is not True:  # created but its wallet payment failed: cancelled upstream
            return UpstreamOrder("failed", [], order_id, str(answer.get("error_message") or answer.get("error_code")))
        status = str(answer.get("status") or "").lower()
        if status in DONE and order_id:
            found = self.query_order(idempotency_key, order_id)
            if found is not None:
                return found
        if status in FAILED:
            return UpstreamOrder("failed", [], order_id, f"upstream order {status}")
        return UpstreamOrder("pending", [], order_id, str(answer.get("order_no") or ""))

    def query_order(self, idempotency_key: str, upstream_order_no: str = "") -> UpstreamOrder | None:
        if not str(upstream_order_no).isdigit():
            return None  # dujiao-next finds orders by its own order id only
        try:
            answer = self.call("GET", f"/orders/{upstream_order_no}")
        except UpstreamError as exc:
            if str(exc).startswith("order_not_found"):
                return None
            raise
        status = str(answer.get("status") or "").lower()
        fulfillment = answer.get("fulfillment") if isinstance(answer.get("fulfillment"), dict) else None
        if fulfillment and fulfillment.get("status", "delivered") == "delivered":
            keys = [line.strip() for line in str(fulfillment.get("payload") or "").splitlines() if line.strip()]
            return UpstreamOrder("delivered", keys, str(upstream_order_no), str(answer.get("order_no") or ""))
        if status in FAILED:
            return UpstreamOrder("failed", [], str(upstream_order_no), f"upstream order {status}")
        return UpstreamOrder("pending", [], str(upstream_order_no), status)
