"""Fake upstream shops for the connector, sync and console tests: threaded HTTP servers on 127.0.0.1.

Each fake speaks one protocol and checks the signature the connector sends, the way the real
shop does (kamengsite API v1, acg-faka's shared store, dujiao-next's upstream API); a request
with a wrong signature gets that shop's refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from kamengsite.api import signing


class FakeServer:
    """``handle(method, path_with_query, headers, body) -> (status, body bytes or JSON-able)`` on a free port."""

    def __init__(self, handle):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path, dict(self.headers), body))
                status, answer = owner.handle(self.command, self.path, self.headers, body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self.handle = handle
        self.requests: list = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on (a transport failure)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


# -- kamengsite API v1 --------------------------------------------------------------------------


class KamengsiteShop:
    """A kamengsite shop's reseller API: two products, wallet orders idempotent on out_trade_no."""

    APP_KEY, SECRET = "ak_test_1", "s3cret-kamengsite"

    def __init__(self):
        self.products = [
            {"id": 1, "name": "Game card", "summary": "", "category_id": 3, "kind": "card", "min_qty": 1,
             "max_qty": 10, "fields": [], "skus": [{"id": 11, "name": "10 yuan", "price_fen": 950, "stock": 5},
                                                    {"id": 12, "name": "", "price_fen": 1900, "stock": 0}]},
            {"id": 2, "name": "Top-up", "summary": "", "category_id": 3, "kind": "topup", "min_qty": 1,
             "max_qty": 10, "fields": [{"name": "account", "label": "Account", "required": True}],
             "skus": [{"id": 21, "name": "", "price_fen": 500, "stock": 100}]},
        ]
        self.orders: dict = {}
        self.created = 0
        self.fail_with = None  # (status, code): the next calls are refused like this
        self.server = FakeServer(self.handle)
        self.url = self.server.url

    def error(self, status, code, message=""):
        return status, {"ok": False, "error": {"code": code, "message": message}}

    def handle(self, method, path, headers, body):
        if self.fail_with:
            return self.error(*self.fail_with)
        expected = signing.signature(self.SECRET, method, path, headers.get("X-Ks-Timestamp", ""),
                                     headers.get("X-Ks-Nonce", ""), body)
        if headers.get("X-Ks-Key") != self.APP_KEY:
            return self.error(401, "invalid_key")
        if not signing.matches(expected, headers.get("X-Ks-Signature", "")):
            return self.error(401, "invalid_signature")
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query))
        if parts.path == "/api/v1/ping":
            return 200, {"ok": True, "data": {"site": "up", "name": "Upstream shop", "time": int(time.time())}}
        if parts.path == "/api/v1/products":
            page, per_page = int(query.get("page", 1)), int(query.get("per_page", 50))
            items = self.products[(page - 1) * per_page:page * per_page]
            return 200, {"ok": True, "data": {"items": items, "page": page, "per_page": per_page,
                                              "total": len(self.products)}}
        if parts.path == "/api/v1/orders" and method == "POST":
            request = json.loads(body)
            existing = self.orders.get(request["out_trade_no"])
            if existing is not None:
                if (existing["sku_id"], existing["quantity"]) != (request["sku_id"], request["quantity"]):
                    return self.error(409, "idempotency_conflict")
                return 200, {"ok": True, "data": existing}
            sku = next((s for p in self.products for s in p["skus"] if s["id"] == request["sku_id"]), None)
            if sku is None:
                return self.error(404, "not_found")
            if sku["price_fen"] * request["quantity"] > 100000:
                return self.error(402, "insufficient_balance", "not enough balance")
            self.created += 1
            kind = next(p["kind"] for p in self.products if sku in p["skus"])
            order = {"order_no": f"UP{self.created:04d}", "out_trade_no": request["out_trade_no"],
                     "status": "delivered" if kind == "card" else "paid", "sku_id": request["sku_id"],
                     "quantity": request["quantity"], "unit_price_fen": sku["price_fen"],
                     "keys": [f"KEY-{self.created}-{i}" for i in range(request["quantity"])] if kind == "card" else []}
            self.orders[request["out_trade_no"]] = order
            return 200, {"ok": True, "data": order}
        if parts.path.startswith("/api/v1/orders/") and method == "GET":
            order = self.orders.get(parts.path.rsplit("/", 1)[1])
            if order is None:
                return self.error(404, "not_found", "no such order")
            return 200, {"ok": True, "data": order}
        return self.error(404, "not_found")

    def close(self):
        self.server.close()


