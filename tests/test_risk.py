"""风控: rules, blacklists, holds and the review queue (kamengsite/risk.py, admin_risk.py)."""

from __future__ import annotations

import datetime

import pytest

from kamengsite import orders, refunds, risk
from kamengsite.accounts import Account, create_account
from kamengsite.catalog import Sku
from kamengsite.hookspecs import hookimpl
from kamengsite.ratelimit import reset as reset_limits
from kamengsite.tenancy import all_sites
from kamengsite.testing import SiteClient, at_once, csrf_token, open_channel_shop, sign_in_console, site_id

PASSWORD = "correct horse battery staple"
GENERIC = ("cannot be accepted", "无法受理")  # the generic refusal (English until the catalog is merged, zh_CN)


def generic(response) -> bool:
    return response.status_code == 200 and any(g in text(response) for g in GENERIC)


class BuyerClient(SiteClient):
    """A storefront client whose requests come from ``ip``."""

    def __init__(self, app, host_name, ip="198.51.100.7"):
        super().__init__(app, host_name)
        self.ip = ip

    def open(self, *args, **kwargs):
        kwargs.setdefault("environ_base", {"REMOTE_ADDR": self.ip})
        return super().open(*args, **kwargs)


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def shop(host):
    reset_limits()
    shop = open_channel_shop(host, 1500, keys=40)
    create_account(shop.site_id, "owner", PASSWORD)
    return shop


def buyer(shop, ip="198.51.100.7") -> BuyerClient:
    return BuyerClient(shop.host, "shop1.localhost", ip)


def place(client, shop, contact="buyer@example.com"):
    page = client.get(f"/p/{shop.product.id}")
    return client.post(f"/p/{shop.product.id}", data={"csrf_token": csrf_token(page), "sku": shop.product.skus[0].id,
                                                      "quantity": 1, "contact": contact,
                                                      "query_password": "pass1234"})


def order_of(client, shop, contact="buyer@example.com") -> str:
    response = place(client, shop, contact)
    assert response.status_code == 302, text(response)[:2000]
    return response.headers["Location"].rsplit("/", 1)[1]


def pay(client, order_no):
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 302


def load(order_no) -> orders.Order:
    with all_sites():
        return orders.Order.get(orders.Order.order_no == order_no)


def held_row(order_no):
    with all_sites():
        return risk.RiskHold.get_or_none(risk.RiskHold.order == load(order_no).id)


def stock(shop) -> int:
    return Sku.get_by_id(shop.product.skus[0].id).stock


def owner_console(shop, client_for):
    return sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)


def click(console, order_no, action):
    page = console.get("/admin/risk/")
    return console.post(f"/admin/risk/orders/{order_no}/{action}", data={"csrf_token": csrf_token(page)})


def held_paid_order(shop, limit=1) -> tuple[BuyerClient, str]:
    """An order over a per-IP limit of ``limit``, paid: held, not delivered."""
    risk.save_settings(shop.site_id, {"ip_limit": limit})
    client = buyer(shop)
    for _ in range(limit):
        pay(client, order_of(client, shop))
    order_no = order_of(client, shop)
    pay(client, order_no)
    return client, order_no


# -- the default IP rule ---------------------------------------------------------------------------


def test_the_eleventh_order_from_one_ip_in_a_minute_is_held_not_delivered(host, shop):
    client = buyer(shop)
    first = [order_of(client, shop, contact=f"b{i}@example.com") for i in range(10)]
    assert all(load(no).hold == "" for no in first) and all(held_row(no) is None for no in first)
    eleventh = order_of(client, shop, contact="b10@example.com")
    later = order_of(client, shop, contact="b11@example.com")
    assert load(eleventh).hold == "risk" and load(later).hold == "risk"
    row = held_row(eleventh)
    assert row.rule == "ip" and row.facts["count"] == 11 and row.facts["value"] == "198.51.100.7"
    pay(client, first[0])
    pay(client, eleventh)
    assert load(first[0]).status == "delivered"
    assert load(eleventh).status == "paid" and load(eleventh).delivered_at is None
    assert [no for no, _site in shop.counter.orders] == [first[0]]
    assert "CODE-" not in text(client.get(f"/order/{eleventh}"))
    # Another IP is not held by this one's orders.
    other = buyer(shop, ip="198.51.100.8")
    assert load(order_of(other, shop, contact="other@example.com")).hold == ""


