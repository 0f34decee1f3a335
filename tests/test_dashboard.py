"""数据概览 (kamengsite/dashboard.py, kamengsite/admin_dashboard.py): the numbers for a constructed set of
orders — paid, unpaid, expired, refunded, on two sub-sites and the main site, either side of a Beijing
midnight — on every database; the owner of one sub-site sees only theirs; bad ranges are refused."""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from kamengsite import dashboard, ledger, levels, members, orders, pricing, refunds
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.dashboard import DateRange, RangeError, make_range, parse_range
from kamengsite.models import Site
from kamengsite.tenancy import CrossTenantError, all_sites, site_scope
from kamengsite.testing import SiteClient, open_plugin_site, sign_in_console

PASSWORD = "correct horse battery staple"
D = datetime.datetime
RANGE = DateRange(datetime.date(2026, 3, 10), datetime.date(2026, 3, 11))  # Beijing days
EVIL = "<script>alert(1)</script>"


def text(response) -> str:
    return response.get_data(as_text=True)


@dataclass
class World:
    host: object
    ids: dict
    products: dict
    orders: dict  # name → Order
    margins: dict  # site slug → margin of its orders paid in RANGE (before refunds)

    def console(self, slug, username=None) -> SiteClient:
        client = SiteClient(self.host, f"{slug}.localhost")
        return sign_in_console(client, username or f"owner-{slug}", PASSWORD)


def _order(world, name, slug, product, quantity, *, created, paid=None, expire=False):
    """An order of ``quantity`` bought on ``slug`` at its price, with its times pinned (naive UTC)."""
    site_id, sku = world.ids[slug], world.products[product].skus[0].id
    quote = pricing.quote_sku(site_id, sku)
    order = orders.create_order(site_id=site_id, sku_id=sku, quantity=quantity, contact="buyer@example.com",
                                unit_price_fen=quote.unit_price_fen, costs=quote.costs, channel="epay",
                                channel_profile="main")
    if paid:
        orders.mark_paid(order.order_no, channel="epay", trade_no=f"T-{order.order_no}", amount_fen=order.amount_fen,
                         channel_profile="main")
        margin = (quote.unit_price_fen - quote.costs[0][1]) * quantity if quote.costs else 0
        if paid and RANGE.since <= paid < RANGE.until:
            world.margins[slug] = world.margins.get(slug, 0) + margin
    if expire:
        orders.expire_due(now=D.max.replace(year=9000))
    with all_sites():
        orders.Order.update(created_at=created, paid_at=paid).where(orders.Order.id == order.id).execute()
        ledger.LedgerTxn.update(created_at=paid).where(ledger.LedgerTxn.reference == order.order_no).execute()
        world.orders[name] = orders.Order.get_by_id(order.id)
    return world.orders[name]


