"""An 异次元 acg-faka shop as an upstream, through its shared-store (共享店铺 / 对接) protocol.

Followed (lizhipay/acg-faka): ``app/Service/Impl/SharedService.php`` (the client side: ``post``,
``connect``, ``items``, ``inventory``, ``trade``), ``app/Controller/Shared/Commodity.php`` and
``Authentication.php`` (the server side: ``items``, ``inventory``, ``trade``, ``query``,
``connect``), ``app/Interceptor/SharedValidation.php`` and ``app/Util/Str.php``
(``generateSignature``).

* Every call is a form POST to ``<shop>/shared/...`` carrying ``app_id`` (the merchant id) and
  ``sign`` = md5 of the sorted, non-empty fields as ``k=v&k2=v2`` (url-decoded) followed by
  ``&key=<app_key>``. acg-faka's own client also posts ``app_key`` itself; the server signs
  whatever was posted, so we leave the secret out of the request and the signature still matches.
* Answers are ``{"code": 200, "msg": ..., "data": ...}``; any other code is the upstream's "no".
* A product is a commodity's ``code`` (its 对接码); a commodity with kinds (种类, the ``[category]``
  section of its INI ``config``) gives one product per kind, ref ``code|kind``. Our price is the
  upstream's ``factory_price`` (per kind: ``category_factory``), computed by the upstream for our
  merchant account; stock is ``inventory``'s ``count``.
* Orders are paid from our balance there (``trade``, which forces 余额支付); ``request_no`` is our
  idempotency key, but acg-faka refuses a repeated ``request_no`` ("The request ID already
  exists") instead of returning the first order, so ``idempotent = False``. ``query`` looks an
  order up by the upstream's own ``tradeNo`` (``upstream_order_no``), not by ``request_no``.
"""

from __future__ import annotations

import configparser
import hashlib
import json
from urllib.parse import urlencode

from kamengsite.i18n import _l

from . import Connector, UpstreamError, UpstreamOrder, UpstreamProduct, stock_count, yuan_to_fen

KIND_SEPARATOR = "|"
ALREADY_PLACED = "The request ID already exists"


def signature(data: dict, app_key: str) -> str:
    """acg-faka's ``Str::generateSignature``: md5(urldecode(http_build_query(sorted non-empty)) . "&key=" . key)."""
    fields = {k: v for k, v in data.items() if k != "sign" and str(v) != ""}
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields))
    return hashlib.md5(f"{text}&key={app_key}".encode("utf-8")).hexdigest()