def test_orders_older_than_the_window_do_not_count(host, shop):
    client = buyer(shop)
    risk.save_settings(shop.site_id, {"ip_limit": 2})
    done = [order_of(client, shop, contact=f"c{i}@example.com") for i in range(2)]
    for order_no in done:  # as if ordered 61 s ago
        with all_sites():
            orders.Order.update(created_at=load(order_no).created_at - datetime.timedelta(seconds=61)).where(
                orders.Order.order_no == order_no).execute()
    assert load(order_of(client, shop, contact="c3@example.com")).hold == ""


def test_contact_member_and_small_order_rules(host, shop):
    risk.save_settings(shop.site_id, {"ip_limit": 0, "contact_limit": 2})
    clients = [buyer(shop, ip=f"203.0.113.{i}") for i in range(3)]
    numbers = [order_of(c, shop, contact="Same@Example.com") for c in clients]
    assert [load(n).hold for n in numbers] == ["", "", "risk"]
    assert held_row(numbers[2]).rule == "contact"

    risk.save_settings(shop.site_id, {"ip_limit": 0, "contact_limit": 0, "small_limit": 1, "small_under_fen": 2000})
    small = buyer(shop, ip="192.0.2.50")
    one, two = order_of(small, shop, contact="s1@example.com"), order_of(small, shop, contact="s2@example.com")
    assert load(one).hold == "" and load(two).hold == "risk" and held_row(two).rule == "small"
    risk.save_settings(shop.site_id, {"ip_limit": 0, "contact_limit": 0, "small_limit": 1, "small_under_fen": 1500})
    assert load(order_of(small, shop, contact="s3@example.com")).hold == ""  # 1500 fen is not under 1500


def test_device_cookie_is_set_httponly_and_counted(host, shop):
    risk.save_settings(shop.site_id, {"ip_limit": 0, "contact_limit": 0, "device_limit": 1})
    client = buyer(shop, ip="192.0.2.1")
    page = client.get(f"/p/{shop.product.id}")
    cookie = page.headers.get("Set-Cookie", "")
    assert cookie.startswith("ks_dev=") and "HttpOnly" in cookie
    first = order_of(client, shop, contact="d1@example.com")
    client.ip = "192.0.2.2"  # same browser, new address
    second = order_of(client, shop, contact="d2@example.com")
    assert load(first).hold == "" and load(second).hold == "risk" and held_row(second).rule == "device"
    fresh = buyer(shop, ip="192.0.2.3")  # another browser: its own device id
    assert load(order_of(fresh, shop, contact="d3@example.com")).hold == ""


# -- blacklists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, value, ip, contact", [
    ("ip", "198.51.100.7", "198.51.100.7", "x@example.com"),
    ("ip", "198.51.100.0/24", "198.51.100.200", "x@example.com"),
    ("ip", "2001:db8::/32", "2001:db8::1", "x@example.com"),
    ("contact", "Bad@Example.com", "192.0.2.9", "bad@example.com"),
    ("email_domain", "spam.example", "192.0.2.9", "who@mail.spam.example"),
])
def test_a_blacklisted_buyer_is_refused_with_a_generic_message(host, shop, kind, value, ip, contact):
    risk.add_block(shop.site_id, kind, value)
    client = buyer(shop, ip=ip)
    before = stock(shop)
    response = place(client, shop, contact=contact)
    assert generic(response)
    assert "blacklist" not in text(response).lower() and "黑名单" not in text(response)  # nor why
    assert stock(shop) == before
    with all_sites():
        assert orders.Order.select().where(orders.Order.contact == contact.strip()).count() == 0


