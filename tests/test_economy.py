"""The sub-site economy end to end: price chain, payment split, release, refunds, withdrawals, direct
settlement — with numbers computed by hand, on every backend where it matters."""

from __future__ import annotations

import datetime
import threading

import pytest

from kamengsite import ledger, levels, orders, pricing, refunds, settlement, withdrawals
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, init_database, release_connections
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site, utcnow
from kamengsite.payments import Channel, PaymentRegistry, RefundResult
from kamengsite.tenancy import all_sites

BASE = 10000  # ¥100.00 on the main site


def make_tree(instance, database_url=None, keys=50):
    """main → a (gold) → b (silver) → c (bronze); one card product of BASE fen with ``keys`` keys."""
    init_database(database_url or instance.database_url)
    levels.save_level(code="gold", name="黄金", cost_percent_bp=-1500, max_child_markup_bp=2000,
                      may_open_children=True, freeze_days=1, withdraw_min_fen=500, withdraw_fee_bp=100)
    levels.save_level(code="silver", name="白银", cost_percent_bp=-1000, max_child_markup_bp=1000,
                      may_open_children=True, freeze_days=3, withdraw_min_fen=500)
    levels.save_level(code="bronze", name="青铜", cost_percent_bp=-500, freeze_days=3, withdraw_min_fen=500)
    main = Site.create(slug="main")
    a = Site.create(slug="a", parent=main, level="gold")
    b = Site.create(slug="b", parent=a, level="silver")
    c = Site.create(slug="c", parent=b, level="bronze")
    product = create_product(main, "月卡", BASE, max_qty=10)
    import_keys(product.skus[0], [f"KEY-{i:03d}" for i in range(keys)], CardKeyCipher.from_instance(instance))
    pricing.set_rule(a.id, "children", markup_percent_bp=1000)  # b pays a's cost + 10 %
    pricing.set_rule(b.id, "children", markup_percent_bp=500)  # c pays b's cost + 5 %
    pricing.set_rule(c.id, "all", markup_percent_bp=2000, rounding="nine")
    return {"main": main.id, "a": a.id, "b": b.id, "c": c.id}, product


@pytest.fixture
def tree(instance):
    sites, product = make_tree(instance)
    yield sites, product
    release_connections()


@pytest.fixture
def db_tree(db_instance):
    sites, product = make_tree(db_instance)
    yield sites, product
    release_connections()


def order_on(site_id, product, quantity=1, *, fee=(0, ""), channel="epay", member_id=None, prepaid=False):
    sku = product.skus[0].id
    quote = pricing.quote_sku(site_id, sku)
    return orders.create_order(site_id=site_id, sku_id=sku, quantity=quantity, contact="buyer@example.com",
                               unit_price_fen=quote.unit_price_fen, costs=quote.costs, fee=fee, channel=channel,
                               channel_profile="main", member_id=member_id, prepaid=prepaid)


def pay(order, trade=None):
    return orders.mark_paid(order.order_no, channel=order.channel, trade_no=trade or f"T-{order.order_no}",
                            amount_fen=order.amount_fen, channel_profile="main")


def bal(kind, site=None, channel=""):
    return ledger.balance(ledger.account(kind, site=site, channel=channel))


# -- prices ---------------------------------------------------------------------------


def test_price_chain_hand_computed(tree):
    sites, product = tree
    sku = product.skus[0].id
    assert pricing.quote_sku(sites["main"], sku).unit_price_fen == BASE
    assert pricing.quote_sku(sites["main"], sku).costs == ()
    # a: gold, 15 % off the base: 8500; no markup rule → sells at the base price.
    assert pricing.quote_sku(sites["a"], sku).costs == ((sites["a"], 8500),)
    assert pricing.quote_sku(sites["a"], sku).unit_price_fen == BASE
    # b pays a's 8500 + 10 % = 9350.
    assert pricing.quote_sku(sites["b"], sku).costs == ((sites["b"], 9350), (sites["a"], 8500))
    # c pays b's 9350 + 5 % (467.5 rounded up) = 9818; sells at 9818 + 20 % = 11781.6 → 11782 → "nine": 11790.
    quote = pricing.quote_sku(sites["c"], sku)
    assert quote.costs == ((sites["c"], 9818), (sites["b"], 9350), (sites["a"], 8500))
    assert quote.unit_price_fen == 11790


