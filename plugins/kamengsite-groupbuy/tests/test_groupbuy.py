"""The group-buy plugin: a group fills and delivers once, or fails and refunds once — never both.

The functions the hooks call are exercised directly (the storefront builds the same checkout):
orders are created with ``hold="groupbuy"`` at the group price, ``reserve_place`` runs inside
the order's transaction, payments go through ``orders.mark_paid``. The race tests run on
SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from kamengsite import ledger, members, orders, refunds
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.checkout import Checkout, CheckoutRefused
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, init_database, release_connections
from kamengsite.models import Site
from kamengsite.payments import Channel, PaymentRegistry, RefundResult
from kamengsite.tenancy import all_sites
from kamengsite_groupbuy import adjust_price, groups, validate_checkout
from kamengsite_groupbuy.groups import Group, GroupMember

PRICE = 10000
GROUP_PRICE = 6000
CHANNEL = "alipay"


# -- helpers ------------------------------------------------------------------------------


def _shop(instance, url=None, keys=20, size=3, window=30):
    init_database(url or instance.database_url)
    site = Site.get_or_none(Site.slug == "main") or Site.create(slug="main")
    product = create_product(site, "拼团卡", PRICE)
    cipher = CardKeyCipher.from_instance(instance)
    import_keys(product.skus[0], [f"G-{i:03d}" for i in range(keys)], cipher)
    offer = groups.create_offer(site.id, product.skus[0].id, group_size=size, group_price_fen=GROUP_PRICE,
                                window_minutes=window)
    return SimpleNamespace(site=site.id, product=product, sku=product.skus[0].id, offer=offer, cipher=cipher)


@pytest.fixture
def shop(host):
    yield _shop(host.instance)


@pytest.fixture
def db_shop(db_instance):
    yield _shop(db_instance, db_instance.database_url, size=2)
    release_connections()


def _order(shop, mode, ident, i, member_id=None):
    """One member's order as the storefront makes it: group price, delivery held, place taken in the order."""
    note = {"mode": mode, "offer_id": shop.offer.id if mode == "start" else None,
            "group_id": ident if mode == "join" else None}
    return orders.create_order(site_id=shop.site, sku_id=shop.sku, quantity=1, contact=f"m{i}@example.com",
                               unit_price_fen=GROUP_PRICE, hold=groups.HOLD, channel=CHANNEL, member_id=member_id,
                               reserving=lambda order: groups.reserve_place(order, note))


def _pay(order):
    return orders.mark_paid(order.order_no, channel=CHANNEL, trade_no=f"T-{order.order_no}",
                            amount_fen=order.amount_fen)


def _start(shop, i=0, member_id=None):
    order = _order(shop, "start", None, i, member_id)
    return groups.group_of_order(order.id).group_id, order


def _status(order):
    with all_sites():
        return orders.Order.get_by_id(order.id).status


def _group(group_id):
    with all_sites():
        return Group.get_by_id(group_id)


def _keys(shop, order):
    with all_sites():
        return orders.delivered_keys(orders.Order.get_by_id(order.id), shop.cipher)


def _refund_rows(order):
    return refunds.Refund.select().where(refunds.Refund.order == order.id).count()


def _stock(shop):
    return Sku.get_by_id(shop.sku).stock


def _later(group_id, minutes=1):
    return _group(group_id).closes_at + datetime.timedelta(minutes=minutes)


def _threads(*fns):
    gate = threading.Event()

    def run(fn):
        gate.wait()
        try:
            return fn()
        finally:
            database.close()

    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(run, fn) for fn in fns]
        gate.set()
        return [f.result() for f in futures]


# -- filling ------------------------------------------------------------------------------