def test_blacklist_matching_is_exact_where_it_should_be(host, shop):
    sid = shop.site_id
    risk.add_block(sid, "ip", "10.0.0.0/8")
    risk.add_block(sid, "email_domain", "@Spam.Example")
    risk.add_block(sid, "member", "42")
    assert risk.blocked(sid, buyer_ip="10.200.1.1").kind == "ip"
    assert risk.blocked(sid, buyer_ip="11.0.0.1") is None
    assert risk.blocked(sid, buyer_ip="not an ip") is None
    assert risk.blocked(sid, contact="a@spam.example").kind == "email_domain"
    assert risk.blocked(sid, contact="a@notspam.example") is None
    assert risk.blocked(sid, member_id=42).kind == "member" and risk.blocked(sid, member_id=4) is None
    assert risk.blocked(site_id("main"), buyer_ip="10.1.1.1") is None  # another site's list
    for kind, value in [("ip", "300.1.1.1"), ("email_domain", "nodot"), ("member", "nobody@example.com"),
                        ("planet", "x")]:
        with pytest.raises(risk.RiskError):
            risk.add_block(sid, kind, value)


def test_a_buyer_blacklisted_after_ordering_is_held_at_payment(host, shop):
    client = buyer(shop, ip="192.0.2.77")
    order_no = order_of(client, shop, contact="late@example.com")
    risk.add_block(shop.site_id, "ip", "192.0.2.0/24")
    pay(client, order_no)
    order = load(order_no)
    assert order.status == "paid" and order.hold == "risk" and held_row(order_no).rule == "blacklist"
    assert shop.counter.orders == []


# -- the review queue ------------------------------------------------------------------------------


def test_approve_delivers_once_and_the_keys_are_shown(host, shop, client_for):
    client, order_no = held_paid_order(shop)
    console = owner_console(shop, client_for)
    queue = text(console.get("/admin/risk/"))
    assert order_no in queue and "198.51.100.7" in queue
    assert click(console, order_no, "approve").status_code == 302
    assert load(order_no).status == "delivered" and load(order_no).hold == ""
    assert click(console, order_no, "approve").status_code == 302  # a second click: nothing more
    assert [no for no, _site in shop.counter.orders].count(order_no) == 1
    assert "CODE-" in text(client.get(f"/order/{order_no}"))
    row = held_row(order_no)
    assert row.decision == "approved" and row.decided_by == "owner"
    from kamengsite.audit import AuditEntry

    with all_sites():
        entries = list(AuditEntry.select().where(AuditEntry.action == "risk.approve"))
    assert [e.status for e in entries] == [200, 409] and entries[0].target == f"order:{order_no}"


def test_reject_refunds_once_and_gives_the_stock_back(host, shop, client_for):
    _client, order_no = held_paid_order(shop)
    before = stock(shop)
    console = owner_console(shop, client_for)
    assert click(console, order_no, "reject").status_code == 302
    assert click(console, order_no, "reject").status_code == 302
    assert load(order_no).status == "refunded"
    with all_sites():
        assert refunds.Refund.select().where(refunds.Refund.order == load(order_no).id).count() == 1
    assert stock(shop) == before + 1
    assert order_no not in [no for no, _site in shop.counter.orders]
    assert held_row(order_no).decision == "rejected"


def test_rejecting_an_unpaid_held_order_cancels_it(host, shop, client_for):
    risk.save_settings(shop.site_id, {"ip_limit": 1})
    client = buyer(shop)
    order_of(client, shop)
    order_no = order_of(client, shop)
    before = stock(shop)
    console = owner_console(shop, client_for)
    assert click(console, order_no, "approve").status_code == 302  # not paid: refused
    assert held_row(order_no).decision == ""
    assert click(console, order_no, "reject").status_code == 302
    assert load(order_no).status == "cancelled" and stock(shop) == before + 1


def _decide(shop, order_no: str, action: str) -> tuple[str, str]:
    decide = risk.approve if action == "approve" else risk.reject
    return action, decide(shop.site_id, order_no, by="t")


def test_concurrent_approve_and_reject_have_exactly_one_outcome(host, shop):
    for round_ in range(3):
        _client, order_no = held_paid_order(shop, limit=1) if round_ == 0 else _another_held(shop)
        actions = ("approve", "reject", "approve", "reject")
        outcomes, errors = at_once(lambda n, order_no=order_no: _decide(shop, order_no, actions[n]), 4)
        assert errors == []
        winners = [a for a, outcome in outcomes if outcome == risk.DONE]
        assert len(winners) == 1, outcomes
        order = load(order_no)
        delivered = [no for no, _site in shop.counter.orders].count(order_no)
        with all_sites():
            refunded = refunds.Refund.select().where(refunds.Refund.order == order.id).count()
        if winners == ["approve"]:
            assert order.status == "delivered" and delivered == 1 and refunded == 0
        else:
            assert order.status == "refunded" and delivered == 0 and refunded == 1


