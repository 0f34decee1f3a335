"""The distribution plugin: invite links bind members, commissions come out of the seller's margin.

Numbers by hand: on ``shopx`` (silver: cost 9000 of a 10000 product, +20 % → price 10800) the
seller's margin of one unit is 1800 fen; the default rates [10, 5] pay 180 to the buyer's
referrer and 90 to theirs, and the site keeps 1530.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kamengsite import ledger, levels, members, orders, refunds
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import buy, csrf_token, open_plugin_site, sign_in_member, site_id
from kamengsite_distribution import referrals
from kamengsite_distribution.referrals import Referral, ReferralRefused

PASSWORD = "secret-pass-1"


# -- helpers ------------------------------------------------------------------------------


def _shop(host, slug="shopx", plugins=("distribution",), settings=None) -> int:
    """A silver sub-site selling main's goods at +20 %; ``plugins`` enabled."""
    return open_plugin_site(host, slug, plugins, settings=settings)


@pytest.fixture
def product(host):
    levels.seed_default_levels()
    card = create_product(Site.get(Site.slug == "main"), "分销测试卡", 10000)
    import_keys(card.skus[0], [f"D-{i}" for i in range(10)], CardKeyCipher.from_instance(host.instance))
    return card


def _register(client, email, ref=None):
    """Register through the member pages (after visiting ``/?ref=CODE`` when given)."""
    if ref is not None:
        client.get(f"/?ref={ref}")
    page = client.get("/member/register")
    response = client.post("/member/register", data={"csrf_token": csrf_token(page), "email": email,
                                                     "password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)


def _member(site_id, email):
    return members.find_member(site_id, email)


def _buy_and_pay(client, product) -> str:
    order_no = buy(client, product, None).headers["Location"].rsplit("/", 1)[1]
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(client.get(f"/order/{order_no}"))})
    return order_no


def _wallet(site_id, member_id) -> int:
    return ledger.balance(ledger.account("member_wallet", site=site_id, member=member_id))


def _frozen(site_id) -> int:
    return ledger.balance(ledger.account("site_frozen", site=site_id))


def _held(site_id, member_id) -> int:
    """The member's commissions still frozen (``member_frozen``)."""
    return ledger.balance(ledger.account("member_frozen", site=site_id, member=member_id))


def _chain(site_id, *emails):
    """Members registered directly, each referred by the one before: A ← B ← C."""
    made = [members.register(site_id, email, PASSWORD) for email in emails]
    for referrer, member in zip(made, made[1:]):
        referrals.bind(site_id, member.id, referrer.id)
    return [m.id for m in made]


# -- the chain, end to end ----------------------------------------------------------------


def test_an_invite_chain_earns_its_share_of_the_sellers_margin_and_gives_it_back_on_refund(host, client_for, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    code_a = referrals.invite_code(shop, a.id)
    _register(client_for("shopx.localhost"), "b@example.com", ref=code_a)  # B arrives through A's link
    b = _member(shop, "b@example.com")
    _register(client_for("shopx.localhost"), "c@example.com", ref=referrals.invite_code(shop, b.id))
    c = _member(shop, "c@example.com")
    assert referrals.upline(shop, c.id, 3) == [b.id, a.id]

    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "c@example.com", PASSWORD)
    order_no = _buy_and_pay(buyer, product)
    with all_sites():
        order = orders.find_order(order_no)
    assert order.status == "delivered" and order.member_id == c.id
    assert (_held(shop, b.id), _held(shop, a.id), _held(shop, c.id)) == (180, 90, 0)  # never the buyer
    assert (_wallet(shop, b.id), _wallet(shop, a.id)) == (0, 0)  # frozen first: not spendable yet
    assert _frozen(shop) == 1800 - 270
    assert ledger.balance(ledger.account("platform_revenue")) == 9000
    assert ledger.check() == []

    refunds.refund_order(order_no, to="manual")
    assert (_held(shop, b.id), _held(shop, a.id), _frozen(shop)) == (0, 0, 0)
    assert ledger.check() == []


def test_the_invite_page_shows_the_link_the_team_and_the_earnings(host, client_for, product):
    shop = _shop(host)
    a_id, b_id, c_id = _chain(shop, "alice@example.com", "bob@example.com", "carol@example.com")
    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "carol@example.com", PASSWORD)
    order_no = _buy_and_pay(buyer, product)

    client = client_for("shopx.localhost")
    assert client.get("/member/invite").status_code == 302  # signed out: to the login page
    sign_in_member(client, "alice@example.com", PASSWORD)
    assert "/member/invite" in client.get("/member/").get_data(as_text=True)  # linked from the account page
    response = client.get("/member/invite")
    page = response.get_data(as_text=True)
    code = referrals.invite_code(shop, a_id)
    assert response.headers["Cache-Control"] == "no-store"
    assert f"https://shopx.localhost/?ref={code}" in page
    assert "1 级 1 人 · 2 级 1 人" in page and "<li>bob ·" in page and "carol" not in page  # direct referees listed
    assert "¥0.90" in page and order_no in page
    assert referrals.invite_code(shop, a_id) == code  # made once, then kept