def test_a_filled_group_delivers_every_member_exactly_once_and_only_after_it_fills(shop):
    group_id, leader = _start(shop)
    joiners = [_order(shop, "join", group_id, i) for i in (1, 2)]
    members_ = [leader] + joiners
    assert _stock(shop) == 17  # stock reserved at join

    for order in members_[:2]:
        result = _pay(order)
        assert result.status == "paid"
        groups.settle_order(order)
    assert _group(group_id).status == "open"
    assert [_status(o) for o in members_[:2]] == ["paid", "paid"]
    assert _keys(shop, leader) == []  # paid, but no key before the group fills

    _pay(joiners[1])
    assert groups.settle_order(joiners[1]) is True  # the last payment fills it
    group = _group(group_id)
    assert group.status == "filled" and group.filled_at is not None
    assert [_status(o) for o in members_] == ["delivered"] * 3
    delivered = [k for o in members_ for k in _keys(shop, o)]
    assert len(delivered) == 3 and len(set(delivered)) == 3

    # Again, and from the sweep: nothing more is delivered, nothing refunded.
    assert groups.complete_group(group_id) is False
    assert groups.sweep(now=_later(group_id)) == {"filled": 0, "failed": 0, "settled": 0}
    with all_sites():
        assert CardKey.select().where(CardKey.status == "sold").count() == 3
        assert orders.Order.select().where(orders.Order.hold != "").count() == 0
    assert sum(_refund_rows(o) for o in members_) == 0
    assert Sku.get_by_id(shop.sku).sold == 3
    assert ledger.check() == []


def test_a_group_is_never_over_joined_and_an_expired_place_is_freed(shop):
    group_id, leader = _start(shop)
    a = _order(shop, "join", group_id, 1)
    _order(shop, "join", group_id, 2)
    with pytest.raises(CheckoutRefused, match="This group is full"):
        _order(shop, "join", group_id, 3)
    assert _stock(shop) == 17  # the refused order took nothing
    with all_sites():
        assert GroupMember.select().where(GroupMember.group == group_id).count() == 3

    # An unpaid member whose order expires frees the place.
    with all_sites():
        orders.Order.update(expires_at=datetime.datetime(2000, 1, 1)).where(orders.Order.id == a.id).execute()
    assert orders.expire_due() == 1
    assert groups.places_taken(group_id) == 2
    late = _order(shop, "join", group_id, 4)
    assert groups.group_of_order(late.id).group_id == group_id


def test_a_late_payment_of_an_expired_place_is_refunded_once_the_group_fills_without_it(shop):
    group_id, leader = _start(shop)
    gone = _order(shop, "join", group_id, 1)
    with all_sites():
        orders.Order.update(expires_at=datetime.datetime(2000, 1, 1)).where(orders.Order.id == gone.id).execute()
    orders.expire_due()
    others = [_order(shop, "join", group_id, i) for i in (2, 3)]
    for order in [leader] + others:
        _pay(order)
        groups.settle_order(order)
    assert _group(group_id).status == "filled"

    assert _pay(gone).status == "paid"  # paid after its expiry: it re-reserved stock, but has no seat
    groups.settle_order(gone)
    assert _status(gone) == "refunded" and _refund_rows(gone) == 1
    assert [_status(o) for o in [leader] + others] == ["delivered"] * 3
    assert _stock(shop) == 17  # the extra reservation went back
    assert ledger.check() == []


# -- failing ------------------------------------------------------------------------------


def test_an_unfilled_group_refunds_every_paid_member_once_and_returns_the_stock(shop):
    buyer = members.register(shop.site, "leader@example.com", "secret-pass-1")
    group_id, leader = _start(shop, member_id=buyer.id)
    paid_guest = _order(shop, "join", group_id, 1)
    unpaid = _order(shop, "join", group_id, 2)
    for order in (leader, paid_guest):
        _pay(order)
        groups.settle_order(order)
    assert _stock(shop) == 17

    later = _later(group_id)
    assert groups.fail_group(group_id, now=_group(group_id).closes_at - datetime.timedelta(seconds=1)) is False
    first = groups.sweep(now=later)
    second = groups.sweep(now=later)
    assert (first["failed"], second["failed"]) == (1, 0)
    assert _group(group_id).status == "failed"
    assert [_status(o) for o in (leader, paid_guest, unpaid)] == ["refunded", "refunded", "created"]
    assert [_refund_rows(o) for o in (leader, paid_guest, unpaid)] == [1, 1, 0]
    with all_sites():
        by_order = {r.order_id: r for r in refunds.Refund.select()}
    # No gateway can refund (no registry): the member's money goes to their balance, the guest's by hand.
    assert by_order[leader.id].destination == "balance" and by_order[leader.id].status == "done"
    assert by_order[paid_guest.id].destination == "manual"
    assert ledger.balance(ledger.account("member_wallet", site=shop.site, member=buyer.id)) == GROUP_PRICE
    assert _stock(shop) == 19  # the two refunded reservations came back; the unpaid one still holds
    assert _keys(shop, leader) == []
    orders.expire_due(now=later + datetime.timedelta(hours=1))
    assert _stock(shop) == 20
    with all_sites():
        assert CardKey.select().where(CardKey.status != "available").count() == 0
    assert ledger.check() == []


