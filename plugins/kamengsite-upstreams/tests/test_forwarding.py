"""Forwarding paid orders upstream: delivery, retries with backoff, uncertain attempts, fallback, refund once."""

from __future__ import annotations

import datetime
import threading
import time

import pytest

from kamengsite import ledger, members, orders, refunds
from kamengsite.alerts import Notice
from kamengsite.catalog import Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site, utcnow
from kamengsite.orders import Order
from kamengsite.tenancy import all_sites
from kamengsite.testing import at_once, csrf_token
from kamengsite_upstreams import forwarding
from kamengsite_upstreams.connectors import Connector, UpstreamError, UpstreamOrder
from kamengsite_upstreams.models import Upstream, UpstreamForward, UpstreamLink

PASSWORD = "correct horse 1"


class Script:
    """What a scripted upstream answers, call by call, and what it was asked."""

    def __init__(self, *actions, delay: float = 0.0):
        self.actions = list(actions)
        self.calls: list[tuple] = []
        self.taken: dict[str, UpstreamOrder] = {}  # idempotency key → the order the upstream holds
        self.delay = delay
        self.lock = threading.Lock()

    def places(self) -> int:
        return sum(1 for call in self.calls if call[0] == "place")


SCRIPTS: dict[str, Script] = {}


class ScriptedConnector(Connector):
    protocol = "scripted"
    label = "Scripted upstream (tests)"
    settings_schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    idempotent = False

    def __init__(self, settings, *, allow_loopback=False):
        super().__init__(settings, allow_loopback=allow_loopback)
        self.script = SCRIPTS[self.settings["name"]]

    def products(self):
        return []

    def place_order(self, ref, quantity, idempotency_key, fields=None):
        script = self.script
        with script.lock:
            script.calls.append(("place", ref, idempotency_key))
            action = script.actions.pop(0) if script.actions else "deliver"
        time.sleep(script.delay)
        goods = [f"{ref}-{idempotency_key[-6:]}-{i}" for i in range(quantity)]
        if action == "timeout":
            raise UpstreamError("read timed out", retryable=True)
        if action == "took-then-timeout":  # the upstream bought it, its answer was lost
            script.taken[idempotency_key] = UpstreamOrder("delivered", goods, f"UP-{idempotency_key}")
            raise UpstreamError("read timed out", retryable=True)
        if action == "refuse":
            return UpstreamOrder("failed", message="sold out upstream")
        if action == "duplicate":  # acg-faka refuses a request number it has seen
            raise UpstreamError("request_no already used", already_placed=True)
        if action == "pending":
            script.taken[idempotency_key] = UpstreamOrder("pending", [], f"UP-{idempotency_key}")
            return script.taken[idempotency_key]
        script.taken[idempotency_key] = UpstreamOrder("delivered", goods, f"UP-{idempotency_key}")
        return script.taken[idempotency_key]

    def query_order(self, idempotency_key, upstream_order_no=""):
        self.script.calls.append(("query", idempotency_key))
        return self.script.taken.get(idempotency_key)


class ScriptedConnectors:
    @hookimpl
    def upstream_connectors(self, instance):
        return [ScriptedConnector]


@pytest.fixture
def docked(host, monkeypatch):
    """The main site sells a card an upstream supplies (stock 10, 15.00), linked to scripted upstreams."""
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    SCRIPTS.clear()
    host.plugins.register(ScriptedConnectors(), name="scripted-connectors")
    main = Site.get(Site.slug == host.instance.main_site)
    product = create_product(main.id, "Upstream game card", 1500, supplier="upstreams")
    sku = Sku.get(Sku.product == product.id)
    Sku.update(stock=10).where(Sku.id == sku.id).execute()
    primary = Upstream.create(name="primary", protocol="scripted", settings='{"name": "primary"}')
    link = UpstreamLink.create(sku=sku.id, product=product.id, upstream=primary.id, ref="P-1", rule="margin",
                               rule_value=300, cost_fen=1200, upstream_stock=10)
    return type("Docked", (), {"host": host, "instance": host.instance, "main": main, "product": product,
                               "sku": sku, "primary": primary, "link": link})


