"""The API's OpenAPI 3.0 document (``/api/openapi.json``) and what the docs page (``/api/docs``) shows of it.

Built as a dict from the same constants the endpoints use (the error codes, the signature's
headers), so the description and the behaviour cannot drift apart silently: tests/test_api_schema.py
runs schemathesis against this document and the site app.
"""

from __future__ import annotations

import copy

from ..i18n import _, _l
from . import signing
from .errors import CODES

VERSION = "1.0.0"

SECURITY_SCHEMES = {
    "KsKey": (signing.KEY_HEADER, _l("The app key (ks_…) of the member's API key.")),
    "KsTimestamp": (signing.TIMESTAMP_HEADER, _l("The current Unix time in seconds; refused beyond ±60 s.")),
    "KsNonce": (signing.NONCE_HEADER, _l("16-64 characters of [A-Za-z0-9_-], new for every request.")),
    "KsSignature": (signing.SIGNATURE_HEADER, _l("Lowercase hex HMAC-SHA256 of the string to sign under the "
                                                 "key's secret (see the description).")),
}

SIGNING_RECIPE = _l(
    "Every /api/v1 request carries four headers: X-Ks-Key (the app key), X-Ks-Timestamp (Unix seconds, "
    "within ±60 s of the server's clock), X-Ks-Nonce (16-64 of [A-Za-z0-9_-], never reused) and "
    "X-Ks-Signature = lowercase hex HMAC-SHA256(secret, string to sign). The string to sign is five lines "
    "joined by \"\\n\": the method in capitals, the path with its query string exactly as sent "
    "(e.g. /api/v1/stock?sku_ids=1,2), the timestamp, the nonce, and the lowercase hex SHA-256 of the raw "
    "body (of the empty string for a GET). Bodies are JSON (Content-Type: application/json). Callbacks to "
    "you are signed the same way with the same secret."
)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return dict(schema, nullable=True)


MAX_ID = 2**31 - 1
DATETIME = {"type": "string", "format": "date-time", "example": "2026-01-01T12:00:00Z"}
OUT_TRADE_NO = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "minLength": 1, "maxLength": 64}
ORDER_STATUSES = ["created", "paid", "delivered", "refund_pending", "refunded", "cancelled", "expired"]

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["ok", "error"], "additionalProperties": False,
        "properties": {
            "ok": {"type": "boolean", "enum": [False]},
            "error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
                      "properties": {"code": {"type": "string", "enum": sorted(CODES)},
                                     "message": {"type": "string"}}},
        },
    },
    "Ping": {"type": "object", "required": ["site", "name", "time"], "additionalProperties": False,
             "properties": {"site": {"type": "string"}, "name": {"type": "string"}, "time": {"type": "integer"}}},
    "Category": {"type": "object", "required": ["id", "name", "parent_id"], "additionalProperties": False,
                 "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                "parent_id": _nullable({"type": "integer"})}},
    "ProductField": {"type": "object", "required": ["name", "label", "required"], "additionalProperties": False,
                     "description": "An input a top-up buyer fills in; send it in the order's fields.",
                     "properties": {"name": {"type": "string"}, "label": {"type": "string"},
                                    "required": {"type": "boolean"}}},
    "ProductSku": {"type": "object", "required": ["id", "name", "price_fen", "stock"], "additionalProperties": False,
                   "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                  "price_fen": {"type": "integer", "minimum": 0,
                                                "description": "Your unit price in fen: this site's price for "
                                                               "you, member levels and plugins included."},
                                  "stock": {"type": "integer", "minimum": 0}}},
    "Product": {"type": "object", "additionalProperties": False,
                "required": ["id", "name", "summary", "category_id", "kind", "min_qty", "max_qty", "fields", "skus"],
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "summary": {"type": "string"},
                               "category_id": _nullable({"type": "integer"}),
                               "kind": {"type": "string", "enum": ["card", "topup", "manual"]},
                               "min_qty": {"type": "integer"}, "max_qty": {"type": "integer"},
                               "fields": {"type": "array", "items": _ref("ProductField")},
                               "skus": {"type": "array", "items": _ref("ProductSku")}}},
    "ProductPage": {"type": "object", "required": ["items", "page", "per_page", "total"], "additionalProperties": False,
                    "properties": {"items": {"type": "array", "items": _ref("Product")},
                                   "page": {"type": "integer", "minimum": 1},
                                   "per_page": {"type": "integer", "minimum": 1},
                                   "total": {"type": "integer", "minimum": 0}}},
    "Stock": {"type": "object", "required": ["sku_id", "stock", "on_sale"], "additionalProperties": False,
              "properties": {"sku_id": {"type": "integer"}, "stock": {"type": "integer", "minimum": 0},
                             "on_sale": {"type": "boolean"}}},
    "Balance": {"type": "object", "required": ["balance_fen", "currency"], "additionalProperties": False,
                "properties": {"balance_fen": {"type": "integer"}, "currency": {"type": "string", "enum": ["CNY"]}}},
    "Order": {"type": "object", "additionalProperties": False,
              "required": ["order_no", "out_trade_no", "status", "product_id", "sku_id", "quantity", "unit_price_fen",
                           "amount_fen", "keys", "created_at", "paid_at", "delivered_at"],
              "properties": {"order_no": {"type": "string"}, "out_trade_no": OUT_TRADE_NO,
                             "status": {"type": "string", "enum": ORDER_STATUSES},
                             "product_id": {"type": "integer"}, "sku_id": {"type": "integer"},
                             "quantity": {"type": "integer", "minimum": 1},
                             "unit_price_fen": {"type": "integer", "minimum": 0},
                             "amount_fen": {"type": "integer", "minimum": 0},
                             "keys": {"type": "array", "items": {"type": "string"},
                                      "description": "The card keys, once the order is delivered."},
                             "created_at": DATETIME, "paid_at": _nullable(DATETIME),
                             "delivered_at": _nullable(DATETIME)}},
    "CreateOrder": {"type": "object", "required": ["out_trade_no", "sku_id", "quantity"],
                    "properties": {"out_trade_no": dict(OUT_TRADE_NO, description="Your order number: the "
                                                        "idempotency key, unique per app key."),
                                   "sku_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                                   "quantity": {"type": "integer", "minimum": 1, "maximum": 100000},
                                   "fields": {"type": "object", "additionalProperties": {"type": "string"},
                                              "description": "Top-up inputs by field name (see Product.fields)."},
                                   "callback_url": {"type": "string", "maxLength": 500,
                                                    "description": "Where status callbacks go (else the key's "
                                                                   "default). Public http(s) addresses only."}}},
}