def test_a_member_who_buys_without_a_referrer_pays_nobody(host, client_for, product):
    shop = _shop(host)
    (a_id,) = _chain(shop, "a@example.com")
    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "a@example.com", PASSWORD)
    _buy_and_pay(buyer, product)
    assert _held(shop, a_id) == 0 and _frozen(shop) == 1800 and ledger.check() == []


def test_a_guest_order_pays_no_commission(host, client_for, product):
    shop = _shop(host)
    _chain(shop, "a@example.com", "b@example.com")
    _buy_and_pay(client_for("shopx.localhost"), product)
    assert _frozen(shop) == 1800 and ledger.check() == []


def test_a_site_that_does_not_enable_the_plugin_pays_no_commissions(host, client_for, product):
    plain = _shop(host, "plain", plugins=())
    a_id, b_id, c_id = _chain(plain, "a@example.com", "b@example.com", "c@example.com")
    buyer = client_for("plain.localhost")
    sign_in_member(buyer, "c@example.com", PASSWORD)
    _buy_and_pay(buyer, product)
    assert (_held(plain, a_id), _held(plain, b_id)) == (0, 0) and _frozen(plain) == 1800
    assert client_for("plain.localhost").get("/member/invite").status_code == 404
    assert ledger.check() == []


def test_the_sites_rates_apply_up_to_three_levels(host, client_for, product):
    shop = _shop(host, settings={"distribution": {"rates": [20, 10, 5]}})
    ids = _chain(shop, "a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com")
    buyer = client_for("shopx.localhost")
    sign_in_member(buyer, "e@example.com", PASSWORD)
    _buy_and_pay(buyer, product)
    # e's chain: d 20 %, c 10 %, b 5 % of 1800; a is four levels up and gets nothing
    assert [_held(shop, m) for m in ids] == [0, 90, 180, 360, 0]
    assert _frozen(shop) == 1800 - 630 and ledger.check() == []


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ({}, (1000, 500)),
    ({"rates": [12.5]}, (1250,)),
    ({"rates": [20, 10, 5]}, (2000, 1000, 500)),
    ({"rates": [5, 4, 3, 2]}, (1000, 500)),  # deeper than 3: refused
    ({"rates": [80, 30]}, (1000, 500)),  # more than the whole margin: refused
    ({"rates": [-1]}, (1000, 500)),
    ({"rates": "10"}, (1000, 500)),
    ({"rates": [20, 10, 5], "depth": 2}, (2000, 1000)),  # depth caps the levels paid
    ({"rates": [20, 10], "depth": 1}, (2000,)),
    ({"depth": 3}, (1000, 500)),  # a third level without a rate earns nothing
    ({"depth": 4}, (1000, 500)),  # deeper than 3: refused
    ({"depth": 0}, (1000, 500)),
    ({"freeze_days": -1}, (1000, 500)),
    ({"level": 2}, (1000, 500)),  # unknown setting
])
def test_rates_are_validated_and_bad_ones_fall_back_to_the_defaults(raw, expected, caplog):
    site = SimpleNamespace(slug="s", settings={"distribution": raw})
    with caplog.at_level(logging.ERROR):
        assert referrals.load_rates(site) == expected
    assert bool(caplog.records) == (expected == (1000, 500) and raw not in ({}, {"depth": 3}))


def test_rates_longer_than_three_are_refused_on_a_live_site(host, client_for, product, caplog):
    shop = _shop(host, settings={"distribution": {"rates": [5, 4, 3, 2]}})
    ids = _chain(shop, "a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com")
    buyer = client_for("shopx.localhost")
    with caplog.at_level(logging.ERROR):
        sign_in_member(buyer, "e@example.com", PASSWORD)
        _buy_and_pay(buyer, product)
    assert any("[settings.distribution]" in r.getMessage() for r in caplog.records)
    assert [_held(shop, m) for m in ids] == [0, 0, 90, 180, 0]  # the defaults: two levels, 10 % and 5 %


# -- bonds --------------------------------------------------------------------------------