def _fallback(docked, script: Script):
    SCRIPTS["fallback"] = script
    fallback = Upstream.create(name="fallback", protocol="scripted", settings='{"name": "fallback"}')
    UpstreamLink.update(fallback_upstream=fallback.id, fallback_ref="F-9").where(
        UpstreamLink.id == docked.link.id).execute()
    return fallback


def _member(docked, credit_fen=0):
    member = members.register(docked.main.id, "reseller@example.com", PASSWORD)
    if credit_fen:
        members.credit_wallet(docked.main.id, member.id, credit_fen, "test-topup")
    return member


def _paid_order(docked, member=None, quantity=1):
    order = orders.create_order(site_id=docked.main.id, sku_id=docked.sku.id, quantity=quantity,
                                contact="buyer@example.com", channel="demo",
                                member_id=member.id if member else None)
    orders.mark_paid(order.order_no, channel="demo", trade_no=f"DEMO-{order.order_no}", amount_fen=order.amount_fen)
    return order


def _order(order) -> Order:
    with all_sites():
        return orders.find_order(order.order_no)


def _forward(order) -> UpstreamForward:
    return UpstreamForward.get(UpstreamForward.order == order.id)


def _later(minutes: float) -> datetime.datetime:
    return utcnow() + datetime.timedelta(minutes=minutes)


def test_a_storefront_purchase_is_forwarded_and_delivered_at_once(docked, client_for):
    SCRIPTS["primary"] = Script("deliver")
    client = client_for("main.localhost")
    page = client.get(f"/p/{docked.product.id}")
    placed = client.post(f"/p/{docked.product.id}", data={
        "csrf_token": csrf_token(page), "sku": docked.sku.id, "quantity": 1, "contact": "buyer@example.com",
        "query_password": "pass1234"})
    assert placed.status_code == 302, placed.get_data(as_text=True)
    order_no = placed.headers["Location"].rsplit("/", 1)[1]
    pay_page = client.get(f"/order/{order_no}")
    paid = client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(pay_page)})
    assert paid.status_code == 302
    with all_sites():
        order = orders.find_order(order_no)
    assert order.status == "delivered"
    assert SCRIPTS["primary"].calls == [("place", "P-1", order_no)]
    keys = orders.delivered_keys(order, CardKeyCipher.from_instance(docked.instance))
    assert keys == [f"P-1-{order_no[-6:]}-0"]
    assert keys[0] in client.get(f"/order/{order_no}").get_data(as_text=True)
    assert _forward(order).state == "delivered" and _forward(order).upstream_order_no == f"UP-{order_no}"


def test_the_sweep_forwards_a_paid_order_the_hook_missed(docked):
    SCRIPTS["primary"] = Script("deliver")
    order = _paid_order(docked)  # paid outside a request: no hook ran
    assert UpstreamForward.get_or_none(UpstreamForward.order == order.id) is None
    assert forwarding.sweep(docked.instance) == {"delivered": 1}
    assert _order(order).status == "delivered"
    assert forwarding.sweep(docked.instance, now=_later(60)) == {}  # nothing left to do, nothing bought twice
    assert SCRIPTS["primary"].places() == 1


def test_transport_failures_back_off_then_deliver(docked):
    SCRIPTS["primary"] = Script("timeout", "timeout", "deliver")
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"retry": 1}
    forward = _forward(order)
    assert forward.state == "pending" and forward.attempts == 1 and "timed out" in forward.last_error
    assert forwarding.sweep(docked.instance) == {}, "not due before its backoff"
    assert forwarding.sweep(docked.instance, now=_later(1)) == {"retry": 1}
    assert _forward(order).next_at > _later(1), "the second wait is longer"
    assert forwarding.sweep(docked.instance, now=_later(5)) == {"delivered": 1}
    assert _order(order).status == "delivered"
    # Each retry first asked whether the lost attempt went through (the protocol is not idempotent).
    assert [c[0] for c in SCRIPTS["primary"].calls] == ["place", "query", "place", "query", "place"]


def test_an_attempt_whose_answer_was_lost_is_not_bought_twice(docked):
    SCRIPTS["primary"] = Script("took-then-timeout")
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"retry": 1}
    assert forwarding.sweep(docked.instance, now=_later(1)) == {"delivered": 1}
    assert SCRIPTS["primary"].places() == 1
    assert _order(order).status == "delivered"


