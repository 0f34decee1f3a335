"""The cross-tenant probe: every route of sub-site A's app, called with site A's credentials and the
ids of sub-site B's objects, answers 403/404 (the API 401/404), never shows B's data and changes
nothing of B.

The routes come from A's ``url_map``, so a new route is probed as soon as it exists:

- the storefront, order, ticket, payment and member pages as A's guest buyer (a session holding
  A's own order), A's signed-in member and A's signed-in owner;
- the consoles (``/admin``) as A's owner (the approach of ``test_console_isolation``, whose fixture
  and B-objects this test reuses and extends);
- the reseller API under ``/api`` signed with A's key, and with B's key sent to A's domain.

Each URL argument is filled from what B owns, by the argument's name. A route whose argument the
probe cannot fill fails it: teach ``b_values`` (or ``NEUTRAL``) the new name. A route with an argument
naming one of B's objects must answer 403/404 (401/404 for the API; a redirect to a login page for an
actor not signed in there); every answer of every route is searched for B's marker strings (names,
emails, card keys, key secrets, order numbers the request did not itself carry), and B's rows are
compared before and after. ``test_the_probe_reports_a_route_that_forgets_the_site`` registers a
deliberately leaky route through a test plugin and checks the probe reports it.
"""

from __future__ import annotations

import re

import pytest
from flask import Blueprint, jsonify

from kamengsite import layouts, members, opening
from kamengsite.api import keys as api_keys
from kamengsite.api.models import ApiKey, ApiOrder
from kamengsite.catalog import Category, create_product
from kamengsite.cardkeys import import_keys
from kamengsite.crypto import CardKeyCipher
from kamengsite.ledger import LedgerEntry
from kamengsite.models import Site
from kamengsite.orders import Order, Payment
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import ApiClient, SiteClient, buy, csrf_token, sign_in_member
from conftest import make_instance
from test_console_isolation import NEUTRAL as CONSOLE_NEUTRAL, NOT_SITE_OBJECTS, PASSWORD
from test_console_isolation import snapshot as console_snapshot
import test_console_isolation

#: test_console_isolation's fixture ``two_shops`` (pytest registers it by its own name), reused and extended.
reused_two_shops = test_console_isolation.two_shops
#: Every plugin with pages of its own, on both sites (by entry-point name, as site.toml lists them).
PLUGINS = ("coupons", "crm", "groupbuy", "member_levels", "distribution", "recommendations", "seo", "upstreams")
SANDBOX = {"sandbox": {"demo": {"label": "sandbox"}}}
#: Arguments that name nothing of a site (a channel, a static file): filled with a valid value and
#: probed all the same, but their answer may be a 200 (it must still show nothing of B).
NEUTRAL = {"channel": "sandbox", "profile": "demo", "filename": "x.css", "direction": "credit", "token": "x",
           "action": None, "state": None}
#: Per-route values, where an argument's name means something else than elsewhere.
BY_ENDPOINT = {("assets.serve", "name"): "b_asset", ("coupons.toggle", "kind"): "coupon_kind"}
#: Endpoints never probed: they end the actor's own session (the probe needs it afterwards).
SKIPPED = {"member.logout", "admin.logout"}


@pytest.fixture
def instance(tmp_path, backend_url):
    """The probe's instance, on every database of the matrix, with the sandbox gateway so the payment routes are real."""
    return make_instance(tmp_path / "instance", backend_url, payments=SANDBOX)


class Probe:
    """Site A's app, its actors (clients by role), B's values and markers."""

    def __init__(self, host, app, owner, values, b, a):
        self.host, self.app, self.owner, self.values, self.b, self.a = host, app, owner, values, b, a
        self.actors: dict[str, SiteClient] = {}
        self.api: ApiClient | None = None
        self.api_of_b_on_a: ApiClient | None = None
        self.markers: list[str] = []