def build(host) -> World:
    levels.seed_default_levels()
    main = Site.get(Site.slug == host.instance.main_site).id
    ids = {"main": main}
    for slug in ("a", "b"):
        ids[slug] = open_plugin_site(host, slug, [], level="silver", markup_bp=2000)
        create_account(ids[slug], f"owner-{slug}", PASSWORD)
    create_account(main, "boss", PASSWORD)
    cipher = CardKeyCipher.from_instance(host.instance)
    products = {"card": create_product(main, "月卡", 10000, max_qty=10),
                "evil": create_product(main, EVIL, 3000, max_qty=10)}
    for n, product in enumerate(products.values()):
        import_keys(product.skus[0], [f"K{n}-{i:03d}" for i in range(40)], cipher)
    world = World(host, ids, products, {}, {})
    # Site a: midnight in Beijing is 16:00 UTC the day before.
    _order(world, "a_expired", "a", "card", 1, created=D(2026, 3, 10, 4), expire=True)
    _order(world, "a_first", "a", "card", 1, created=D(2026, 3, 9, 16, 30), paid=D(2026, 3, 9, 16, 35))  # 03-10 00:35
    _order(world, "a_late", "a", "evil", 3, created=D(2026, 3, 10, 15, 50), paid=D(2026, 3, 10, 15, 59))  # 03-10 23:59
    _order(world, "a_next", "a", "card", 2, created=D(2026, 3, 10, 16), paid=D(2026, 3, 10, 16))  # 03-11 00:00
    _order(world, "a_unpaid", "a", "card", 1, created=D(2026, 3, 10, 3))
    _order(world, "a_before", "a", "card", 1, created=D(2026, 3, 9, 15), paid=D(2026, 3, 9, 15, 59))  # 03-09 23:59
    _order(world, "b_sale", "b", "card", 1, created=D(2026, 3, 10, 7), paid=D(2026, 3, 10, 8))
    _order(world, "main_sale", "main", "evil", 1, created=D(2026, 3, 11, 0), paid=D(2026, 3, 11, 1))
    refund = refunds.refund_order(world.orders["a_next"].order_no, to="manual", absorb=True)
    refunds.Refund.update(created_at=D(2026, 3, 11, 2)).where(refunds.Refund.id == refund.id).execute()
    ledger.LedgerTxn.update(created_at=D(2026, 3, 11, 2)).where(
        (ledger.LedgerTxn.kind == "refund") & (ledger.LedgerTxn.reference == world.orders["a_next"].order_no)).execute()
    for n, (slug, at) in enumerate((("a", D(2026, 3, 10, 2)), ("a", D(2026, 3, 9, 10)), ("b", D(2026, 3, 11, 9)))):
        member = members.register(ids[slug], f"m{n}@example.com", PASSWORD)
        with site_scope(ids[slug]):
            members.Member.update(created_at=at).where(members.Member.id == member.id).execute()
    Site.update(created_at=D(2026, 3, 10, 12)).where(Site.id == ids["a"]).execute()
    return world


@pytest.fixture
def world(host):
    return build(host)


@pytest.fixture
def db_world(db_host):
    return build(db_host)


def amount(world, *names) -> int:
    return sum(world.orders[name].amount_fen for name in names)


def refund_margin(world) -> int:
    """What the refund of a_next took back from site a (as the ledger says)."""
    with all_sites():
        txn = ledger.LedgerTxn.get((ledger.LedgerTxn.kind == "refund")
                                   & (ledger.LedgerTxn.reference == world.orders["a_next"].order_no))
    return sum(e.amount_fen for e in ledger.LedgerEntry.select().join(ledger.LedgerAccount).where(
        (ledger.LedgerEntry.txn == txn.id) & (ledger.LedgerAccount.site == world.ids["a"])
        & ledger.LedgerAccount.kind.in_(dashboard.MARGIN_ACCOUNTS)))


# -- the numbers, on every database ---------------------------------------------------------------------


@pytest.mark.databases
def test_numbers_of_a_constructed_range(db_world):
    w = db_world
    a_paid = ("a_first", "a_late", "a_next")
    platform = dashboard.summary(RANGE)
    assert platform.gmv_fen == amount(w, *a_paid, "b_sale", "main_sale")
    assert platform.paid_orders == 5
    # created in range: a_expired, a_first (03-10 00:30 BJ), a_late, a_next, a_unpaid, b_sale, main_sale
    assert (platform.created_orders, platform.converted_orders) == (7, 5)
    assert platform.conversion_bp == 5 * 10000 // 7
    assert platform.average_fen == (2 * platform.gmv_fen + 5) // 10
    assert (platform.refund_count, platform.refund_fen) == (1, w.orders["a_next"].amount_fen)
    assert (platform.new_members, platform.new_sites, platform.margin_fen) == (2, 1, None)

    site_a = dashboard.summary(RANGE, w.ids["a"])
    assert (site_a.gmv_fen, site_a.paid_orders) == (amount(w, *a_paid), 3)
    assert (site_a.created_orders, site_a.converted_orders) == (5, 3)
    assert (site_a.refund_count, site_a.new_members, site_a.new_sites) == (1, 1, 0)
    assert refund_margin(w) < 0
    assert site_a.margin_fen == w.margins["a"] + refund_margin(w)
    assert dashboard.summary(RANGE, w.ids["b"]).refund_count == 0

    days = dashboard.by_day(RANGE)
    assert [(d.day.isoformat(), d.gmv_fen, d.orders) for d in days] == [
        ("2026-03-10", amount(w, "a_first", "a_late", "b_sale"), 3),
        ("2026-03-11", amount(w, "a_next", "main_sale"), 2)]
    assert [(d.gmv_fen, d.orders) for d in dashboard.by_day(RANGE, w.ids["a"])] == [
        (amount(w, "a_first", "a_late"), 2), (amount(w, "a_next"), 1)]

    card, evil = w.products["card"].id, w.products["evil"].id
    by_quantity = dashboard.top_products(RANGE, by="quantity")
    assert [(r.product_id, r.quantity) for r in by_quantity] == [(card, 4), (evil, 4)]  # a tie: lower id first
    by_revenue = dashboard.top_products(RANGE, w.ids["a"])
    assert [(r.product_id, r.revenue_fen, r.quantity) for r in by_revenue] == sorted(
        [(card, amount(w, "a_first", "a_next"), 3), (evil, amount(w, "a_late"), 3)], key=lambda r: -r[1])

    assert [(r.slug, r.value_fen) for r in dashboard.sites_by_gmv(RANGE)] == [
        ("a", amount(w, *a_paid)), ("b", amount(w, "b_sale"))]
    assert [(r.slug, r.value_fen) for r in dashboard.sites_by_margin(RANGE)] == sorted(
        [("a", w.margins["a"] + refund_margin(w)), ("b", w.margins["b"])], key=lambda r: -r[1])