def test_a_payment_after_the_group_failed_is_refunded(shop):
    group_id, leader = _start(shop)
    straggler = _order(shop, "join", group_id, 1)
    _pay(leader)
    assert groups.sweep(now=_later(group_id))["failed"] == 1
    _pay(straggler)  # still within its own order's time
    groups.settle_order(straggler)
    assert _status(straggler) == "refunded" and _refund_rows(straggler) == 1
    assert groups.sweep(now=_later(group_id)) == {"filled": 0, "failed": 0, "settled": 0}
    assert ledger.check() == []


def test_fail_group_run_from_two_threads_refunds_each_member_once(db_instance):
    shop = _shop(db_instance, db_instance.database_url, size=5)
    try:
        group_id, leader = _start(shop)
        joiners = [_order(shop, "join", group_id, i) for i in (1, 2, 3)]
        for order in [leader] + joiners:
            _pay(order)
        later = _later(group_id)

        results = _threads(lambda: groups.fail_group(group_id, now=later),
                           lambda: groups.fail_group(group_id, now=later),
                           lambda: groups.sweep(now=later), lambda: groups.sweep(now=later))
        assert sum(results[:2]) + sum(r["failed"] for r in results[2:]) == 1  # failed once, by one of them
        assert [_status(o) for o in [leader] + joiners] == ["refunded"] * 4
        with all_sites():
            assert refunds.Refund.select().count() == 4
            assert orders.Payment.select().where(orders.Payment.state == "refunded").count() == 4
        assert _stock(shop) == 20
        assert ledger.check() == []
    finally:
        release_connections()


def test_concurrent_joiners_never_over_fill_a_group(db_instance):
    shop = _shop(db_instance, db_instance.database_url, size=3)
    try:
        group_id, leader = _start(shop)

        def join(i):
            def run():
                try:
                    return _order(shop, "join", group_id, i).order_no
                except CheckoutRefused as exc:
                    return str(exc)
            return run

        results = _threads(*[join(i) for i in range(1, 9)])
        joined = [r for r in results if r.startswith("K")]
        assert len(joined) == 2 and results.count("This group is full") == 6
        assert groups.places_taken(group_id) == 3
        assert _stock(shop) == 17  # only the members' units are reserved
    finally:
        release_connections()


def test_the_sweep_finishes_what_a_crash_left_undone(shop, monkeypatch):
    group_id, leader = _start(shop)
    joiners = [_order(shop, "join", group_id, i) for i in (1, 2)]
    for order in [leader] + joiners:
        _pay(order)
    # The process dies right after the group was marked filled: nobody delivered yet.
    monkeypatch.setattr(groups, "settle_members", lambda *a, **k: None)
    assert groups.complete_group(group_id) is True
    monkeypatch.undo()
    assert [_status(o) for o in [leader] + joiners] == ["paid"] * 3
    assert groups.sweep()["settled"] == 1
    assert [_status(o) for o in [leader] + joiners] == ["delivered"] * 3
    assert groups.sweep()["settled"] == 0


# -- the checkout hooks ---------------------------------------------------------------------


def _checkout(shop, value, quantity=1, member_id=None):
    product = SimpleNamespace(id=shop.product.id)
    return Checkout(site_id=shop.site, site=SimpleNamespace(settings={}), product=product, sku_id=shop.sku,
                    quantity=quantity, list_unit_fen=PRICE, inputs={"groupbuy": value}, member_id=member_id)