def _b_plugin_rows(b: int, product) -> dict:
    """B's rows of the plugins with console pages (coupons, CRM, group-buy, risk) and an upstream of the
    main site's (instance-wide, so equally out of a sub-site owner's reach)."""
    import datetime

    from kamengsite.risk import RiskBlock
    from kamengsite_coupons.models import Coupon
    from kamengsite_crm.models import Campaign, Tag
    from kamengsite_groupbuy.groups import Group, GroupOffer
    from kamengsite_upstreams.models import Upstream, UpstreamLink

    with site_scope(b):
        coupon = Coupon.create(site=b, code="BCODE", kind="percent", value=10, note="B 的券")
        tag = Tag.create(site=b, name="B 的标签")
        campaign = Campaign.create(site=b, name="B 的活动", fires_on="tag:x", subject="B 的主题", active=True)
        offer = GroupOffer.create(site=b, product=product.id, sku=product.skus[0].id, group_size=2,
                                  group_price_fen=400, window_minutes=60)
        group = Group.create(site=b, offer=offer.id, group_size=2, leader_contact="b@example.com",
                             closes_at=datetime.datetime.utcnow() + datetime.timedelta(hours=1))
        block = RiskBlock.create(site=b, kind="ip", value="203.0.113.7", note="B 的黑名单")
    upstream = Upstream.create(name="B 的上游", protocol="kamengsite", settings="{}")
    with all_sites():
        link = UpstreamLink.create(sku=product.skus[0].id, product=product.id, upstream=upstream.id, ref="r1")
    return {"row_id": coupon.id, "coupon_kind": "coupon", "tag_id": tag.id, "campaign_id": campaign.id,
            "offer_id": offer.id, "group_id": group.id, "block_id": block.id, "upstream_id": upstream.id,
            "link_id": link.id}


def _b_extras(host, b: int, values: dict) -> tuple[dict, list[str]]:
    """More of B's objects than the console test makes: a category, a custom page, an image, an API order."""
    site_b = Site.get_by_id(b)
    with site_scope(b):
        category = Category.create(site=b, name="B 的分类")
    config_b = host.registry.load("shopb")
    theme = host.themes.get(config_b.theme)
    layouts.create_custom_page(config_b.path, "b-secret-page", "B 的页面", theme=theme)
    from kamengsite import assets
    from io import BytesIO

    from PIL import Image

    png = BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(png, format="PNG")
    asset = assets.store_image(config_b.path, png.getvalue(), "b.png").rsplit("/", 1)[1]
    product = create_product(site_b, "B 的接口卡", 500)
    import_keys(product.skus[0], ["B-KEY-API-1", "B-KEY-API-2"], CardKeyCipher.from_instance(host.instance))
    member = members.register(b, "reseller-b@example.com", PASSWORD, display_name="B 的分销商")
    members.credit_wallet(b, member.id, 10_000, reference="probe-b")
    key, secret = api_keys.issue_key(b, member.id, host.instance.secret_key, label="B 的第二把钥匙")
    api_b = ApiClient(SiteClient(host, "shopb.localhost"), key.app_key, secret)
    created = api_b.post("/api/v1/orders", {"out_trade_no": "B-OUT-1", "sku_id": product.skus[0].id, "quantity": 1})
    assert created.status_code == 200, created.get_data(as_text=True)
    with all_sites():
        api_order = ApiOrder.get(ApiOrder.out_trade_no == "B-OUT-1")
        b_order = Order.get_by_id(api_order.order_id)
        b_keys = [k.app_key for k in ApiKey.select().where(ApiKey.site == b)]
    application = opening.submit_application(
        opening.registry_for(host.instance),
        {"slug": "bchild", "name": "B 的下级店", "template": "shop", "level": "bronze",
         "contact": "b-applicant@example.com", "username": "bchild", "password": PASSWORD, "real_name": "B 的申请人"},
        submit_key="b-application-" + "0" * 16, parent_slug="shopb")
    plugin_rows = _b_plugin_rows(b, product)
    extras = {**plugin_rows, "category_id": category.id, "b_sku": product.skus[0].id, "handle": "b-secret-page", "b_asset": asset, "out_trade_no": "B-OUT-1",
              "submit_key": application.submit_key}
    markers = ["B 的", "B-KEY", "member-b@example.com", "b-applicant@example.com", "bchild", "reseller-b@example.com", "b@example.com", secret,
               b_order.order_no, values["order_no"], *b_keys]
    return extras, markers, (key.app_key, secret)


@pytest.fixture
def probe(reused_two_shops, host, client_for):
    app, owner, values, b = reused_two_shops
    a = Site.get(Site.slug == "shopa").id
    for slug in ("shopa", "shopb"):  # site.toml names plugins by their entry point's name
        host.registry.update(slug, plugins=list(PLUGINS))
    app = host.app_for("shopa")
    extras, markers, b_key = _b_extras(host, b, values)
    values = {**values, **extras}
    # A's own buyer: a guest who bought A's own product (the session remembers the order).
    product_a = create_product(Site.get_by_id(a), "A 的自营卡", 800)
    import_keys(product_a.skus[0], ["A-KEY-1", "A-KEY-2", "A-KEY-3"], CardKeyCipher.from_instance(host.instance))
    buyer = client_for("shopa.localhost")
    assert buy(buyer, product_a, "sandbox/demo").status_code == 302
    # A's member, signed in, with an API key of its own.
    member_a = members.register(a, "member-a@example.org", PASSWORD, display_name="A 的会员")
    member = sign_in_member(client_for("shopa.localhost"), "member-a@example.org", PASSWORD)
    key_a, secret_a = api_keys.issue_key(a, member_a.id, host.instance.secret_key, label="A 的钥匙")
    found = Probe(host, app, owner, values, b, a)
    found.actors = {"buyer": buyer, "member": member, "owner": owner}
    found.api = ApiClient(client_for("shopa.localhost"), key_a.app_key, secret_a)
    found.api_of_b_on_a = ApiClient(client_for("shopa.localhost"), *b_key)
    found.markers = markers
    return found


