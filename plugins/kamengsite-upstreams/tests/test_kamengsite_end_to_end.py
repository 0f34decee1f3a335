"""The kamengsite connector against a real kamengsite shop: the host served on a 127.0.0.1 socket.

The upstream is sub-site shop1 of a test host (its reseller API, a member's signed key, the
member's wallet); a tiny proxy in front sets the Host header the way a reverse proxy would.
"""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from kamengsite import members
from kamengsite.api import keys
from kamengsite.catalog import Sku
from kamengsite.testing import open_channel_shop
from kamengsite_upstreams.connectors import UpstreamError
from kamengsite_upstreams.connectors.kamengsite import KamengsiteConnector


@pytest.fixture
def upstream_shop(host):
    shop = open_channel_shop(host, 1500, keys=5)
    member = members.register(shop.site_id, "downstream@example.com", "correct horse 1")
    members.credit_wallet(shop.site_id, member.id, 10_000, "opening", "test")
    key, secret = keys.issue_key(shop.site_id, member.id, host.instance.secret_key)

    def as_shop1(environ, start_response):
        environ["HTTP_HOST"] = "shop1.localhost"
        return host(environ, start_response)

    server = make_server("127.0.0.1", 0, as_shop1, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield type("Upstream", (), {"url": f"http://127.0.0.1:{server.server_port}", "app_key": key.app_key,
                                "secret": secret, "shop": shop, "member": member})
    server.shutdown()


def test_a_real_kamengsite_shop_lists_sells_and_repeats_an_order_once(upstream_shop):
    connector = KamengsiteConnector({"base_url": upstream_shop.url, "app_key": upstream_shop.app_key,
                                     "secret": upstream_shop.secret}, allow_loopback=True)
    assert connector.ping()["site"] == "shop1"
    sku = Sku.get(Sku.product == upstream_shop.shop.product.id)
    listed = {p.ref: p for p in connector.products()}
    assert str(sku.id) in listed and listed[str(sku.id)].stock == 5 and listed[str(sku.id)].price_fen > 0
    price = listed[str(sku.id)].price_fen
    wallet = members.wallet_balance(upstream_shop.shop.site_id, upstream_shop.member.id)
    first = connector.place_order(str(sku.id), 2, "E2E-ORDER-1", {})
    assert first.state == "delivered" and len(first.keys) == 2 and first.upstream_order_no
    again = connector.place_order(str(sku.id), 2, "E2E-ORDER-1", {})
    assert (again.upstream_order_no, again.keys) == (first.upstream_order_no, first.keys)
    assert members.wallet_balance(upstream_shop.shop.site_id, upstream_shop.member.id) == wallet - 2 * price
    assert connector.query_order("E2E-ORDER-1").keys == first.keys
    assert connector.query_order("E2E-NEVER") is None
    assert connector.stock([str(sku.id)])[str(sku.id)].stock == 3
    with pytest.raises(UpstreamError) as sold_out:
        connector.place_order(str(sku.id), 4, "E2E-ORDER-2", {})  # 3 left
    assert "out_of_stock" in str(sold_out.value) and not sold_out.value.retryable
    wrong = KamengsiteConnector({"base_url": upstream_shop.url, "app_key": upstream_shop.app_key,
                                 "secret": "not-the-secret"}, allow_loopback=True)
    with pytest.raises(UpstreamError) as refused:
        wrong.products()
    assert "invalid_signature" in str(refused.value) and not refused.value.retryable