def test_the_price_pipeline_offers_the_group_price_and_holds_delivery(shop):
    checkout = _checkout(shop, f"start:{shop.offer.id}")
    for stage in ("quantity", "member", "promotion", "coupon"):
        adjust_price(checkout, stage)
    assert checkout.unit_price_fen == GROUP_PRICE and checkout.hold_delivery == "groupbuy"
    assert checkout.lines[0].label == "Group price"
    validate_checkout(checkout)

    plain = _checkout(shop, "")
    adjust_price(plain, "promotion")
    assert plain.unit_price_fen == PRICE and plain.hold_delivery == ""

    for value, message in (("join:999999", "does not exist"), ("bogus", "Invalid group-buy link")):
        refused = _checkout(shop, value)
        adjust_price(refused, "promotion")
        assert refused.unit_price_fen == PRICE
        with pytest.raises(CheckoutRefused, match=message):
            validate_checkout(refused)
    with pytest.raises(CheckoutRefused, match="limited to 1 unit"):
        two = _checkout(shop, f"start:{shop.offer.id}", quantity=2)
        adjust_price(two, "promotion")
        validate_checkout(two)


def test_joining_is_refused_when_full_closed_or_the_offer_is_off(shop):
    group_id, leader = _start(shop)
    for i in (1, 2):
        _order(shop, "join", group_id, i)
    full = _checkout(shop, f"join:{group_id}")
    adjust_price(full, "promotion")
    with pytest.raises(CheckoutRefused, match="This group is full"):
        validate_checkout(full)
    groups.set_offer_active(shop.site, shop.offer.id, False)
    with pytest.raises(CheckoutRefused, match="has not started or has ended"):
        validate_checkout(_checkout(shop, f"start:{shop.offer.id}"))


# -- completion racing expiry, on every database --------------------------------------------


@pytest.mark.parametrize("paid_in_time", [True, False])
def test_completion_racing_the_expiry_sweep_has_exactly_one_outcome(db_shop, paid_in_time):
    """The last member's payment (and the group's completion) races the sweep failing the group at its close."""
    shop = db_shop
    outcomes = []
    for round_ in range(3):
        buyer = members.register(shop.site, f"race{int(paid_in_time)}-{round_}@example.com", "secret-pass-1")
        group_id, leader = _start(shop, i=10 * round_, member_id=buyer.id)
        last = _order(shop, "join", group_id, 10 * round_ + 1)
        _pay(leader)
        if not paid_in_time:  # the window closed before the last payment arrives (the leader paid in time)
            closes_at = _group(group_id).closes_at
            with all_sites():
                Group.update(closes_at=closes_at - datetime.timedelta(hours=1)).where(Group.id == group_id).execute()
                orders.Order.update(paid_at=closes_at - datetime.timedelta(hours=2)).where(
                    orders.Order.id == leader.id).execute()
        at_close = _group(group_id).closes_at + datetime.timedelta(seconds=1)
        stock_before = _stock(shop)

        def last_payment():
            _pay(last)
            return groups.settle_order(last)

        _threads(last_payment, lambda: groups.sweep(now=at_close), lambda: groups.fail_group(group_id, now=at_close),
                 lambda: groups.complete_group(group_id))
        groups.sweep(now=at_close)  # and once more after the dust settles

        group = _group(group_id)
        statuses = [_status(o) for o in (leader, last)]
        refunded = _refund_rows(leader) + _refund_rows(last)
        if group.status == "filled":
            assert statuses == ["delivered", "delivered"] and refunded == 0
            assert len({k for o in (leader, last) for k in _keys(shop, o)}) == 2
            assert _stock(shop) == stock_before
        else:
            assert group.status == "failed"
            assert statuses == ["refunded", "refunded"]
            assert (_refund_rows(leader), _refund_rows(last)) == (1, 1)
            assert _keys(shop, leader) == _keys(shop, last) == []
            assert _stock(shop) == stock_before + 2  # both reservations back, once
        if not paid_in_time:
            assert group.status == "failed"  # paid after the window: never filled, whoever ran first
        assert ledger.check() == []
        outcomes.append(group.status)
    with all_sites():
        assert CardKey.select().where(CardKey.status == "reserved").count() == 0
        assert CardKey.select().where(CardKey.status == "sold").count() == 2 * outcomes.count("filled")


def test_the_job_runs_the_sweep(shop):
    from huey import MemoryHuey

    import kamengsite_groupbuy

    group_id, leader = _start(shop)
    _pay(leader)
    with all_sites():
        Group.update(closes_at=datetime.datetime(2000, 1, 1)).where(Group.id == group_id).execute()
    huey = MemoryHuey(immediate=True)
    kamengsite_groupbuy.register_jobs(huey, None)
    (task,) = [t for t in huey._registry._periodic_tasks if t.__name__ == "groupbuy_sweep"]
    assert huey.execute(task()) == {"filled": 0, "failed": 1, "settled": 0}
    assert _status(leader) == "refunded"
    assert huey.execute(task()) == {"filled": 0, "failed": 0, "settled": 0}


