"""Another kamengsite shop as an upstream, through its reseller API v1 (``/api/v1``, docs/api.md).

Signed with ``kamengsite.api.signing.signed_headers`` (HMAC-SHA256 over method, path with query,
time, nonce and the body's SHA-256). A ref is the upstream's SKU id; the idempotency key is the
order's ``out_trade_no``, which the upstream keeps unique per app key, so placing the same order
again returns the same upstream order (``idempotent = True``).
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from kamengsite.api.signing import signed_headers

from kamengsite.i18n import _l

from . import Connector, UpstreamError, UpstreamOrder, UpstreamProduct, stock_count, whole_number

PER_PAGE = 50
MAX_PAGES = 40  # 2,000 products: enough for a catalogue, bounded for a misbehaving upstream
#: Error codes that mean "try again later" rather than "no".
RETRYABLE_CODES = {"rate_limited", "internal_error", "unavailable"}
DELIVERED = {"delivered"}
PENDING = {"created", "paid"}
FAILED = {"refund_pending", "refunded", "cancelled", "expired"}


class KamengsiteConnector(Connector):
    protocol = "kamengsite"
    label = _l("kamengsite shop (reseller API v1)")
    idempotent = True
    settings_schema = {
        "type": "object",
        "required": ["base_url", "app_key", "secret"],
        "properties": {
            "base_url": {"type": "string", "title": _l("Shop URL (https://...)"), "maxLength": 200},
            "app_key": {"type": "string", "title": _l("App key"), "maxLength": 64},
            "secret": {"type": "string", "title": _l("Secret"), "writeOnly": True, "maxLength": 128},
        },
    }

    # -- the calls ----------------------------------------------------------------------------

    def call(self, method: str, path: str, payload: dict | None = None):
        """``data`` of the upstream's ``{"ok": true, "data": ...}``; UpstreamError otherwise."""
        url = self.base_url + path
        parts = urlsplit(url)
        signed_path = parts.path + (f"?{parts.query}" if parts.query else "")
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8") if payload is not None else b""
        headers = signed_headers(self.settings["app_key"], self.settings["secret"], method, signed_path, body)
        if body:
            headers["Content-Type"] = "application/json"
        response = self.http(method, url, body=body, headers=headers)
        answer = self.json_of(response)
        if not isinstance(answer, dict):
            raise UpstreamError("the upstream's answer is not an object", retryable=True)
        if answer.get("ok") is True:
            return answer.get("data")
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        code = str(error.get("code") or f"http_{response.status}")
        message = str(error.get("message") or "")[:300]
        raise UpstreamError(f"{code}: {message}" if message else code,
                            retryable=code in RETRYABLE_CODES or response.status == 429)

    def ping(self) -> dict:
        return self.call("GET", "/api/v1/ping") or {}

    def products(self) -> list[UpstreamProduct]:
        found: list[UpstreamProduct] = []
        for page in range(1, MAX_PAGES + 1):
            data = self.call("GET", f"/api/v1/products?page={page}&per_page={PER_PAGE}") or {}
            items = data.get("items") or []
            for item in items:
                found.extend(self._skus_of(item))
            if len(items) < PER_PAGE or page * PER_PAGE >= whole_number(data.get("total", 0), "total"):
                break
        return found

    def _skus_of(self, item: dict) -> list[UpstreamProduct]:
        name = str(item.get("name") or "")
        kind = item.get("kind") if item.get("kind") in ("card", "topup", "manual") else "card"
        fields = [f for f in item.get("fields") or [] if isinstance(f, dict)]
        result = []
        for sku in item.get("skus") or []:
            price = whole_number(sku.get("price_fen"), "price")
            if price < 0:
                raise UpstreamError(f"negative price for SKU {sku.get('id')!r}")
            label = f"{name} · {sku['name']}" if sku.get("name") else name
            result.append(UpstreamProduct(ref=str(whole_number(sku.get("id"), "SKU id")), name=label[:120],
                                          price_fen=price, stock=stock_count(sku.get("stock", 0)), kind=kind,
                                          category=str(item.get("category_id") or ""), fields=fields))
        return result

    def place_order(self, ref: str, quantity: int, idempotency_key: str, fields: dict | None = None) -> UpstreamOrder:
        payload = {"out_trade_no": idempotency_key, "sku_id": whole_number(ref, "SKU id"), "quantity": int(quantity)}
        if fields:
            payload["fields"] = dict(fields)
        return self._order_of(self.call("POST", "/api/v1/orders", payload))

    def query_order(self, idempotency_key: str, upstream_order_no: str = "") -> UpstreamOrder | None:
        try:
            data = self.call("GET", f"/api/v1/orders/{quote(idempotency_key, safe='')}")
        except UpstreamError as exc:
            if str(exc).startswith("not_found"):
                return None
            raise
        return self._order_of(data)

    @staticmethod
    def _order_of(data) -> UpstreamOrder:
        if not isinstance(data, dict):
            raise UpstreamError("the upstream's order is not an object", retryable=True)
        status = str(data.get("status") or "")
        order_no = str(data.get("order_no") or "")[:64]
        if status in DELIVERED:
            keys = [str(k) for k in data.get("keys") or []]
            return UpstreamOrder("delivered", keys, order_no)
        if status in FAILED:
            return UpstreamOrder("failed", [], order_no, f"upstream order {status}")
        return UpstreamOrder("pending", [], order_no, status)
