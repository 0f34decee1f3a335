"""Commissions frozen, then released to the wallets; taken back on refund; the share poster.

Numbers by hand, as in test_distribution: on ``shopx`` (silver, +20 %) one unit of the
10000-fen card sells for 10800 and the seller's margin is 1800 fen; with the default rates
[10, 5] the buyer's referrer earns 180 and theirs 90, frozen for ``freeze_days`` (7) days.
"""

from __future__ import annotations

import datetime
import io
import struct
import threading

import pytest
import segno
from kamengsite_test_fixtures import SiteClient

from kamengsite import ledger, levels, members, orders, pricing, refunds, settlement
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Product, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites
from kamengsite.testing import buy, csrf_token, open_plugin_site, sign_in_member
import kamengsite_distribution
from kamengsite_distribution import poster as posters
from kamengsite_distribution import referrals

PASSWORD = "secret-pass-1"
DAY = datetime.timedelta(days=1)


# -- helpers ------------------------------------------------------------------------------


def _shop(host, slug="shopx", settings=None) -> int:
    return open_plugin_site(host, slug, ["distribution"], settings=settings)


def _product(h, name="分销测试卡", keys=10):
    levels.seed_default_levels()
    card = create_product(Site.get(Site.slug == "main"), name, 10000)
    import_keys(card.skus[0], [f"{name}-{i}" for i in range(keys)], CardKeyCipher.from_instance(h.instance))
    return card


@pytest.fixture
def product(host):
    return _product(host)


def _chain(site_id, *emails):
    made = [members.register(site_id, email, PASSWORD) for email in emails]
    for referrer, member in zip(made, made[1:]):
        referrals.bind(site_id, member.id, referrer.id)
    return [m.id for m in made]


def _buy_and_pay(client, product) -> str:
    order_no = buy(client, product, None).headers["Location"].rsplit("/", 1)[1]
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(client.get(f"/order/{order_no}"))})
    with all_sites():
        assert orders.find_order(order_no).status == "delivered"
    return order_no


def _held(site_id, member_id) -> int:
    return ledger.balance(ledger.account("member_frozen", site=site_id, member=member_id))


def _wallet(site_id, member_id) -> int:
    return ledger.balance(ledger.account("member_wallet", site=site_id, member=member_id))


def _releases() -> list[str]:
    return [t.reference for t in ledger.LedgerTxn.select().where(
        (ledger.LedgerTxn.kind == "release") & ledger.LedgerTxn.reference.startswith("commission:"))
        .order_by(ledger.LedgerTxn.id)]


def _buyer_chain(host, client_for, product, settings=None):
    """a ← b ← c on shopx; c buys one card. Returns (shop, (a, b, c), order_no)."""
    shop = _shop(host, settings=settings)
    ids = _chain(shop, "a@example.com", "b@example.com", "c@example.com")
    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "c@example.com", PASSWORD)
    return shop, ids, _buy_and_pay(buyer, product)


def _release(now):
    return kamengsite_distribution.release_due_commissions(now)


# -- frozen, then released once ---------------------------------------------------------------


def test_commissions_are_frozen_and_released_after_the_freeze_period_exactly_once(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product)
    assert (_held(shop, b), _held(shop, a), _wallet(shop, b), _wallet(shop, a)) == (180, 90, 0, 0)

    assert _release(utcnow() + 7 * DAY - datetime.timedelta(minutes=1)) == 0  # a minute short of 7 days
    assert (_held(shop, b), _wallet(shop, b)) == (180, 0) and _releases() == []

    later = utcnow() + 7 * DAY + datetime.timedelta(seconds=1)
    assert _release(later) == 1
    assert (_held(shop, b), _held(shop, a), _wallet(shop, b), _wallet(shop, a)) == (0, 0, 180, 90)
    assert _release(later) == 0 and _release(later + 30 * DAY) == 0  # reruns post nothing
    assert settlement.release_commissions(order_no).reference == f"commission:{order_no}"  # returns the first
    assert _releases() == [f"commission:{order_no}"]  # one transaction for the order's two commissions
    txn = ledger.find("release", f"commission:{order_no}")
    assert sorted(e.amount_fen for e in txn.entries) == [-180, -90, 90, 180]
    assert ledger.balance(ledger.account("site_frozen", site=shop)) == 1800 - 270  # the site's margin is not touched
    assert ledger.check() == []