# -- acg-faka shared store -----------------------------------------------------------------------


def acg_signature(data: dict, key: str) -> str:
    """acg-faka's Str::generateSignature, written out again for the fake (not the connector's code)."""
    fields = sorted((k, v) for k, v in data.items() if k != "sign" and v != "")
    return hashlib.md5(("&".join(f"{k}={v}" for k, v in fields) + "&key=" + key).encode()).hexdigest()


class AcgFakaShop:
    APP_ID, APP_KEY = "1001", "acg-merchant-key"

    def __init__(self):
        self.commodities = [
            {"id": 7, "name": "Netflix", "code": "NFX1", "price": 30, "user_price": 28, "factory_price": "25.50",
             "delivery_way": 0, "config": "", "widget": "", "count": 4},
            {"id": 8, "name": "VIP", "code": "VIP2", "price": 20, "factory_price": 0, "delivery_way": 0,
             "config": "[category]\nMonth=20.00\nYear=200.00\n[category_factory]\nMonth=18.5\nYear=180\n",
             "widget": "", "count": 9},
            {"id": 9, "name": "Recharge", "code": "RCH3", "price": 10, "factory_price": 9.9, "delivery_way": 1,
             "config": "", "widget": json.dumps([{"cn": "QQ", "name": "qq"}]), "count": 0},
        ]
        self.trades: dict = {}  # request_no -> trade
        self.stock_left = {"NFX1": 4, "VIP2": 9, "RCH3": 0}
        self.server = FakeServer(self.handle)
        self.url = self.server.url

    def handle(self, method, path, headers, body):
        data = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if data.get("app_id") != self.APP_ID:
            return 200, {"code": 0, "msg": "商户ID不存在"}
        if data.get("sign") != acg_signature(data, self.APP_KEY):
            return 200, {"code": 0, "msg": "密钥错误"}
        if path == "/shared/authentication/connect":
            return 200, {"code": 200, "msg": "success", "data": {"shopName": "ACG shop", "balance": "88.00"}}
        if path == "/shared/commodity/items":
            return 200, {"code": 200, "msg": "success",
                         "data": [{"id": 1, "name": "Cards", "children": self.commodities}]}
        if path == "/shared/commodity/inventory":
            commodity = next((c for c in self.commodities if c["code"] == data.get("sharedCode")), None)
            if commodity is None:
                return 200, {"code": 0, "msg": "商品不存在"}
            return 200, {"code": 200, "msg": "success", "data": {
                "count": self.stock_left[commodity["code"]], "delivery_way": commodity["delivery_way"],
                "price": commodity["price"], "config": commodity["config"],
                "factory_price": commodity["factory_price"], "is_category": bool(commodity["config"])}}
        if path == "/shared/commodity/trade":
            if data["request_no"] in self.trades:
                return 200, {"code": 0, "msg": "The request ID already exists"}
            code, num = data["shared_code"], int(data["num"])
            commodity = next(c for c in self.commodities if c["code"] == code)
            if commodity["delivery_way"] == 0 and self.stock_left[code] < num:
                return 200, {"code": 0, "msg": "库存不足"}
            trade_no = f"T{len(self.trades) + 1:05d}"
            secret = None
            if commodity["delivery_way"] == 0:
                self.stock_left[code] -= num
                secret = "\n".join(f"{code}-{data.get('race') or 'X'}-{trade_no}-{i}" for i in range(num))
            self.trades[data["request_no"]] = {"tradeNo": trade_no, "secret": secret, "fields": data}
            return 200, {"code": 200, "msg": "success", "data": {"url": None, "amount": 1, "tradeNo": trade_no,
                                                                  "secret": secret}}
        if path == "/shared/commodity/query":
            trade = next((t for t in self.trades.values() if t["tradeNo"] == data.get("tradeNo")), None)
            if trade is None:
                return 200, {"code": 0, "msg": "订单不存在"}
            return 200, {"code": 200, "msg": "success", "data": {"secret": trade["secret"], "widget": None,
                                                                  "status": 1}}
        return 404, b"not found"

    def close(self):
        self.server.close()