def test_price_never_below_cost(tree):
    sites, product = tree
    pricing.set_rule(sites["c"], "product", product.id, markup_percent_bp=-5000)
    assert pricing.quote_sku(sites["c"], product.skus[0].id).unit_price_fen == 9818  # the floor: c's cost
    with pytest.raises(orders.InvalidOrder):  # and an order below cost is refused by the order itself
        orders.create_order(site_id=sites["c"], sku_id=product.skus[0].id, quantity=1, contact="x@example.com",
                            unit_price_fen=9000, costs=((sites["c"], 9818),), channel="epay")


def test_child_markup_is_capped_by_the_parents_level(tree):
    sites, product = tree
    pricing.set_rule(sites["b"], "children", markup_percent_bp=5000)  # silver may add at most 10 %
    assert pricing.quote_sku(sites["c"], product.skus[0].id).costs[0] == (sites["c"], 9350 + 935)
    with pytest.raises(pricing.PricingError):
        pricing.set_rule(sites["b"], "children", markup_percent_bp=-100)


def test_tier_price_beats_the_percent_rule(tree):
    sites, product = tree
    levels.set_tier_price(levels.get_level("gold"), product.skus[0].id, 8000)
    assert pricing.quote_sku(sites["a"], product.skus[0].id).costs == ((sites["a"], 8000),)
    assert pricing.quote_sku(sites["b"], product.skus[0].id).costs[0] == (sites["b"], 8800)


def test_rounding_rules():
    assert [pricing.round_up(11781, r) for r in ("none", "jiao", "yuan", "nine")] == [11781, 11790, 11800, 11790]
    assert pricing.round_up(11795, "nine") == 11890
    assert pricing.round_up(11790, "nine") == 11790
    assert pricing.percent_of(9350, 500) == 468  # 467.5 rounds up: markups never lose a fen
    assert pricing.percent_of(10000, -1500) == -1500


# -- the split --------------------------------------------------------------------------


def test_payment_split_hand_computed(db_tree):
    sites, product = db_tree
    order = order_on(sites["c"], product, quantity=2)
    assert order.amount_fen == 23580
    assert pay(order).status == "delivered"
    # c: 23580 - 2×9818 = 3944; b: 2×(9818-9350) = 936; a: 2×(9350-8500) = 1700; platform 2×8500 = 17000
    assert [bal("site_frozen", sites[s]) for s in "cba"] == [3944, 936, 1700]
    assert bal("platform_revenue") == 17000
    assert bal("channel_clearing", channel="epay") == -23580
    assert ledger.check() == []
    pay(order)  # the gateway's retry: nothing more
    assert bal("platform_revenue") == 17000 and ledger.LedgerTxn.select().count() == 1


@pytest.mark.parametrize("bearer, amount, c_margin, fee", [("seller", 23580, 3944 - 142, 142),
                                                           ("buyer", 23580 + 142, 3944, 142)])
def test_channel_fee_is_borne_by_who_the_profile_says(tree, bearer, amount, c_margin, fee):
    sites, product = tree
    goods = 23580
    assert settlement.channel_fee(goods, fee_bp=60) == 142  # 0.6 % of 23580 = 141.48, rounded up
    order = order_on(sites["c"], product, quantity=2, fee=(142, bearer))
    assert order.amount_fen == amount
    pay(order)
    assert bal("site_frozen", sites["c"]) == c_margin
    assert bal("fees", channel="epay") == fee
    assert bal("platform_revenue") == 17000
    assert ledger.check() == []


def test_main_site_order_is_all_platform_revenue_less_fee(tree):
    sites, product = tree
    order = order_on(sites["main"], product, fee=(160, "seller"))
    pay(order)
    assert bal("platform_revenue") == BASE - 160 and bal("fees", channel="epay") == 160