def parse_ini(text: str) -> dict:
    """acg-faka's ``Ini::toArray`` for the sections we read (``category``, ``category_factory``)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # kind names are case-sensitive
    try:
        parser.read_string(text or "")
    except configparser.Error:
        return {}
    return {section: dict(parser.items(section)) for section in parser.sections()}


def split_ref(ref: str) -> tuple[str, str]:
    """"CODE|kind" → ("CODE", "kind"); "CODE" → ("CODE", "")."""
    code, separator, race = ref.partition(KIND_SEPARATOR)
    return code, race if separator else ""


def _php_value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


class AcgFakaConnector(Connector):
    protocol = "acgfaka"
    label = _l("acg-faka shop (shared store)")
    idempotent = False
    settings_schema = {
        "type": "object",
        "required": ["base_url", "app_id", "app_key"],
        "properties": {
            "base_url": {"type": "string", "title": _l("Shop URL (https://...)"), "maxLength": 200},
            "app_id": {"type": "string", "title": _l("Merchant ID"), "maxLength": 32},
            "app_key": {"type": "string", "title": _l("Merchant key"), "writeOnly": True, "maxLength": 128},
        },
    }

    def call(self, path: str, fields: dict | None = None):
        data = {k: _php_value(v) for k, v in (fields or {}).items()}
        data["app_id"] = str(self.settings["app_id"])
        data["sign"] = signature(data, str(self.settings["app_key"]))
        body = urlencode(data).encode("utf-8")
        response = self.http("POST", self.base_url + path, body=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = self.json_of(response)
        if not isinstance(answer, dict) or "code" not in answer:
            raise UpstreamError("the upstream's answer has no code", retryable=response.status >= 500)
        if str(answer.get("code")) != "200":
            raise UpstreamError(str(answer.get("msg") or f"code {answer.get('code')}")[:300])
        return answer.get("data")

    def ping(self) -> dict:
        data = self.call("/shared/authentication/connect") or {}
        return {"name": str(data.get("shopName") or ""), "balance": data.get("balance")}

    # -- catalogue ----------------------------------------------------------------------------

    def products(self) -> list[UpstreamProduct]:
        found = []
        for category in self.call("/shared/commodity/items") or []:
            if not isinstance(category, dict):
                continue
            for commodity in category.get("children") or []:
                if isinstance(commodity, dict) and commodity.get("code"):
                    found.extend(self._products_of(commodity, str(category.get("name") or "")))
        return found

    def _products_of(self, commodity: dict, category: str) -> list[UpstreamProduct]:
        code = str(commodity["code"])
        name = str(commodity.get("name") or code)
        kind = "card" if str(commodity.get("delivery_way", "0")) == "0" else "manual"
        fields = self._fields_of(commodity.get("widget"))
        if fields and kind == "manual":
            kind = "topup"
        stock = stock_count(commodity.get("count", commodity.get("stock", 0)) or 0)
        config = parse_ini(str(commodity.get("config") or ""))
        kinds = config.get("category") or {}
        if not kinds:
            return [UpstreamProduct(code, name[:120], yuan_to_fen(commodity.get("factory_price", 0)), stock, kind,
                                    category, fields)]
        factory = config.get("category_factory") or {}
        return [UpstreamProduct(f"{code}{KIND_SEPARATOR}{race}"[:64], f"{name} · {race}"[:120],
                                yuan_to_fen(factory.get(race, price)), stock, kind, category, fields)
                for race, price in kinds.items()]

    @staticmethod
    def _fields_of(widget) -> list:
        try:
            items = json.loads(widget) if isinstance(widget, str) and widget else (widget or [])
        except json.JSONDecodeError:
            return []
        return [{"name": str(w.get("name")), "label": str(w.get("cn") or w.get("name")), "required": True}
                for w in items if isinstance(w, dict) and w.get("name")]

    def stock(self, refs: list[str]) -> dict[str, UpstreamProduct]:
        """Price and stock per ref from ``inventory`` (one call per ref: acg-faka has no batch call)."""
        result = {}
        for ref in dict.fromkeys(refs):
            code, race = split_ref(ref)
            try:
                data = self.call("/shared/commodity/inventory", {"sharedCode": code, "race": race}) or {}
            except UpstreamError as exc:
                if exc.retryable:
                    raise
                continue  # gone or off sale there: left out, the sync treats it as unavailable
            if race:
                factory = parse_ini(str(data.get("config") or "")).get("category_factory") or {}
                if race not in factory:
                    continue
                price = yuan_to_fen(factory[race])
            else:
                price = yuan_to_fen(data.get("factory_price", 0))
            kind = "card" if str(data.get("delivery_way", "0")) == "0" else "manual"
            result[ref] = UpstreamProduct(ref, ref, price, stock_count(data.get("count", 0) or 0), kind)
        return result

    # -- orders -------------------------------------------------------------------------------

    def place_order(self, ref: str, quantity: int, idempotency_key: str, fields: dict | None = None) -> UpstreamOrder:
        code, race = split_ref(ref)
        form = {"shared_code": code, "contact": "-", "num": int(quantity), "card_id": 0, "device": 0,
                "password": "", "race": race, "request_no": idempotency_key}
        for key, value in (fields or {}).items():
            if key not in form and key not in ("app_id", "sign"):
                form[key] = value
        try:
            data = self.call("/shared/commodity/trade", form) or {}
        except UpstreamError as exc:
            if ALREADY_PLACED in str(exc):
                raise UpstreamError(f"acg-faka already has an order for {idempotency_key} (placed before)",
                                    already_placed=True) from None
            raise
        return self._order_of(data.get("secret"), str(data.get("tradeNo") or ""), paid=True)

    def query_order(self, idempotency_key: str, upstream_order_no: str = "") -> UpstreamOrder | None:
        if not upstream_order_no:
            return None  # acg-faka finds orders by its own trade number only
        try:
            data = self.call("/shared/commodity/query", {"tradeNo": upstream_order_no}) or {}
        except UpstreamError as exc:
            if exc.retryable:
                raise
            return None
        return self._order_of(data.get("secret"), upstream_order_no, paid=str(data.get("status")) == "1")

    @staticmethod
    def _order_of(secret, trade_no: str, *, paid: bool) -> UpstreamOrder:
        keys = [line.strip() for line in str(secret or "").splitlines() if line.strip()]
        if keys:
            return UpstreamOrder("delivered", keys, trade_no[:64])
        return UpstreamOrder("pending", [], trade_no[:64], "" if paid else "not paid")