def test_a_range_with_nothing_in_it_is_all_zeros(world):
    quiet = make_range(datetime.date(2025, 1, 1), datetime.date(2025, 1, 3))
    totals = dashboard.summary(quiet, world.ids["a"])
    assert (totals.gmv_fen, totals.paid_orders, totals.conversion_bp, totals.average_fen, totals.margin_fen) == (0,) * 5
    assert [(d.gmv_fen, d.orders) for d in dashboard.by_day(quiet)] == [(0, 0)] * 3
    assert dashboard.top_products(quiet) == [] and dashboard.sites_by_gmv(quiet) == []


def test_a_site_scope_cannot_ask_for_another_sites_numbers(world):
    with site_scope(world.ids["a"]):
        assert dashboard.summary(RANGE, world.ids["a"]).paid_orders == 3
        with pytest.raises(CrossTenantError):
            dashboard.summary(RANGE, world.ids["b"])
        with pytest.raises(CrossTenantError):
            dashboard.by_day(RANGE, world.ids["b"])


# -- the page -----------------------------------------------------------------------------------------


def kpis(response) -> dict:
    return dict(re.findall(r'data-kpi="(\w+)">([^<]*)<', text(response)))


def test_operator_sees_the_platform_with_charts(world):
    page = world.console("main", "boss").get("/admin/dashboard?from=2026-03-10&to=2026-03-11")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].count("script-src 'none'") == 1
    html = text(page)
    numbers = kpis(page)
    assert numbers["paid"] == "5" and numbers["conversion"] == "71.4%"
    assert "margin" not in numbers
    assert 'id="sites-gmv"' in html and 'id="sites-margin"' in html
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        ET.fromstring(svg)  # every chart is well-formed
    menu = re.search(r"<nav>(.*?)</nav>", html, re.S).group(1)
    assert re.findall(r'href="([^"]+)"', menu)[0] == "/admin/dashboard"  # first in the menu


def test_owner_sees_only_their_site_whatever_the_query_says(world):
    console = world.console("a")
    page = console.get(f"/admin/dashboard?from=2026-03-10&to=2026-03-11&site={world.ids['b']}&site_id={world.ids['b']}")
    assert page.status_code == 200
    numbers = kpis(page)
    with all_sites():
        a_total = dashboard.summary(RANGE, world.ids["a"])
    assert numbers["paid"] == "3" and numbers["margin"] == f"{a_total.margin_fen / 100:.2f}"
    assert "site_frozen" in numbers and "site_available" in numbers
    html = text(page)
    assert 'id="sites-gmv"' not in html and ">b<" not in html  # no ranking, no other site's slug
    # site a's account is void on site b's console
    elsewhere = console.get("/admin/dashboard", headers={"Host": "b.localhost"})
    assert elsewhere.status_code == 302 and "/admin/login" in elsewhere.headers["Location"]