def test_the_site_freeze_days_setting_decides_when(host, client_for, product):
    shop, (a, b, c), _ = _buyer_chain(host, client_for, product, settings={"distribution": {"freeze_days": 2}})
    assert _release(utcnow() + DAY) == 0
    assert _release(utcnow() + 2 * DAY + datetime.timedelta(seconds=1)) == 1
    assert (_wallet(shop, b), _wallet(shop, a)) == (180, 90) and ledger.check() == []


def test_freeze_days_zero_pays_into_the_wallet_right_after_the_payment(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product, settings={"distribution": {"freeze_days": 0}})
    assert (_held(shop, b), _wallet(shop, b), _wallet(shop, a)) == (0, 180, 90)  # order_paid released it
    assert _releases() == [f"commission:{order_no}"] and ledger.check() == []


def test_the_release_job_is_registered_and_runs(host, client_for, product):
    from huey import MemoryHuey

    shop, (a, b, c), _ = _buyer_chain(host, client_for, product, settings={"distribution": {"freeze_days": 0}})
    huey = MemoryHuey("distribution-test", immediate=True)
    kamengsite_distribution.register_jobs(huey=huey, instance=host.instance)
    tasks = {t.__name__: t for t in huey._registry._periodic_tasks}
    assert "distribution_release_commissions" in tasks
    task = tasks["distribution_release_commissions"]()
    assert task.validate_datetime(datetime.datetime(2026, 1, 1, 0, 15)) and not task.validate_datetime(
        datetime.datetime(2026, 1, 1, 0, 16))
    # The site's settings are read from its folder outside any request (the worker).
    assert kamengsite_distribution._freeze_days(shop, host.instance) == 0
    assert kamengsite_distribution._freeze_days(Site.get(Site.slug == "main").id, host.instance) == 7


# -- refunds --------------------------------------------------------------------------------


def test_a_refund_before_the_release_takes_the_commission_back_from_frozen(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product)
    refunds.refund_order(order_no, to="manual")
    assert (_held(shop, b), _held(shop, a), _wallet(shop, b), _wallet(shop, a)) == (0, 0, 0, 0)
    assert _release(utcnow() + 30 * DAY) == 0 and settlement.release_commissions(order_no) is None
    assert _releases() == [] and ledger.check() == []


def test_a_refund_after_the_release_takes_it_back_from_the_wallet_and_leaves_other_orders_frozen(
        host, client_for, product):
    shop, (a, b, c), first = _buyer_chain(host, client_for, product)
    settlement.release_commissions(first)  # the first order's freeze period is over
    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "c@example.com", PASSWORD)
    second = _buy_and_pay(buyer, product)
    assert (_held(shop, b), _wallet(shop, b)) == (180, 180)

    refunds.refund_order(first, to="manual")
    assert (_held(shop, b), _wallet(shop, b), _held(shop, a), _wallet(shop, a)) == (180, 0, 90, 0)
    assert ledger.check() == []
    assert _release(utcnow() + 8 * DAY) == 1  # the second order's commissions are still there to release
    assert (_held(shop, b), _wallet(shop, b)) == (0, 180)
    assert _releases() == [f"commission:{first}", f"commission:{second}"] and ledger.check() == []


def test_a_commission_already_spent_is_refused_unless_the_platform_carries_it(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product)
    settlement.release_commissions(order_no)
    members.debit_wallet(shop, b, 100, "spent-b")  # b spent 100 of the 180
    with pytest.raises(refunds.RefundError):
        refunds.refund_order(order_no, to="manual")
    assert (_wallet(shop, b), _wallet(shop, a)) == (80, 90)  # nothing written
    platform = ledger.balance(ledger.account("platform_revenue"))
    refunds.refund_order(order_no, to="manual", absorb=True)
    assert (_wallet(shop, b), _wallet(shop, a), _held(shop, b)) == (0, 0, 0)
    assert ledger.balance(ledger.account("platform_revenue")) == platform - 9000 - 100  # the platform carries 100
    assert ledger.check() == []


def test_rates_adding_up_to_100_percent_pay_the_whole_margin_and_not_a_fen_more(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product,
                                             settings={"distribution": {"rates": [60, 40], "freeze_days": 0}})
    split = ledger.find("payment", order_no)
    by_kind = {}
    for e in split.entries:
        kind = ledger.LedgerAccount.get_by_id(e.account_id).kind
        by_kind[kind] = by_kind.get(kind, 0) + e.amount_fen
    assert by_kind["member_frozen"] == 1800  # 60 % + 40 %: the whole margin, and not a fen more
    assert by_kind.get("site_frozen", 0) == 0 and by_kind["platform_revenue"] == 9000
    assert sum(by_kind.values()) == 0 and ledger.check() == []


