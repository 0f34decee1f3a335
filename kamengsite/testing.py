"""Helpers for tests of kamengsite and of its plugins, payment channels above all.

A channel plugin's tests set up the host with their gateway's profiles, then::

    shop = open_channel_shop(host, price_fen=1500)
    order_no = new_order(shop, pay="epay/v1")       # a buyer orders through the storefront
    before = snapshot()                             # payments, order states, sold keys
    ... post a (forged) notification ...
    assert snapshot() == before and shop.counter.orders == []
"""

from __future__ import annotations

import re

from werkzeug.test import Client

from .cardkeys import CardKey, import_keys
from .catalog import create_product
from .crypto import CardKeyCipher
from .hookspecs import hookimpl
from .models import Site
from .orders import Order, Payment
from .tenancy import all_sites

TOKEN_RE = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


class SiteClient(Client):
    """A test client that sends every request to one host name."""

    def __init__(self, app, host_name, **kwargs):
        super().__init__(app, **kwargs)
        self.host_name = host_name

    def open(self, *args, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Host", self.host_name)
        kwargs["headers"] = headers
        return super().open(*args, **kwargs)


class DeliveryCounter:
    """A plugin that records every ``order_delivered`` call as (order no, selling site)."""

    def __init__(self):
        self.orders = []

    @hookimpl
    def order_delivered(self, order, site):
        self.orders.append((order.order_no, site.slug))


class ChannelShop:
    """Sub-site ``shop1`` selling one card product, with a delivery counter on the host."""

    def __init__(self, host, product, counter, site_id):
        self.host, self.product, self.counter, self.site_id = host, product, counter, site_id

    def client(self, name="shop1.localhost") -> SiteClient:
        return SiteClient(self.host, name)


def open_channel_shop(host, price_fen: int, keys: int = 20) -> ChannelShop:
    host.registry.create("shop1", template="gaming")
    main = Site.get(Site.slug == host.instance.main_site)
    product = create_product(main, "测试月卡", price_fen, max_qty=5)
    import_keys(product.skus[0], [f"CODE-{i:04d}" for i in range(keys)], CardKeyCipher.from_instance(host.instance))
    counter = DeliveryCounter()
    host.plugins.register(counter, name="delivery-counter")
    host.plugins.core.add("delivery-counter")
    return ChannelShop(host, product, counter, Site.get(Site.slug == "shop1").id)


def csrf_token(response) -> str:
    return TOKEN_RE.search(response.get_data(as_text=True)).group(1)


def buy(client, product, pay: str | None):
    """Submit the product form for one unit, paying with ``pay`` ("channel/profile")."""
    page = client.get(f"/p/{product.id}")
    data = {"csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1,
            "contact": "buyer@example.com", "query_password": "pass1234"}
    if pay is not None:
        data["pay"] = pay
    return client.post(f"/p/{product.id}", data=data)


def new_order(shop: ChannelShop, pay: str, client=None) -> str:
    """Order one unit through the storefront; return the order number."""
    created = buy(client or shop.client(), shop.product, pay)
    assert created.status_code == 302, created.get_data(as_text=True)
    return created.headers["Location"].rsplit("/", 1)[1]


def notify_form(client, channel: str, profile: str, fields: dict, method: str = "POST"):
    """Send a gateway notification of form fields (query string for GET, form body for POST)."""
    import urllib.parse

    path = f"/pay/notify/{channel}/{profile}"
    if method == "GET":
        return client.get(path + "?" + urllib.parse.urlencode(fields))
    return client.post(path, data=fields)  # application/x-www-form-urlencoded, as the gateways send


def snapshot():
    """(payment count, sorted (order no, status), sold key count): equal before and after means nothing was written."""
    with all_sites():
        return (Payment.select().count(),
                sorted(Order.select(Order.order_no, Order.status).tuples()),
                CardKey.select().where(CardKey.status == "sold").count())