def snapshot(b: int) -> tuple:
    """Everything of B a route could change: the console test's snapshot, payments, ledger, API orders."""
    from kamengsite.risk import RiskBlock
    from kamengsite_coupons.models import Coupon
    from kamengsite_crm.models import Campaign, Tag
    from kamengsite_groupbuy.groups import Group, GroupOffer
    from kamengsite_upstreams.models import Upstream, UpstreamLink

    with all_sites():
        b_orders = Order.select(Order.id).where(Order.site == b)
        plugin_rows = [sorted(model.select().where(model.site == b).tuples())
                       for model in (Coupon, Tag, Campaign, GroupOffer, Group, RiskBlock)]
        return (
            plugin_rows,
            sorted(Upstream.select().tuples()), sorted(UpstreamLink.select().tuples()),
            console_snapshot(b),
            sorted(Payment.select(Payment.id, Payment.order).where(Payment.order.in_(b_orders)).tuples()),
            LedgerEntry.select().count(),
            sorted(ApiOrder.select(ApiOrder.id, ApiOrder.out_trade_no).where(ApiOrder.site == b).tuples()),
        )


# -- the probe ----------------------------------------------------------------------------------------


def _value_for(rule, name: str, values: dict):
    """(value, names_b_object) for URL argument ``name`` of ``rule``; KeyError if the probe cannot fill it."""
    special = BY_ENDPOINT.get((rule.endpoint, name))
    if special is not None:
        return values[special], True
    if name in values:
        return values[name], True
    neutral = NEUTRAL if not rule.rule.startswith("/admin") else {**CONSOLE_NEUTRAL, **NEUTRAL}
    if name in neutral:
        converter = rule._converters[name]
        items = getattr(converter, "items", None)
        return neutral[name] or (sorted(items)[0] if items else "x"), False
    raise KeyError(name)


def _path(rule, args: dict) -> str:
    """The URL of ``rule`` with ``args`` filled in (whatever the converters: <int:x>, <any(a, b):x>, <x>.png)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: str(args[m.group(1)]), rule.rule)


def requests_of(app, values) -> tuple[list[tuple], list[str]]:
    """Every (endpoint, method, path, names_b_object, area) to try, and the routes the probe cannot fill."""
    planned, unfillable = [], []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in SKIPPED:
            continue
        console = rule.rule.startswith("/admin")
        if console and (not rule.arguments or rule.endpoint in NOT_SITE_OBJECTS):
            continue  # console pages without an id cannot name B's objects (test_console_isolation's rule)
        args, names_b = {}, False
        try:
            for name in rule.arguments:
                args[name], named = _value_for(rule, name, values)
                names_b = names_b or named
        except KeyError as missing:
            unfillable.append(f"{rule.endpoint} ({rule.rule}): no value of site B for <{missing.args[0]}>; "
                              "add it to the probe")
            continue
        area = "console" if console else "api" if rule.rule.startswith("/api/v1") else "site"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            planned.append((rule.endpoint, method, _path(rule, args), names_b, area))
    return planned, unfillable


def _form(values: dict, token: str) -> dict:
    """A POST body naming B's objects (lookups, messages) with the actor's own CSRF token."""
    return {"csrf_token": token, "order_no": values["order_no"], "contact": "b@example.com",
            "query_password": PASSWORD, "body": "injected", "status": "disabled", "areas": ["orders"],
            "amount": "5", "memo": "x", "reference": "r", "note": "x", "callback_url": "", "label": "x"}


def _refused(response, area: str, actor: str) -> bool:
    """403/404, the API's 401/404, or (for an actor not signed in there) a redirect to a login page."""
    status = response.status_code
    if status in (403, 404):
        return True
    if area == "api" and status == 401:
        return True
    location = response.headers.get("Location", "")
    return status == 302 and ("/member/login" in location or "/admin/login" in location) and actor != area


def _leaked(body: str, request_text: str, markers: list[str]) -> list[str]:
    """B's markers in an answer, except those the request carried itself (a 404 may echo its URL)."""
    return [m for m in markers if m in body and m not in request_text]