# -- the pages ----------------------------------------------------------------------------------


def test_the_invite_page_shows_frozen_and_available_and_a_poster_link_per_product(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product)
    page_client = client_for("shopx.localhost")
    sign_in_member(page_client, "b@example.com", PASSWORD)
    page = page_client.get("/member/invite").get_data(as_text=True)
    assert "待结算佣金" in page and "可用余额" in page and "¥1.80" in page and "待结算（约" in page
    assert f'/member/invite/poster/{product.id}.png' in page and "生成海报" in page
    code = referrals.invite_code(shop, b)
    assert f"https://shopx.localhost/p/{product.id}?ref={code}" in page
    assert "¥108.00" in page  # this site's price
    assert "另有待结算佣金 ¥1.80" in page_client.get("/member/").get_data(as_text=True)

    settlement.release_commissions(order_no)
    page = page_client.get("/member/invite").get_data(as_text=True)
    assert "已到账" in page and 'id="wallet-available">¥1.80' in page and 'id="commission-frozen">¥0.00' in page
    assert "另有待结算佣金" not in page_client.get("/member/").get_data(as_text=True)


def test_the_invite_page_speaks_english_on_request(host, client_for, product):
    shop, (a, b, c), order_no = _buyer_chain(host, client_for, product)
    page_client = client_for("shopx.localhost")
    sign_in_member(page_client, "b@example.com", PASSWORD)
    chinese = page_client.get("/member/invite").get_data(as_text=True)
    assert "<h1>我的推广</h1>" in chinese and "My referrals" not in chinese and "1 级 10%，2 级 5%" in chinese
    page = page_client.get("/member/invite?lang=en").get_data(as_text=True)
    assert "<h1>My referrals</h1>" in page and "<h2>Commission earnings</h2>" in page
    assert "level 1 10%, level 2 5%" in page and "Commissions pending" in page and "Pending (available around" in page
    assert "我的推广" not in page and "待结算佣金" not in page and "生成海报" not in page and "Make a poster" in page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_poster_is_a_png_with_the_members_product_link_in_its_qr_code(host, client_for, product):
    shop = _shop(host)
    (a,) = _chain(shop, "a@example.com")
    client = client_for("shopx.localhost")
    sign_in_member(client, "a@example.com", PASSWORD)
    response = client.get(f"/member/invite/poster/{product.id}.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Cache-Control"].startswith("private")
    data = response.get_data()
    assert _png_size(data) == (posters.WIDTH, posters.HEIGHT)
    url = f"https://shopx.localhost/p/{product.id}?ref={referrals.invite_code(shop, a)}"
    drawn = posters.read_qr_matrix(data, url)
    assert drawn == [[bool(v) for v in row] for row in segno.make(url, error=posters.QR_ERROR).matrix]
    other = f"https://shopx.localhost/p/{product.id}?ref=SOMEONE2"
    assert drawn != [[bool(v) for v in row] for row in segno.make(other, error=posters.QR_ERROR).matrix]


def test_the_poster_needs_a_signed_in_member(host, client_for, product):
    _shop(host)
    response = client_for("shopx.localhost").get(f"/member/invite/poster/{product.id}.png")
    assert response.status_code == 302 and "/member/login" in response.headers["Location"]


def test_no_poster_for_a_product_not_on_sale_on_this_site(host, client_for, product):
    shop = _shop(host)
    _chain(shop, "a@example.com")
    client = client_for("shopx.localhost")
    sign_in_member(client, "a@example.com", PASSWORD)
    assert client.get("/member/invite/poster/99999.png").status_code == 404
    off = _product(host, "下架卡")
    Product.update(status="off").where(Product.id == off.id).execute()
    assert client.get(f"/member/invite/poster/{off.id}.png").status_code == 404
    hidden = _product(host, "隐藏卡")
    pricing.set_rule(shop, "product", hidden.id, hidden=True)  # the owner hides it on this site
    assert client.get(f"/member/invite/poster/{hidden.id}.png").status_code == 404
    assert client.get(f"/member/invite/poster/{product.id}.png").status_code == 200