def _success(data_schema: dict) -> dict:
    return {"type": "object", "required": ["ok", "data"], "additionalProperties": False,
            "properties": {"ok": {"type": "boolean", "enum": [True]}, "data": data_schema}}


#: Errors any signed endpoint may answer: a bad request, the signature's, a disabled member, limits, a crash.
COMMON_ERRORS = ("invalid_request", "missing_signature", "invalid_key", "timestamp_out_of_window", "nonce_replayed",
                 "invalid_signature", "forbidden", "rate_limited", "internal_error")


def _responses(data_schema: dict, errors: tuple) -> dict:
    """200 with ``data_schema``, each possible error status (its codes named), and ``default`` for any other."""
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    by_status: dict[int, list[str]] = {}
    for code in COMMON_ERRORS + errors:
        by_status.setdefault(CODES[code], []).append(code)
    responses = {"200": {"description": "OK", "content": {"application/json": {"schema": _success(data_schema)}}}}
    for status in sorted(by_status):
        responses[str(status)] = dict(error, description=", ".join(by_status[status]))
    responses["default"] = dict(error, description=_("Any other error (e.g. 405 invalid_request)"))
    return responses


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _operation(operation_id: str, summary: str, description: str, data_schema: dict, *, errors=(),
               parameters=(), body: dict | None = None) -> dict:
    operation = {"operationId": operation_id, "summary": summary, "description": description,
                 "parameters": list(parameters), "responses": _responses(data_schema, tuple(errors))}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _paths() -> dict:
    order_path = _path("out_trade_no", OUT_TRADE_NO, _("Your order number (out_trade_no)"))
    return {
        "/api/v1/ping": {"get": _operation(
            "ping", _("Check the signature and the clock"), _("The site, its name and the server's Unix time."),
            _ref("Ping"))},
        "/api/v1/categories": {"get": _operation(
            "listCategories", _("List categories"), _("The visible categories this site sells."),
            {"type": "array", "items": _ref("Category")})},
        "/api/v1/products": {"get": _operation(
            "listProducts", _("List products"), _("The products on sale here, with your prices, a page at a time."),
            _ref("ProductPage"), parameters=[
                _query("category_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, _("Only this category and its subcategories")),
                _query("page", {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1}, _("Page number")),
                _query("per_page", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                       _("Products per page (at most 100)"))])},
        "/api/v1/products/{product_id}": {"get": _operation(
            "getProduct", _("Get a product"), _("One product on sale here, with your price of each SKU."),
            _ref("Product"), errors=("not_found",),
            parameters=[_path("product_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, _("The product's id"))])},
        "/api/v1/stock": {"get": _operation(
            "getStock", _("Check stock"), _("The stock of some SKUs; a SKU not on sale here shows 0 and false."),
            {"type": "array", "items": _ref("Stock")}, parameters=[{
                **_query("sku_ids", {"type": "string", "pattern": "^[0-9]{1,10}(,[0-9]{1,10}){0,99}$"},
                         _("1-100 SKU ids separated by commas")), "required": True}])},
        "/api/v1/orders": {"post": _operation(
            "createOrder", _("Place an order"),
            _("Creates the order and pays it from your wallet at once. Sending the same out_trade_no again "
              "returns the same order (never a second debit); with another sku_id or quantity it is refused."),
            _ref("Order"), body=_ref("CreateOrder"),
            errors=("not_on_sale", "out_of_stock", "insufficient_balance", "idempotency_conflict",
                    "callback_url_refused"))},
        "/api/v1/orders/{out_trade_no}": {"get": _operation(
            "getOrder", _("Get an order"), _("Your order by your order number, with its keys once delivered."),
            _ref("Order"), errors=("not_found",), parameters=[order_path])},
        "/api/v1/orders/{out_trade_no}/cancel": {"post": _operation(
            "cancelOrder", _("Cancel an order"),
            _("Refunds a paid order that is not delivered and not being fulfilled upstream to your wallet, once."),
            _ref("Order"), errors=("not_found", "not_cancellable"), parameters=[order_path])},
        "/api/v1/balance": {"get": _operation(
            "getBalance", _("Wallet balance"), _("Your wallet's balance on this site, in fen."), _ref("Balance"))},
    }


def document(server_url: str = "") -> dict:
    """The OpenAPI 3.0 document of the API as served at ``server_url`` (the site's own domain)."""
    security_schemes = {name: {"type": "apiKey", "in": "header", "name": header, "description": str(description)}
                        for name, (header, description) in SECURITY_SCHEMES.items()}
    return {
        "openapi": "3.0.3",
        "info": {"title": _("Reseller API"), "version": VERSION,
                 "description": str(SIGNING_RECIPE) + " " + _("Amounts are whole fen (1 CNY = 100 fen).")},
        "servers": [{"url": server_url or "/"}],
        "paths": _paths(),
        "components": {"schemas": copy.deepcopy(SCHEMAS), "securitySchemes": security_schemes},
        "security": [{name: [] for name in SECURITY_SCHEMES}],
    }


def operations(doc: dict) -> list[dict]:
    """The document's operations in order, for the docs page: method, path, summary, parameters, responses."""
    found = []
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            found.append({"method": method.upper(), "path": path, "id": operation["operationId"],
                          "summary": operation["summary"], "description": operation["description"],
                          "parameters": operation["parameters"], "body": _resolve(doc, body),
                          "data": _resolve(doc, operation["responses"]["200"]["content"]["application/json"]
                                           ["schema"]["properties"]["data"]),
                          "responses": [(status, response["description"]) for status, response
                                        in operation["responses"].items()]})
    return found


def _resolve(doc: dict, schema: dict | None) -> dict | None:
    if schema is None or "$ref" not in schema:
        return schema
    name = schema["$ref"].rsplit("/", 1)[1]
    return dict(doc["components"]["schemas"][name], title=name)


def error_codes() -> list[tuple[str, int, str]]:
    """(code, HTTP status, what it means) for every error code, in the order of ``CODES``."""
    meanings = {
        "missing_signature": _("A signature header is missing or malformed"),
        "invalid_key": _("Unknown or revoked app key, or a key of another site"),
        "timestamp_out_of_window": _("X-Ks-Timestamp is more than 60 seconds away from the server's clock"),
        "nonce_replayed": _("This nonce was already used"),
        "invalid_signature": _("The signature does not match the request"),
        "forbidden": _("The key's member is disabled, or the order was refused as risky"),
        "not_found": _("No such endpoint, product or order"),
        "invalid_request": _("A parameter or the body is invalid (the message says which)"),
        "out_of_stock": _("Not enough stock for this quantity"),
        "not_on_sale": _("The SKU is not on sale on this site"),
        "insufficient_balance": _("The wallet cannot pay the order; nothing was kept"),
        "not_cancellable": _("The order cannot be cancelled (not paid, delivered, or fulfilled upstream)"),
        "idempotency_conflict": _("This out_trade_no was used for a different order"),
        "rate_limited": _("Too many requests; slow down"),
        "callback_url_refused": _("The callback URL is not a public http(s) address"),
        "internal_error": _("Something went wrong on the server; try again later"),
    }
    return [(code, status, meanings.get(code, "")) for code, status in CODES.items()]