def run_probe(probe: Probe, only=None) -> tuple[int, list[str], list[str]]:
    """(requests tried, leaks, routes the probe cannot fill); ``only``: just these endpoints."""
    planned, unfillable = requests_of(probe.app, probe.values)
    if only is not None:
        planned = [p for p in planned if p[0] in only]
    tokens = {name: csrf_token(client.get("/lookup" if name != "owner" else "/admin/staff/"))
              for name, client in probe.actors.items()}
    tried, leaks = 0, []

    def check(who, endpoint, method, path, names_b, area, response, request_text):
        body = response.get_data(as_text=True)
        shown = _leaked(body, request_text, probe.markers)
        bad_status = response.status_code >= 500 or (names_b and not _refused(response, area, who))
        if shown or bad_status:
            leaks.append(f"{who}: {method} {path} ({endpoint}) → {response.status_code}"
                         + (f", shows {shown}" if shown else ""))

    for endpoint, method, path, names_b, area in planned:
        if area == "api":
            for who, api in (("api key of A", probe.api), ("api key of B on A", probe.api_of_b_on_a)):
                body = {"out_trade_no": "B-OUT-1", "sku_id": probe.values["b_sku"], "quantity": 1}
                response = api.get(path) if method == "GET" else api.post(path, body)
                tried += 1
                refused_b_key = who.endswith("on A") and response.status_code != 401
                check(who, endpoint, method, path, True if who.endswith("on A") else names_b, area, response,
                      path + " B-OUT-1")
                if refused_b_key:
                    leaks.append(f"{who}: {method} {path} ({endpoint}) → {response.status_code}, not 401")
            continue
        actors = ("owner",) if area == "console" else tuple(probe.actors)
        for who in actors:
            client = probe.actors[who]
            data = _form(probe.values, tokens[who])
            response = client.get(path) if method == "GET" else client.post(path, data=data)
            tried += 1
            request_text = path + (" " + " ".join(map(str, data.values())) if method == "POST" else "")
            check(who, endpoint, method, path, names_b, area, response, request_text)
    return tried, leaks, unfillable


# -- the tests ----------------------------------------------------------------------------------------


def test_every_route_of_site_a_refuses_site_bs_objects(probe):
    before = snapshot(probe.b)
    tried, leaks, unfillable = run_probe(probe)
    assert unfillable == [], "\n".join(unfillable)
    assert tried >= 80  # the probe reached the storefront, member, payment, API and console routes
    assert leaks == [], "\n".join(leaks)  # (it found opening.status showing site B's application on A)
    assert snapshot(probe.b) == before


def test_the_probe_covers_every_kind_of_route(probe):
    planned, _ = requests_of(probe.app, probe.values)
    endpoints = {p[0] for p in planned}
    for expected in ("storefront.order", "storefront.product", "storefront.category", "tickets.messages",
                     "payments.pay", "member.order", "member_api.revoke", "api.get_order", "api.product",
                     "assets.serve", "admin_tickets.show", "storefront.custom_page"):
        assert expected in endpoints


def _leaky_plugin(app, site):
    leaky = Blueprint("leaky_probe", __name__)

    @leaky.get("/leaky/<order_no>")
    def leak(order_no):  # forgets the site: looks the order up in every site
        with all_sites():
            order = Order.get_or_none(Order.order_no == order_no)
        return jsonify(contact=order.contact if order else None)

    app.register_blueprint(leaky)


def _unknown_argument_plugin(app, site):
    odd = Blueprint("odd_probe", __name__)

    @odd.get("/widgets/<widget_ref>")
    def widget(widget_ref):
        return "ok"

    app.register_blueprint(odd)


def _rebuilt(probe) -> None:
    """Change A's folder so the host builds its app again, with the test plugin in."""
    probe.host.registry.update("shopa", tagline="rebuilt")
    probe.app = probe.host.app_for("shopa")


def test_the_probe_reports_a_route_that_forgets_the_site(probe, register_plugin):
    register_plugin(probe.host, _leaky_plugin, name="leaky-probe")
    _rebuilt(probe)
    _, leaks, _ = run_probe(probe)
    assert any("leaky_probe.leak" in leak and "b@example.com" in leak for leak in leaks), leaks


def test_a_route_the_probe_cannot_fill_fails_it(probe, register_plugin):
    register_plugin(probe.host, _unknown_argument_plugin, name="odd-probe")
    _rebuilt(probe)
    _, unfillable = requests_of(probe.app, probe.values)
    assert any("<widget_ref>" in line for line in unfillable), unfillable