def test_an_accepted_order_is_polled_until_the_upstream_delivers(docked):
    SCRIPTS["primary"] = Script("pending")
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"sent": 1}
    assert _forward(order).state == "sent" and _order(order).status == "paid"
    assert forwarding.sweep(docked.instance, now=_later(1)) == {"sent": 1}  # still pending upstream
    SCRIPTS["primary"].taken[order.order_no] = UpstreamOrder("delivered", ["LATE-KEY"], "UP-1")
    assert forwarding.sweep(docked.instance, now=_later(5)) == {"delivered": 1}
    assert SCRIPTS["primary"].places() == 1
    assert orders.delivered_keys(_order(order), CardKeyCipher.from_instance(docked.instance)) == ["LATE-KEY"]


def test_an_upstream_that_already_has_the_order_is_asked_not_refunded(docked):
    SCRIPTS["primary"] = Script("timeout", "duplicate")
    _fallback(docked, Script("deliver"))
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"retry": 1}
    assert forwarding.sweep(docked.instance, now=_later(1)) == {"sent": 1}
    assert _forward(order).state == "sent" and _forward(order).upstream_id == docked.primary.id
    assert SCRIPTS["fallback"].calls == [], "never bought a second time elsewhere"
    assert refunds.Refund.select().count() == 0 and _order(order).status == "paid"
    with all_sites():
        assert Notice.select().where(Notice.kind == "upstream_stuck").count() == 1


def test_an_accepted_order_is_never_refunded_for_silence(docked):
    SCRIPTS["primary"] = Script("pending")
    order = _paid_order(docked)
    forwarding.sweep(docked.instance)

    def broken_query(self, key, upstream_order_no=""):
        raise UpstreamError("connection refused", retryable=True)

    ScriptedConnector.query_order, original = broken_query, ScriptedConnector.query_order
    try:
        for minutes in range(1, 200, 20):
            forwarding.sweep(docked.instance, now=_later(minutes))
    finally:
        ScriptedConnector.query_order = original
    assert _forward(order).state == "sent" and _order(order).status == "paid"
    assert refunds.Refund.select().count() == 0


def test_a_refusal_moves_to_the_fallback_supplier(docked):
    SCRIPTS["primary"] = Script("refuse")
    fallback = _fallback(docked, Script("deliver"))
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"fallback": 1}
    assert _forward(order).upstream_id == fallback.id
    assert forwarding.sweep(docked.instance) == {"delivered": 1}
    assert SCRIPTS["fallback"].calls[-1] == ("place", "F-9", order.order_no)
    assert _order(order).status == "delivered"


def test_a_link_the_sync_moved_to_its_fallback_buys_there_first(docked):
    SCRIPTS["primary"] = Script()
    fallback = _fallback(docked, Script("deliver"))
    UpstreamLink.update(via_fallback=True).where(UpstreamLink.id == docked.link.id).execute()
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {"delivered": 1}
    assert SCRIPTS["primary"].calls == [] and _forward(order).upstream_id == fallback.id


def test_final_failure_refunds_the_buyer_exactly_once_and_tells_the_operator(docked):
    SCRIPTS["primary"] = Script("refuse")
    _fallback(docked, Script("refuse"))
    member = _member(docked, credit_fen=5000)
    order = _paid_order(docked, member)
    wallet_before = members.wallet_balance(docked.main.id, member.id)
    assert forwarding.sweep(docked.instance) == {"fallback": 1}
    assert forwarding.sweep(docked.instance) == {"refunded": 1}
    for minutes in (1, 10, 100):  # later sweeps and a replayed job change nothing
        assert forwarding.sweep(docked.instance, now=_later(minutes)) == {}
    assert forwarding.process(_forward(order).id, docked.instance, now=_later(200)) == "skipped"
    refund = refunds.Refund.get(refunds.Refund.order == order.id)
    assert refunds.Refund.select().count() == 1 and refund.destination == "balance"
    assert refund.amount_fen == order.amount_fen == 1500
    assert members.wallet_balance(docked.main.id, member.id) == wallet_before + 1500
    assert _order(order).status == "refunded" and _forward(order).state == "refunded"
    assert ledger.check() == []
    with all_sites():
        notice = Notice.get(Notice.kind == "upstream_failed")
    assert order.order_no in notice.title and notice.site_id == docked.main.id