def test_a_poster_renders_without_a_cjk_font():
    url = "https://shop.example.com/p/7?ref=ABCDEFGH"
    png = posters.render("测试站", "点卡", 12345, url, fonts=posters.Fonts(cjk=False))
    assert _png_size(png) == (posters.WIDTH, posters.HEIGHT)
    assert posters.read_qr_matrix(png, url) == [[bool(v) for v in row] for row in posters.qr_code(url).matrix]
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:  # the ASCII price was drawn in the price colour
        assert any(image.getpixel((x, 350)) == posters.PRICE_INK for x in range(posters.MARGIN, posters.WIDTH // 2))


# -- settings -----------------------------------------------------------------------------------


def test_the_settings_schema_has_a_title_and_a_default_for_every_setting():
    schema = kamengsite_distribution.plugin_settings_schema()
    assert set(schema["properties"]) == {"rates", "depth", "freeze_days"}
    assert all("title" in p and "default" in p for p in schema["properties"].values())
    assert schema["properties"]["depth"]["maximum"] == 3 and schema["properties"]["depth"]["default"] == 2
    assert schema["properties"]["freeze_days"]["default"] == 7


@pytest.mark.parametrize("raw, depth, freeze_days", [
    ({}, 2, 7), ({"rates": [20, 10, 5]}, 3, 7), ({"rates": [20]}, 1, 7), ({"depth": 3, "freeze_days": 0}, 3, 0),
    ({"depth": 5}, 2, 7), ({"freeze_days": 366}, 2, 7), ({"freeze_days": "7"}, 2, 7),
])
def test_depth_and_freeze_days(raw, depth, freeze_days):
    from types import SimpleNamespace

    settings = referrals.load_settings(SimpleNamespace(slug="s", settings={"distribution": raw}))
    assert (settings.depth, settings.freeze_days) == (depth, freeze_days)
    assert len(settings.rates) <= settings.depth <= referrals.MAX_DEPTH


# -- every backend --------------------------------------------------------------------------------


def test_freeze_release_and_refund_on_every_backend(db_host):
    """SQLite, PostgreSQL and MariaDB: frozen on payment, two racing releases post once, refunds take back."""
    product = _product(db_host)
    shop = _shop(db_host)
    a, b, c = _chain(shop, "a@example.com", "b@example.com", "c@example.com")
    buyer = SiteClient(db_host, "shopx.localhost")
    sign_in_member(buyer, "c@example.com", PASSWORD)
    first, second = _buy_and_pay(buyer, product), _buy_and_pay(buyer, product)
    assert (_held(shop, b), _held(shop, a)) == (360, 180)

    later = utcnow() + 8 * DAY
    results, errors = [], []

    def run():
        try:
            results.append(kamengsite_distribution.release_due_commissions(later))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(results) == 2  # each order released by exactly one of the racers
    assert sorted(_releases()) == sorted([f"commission:{first}", f"commission:{second}"])
    assert (_held(shop, b), _wallet(shop, b), _wallet(shop, a)) == (0, 360, 180)

    refunds.refund_order(first, to="manual")
    assert (_wallet(shop, b), _wallet(shop, a)) == (180, 90)
    assert ledger.check() == []

    # A refund racing the release of the same order: the money is taken back once, from wherever it is.
    third = _buy_and_pay(buyer, product)
    errors.clear()

    def refund():
        try:
            refunds.refund_order(third, to="manual")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def release():
        try:
            settlement.release_commissions(third)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    racers = [threading.Thread(target=refund), threading.Thread(target=release)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert errors == []
    assert (_held(shop, b), _wallet(shop, b), _held(shop, a), _wallet(shop, a)) == (0, 180, 0, 90)
    assert ledger.check() == []

    # An older order refunded while frozen does not hide a newer one from the sweep, nor the other way round.
    fourth, fifth = _buy_and_pay(buyer, product), _buy_and_pay(buyer, product)
    refunds.refund_order(fourth, to="manual")
    assert kamengsite_distribution.release_due_commissions(utcnow() + 8 * DAY) == 1
    assert _releases()[-1] == f"commission:{fifth}" and (_held(shop, b), _wallet(shop, b)) == (0, 360)
    assert ledger.find("release", f"commission:{fourth}") is None and ledger.check() == []
    shown = kamengsite_distribution.earnings(shop, b)
    assert shown["total_fen"] == 360  # what b keeps: the second and fifth orders' commissions
    assert [(line["order_no"], line["status"]) for line in shown["lines"]] == [
        (fifth, "released"), (fourth, "refunded"), (third, "refunded"), (second, "released"), (first, "refunded")]