# -- dujiao-next upstream API --------------------------------------------------------------------


class DujiaoShop:
    API_KEY, API_SECRET = "dj-key", "dj-secret-value"

    def __init__(self, products=60):
        self.items = [{"id": i, "slug": f"p{i}", "title": {"zh-CN": f"商品{i}", "en": f"Product {i}"},
                       "price_amount": "7.90", "fulfillment_type": "auto" if i % 2 else "manual",
                       "manual_form_schema": None if i % 2 else {"fields": [{"key": "account", "label": "Account"}]},
                       "is_active": True, "category_id": 1,
                       "skus": [{"id": 100 + i, "sku_code": "DEFAULT", "spec_values": {}, "price_amount": "7.90",
                                 "stock_status": "in_stock", "stock_quantity": -1 if i == 1 else i,
                                 "is_active": True}]}
                      for i in range(1, products + 1)]
        self.orders: dict = {}  # order id -> order
        self.by_downstream: dict = {}
        self.balance_fen = 100000
        self.server = FakeServer(self.handle)
        self.url = self.server.url

    def verify(self, method, path, headers, body) -> bool:
        timestamp = headers.get("Dujiao-Next-Timestamp", "")
        if headers.get("Dujiao-Next-Api-Key") != self.API_KEY or not timestamp.isdigit():
            return False
        if abs(int(timestamp) - time.time()) > 60:
            return False
        message = f"{method}\n{urlsplit(path).path}\n{timestamp}\n{hashlib.md5(body).hexdigest()}"
        expected = hmac.new(self.API_SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("Dujiao-Next-Signature", ""))

    def handle(self, method, path, headers, body):
        if not self.verify(method, path, headers, body):
            return 401, {"ok": False, "error_code": "unauthorized", "error_message": "invalid credentials"}
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query))
        route = parts.path.removeprefix("/api/v1/upstream")
        if route == "/ping" and method == "POST":
            return 200, {"ok": True, "site_name": "DJ shop", "protocol_version": "1.0", "balance": "1000.00"}
        if route == "/products":
            page, size = int(query.get("page", 1)), int(query.get("page_size", 20))
            return 200, {"ok": True, "items": self.items[(page - 1) * size:page * size], "total": len(self.items),
                         "page": page, "page_size": size}
        if route == "/orders" and method == "POST":
            request = json.loads(body)
            known = self.by_downstream.get(request.get("downstream_order_no"))
            if known is not None:
                order = self.orders[known]
                return 200, {"ok": True, "order_id": order["id"], "order_no": order["order_no"],
                             "status": order["status"], "amount": order["amount"], "currency": "CNY"}
            order_id = len(self.orders) + 501
            order = {"id": order_id, "order_no": f"DJ{order_id}", "status": "paid", "amount": "7.90",
                     "quantity": request["quantity"], "sku_id": request["sku_id"]}
            if self.balance_fen < 790 * request["quantity"]:
                order["status"] = "canceled"
                self.orders[order_id] = order
                return 200, {"ok": False, "order_id": order_id, "order_no": order["order_no"],
                             "status": "canceled", "error_code": "payment_failed",
                             "error_message": "wallet payment failed: insufficient balance"}
            self.balance_fen -= 790 * request["quantity"]
            self.orders[order_id] = order
            self.by_downstream[request.get("downstream_order_no")] = order_id
            return 200, {"ok": True, "order_id": order_id, "order_no": order["order_no"], "status": "paid",
                         "amount": "7.90", "currency": "CNY"}
        if route.startswith("/orders/") and method == "GET":
            order = self.orders.get(int(route.rsplit("/", 1)[1]))
            if order is None:
                return 404, {"ok": False, "error_code": "order_not_found", "error_message": "order not found"}
            answer = {"ok": True, "order_id": order["id"], "order_no": order["order_no"], "status": order["status"],
                      "amount": order["amount"], "currency": "CNY"}
            if order.get("payload"):
                answer["fulfillment"] = {"type": "auto", "status": "delivered", "payload": order["payload"],
                                         "delivered_at": "2026-03-01T12:01:00Z"}
            return 200, answer
        return 404, {"ok": False, "error_code": "not_found", "error_message": "no route"}

    def deliver(self, order_id, keys):
        self.orders[order_id].update(status="completed", payload="\n".join(keys))

    def close(self):
        self.server.close()