def _another_held(shop):
    client = buyer(shop)
    order_no = order_of(client, shop)
    pay(client, order_no)
    assert load(order_no).hold == "risk"
    return client, order_no


def test_another_sites_held_order_is_404_and_staff_need_orders(host, shop, client_for):
    _client, order_no = held_paid_order(shop)
    create_account(site_id("main"), "boss", PASSWORD)
    boss = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    assert order_no not in text(boss.get("/admin/risk/"))
    token = csrf_token(boss.get("/admin/risk/"))
    for action in ("approve", "reject"):
        assert boss.post(f"/admin/risk/orders/{order_no}/{action}", data={"csrf_token": token}).status_code == 404
    assert load(order_no).status == "paid" and held_row(order_no).decision == ""

    create_account(shop.site_id, "clerk", PASSWORD, role="staff")
    with all_sites():
        Account.update(permissions="catalogue").where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for("shop1.localhost"), "clerk", PASSWORD)
    assert clerk.get("/admin/risk/").status_code == 403
    assert clerk.post(f"/admin/risk/orders/{order_no}/approve").status_code == 403
    assert load(order_no).status == "paid"


def test_writes_without_csrf_are_refused(host, shop, client_for):
    _client, order_no = held_paid_order(shop)
    console = owner_console(shop, client_for)
    assert console.post(f"/admin/risk/orders/{order_no}/approve").status_code == 400
    assert console.post("/admin/risk/blocks", data={"kind": "ip", "value": "1.2.3.4"}).status_code == 400
    assert load(order_no).status == "paid" and risk.blocks(shop.site_id) == []


def test_console_edits_rules_and_blacklist(host, shop, client_for):
    console = owner_console(shop, client_for)
    page = console.get("/admin/risk/")
    token = csrf_token(page)
    values = {name: str(getattr(risk.RiskSettings(), name)) for name, _label in __import__(
        "kamengsite.admin_risk", fromlist=["SETTING_FIELDS"]).SETTING_FIELDS}
    assert console.post("/admin/risk/settings", data={**values, "ip_limit": "3", "csrf_token": token}).status_code == 302
    assert risk.settings_for(shop.site_id).ip_limit == 3
    assert risk.settings_for(site_id("main")).ip_limit == 10  # per site
    bad = console.post("/admin/risk/settings", data={**values, "ip_window": "0", "csrf_token": token})
    assert bad.status_code == 400 and risk.settings_for(shop.site_id).ip_limit == 3
    assert console.post("/admin/risk/blocks", data={"kind": "ip", "value": "203.0.113.0/24", "note": "<b>x</b>",
                                                    "csrf_token": token}).status_code == 302
    listing = text(console.get("/admin/risk/"))
    assert "203.0.113.0/24" in listing and "<b>x</b>" not in listing and "&lt;b&gt;x&lt;/b&gt;" in listing
    entry, = risk.blocks(shop.site_id)
    assert console.post("/admin/risk/blocks", data={"kind": "ip", "value": "nonsense",
                                                    "csrf_token": token}).status_code == 400
    other = risk.add_block(site_id("main"), "contact", "main-only@example.com")
    assert console.post("/admin/risk/blocks/delete", data={"block_id": other.id, "csrf_token": token}).status_code == 404
    assert [b.value for b in risk.blocks(site_id("main"))] == ["main-only@example.com"]  # another site's entry
    assert console.post("/admin/risk/blocks/delete", data={"block_id": entry.id, "csrf_token": token}).status_code == 302
    assert risk.blocks(shop.site_id) == []


# -- registrations, plugins, the API ---------------------------------------------------------------