def test_self_referral_cycles_and_rebinding_are_refused(host):
    shop = _shop(host)
    a_id, b_id, c_id = _chain(shop, "a@example.com", "b@example.com", "c@example.com")
    with pytest.raises(ReferralRefused):
        referrals.bind(shop, a_id, a_id)
    with pytest.raises(ReferralRefused):
        referrals.bind(shop, a_id, c_id)  # c is below a: a cycle
    with pytest.raises(ReferralRefused):
        referrals.bind(shop, c_id, a_id)  # c has its referrer already, for good
    with pytest.raises(ReferralRefused):
        referrals.bind_by_code(shop, a_id, referrals.invite_code(shop, a_id))
    assert referrals.referrer_of(shop, a_id) is None and referrals.referrer_of(shop, c_id) == b_id


def test_a_code_of_one_site_does_nothing_on_another(host, client_for):
    shop = _shop(host)
    other = _shop(host, "other")
    a = members.register(shop, "a@example.com", PASSWORD)
    code = referrals.invite_code(shop, a.id)
    assert referrals.member_of_code(other, code) is None
    _register(client_for("other.localhost"), "b@example.com", ref=code)
    b = _member(other, "b@example.com")
    assert referrals.referrer_of(other, b.id) is None
    with pytest.raises(ReferralRefused):
        referrals.bind(other, b.id, a.id)  # a is no member of "other"
    with all_sites():
        assert Referral.select().count() == 0


def test_a_registration_that_fails_binds_nobody(host, client_for):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    members.register(shop, "b@example.com", PASSWORD)
    client = client_for("shopx.localhost")
    client.get(f"/?ref={referrals.invite_code(shop, a.id)}")
    page = client.get("/member/register")
    client.post("/member/register", data={"csrf_token": csrf_token(page), "email": "b@example.com",
                                          "password": PASSWORD, "confirm": PASSWORD})  # taken
    with all_sites():
        assert Referral.select().count() == 0


def test_an_unknown_ref_is_not_kept(host, client_for):
    shop = _shop(host)
    client = client_for("shopx.localhost")
    _register(client, "b@example.com", ref="NOSUCHCODE")
    assert referrals.referrer_of(shop, _member(shop, "b@example.com").id) is None


def test_bonds_and_commissions_on_every_backend(db_host):
    """The same rules on SQLite, PostgreSQL and MariaDB: codes unique per site, chain walk, refusals."""
    main = site_id("main")
    a_id, b_id, c_id = _chain(main, "a@example.com", "b@example.com", "c@example.com")
    codes = {referrals.invite_code(main, m) for m in (a_id, b_id, c_id)}
    assert len(codes) == 3 and referrals.invite_code(main, a_id) in codes
    with pytest.raises(ReferralRefused):
        referrals.bind(main, a_id, c_id)
    order = SimpleNamespace(site_id=main, member_id=c_id, order_no="X")
    assert referrals.commissions(order, 1800, (1000, 500)) == [(b_id, 180), (a_id, 90)]


# -- the arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize("margin, rates, expected", [
    (1800, (1000, 500), [180, 90]),
    (1, (1000, 500), [0, 0]),
    (19, (1000, 500), [1, 0]),
    (999, (3333, 3333, 3334), [332, 332, 333]),
    (100, (10000,), [100]),
    (0, (1000,), [0]),
    (-5, (1000,), [0]),
])
def test_shares_are_rounded_down(margin, rates, expected):
    assert referrals.split(margin, rates) == expected


@given(margin=st.integers(min_value=-10, max_value=10**9),
       rates=st.lists(st.integers(min_value=0, max_value=10000), min_size=1, max_size=3).filter(
           lambda r: sum(r) <= 10000))
def test_commissions_never_exceed_the_margin(margin, rates):
    shares = referrals.split(margin, rates)
    assert all(s >= 0 for s in shares) and sum(shares) <= max(margin, 0)


@given(margin=st.integers(min_value=0, max_value=10**9),
       rates=st.lists(st.integers(min_value=0, max_value=10000), min_size=1, max_size=3))
def test_even_unchecked_rates_never_pay_more_than_the_margin(margin, rates):
    assert sum(referrals.split(margin, rates)) <= margin


def test_the_hook_never_pays_the_buyer(host):
    shop = _shop(host)
    a_id, b_id = _chain(shop, "a@example.com", "b@example.com")
    order = SimpleNamespace(site_id=shop, member_id=b_id, order_no="X")
    assert referrals.commissions(order, 1000, (1000, 500)) == [(a_id, 100)]
    assert referrals.commissions(SimpleNamespace(site_id=shop, member_id=a_id, order_no="Y"), 1000, (1000,)) == []
    members.set_status(shop, a_id, "disabled")
    assert referrals.commissions(order, 1000, (1000, 500)) == []  # a disabled referrer's share stays with the seller