def test_settings_default_and_cap_the_groups_a_member_leads(shop):
    import kamengsite_groupbuy

    defaults = kamengsite_groupbuy.settings(SimpleNamespace(settings={}))
    assert defaults == {"default_window_minutes": 1440, "max_open_groups_per_member": 3}
    site = SimpleNamespace(settings={"groupbuy": {"max_open_groups_per_member": 1}})
    assert kamengsite_groupbuy.settings(site)["max_open_groups_per_member"] == 1
    buyer = members.register(shop.site, "lead@example.com", "secret-pass-1")
    _start(shop, member_id=buyer.id)
    second = _checkout(shop, f"start:{shop.offer.id}", member_id=buyer.id)
    second.site = site
    adjust_price(second, "promotion")
    with pytest.raises(CheckoutRefused, match="at most 1 open group at once"):
        validate_checkout(second)
    second.site = SimpleNamespace(settings={})
    validate_checkout(second)  # the default allows 3


def test_a_group_left_by_every_unpaid_member_is_not_listed_nor_counted_against_its_leader(shop):
    buyer = members.register(shop.site, "gone@example.com", "secret-pass-1")
    group_id, leader = _start(shop, member_id=buyer.id)
    assert [g.id for g, left in groups.open_groups(shop.site, [shop.offer.id])] == [group_id]
    with all_sites():
        orders.Order.update(expires_at=datetime.datetime(2000, 1, 1)).where(orders.Order.id == leader.id).execute()
    orders.expire_due()
    assert groups.open_groups(shop.site, [shop.offer.id]) == []
    site = SimpleNamespace(settings={"groupbuy": {"max_open_groups_per_member": 1}})
    again = _checkout(shop, f"start:{shop.offer.id}", member_id=buyer.id)
    again.site = site
    adjust_price(again, "promotion")
    validate_checkout(again)  # the abandoned group does not count
    assert groups.sweep(now=_later(group_id))["failed"] == 1  # and it fails at its close, refunding nobody
    with all_sites():
        assert refunds.Refund.select().count() == 0


class RefundingChannel(Channel):
    id = "epay"
    supports_refund = True
    settings_schema = {"type": "object"}

    def __init__(self):
        self.calls = []

    def refund(self, profile, request):
        self.calls.append(request)
        return RefundResult(True, gateway_refund_no=f"G-{len(self.calls)}")


def test_a_failed_group_refunds_through_the_channel_that_can_and_asks_it_once(shop):
    channel = RefundingChannel()
    registry = PaymentRegistry([channel], {"epay": {"main": {}}})
    buyer = members.register(shop.site, "chan@example.com", "secret-pass-1")
    note = {"mode": "start", "offer_id": shop.offer.id, "group_id": None}
    order = orders.create_order(site_id=shop.site, sku_id=shop.sku, quantity=1, contact="c@example.com",
                                unit_price_fen=GROUP_PRICE, hold=groups.HOLD, channel="epay", channel_profile="main",
                                member_id=buyer.id, reserving=lambda o: groups.reserve_place(o, note))
    orders.mark_paid(order.order_no, channel="epay", trade_no="E-1", amount_fen=order.amount_fen,
                     channel_profile="main")
    group_id = groups.group_of_order(order.id).group_id
    later = _later(group_id)
    groups.sweep(now=later, registry=registry)
    groups.sweep(now=later, registry=registry)
    groups.settle_members(group_id, registry)
    with all_sites():
        (refund,) = refunds.Refund.select()
    assert (refund.destination, refund.status, refund.gateway_refund_no) == ("channel", "done", "G-1")
    assert len(channel.calls) == 1 and channel.calls[0].amount_fen == GROUP_PRICE  # the gateway asked once
    assert ledger.balance(ledger.account("member_wallet", site=shop.site, member=buyer.id)) == 0  # not the balance
    assert _status(order) == "refunded" and _stock(shop) == 20
    assert ledger.check() == []