def test_many_registrations_from_one_ip_are_refused(host, shop):
    risk.save_settings(shop.site_id, {"signup_limit": 2})
    from kamengsite.members import Member

    for i in range(3):
        reset_limits()
        client = buyer(shop, ip="192.0.2.200")  # a new browser each time, one address
        page = client.get("/member/register")
        client.post("/member/register", data={"csrf_token": csrf_token(page), "email": f"m{i}@example.com",
                                              "password": PASSWORD, "password2": PASSWORD,
                                              "confirm": PASSWORD, "display_name": f"m{i}"})
    with all_sites():
        made = [m.email for m in Member.select().where(Member.site == shop.site_id).order_by(Member.id)]
    assert made == ["m0@example.com", "m1@example.com"]
    other = buyer(shop, ip="192.0.2.201")
    page = other.get("/member/register")
    other.post("/member/register", data={"csrf_token": csrf_token(page), "email": "m9@example.com",
                                         "password": PASSWORD, "password2": PASSWORD, "confirm": PASSWORD,
                                         "display_name": "m9"})
    with all_sites():
        assert Member.select().where(Member.email == "m9@example.com").exists()


class HoldVipRule:
    name = "vip-check"

    def evaluate(self, facts):
        if facts.contact.startswith("hold"):
            return "hold"
        if facts.contact.startswith("refuse"):
            return "refuse"
        return None


class RulePlugin:
    @hookimpl
    def risk_rules(self, site):
        return [HoldVipRule()]


def test_a_plugin_rule_holds_or_refuses_through_the_hook(host, shop):
    host.plugins.register(RulePlugin(), name="rule-plugin")
    host.plugins.core.add("rule-plugin")
    client = buyer(shop, ip="192.0.2.99")
    assert load(order_of(client, shop, contact="fine@example.com")).hold == ""
    held = order_of(client, shop, contact="hold@example.com")
    assert load(held).hold == "risk" and held_row(held).rule == "plugin:vip-check"
    before = stock(shop)
    response = place(client, shop, contact="refuse@example.com")
    assert generic(response) and stock(shop) == before


def test_reseller_api_orders_are_held_and_blacklisted_resellers_refused(host):
    from test_api import ApiShop, data, error

    shop = ApiShop(host, wallet_fen=10_000)
    risk.save_settings(shop.site_id, {"member_limit": 1, "ip_limit": 0, "contact_limit": 0})
    first = data(shop.api.post("/api/v1/orders", {"out_trade_no": "R1", "sku_id": shop.sku.id, "quantity": 1}))
    second = data(shop.api.post("/api/v1/orders", {"out_trade_no": "R2", "sku_id": shop.sku.id, "quantity": 1}))
    assert first["status"] == "delivered" and second["status"] == "paid"
    assert held_row(second["order_no"]).rule == "member" and load(second["order_no"]).hold == "risk"
    assert risk.approve(shop.site_id, second["order_no"], by="t") == risk.DONE
    assert data(shop.api.get("/api/v1/orders/R2"))["status"] == "delivered"

    risk.add_block(shop.site_id, "member", "reseller@example.com")
    before = shop.wallet()
    error(shop.api.post("/api/v1/orders", {"out_trade_no": "R3", "sku_id": shop.sku.id, "quantity": 1}),
          400, "invalid_request")
    assert shop.wallet() == before


def test_concurrent_decisions_have_one_outcome_on_every_database(db_host):

    reset_limits()
    shop = open_channel_shop(db_host, 1500, keys=20)
    risk.save_settings(shop.site_id, {"ip_limit": 1})
    client = buyer(shop)
    pay(client, order_of(client, shop))
    numbers = []
    for _ in range(3):
        order_no = order_of(client, shop)
        pay(client, order_no)
        assert load(order_no).hold == "risk"
        numbers.append(order_no)
    for order_no in numbers:
        actions = ("approve", "reject", "reject", "approve")
        outcomes, errors = at_once(lambda n, order_no=order_no: _decide(shop, order_no, actions[n]), 4)
        assert errors == []
        assert [a for a, outcome in outcomes if outcome == risk.DONE] in (["approve"], ["reject"]), outcomes
        order = load(order_no)
        with all_sites():
            refunded = refunds.Refund.select().where(refunds.Refund.order == order.id).count()
        delivered = [no for no, _site in shop.counter.orders].count(order_no)
        assert (order.status, delivered, refunded) in (("delivered", 1, 0), ("refunded", 0, 1))