def test_signed_out_visitors_go_to_the_login(world):
    response = SiteClient(world.host, "a.localhost").get("/admin/dashboard")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@pytest.mark.parametrize("query, error", [
    ("from=2026-03-11&to=2026-03-10", "开始日期晚于结束日期"),
    ("from=2025-01-01&to=2026-03-10", "一次最多查询 366 天"),
    ("from=2026-13-01&to=2026-03-10", "日期格式不对"),
    ("from=%3Cscript%3E", "日期格式不对"),
])
def test_bad_ranges_are_refused_clearly(world, query, error):
    page = world.console("main", "boss").get(f"/admin/dashboard?{query}")
    assert page.status_code == 200
    assert error in text(page) and "<script" not in text(page)


# -- ranges ---------------------------------------------------------------------------------------------


def test_ranges_are_beijing_days():
    day = datetime.date(2026, 3, 10)
    assert DateRange(day, day).since == D(2026, 3, 9, 16) and DateRange(day, day).until == D(2026, 3, 10, 16)
    assert dashboard.beijing_today(D(2026, 3, 9, 15, 59)) == datetime.date(2026, 3, 9)
    assert dashboard.beijing_today(D(2026, 3, 9, 16, 0)) == day


def test_presets_and_limits():
    today = datetime.date(2026, 3, 10)
    assert parse_range({}, today) == (DateRange(datetime.date(2026, 3, 4), today), "")
    assert parse_range({"preset": "today"}, today)[0] == DateRange(today, today)
    assert parse_range({"preset": "30d"}, today)[0].start == datetime.date(2026, 2, 9)
    assert parse_range({"preset": "month"}, today)[0] == DateRange(datetime.date(2026, 3, 1), today)
    assert parse_range({"from": "2026-03-01"}, today)[0] == DateRange(datetime.date(2026, 3, 1), datetime.date(2026, 3, 1))
    assert len(make_range(datetime.date(2024, 1, 1), datetime.date(2024, 12, 31)).days) == 366
    with pytest.raises(RangeError):
        make_range(datetime.date(2025, 1, 1), datetime.date(2026, 1, 2))  # 367 days
    with pytest.raises(RangeError):
        make_range(today, today - datetime.timedelta(days=1))
    fallback, error = parse_range({"from": "2026-03-11", "to": "2026-03-10"}, today)
    assert fallback == parse_range({}, today)[0] and "The start date is after the end date" in error  # no request: English


# -- languages ------------------------------------------------------------------------------------------


def test_the_dashboard_is_chinese_by_default_and_english_on_request(world):
    console = world.console("main", "boss")
    zh = text(console.get("/admin/dashboard?from=2026-03-10&to=2026-03-11"))
    assert "<h1>数据概览</h1>" in zh and "每日趋势" in zh and "分站成交额排行" in zh and "元</title>" in zh
    page = console.get("/admin/dashboard?from=2026-03-10&to=2026-03-11&lang=en")
    en = text(page)
    assert "<h1>Dashboard</h1>" in en and "Daily trend" in en and "Sub-sites by sales" in en
    assert "Top 10 products by revenue" in en and "Show the data table" in en and "Order conversion rate" in en
    for chinese in ("数据概览", "每日趋势", "分站成交额排行", "商品销售额前 10", "查看数据表", "成交额", " 元"):
        assert chinese not in en
    assert kpis(page)["paid"] == "5" and "¥" in kpis(page)["refunds"]
    refused = text(console.get("/admin/dashboard?from=2026-03-11&to=2026-03-10"))  # the cookie keeps English
    assert "The start date is after the end date" in refused and "开始日期" not in refused


def test_an_owner_s_dashboard_in_english(world):
    en = text(world.console("a").get("/admin/dashboard?lang=en"))
    assert "Dashboard · This site" in en and "Frozen balance (¥)" in en and "Margin in this period (¥)" in en
    assert "冻结余额" not in en and "本期分润" not in en
