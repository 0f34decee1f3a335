"""Schemathesis against the site app's own /api/openapi.json: for every operation, generated requests
(signed, so they get past the signature check) never make a 500 and every answer matches the document.

The signature is added by a WSGI middleware in front of the site app: it signs exactly the path,
query string and body bytes that reach the app, whatever schemathesis generated, with the
reseller's key. Rate limits are lifted for the run. ``max_examples`` keeps the file under a minute.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)
from werkzeug.wrappers import Request

from kamengsite import members
from kamengsite.api import auth, signing
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.models import Site

from test_api import ApiShop

MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SHOP1 = "shop1.localhost"


class SigningMiddleware:
    """Sends every request to shop1 and signs it with the reseller's key (as a well-behaved client would)."""

    def __init__(self, host, app_key: str, secret: str):
        self.host, self.app_key, self.secret = host, app_key, secret
        self.statuses = []

    def __call__(self, environ, start_response):
        environ["HTTP_HOST"] = SHOP1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        request = Request(environ)
        path = auth.signed_path(request)
        for name, value in signing.signed_headers(self.app_key, self.secret, request.method, path, body).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value

        def recording_start_response(status, headers, exc_info=None):
            self.statuses.append(int(status.split()[0]))
            return start_response(status, headers, exc_info)

        return self.host(environ, recording_start_response)


@pytest.fixture
def signed_app(host, monkeypatch):
    """The host behind the signing middleware: shop1 with a card product, a top-up product, a category."""
    from kamengsite import ratelimit

    monkeypatch.setattr(ratelimit, "allow", lambda *args, **kwargs: True)  # thousands of calls in seconds
    shop = ApiShop(host, wallet_fen=1_000_000)
    main = Site.get(Site.slug == host.instance.main_site)
    games = Category.create(site=main, name="Games")
    Product.update(category=games).where(Product.id == shop.product.id).execute()
    topup = create_product(main, "Top-up", 1000, kind="topup", category=games,
                           topup_fields=json.dumps([{"name": "account", "label": "Account"}]))
    Sku.update(stock=1000).where(Sku.product == topup.id).execute()
    members.credit_wallet(shop.site_id, shop.member.id, 1, "schema-run")
    shop.api.post("/api/v1/orders", {"out_trade_no": "A1", "sku_id": shop.sku.id, "quantity": 1})  # one to read
    shop.api.post("/api/v1/orders", {"out_trade_no": "T1", "sku_id": topup.skus[0].id, "quantity": 1,
                                     "fields": {"account": "42"}})  # paid, not delivered: one to cancel
    middleware = SigningMiddleware(host, shop.api.app_key, shop.api.secret)
    # Values that exist, so the generated requests also reach the endpoints' successful paths.
    middleware.known = {
        "GET /api/v1/products/{product_id}": {"product_id": shop.product.id},
        "GET /api/v1/orders/{out_trade_no}": {"out_trade_no": "A1"},
        "POST /api/v1/orders/{out_trade_no}/cancel": {"out_trade_no": "T1"},
        "body": {"out_trade_no": "B1", "sku_id": topup.skus[0].id, "quantity": 1, "fields": {"account": "42"}},
    }
    return middleware


OPERATIONS = ["GET /api/v1/ping", "GET /api/v1/categories", "GET /api/v1/products",
              "GET /api/v1/products/{product_id}", "GET /api/v1/stock", "POST /api/v1/orders",
              "GET /api/v1/orders/{out_trade_no}", "POST /api/v1/orders/{out_trade_no}/cancel",
              "GET /api/v1/balance"]


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation_matches_the_document_and_never_fails(signed_app, label):
    # The loop of schemathesis' pytest plugin (``from_fixture`` trips over pytest 9), written out.
    loaded = schemathesis.openapi.from_wsgi("/api/openapi.json", signed_app)
    operation = loaded.find_operation_by_label(label)
    assert operation is not None, label
    calls = []

    known = signed_app.known.get(label)
    # Valid requests, and invalid ones (wrong types, out of range …): neither may crash the server.
    strategies = [operation.as_strategy(), operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)]
    if known:
        strategies.append(operation.as_strategy(path_parameters=known))
    if label == "POST /api/v1/orders":
        strategies.append(operation.as_strategy(body=signed_app.known["body"]))

    @given(case=st.one_of(strategies))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case):
        calls.append(case.call_and_validate(checks=CHECKS).status_code)

    run()
    assert calls and 500 not in calls
    assert 200 in calls, f"{label}: no generated request got through: {calls}"


def test_the_document_loads_and_names_every_operation(signed_app):
    loaded = schemathesis.openapi.from_wsgi("/api/openapi.json", signed_app)
    loaded.validate()  # a valid OpenAPI 3.0 document (raises otherwise)
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert labels == set(OPERATIONS)


def test_signed_requests_really_get_past_the_signature(signed_app):
    """The middleware is no placebo: the endpoints answer 200 with its signature, and 401 without it."""
    from werkzeug.test import Client

    signed = Client(signed_app)
    started = time.time()
    assert signed.get("/api/v1/balance").status_code == 200
    assert signed.get("/api/v1/products").status_code == 200
    unsigned = Client(signed_app.host).get("/api/v1/balance", headers={"Host": SHOP1})
    assert unsigned.status_code == 401
    assert time.time() - started < 10