def test_release_after_each_levels_freeze_period(tree):
    sites, product = tree
    pay(order_on(sites["c"], product))  # margins c 1972, b 468, a 850
    now = utcnow()
    assert settlement.release_due(now + datetime.timedelta(hours=1)) == 0
    assert settlement.release_due(now + datetime.timedelta(days=2)) == 1  # gold: 1 day
    assert settlement.site_balances(sites["a"])["site_available"] == 850
    assert settlement.site_balances(sites["c"])["site_frozen"] == 1972
    assert settlement.release_due(now + datetime.timedelta(days=4)) == 2
    assert [bal("site_available", sites[s]) for s in "cba"] == [1972, 468, 850]
    assert settlement.release_due(now + datetime.timedelta(days=9)) == 0  # nothing twice
    assert ledger.check() == []


# -- refunds ----------------------------------------------------------------------------


def test_refund_to_member_balance_reverses_the_split(tree):
    sites, product = tree
    order = order_on(sites["c"], product, member_id=7)
    pay(order)
    refund = refunds.refund_order(order.order_no, reason="不想要了")
    assert (refund.destination, refund.status, refund.amount_fen) == ("balance", "done", 11790)
    assert ledger.balance(ledger.account("member_wallet", site=sites["c"], member=7)) == 11790
    assert [bal("site_frozen", sites[s]) for s in "cba"] == [0, 0, 0]
    assert bal("platform_revenue") == 0 and bal("channel_clearing", channel="epay") == -11790
    assert refunds.refund_order(order.order_no).id == refund.id  # once
    with all_sites():
        assert orders.Order.get_by_id(order.id).status == "refunded"
    assert ledger.check() == []


def test_refund_after_release_comes_out_of_available_or_is_refused(tree):
    sites, product = tree
    order = order_on(sites["c"], product)
    pay(order)
    settlement.release_due(utcnow() + datetime.timedelta(days=5))
    other = ledger.account("site_available", site=sites["c"])
    withdrawals.request_withdrawal(sites["c"], 1500, "alipay: c@example.com")  # c keeps 472 available
    with pytest.raises(refunds.RefundError, match="1500 fen too little"):
        refunds.refund_order(order.order_no)
    assert refunds.Refund.select().count() == 0 and ledger.balance(other) == 472
    refund = refunds.refund_order(order.order_no, to="manual", absorb=True)
    assert refund.status == "pending" and ledger.balance(other) == 0
    assert bal("platform_revenue") == -1500  # the platform carried what c had already taken out
    assert refunds.confirm_manual(refund.refund_no).status == "done"
    assert ledger.check() == []


def test_money_owed_back_is_held_until_refunded(tree):
    sites, product = tree
    order = order_on(sites["c"], product)
    pay(order, trade="T1")
    assert pay(order, trade="T2").refund_due  # paid twice: the second payment is owed back
    assert bal("refund_payable") == 11790
    assert ledger.check() == []


# -- withdrawals --------------------------------------------------------------------------


def test_withdrawal_states_and_fee(tree):
    sites, product = tree
    pay(order_on(sites["b"], product))  # b sells at the base price: margin 10000 - 9350 = 650
    pay(order_on(sites["a"], product))  # a: 10000 - 8500 = 1500 (+ 850 from b's sale)
    settlement.release_due(utcnow() + datetime.timedelta(days=5))
    assert bal("site_available", sites["a"]) == 2350
    with pytest.raises(withdrawals.WithdrawalError, match="minimum withdrawal is ¥5.00"):
        withdrawals.request_withdrawal(sites["a"], 499, "bank")
    with pytest.raises(withdrawals.WithdrawalError, match="Insufficient available balance"):
        withdrawals.request_withdrawal(sites["a"], 2351, "bank")
    w = withdrawals.request_withdrawal(sites["a"], 2000, "bank 6222…")
    assert (bal("site_available", sites["a"]), bal("site_payout", sites["a"]), w.fee_fen) == (350, 2000, 20)
    with pytest.raises(withdrawals.WithdrawalError, match="already in progress"):
        withdrawals.request_withdrawal(sites["a"], 500, "bank")
    with pytest.raises(withdrawals.WithdrawalError, match="cannot become paid"):
        withdrawals.mark_paid(w.id)
    withdrawals.approve(w.id)
    withdrawals.mark_paid(w.id)
    assert bal("site_payout", sites["a"]) == 0 and bal("channel_clearing", channel="payout") == 1980
    assert bal("platform_revenue") == 8500 + 9350 - 850 + 20  # a's cost on both sales + the withdrawal fee
    rejected = withdrawals.request_withdrawal(sites["b"], 650, "bank")
    withdrawals.reject(rejected.id, "收款信息有误")
    assert bal("site_available", sites["b"]) == 650 and bal("site_payout", sites["b"]) == 0
    assert ledger.check() == []