def test_out_of_attempts_refunds_once(docked):
    SCRIPTS["primary"] = Script(*["timeout"] * forwarding.MAX_ATTEMPTS)
    order = _paid_order(docked)
    outcomes = [forwarding.sweep(docked.instance, now=_later(60 * n)) for n in range(forwarding.MAX_ATTEMPTS + 2)]
    assert outcomes.count({"refunded": 1}) == 1
    assert SCRIPTS["primary"].places() == forwarding.MAX_ATTEMPTS
    assert refunds.Refund.select().where(refunds.Refund.order == order.id).count() == 1


def test_an_order_refunded_by_hand_meanwhile_is_not_bought(docked):
    SCRIPTS["primary"] = Script("deliver")
    order = _paid_order(docked)
    forwarding.ensure_forward(order.id)
    refunds.refund_order(order.order_no, reason="buyer changed their mind", to="manual")
    assert forwarding.sweep(docked.instance) == {"refunded": 1}
    assert SCRIPTS["primary"].calls == []


def test_goods_that_do_not_fit_the_order_count_as_a_refusal(docked):
    SCRIPTS["primary"] = Script("deliver")
    order = _paid_order(docked, quantity=2)

    def one_key_only(self, ref, quantity, key, fields=None):
        return UpstreamOrder("delivered", ["ONLY-ONE"], "UP-X")

    ScriptedConnector.place_order, original = one_key_only, ScriptedConnector.place_order
    try:
        assert forwarding.sweep(docked.instance) == {"refunded": 1}
    finally:
        ScriptedConnector.place_order = original
    assert _order(order).status == "refunded"


def test_an_order_of_an_unlinked_sku_stays_paid_and_the_operator_is_told(docked):
    UpstreamLink.delete().execute()
    order = _paid_order(docked)
    assert forwarding.sweep(docked.instance) == {}
    assert forwarding.sweep(docked.instance, now=_later(1)) == {}
    assert _order(order).status == "paid"
    with all_sites():
        notices = list(Notice.select().where(Notice.kind == "upstream_unlinked"))
    assert len(notices) == 1, "told once, not every minute"
    assert order.order_no in notices[0].title and "上游" in notices[0].title, "in the operator's language (zh_CN)"


@pytest.mark.databases
def test_concurrent_workers_buy_one_order_once(db_host, monkeypatch):
    """Four workers sweep at once, on every database: one upstream purchase, one delivery."""
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    SCRIPTS.clear()
    SCRIPTS["primary"] = Script("deliver", delay=0.2)
    db_host.plugins.register(ScriptedConnectors(), name="scripted-connectors")
    main = Site.get(Site.slug == db_host.instance.main_site)
    product = create_product(main.id, "Upstream card", 900, supplier="upstreams")
    sku = Sku.get(Sku.product == product.id)
    Sku.update(stock=5).where(Sku.id == sku.id).execute()
    upstream = Upstream.create(name="primary", protocol="scripted", settings='{"name": "primary"}')
    UpstreamLink.create(sku=sku.id, product=product.id, upstream=upstream.id, ref="P-1", cost_fen=800)
    docked = type("D", (), {"main": main, "sku": sku})
    order = _paid_order(docked)
    forwarding.ensure_forward(order.id)
    claiming, claim = threading.Barrier(4, timeout=10), forwarding._claim

    def claim_together(seen, now):  # every worker has read the row as due before any claims it
        claiming.wait()
        return claim(seen, now)

    monkeypatch.setattr(forwarding, "_claim", claim_together)
    results, errors = at_once(lambda _n: forwarding.sweep(db_host.instance), 4)
    assert errors == []
    assert SCRIPTS["primary"].places() == 1
    assert sum(r.get("delivered", 0) for r in results) == 1
    with all_sites():
        assert orders.find_order(order.order_no).status == "delivered"
    assert Product.get_by_id(product.id).supplier == "upstreams"
