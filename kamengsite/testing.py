"""Helpers for tests of kamengsite and of its plugins, payment channels above all.

A channel plugin's tests set up the host with their gateway's profiles, then::

    shop = open_channel_shop(host, price_fen=1500)
    order_no = new_order(shop, pay="epay/v1")       # a buyer orders through the storefront
    before = snapshot()                             # payments, order states, sold keys
    ... post a (forged) notification ...
    assert snapshot() == before and shop.counter.orders == []

Other plugins' tests open a sub-site with their plugin on and sign in through its pages::

    shop = open_plugin_site(host, "shopx", ["coupons"])   # silver, +20 % over its cost
    sign_in_member(client_for("shopx.localhost"), "a@example.com", PASSWORD)
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
from .pricing import set_rule
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


def form_errors(response) -> list[str]:
    """The field errors a form page shows (``<… class="error">message<``), in page order."""
    return re.findall(r'class="error">([^<]*)<', response.get_data(as_text=True))


def site_id(slug: str) -> int:
    """The id of the site named ``slug``."""
    return Site.get(Site.slug == slug).id


def open_plugin_site(host, slug: str, plugins, *, template: str = "gaming", level: str = "silver",
                     markup_bp: int | None = 2000, settings: dict | None = None) -> int:
    """Create sub-site ``slug`` from ``template`` at ``level`` with ``plugins`` on; return its id.

    ``settings`` (when given) becomes the site's ``settings`` table; ``markup_bp`` is a rule on
    all goods (2000: +20 % over the site's cost; None: no rule). The level's costs come from the
    default levels, which the caller seeds (``kamengsite.levels.seed_default_levels()``) where
    prices matter: this does not, so a test without them keeps a site without them.
    """
    host.registry.create(slug, template=template)
    changes = {"level": level, "plugins": list(plugins)}
    if settings is not None:
        changes["settings"] = settings
    host.registry.update(slug, **changes)
    opened = site_id(slug)
    if markup_bp is not None:
        set_rule(opened, "all", markup_percent_bp=markup_bp)
    return opened


def _sign_in(client, path: str, fields: dict, who: str):
    """Post ``fields`` with the page's CSRF token to the login form at ``path``; fail the test unless it answers 302."""
    page = client.get(path)
    response = client.post(path, data={"csrf_token": csrf_token(page), **fields})
    if response.status_code != 302:
        raise AssertionError(f"{path} as {who!r}: expected a 302, got {response.status_code}: "
                             f"{response.get_data(as_text=True)[:500]}")
    return client


def sign_in_member(client, email: str, password: str):
    """Sign a member in through ``/member/login``; fails the test unless it answers 302. Returns the client."""
    return _sign_in(client, "/member/login", {"email": email, "password": password}, email)


def sign_in_console(client, username: str, password: str):
    """Sign an owner or operator in through ``/admin/login``; fails the test unless it answers 302. Returns the client."""
    return _sign_in(client, "/admin/login", {"username": username, "password": password}, username)


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


class ApiClient:
    """Signed requests to a site's reseller API (``/api/v1``), for tests and the upstream connector's fakes.

    ``ApiClient(SiteClient(host, "shop1.localhost"), app_key, secret)``; ``.get(path)`` and
    ``.post(path, json_body)`` sign with a fresh nonce (or the given ``nonce``/``timestamp``) and
    return the werkzeug response.
    """

    def __init__(self, client, app_key: str, secret: str):
        self.client, self.app_key, self.secret = client, app_key, secret

    def headers(self, method: str, path: str, body: bytes = b"", **signing_options) -> dict:
        from .api.signing import signed_headers

        return signed_headers(self.app_key, self.secret, method, path, body, **signing_options)

    def get(self, path: str, **signing_options):
        return self.client.get(path, headers=self.headers("GET", path, **signing_options))

    def post(self, path: str, json_body=None, **signing_options):
        import json as _json

        body = b"" if json_body is None else _json.dumps(json_body).encode()
        headers = self.headers("POST", path, body, **signing_options)
        headers["Content-Type"] = "application/json"
        return self.client.post(path, data=body, headers=headers)


def at_once(task, threads: int) -> tuple[list, list]:
    """Run ``task(n)`` for n in range(threads), each in its own thread, released together at a barrier.

    Returns (results, errors), in completion order. Each thread closes its own database
    connection when it is done (back to a server backend's pool).
    """
    import threading

    from .db import database

    results, errors, barrier = [], [], threading.Barrier(threads)

    def run(n):
        try:
            barrier.wait()
            results.append(task(n))
        except Exception as exc:  # noqa: BLE001 - collected for the test to assert on
            errors.append(exc)
        finally:
            if not database.is_closed():
                database.close()  # this thread's connection only

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results, errors