def test_concurrent_withdrawals_never_overdraw(db_tree):
    sites, product = db_tree
    pay(order_on(sites["a"], product))
    settlement.release_due(utcnow() + datetime.timedelta(days=5))  # a: 1500 available
    results, barrier = [], threading.Barrier(4)

    def ask():
        with database.connection_context():
            barrier.wait()
            try:
                results.append(withdrawals.request_withdrawal(sites["a"], 1000, "bank").id)
            except withdrawals.WithdrawalError as exc:
                results.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(isinstance(r, int) for r in results) == 1, results
    assert bal("site_available", sites["a"]) == 500 and ledger.check() == []


# -- direct settlement ----------------------------------------------------------------------


def test_direct_settlement_prepays_the_cost(db_tree):
    sites, product = db_tree
    with pytest.raises(orders.InvalidOrder, match="prepaid balance is too low"):
        order_on(sites["c"], product, prepaid=True)
    with all_sites():
        assert orders.Order.select().count() == 0
    ledger.post("adjustment", "topup-c", [(ledger.account("site_available", site=sites["c"]), 20000),
                                          (ledger.account("channel_clearing", channel="bank"), -20000)])
    order = order_on(sites["c"], product, prepaid=True)
    assert bal("site_available", sites["c"]) == 20000 - 9818 and bal("prepaid_hold", sites["c"]) == 9818
    pay(order)  # paid to c's own merchant account: the hold is split up the chain
    assert bal("prepaid_hold", sites["c"]) == 0
    assert [bal("site_frozen", sites[s]) for s in "cba"] == [0, 468, 850]
    assert bal("platform_revenue") == 8500 and bal("channel_clearing", channel="epay") == 0
    expiring = order_on(sites["c"], product, prepaid=True)
    assert orders.expire_due(now=utcnow() + datetime.timedelta(hours=1)) == 1
    assert bal("site_available", sites["c"]) == 20000 - 9818 and bal("prepaid_hold", sites["c"]) == 0
    late = pay(expiring)  # paid after expiry to c's own account: owed back by c, not delivered
    assert late.status == "refund_pending" and bal("refund_payable") == 0
    assert ledger.check() == []


# -- reconciliation ---------------------------------------------------------------------------


def test_reconciliation_report_per_day_channel_and_site(tree):
    from kamengsite import reconcile

    sites, product = tree
    pay(order_on(sites["c"], product, quantity=2, fee=(142, "seller")))  # the split above, less a 142 fee
    pay(order_on(sites["main"], product))
    member_order = order_on(sites["c"], product, member_id=3)
    pay(member_order)
    refunds.refund_order(member_order.order_no, to="balance")
    today = utcnow().date()
    rows = {(r.channel, r.site): r for r in reconcile.report(today, today)}
    c_row = rows[("epay", "c")]
    # Both c sales came in (23580 + 11790); the refund kept the money on the platform, in the buyer's wallet.
    assert (c_row.orders, c_row.gross, c_row.fees) == (2, 23580 + 11790, 142)
    assert c_row.platform == 17000 and c_row.sites == 3944 + 936 + 1700 - 142 and c_row.wallet == 11790
    assert rows[("epay", "main")].as_dict() == {"day": today.isoformat(), "channel": "epay", "site": "main",
                                                "orders": 1, "gross": BASE, "fees": 0, "platform": BASE,
                                                "sites": 0, "owed": 0, "wallet": 0}
    assert all(r.balanced for r in rows.values())
    total = reconcile.totals(list(rows.values()))
    assert total.gross == 23580 + 11790 + BASE and total.balanced
    assert reconcile.report(today - datetime.timedelta(days=2), today - datetime.timedelta(days=1)) == []


def test_ledger_report_cli(cli):
    assert cli("init").exit_code == 0
    assert cli("db", "upgrade").exit_code == 0
    result = cli("ledger", "report")
    assert result.exit_code == 0 and "no payments or refunds" in result.output
    bad = cli("ledger", "report", "--from", "2026-02-02", "--to", "2026-02-01")
    assert bad.exit_code != 0 and "--to is before --from" in bad.output


# -- a sub-site's own goods ---------------------------------------------------------------------


def test_own_goods_pay_the_level_commission_and_nothing_up_the_chain(tree, instance):
    sites, _ = tree
    levels.save_level(code="gold", name="黄金", cost_percent_bp=-1500, max_child_markup_bp=2000,
                      may_open_children=True, may_list_own_goods=True, own_goods_commission_bp=500)
    with all_sites():
        own = create_product(Site.get_by_id(sites["a"]), "站长自营激活码", 3333)
    import_keys(own.skus[0], ["OWN-1", "OWN-2"], CardKeyCipher.from_instance(instance))
    pricer = pricing.Pricer.for_site(sites["a"])
    assert pricer.sells_own_goods and pricer.visible(own)
    quote = pricer.quote(own, own.skus[0].id, 3333)
    assert quote.unit_price_fen == 3333 and quote.costs == ((sites["a"], 167),)  # 5 % of 33.33, rounded up
    order = orders.create_order(site_id=sites["a"], sku_id=own.skus[0].id, quantity=2, contact="x@example.com",
                                unit_price_fen=quote.unit_price_fen, costs=quote.costs, channel="epay")
    pay(order)
    assert bal("site_frozen", sites["a"]) == 6666 - 334 and bal("platform_revenue") == 334
    assert not pricing.Pricer.for_site(sites["b"]).sells_own_goods  # silver may not list its own goods
    assert ledger.check() == []


def test_storefront_lists_own_goods_only_where_the_level_allows(host, client_for):
    levels.seed_default_levels()  # gold lists its own goods, bronze does not
    host.registry.create("goldshop", template="gaming")
    host.registry.update("goldshop", level="gold")
    host.registry.create("bronzeshop", template="gaming")
    host.registry.update("bronzeshop", level="bronze")
    main = Site.get(Site.slug == "main")
    create_product(main, "主站月卡", 1000)
    gold_own = create_product(Site.get(Site.slug == "goldshop"), "金牌自营", 2500)
    bronze_own = create_product(Site.get(Site.slug == "bronzeshop"), "青铜自营", 2500)
    gold_home = client_for("goldshop.localhost").get("/").get_data(as_text=True)
    assert "金牌自营" in gold_home and "¥25.00" in gold_home and "主站月卡" in gold_home
    assert "金牌自营" not in client_for("main.localhost").get("/").get_data(as_text=True)
    assert client_for("main.localhost").get(f"/p/{gold_own.id}").status_code == 404
    assert client_for("bronzeshop.localhost").get(f"/p/{bronze_own.id}").status_code == 404
    assert client_for("goldshop.localhost").get(f"/p/{bronze_own.id}").status_code == 404  # never another's
    assert client_for("goldshop.localhost").get(f"/p/{gold_own.id}").status_code == 200


# -- refunds through the gateway ------------------------------------------------------------------


class RefundingChannel(Channel):
    id = "epay"
    supports_refund = True
    settings_schema = {"type": "object"}

    def __init__(self):
        self.answers, self.calls = [], []

    def refund(self, profile, request):
        self.calls.append(request)
        return self.answers.pop(0)


def test_refund_through_the_gateway_failed_then_retried(tree):
    sites, product = tree
    channel = RefundingChannel()
    registry = PaymentRegistry([channel], {"epay": {"main": {}}})
    order = order_on(sites["c"], product)
    pay(order)
    channel.answers = [RefundResult(False, message="余额不足"), RefundResult(True, gateway_refund_no="G1", pending=True)]
    refund = refunds.refund_order(order.order_no, registry=registry)
    assert (refund.destination, refund.status, refund.message) == ("channel", "failed", "余额不足")
    assert channel.calls[0].amount_fen == 11790 and channel.calls[0].trade_no == f"T-{order.order_no}"
    # The books already show the money going back out through the channel; the refund row tracks the gateway.
    assert bal("channel_clearing", channel="epay") == 0 and bal("platform_revenue") == 0
    again = refunds.retry(refund.refund_no, registry)
    assert (again.status, again.gateway_refund_no) == ("pending", "G1")  # accepted; the gateway confirms later
    assert channel.calls[1].refund_no == refund.refund_no  # the same number: the gateway dedupes on it
    with pytest.raises(refunds.RefundError):
        refunds.retry(refund.refund_no, registry)  # only failed refunds are retried
    assert refunds.refund_order(order.order_no, registry=registry).id == refund.id and len(channel.calls) == 2
    assert ledger.check() == []


# -- distribution commissions (the order_commissions hook) -------------------------------------------


class TenPercentToReferrer:
    """A stand-in distribution plugin: 10 % of the seller's margin to member 42 of the selling site."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def order_commissions(self, order, margin_fen):
        self.seen.append((order.order_no, margin_fen))
        return [(42, margin_fen // 10)] if margin_fen >= 0 else []


class Greedy:
    @hookimpl
    def order_commissions(self, order, margin_fen):
        return [(42, margin_fen + 1)]


def _demo_shop(host):
    levels.seed_default_levels()
    host.registry.create("shopx", template="gaming")
    host.registry.update("shopx", level="silver")  # silver: 10 % off the base
    pricing.set_rule(Site.get(Site.slug == "shopx").id, "all", markup_percent_bp=2000)
    product = create_product(Site.get(Site.slug == "main"), "佣金测试卡", 10000)
    import_keys(product.skus[0], ["C-1", "C-2"], CardKeyCipher.from_instance(host.instance))
    return product


def _with_core_plugin(host, plugin, name):
    host.plugins.register(plugin, name=name)
    host.plugins.core.add(name)  # on every site
    return plugin


def _buy_and_demo_pay(client, product) -> str:
    """Order one unit through the storefront and pay it on the demo path; the order number."""
    from kamengsite.testing import buy, csrf_token

    order_no = buy(client, product, None).headers["Location"].rsplit("/", 1)[1]
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(client.get(f"/order/{order_no}"))})
    return order_no


def test_commissions_come_out_of_the_sellers_margin_and_back_on_refund(host, client_for):
    product = _demo_shop(host)
    plugin = _with_core_plugin(host, TenPercentToReferrer(), "referrals")
    order_no = _buy_and_demo_pay(client_for("shopx.localhost"), product)
    shop = Site.get(Site.slug == "shopx").id
    # cost 9000, price 10800: margin 1800, of which 180 goes to member 42
    assert plugin.seen == [(order_no, 1800)]
    assert bal("site_frozen", shop) == 1620 and bal("platform_revenue") == 9000
    assert ledger.balance(ledger.account("member_frozen", site=shop, member=42)) == 180
    assert ledger.check() == []
    refunds.refund_order(order_no, to="manual")
    assert ledger.balance(ledger.account("member_frozen", site=shop, member=42)) == 0
    assert bal("site_frozen", shop) == 0 and ledger.check() == []


def test_commissions_beyond_the_margin_fail_the_payment_closed(host, client_for):
    product = _demo_shop(host)
    _with_core_plugin(host, Greedy(), "greedy")
    client = client_for("shopx.localhost")
    order_no = _buy_and_demo_pay(client, product)
    assert "支付未能入账" in client.get(f"/order/{order_no}").get_data(as_text=True)
    with all_sites():
        assert orders.Order.get(orders.Order.order_no == order_no).status == "created"  # nothing was written
        assert orders.Payment.select().count() == 0
    assert ledger.LedgerTxn.select().count() == 0


def test_level_cli_sets_fields_and_tier_prices(cli):
    assert cli("init").exit_code == 0
    made = cli("level", "set", "vip", "--name", "钻石", "--cost-percent", "-20", "--max-child-markup", "12.5",
               "--opening-fee", "1999", "--term-days", "30", "--children", "--own-goods", "--withdraw-fee", "0.5")
    assert made.exit_code == 0 and "created" in made.output
    from kamengsite.instance import Instance

    init_database(Instance.load(cli.instance_path).database_url)
    vip = levels.get_level("vip")
    assert (vip.name, vip.cost_percent_bp, vip.max_child_markup_bp, vip.opening_fee_fen, vip.term_days) == \
        ("钻石", -2000, 1250, 199900, 30)
    assert (vip.may_open_children, vip.may_list_own_goods, vip.may_bind_domain, vip.withdraw_fee_bp) == (True, True, False, 50)
    changed = cli("level", "set", "vip", "--no-own-goods", "--freeze-days", "2")
    assert changed.exit_code == 0 and "changed" in changed.output
    vip = levels.get_level("vip")
    assert (vip.may_list_own_goods, vip.freeze_days, vip.cost_percent_bp) == (False, 2, -2000)  # the rest kept
    assert "give it a --name" in cli("level", "set", "new").output
    assert "--cost-percent" in cli("level", "set", "vip", "--cost-percent", "abc").output
    assert "cost_percent_bp" in cli("level", "set", "vip", "--cost-percent", "-95").output  # beyond -90 %
    product = create_product(Site.get(Site.slug == "main"), "模板价商品", 10000)
    assert cli("level", "price", "vip", str(product.skus[0].id), "77.70").exit_code == 0
    assert levels.LevelPrice.get(levels.LevelPrice.sku == product.skus[0].id).price_fen == 7770
    assert cli("level", "price", "vip", str(product.skus[0].id), "none").exit_code == 0
    assert not levels.LevelPrice.select().exists()
    assert "no SKU" in cli("level", "price", "vip", "999999", "1").output


def test_commissions_on_a_main_site_sale_come_out_of_the_platforms_share(host, client_for):
    product = _demo_shop(host)
    plugin = _with_core_plugin(host, TenPercentToReferrer(), "referrals")
    order_no = _buy_and_demo_pay(client_for("main.localhost"), product)
    main = Site.get(Site.slug == "main").id
    assert plugin.seen == [(order_no, 10000)]
    assert bal("platform_revenue") == 9000
    assert ledger.balance(ledger.account("member_frozen", site=main, member=42)) == 1000
    assert ledger.check() == []


def test_commissions_follow_the_selling_sites_plugins_whatever_domain_records_the_payment(host, client_for):
    from kamengsite.testing import buy

    product = _demo_shop(host)
    plugin = TenPercentToReferrer()
    host.plugins.register(plugin, name="referrals")  # not core: on the sites that list it only
    host.registry.update("shopx", plugins=["referrals"])
    host.registry.create("plain", template="gaming")
    host.registry.update("plain", level="silver")
    orders_by_site = {}
    for slug in ("shopx", "plain"):
        created = buy(client_for(f"{slug}.localhost"), product, None)
        orders_by_site[slug] = created.headers["Location"].rsplit("/", 1)[1]
    # Gateways notify on whatever domain the notify URL named: record both payments inside the main site's app.
    with host.app_for("main").test_request_context("/"):
        for order_no in orders_by_site.values():
            with all_sites():
                order = orders.find_order(order_no)
            orders.mark_paid(order_no, channel=order.channel, trade_no=f"T-{order_no}", amount_fen=order.amount_fen)
    assert [seen[0] for seen in plugin.seen] == [orders_by_site["shopx"]]  # never called for "plain"'s order
    shopx = Site.get(Site.slug == "shopx").id
    assert ledger.balance(ledger.account("member_frozen", site=shopx, member=42)) == 180  # 10 % of its 1800 margin
    assert ledger.check() == []
