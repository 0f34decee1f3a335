"""The sync: repricing rules, stock, price-jump alerts, back-off and recovery, failover, the page cache."""

from __future__ import annotations

import datetime

import pytest

from kamengsite import mail
from kamengsite.alerts import Notice
from kamengsite.catalog import Product, Sku
from kamengsite.db import init_database, release_connections
from kamengsite.testing import at_once
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite_upstreams import map_product, sync
from kamengsite_upstreams.connectors import UpstreamError, UpstreamProduct
from kamengsite_upstreams.models import Upstream, UpstreamLink

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0)


class FakeConnector:
    """Quotes by ref, or a failure; counts its calls."""

    def __init__(self, quotes=None):
        self.quotes = dict(quotes or {})
        self.error = None
        self.calls = 0

    def set(self, ref, price_fen, stock):
        self.quotes[ref] = UpstreamProduct(ref, ref, price_fen, stock)

    def stock(self, refs):
        self.calls += 1
        if self.error:
            raise UpstreamError(self.error, retryable=True)
        return {r: self.quotes[r] for r in refs if r in self.quotes}


class World:
    def __init__(self, instance):
        self.instance = instance
        self.site = Site.get_or_none(Site.slug == instance.main_site) or Site.create(slug=instance.main_site)
        self.fakes: dict[int, FakeConnector] = {}

    def upstream(self, name="up") -> Upstream:
        upstream = Upstream.create(name=name, protocol="fake", settings="{}")
        self.fakes[upstream.id] = FakeConnector()
        return upstream

    def link(self, upstream, ref, cost, stock, rule="margin", value=0, **fallback) -> UpstreamLink:
        self.fakes[upstream.id].set(ref, cost, stock)
        return map_product(upstream, UpstreamProduct(ref, f"Item {ref}", cost, stock), rule, value, self.site,
                           **fallback)

    def sync(self, now=T0):
        return sync.sync_all(self.instance, connector_for=lambda u: self.fakes[u.id], now=now)


def sku_of(link) -> Sku:
    return Sku.get_by_id(link.sku_id)


def fresh(model):
    return type(model).get_by_id(model.id)


@pytest.fixture
def world(host, monkeypatch):
    init_database(host.instance.database_url)
    monkeypatch.setattr(mail, "queue_operator_mail", lambda instance, subject, body: mails.append(subject) or True)
    mails: list = []
    w = World(host.instance)
    w.mails = mails
    return w


def notices():
    with all_sites():
        return list(Notice.select().where(Notice.kind == "upstream_price"))


# -- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, value, cost, price", [
    ("margin", 250, 1000, 1250), ("margin", 0, 1000, 1000), ("margin", -500, 1000, 1000),
    ("percent", 1500, 1000, 1150), ("percent", 1500, 999, 1149), ("percent", 1, 101, 102),
    ("percent", 0, 777, 777), ("percent", 2000, 0, 0),
])
def test_price_rules_round_up_and_never_go_below_cost(rule, value, cost, price):
    assert sync.price_for(rule, value, cost) == price


def test_backoff_doubles_and_caps_at_an_hour():
    assert [sync.backoff_minutes(n) for n in (1, 2, 3, 4, 7, 8, 20)] == [1, 2, 4, 8, 60, 60, 60]


@pytest.mark.parametrize("old, new, big", [(1000, 1201, True), (1000, 1200, False), (1000, 799, True),
                                           (1000, 800, False), (0, 5000, False)])
def test_a_big_change_is_more_than_20_percent_either_way(old, new, big):
    assert sync.big_change(old, new) is big


# -- the sync -----------------------------------------------------------------------------------


def test_mapping_creates_a_supplied_product_priced_by_the_rule(world):
    up = world.upstream()
    link = world.link(up, "A", 1000, 7, "percent", 1500)
    product = Product.get_by_id(link.product_id)
    assert (product.supplier, product.kind, product.site_id) == ("upstreams", "card", world.site.id)
    assert (sku_of(link).price_fen, sku_of(link).stock) == (1150, 7)


def test_price_and_stock_follow_the_upstream_by_both_rules(world):
    up = world.upstream()
    margin = world.link(up, "M", 1000, 5, "margin", 300)
    percent = world.link(up, "P", 2000, 5, "percent", 1250)
    world.fakes[up.id].set("M", 1100, 9)
    world.fakes[up.id].set("P", 2099, 0)
    rev_before = sku_of(margin).rev
    counts = world.sync()
    assert (sku_of(margin).price_fen, sku_of(margin).stock) == (1400, 9)
    assert (sku_of(percent).price_fen, sku_of(percent).stock) == (2362, 0)  # 2099 × 1.125 = 2361.375 → 2362
    assert fresh(margin).cost_fen == 1100 and fresh(margin).upstream_stock == 9
    assert sku_of(margin).rev > rev_before  # the page cache's catalogue stamp moves
    assert counts["changed"] == 2 and counts["failed"] == 0
    rev_after = sku_of(margin).rev
    assert world.sync()["changed"] == 0 and sku_of(margin).rev == rev_after  # nothing new: nothing rewritten


def test_an_item_the_upstream_dropped_stops_selling(world):
    up = world.upstream()
    link = world.link(up, "GONE", 1000, 5, "margin", 100)
    del world.fakes[up.id].quotes["GONE"]
    world.sync()
    assert sku_of(link).stock == 0 and sku_of(link).price_fen == 1100


def test_a_price_jump_alerts_the_operator_once(world):
    up = world.upstream()
    link = world.link(up, "J", 1000, 5, "margin", 100)
    world.fakes[up.id].set("J", 1100, 5)  # +10 %: no alert
    world.sync()
    assert fresh(link).price_alert == "" and notices() == []
    world.fakes[up.id].set("J", 1500, 5)  # +36 %
    assert world.sync()["alerts"] == 1
    assert "11.00" in fresh(link).price_alert and "15.00" in fresh(link).price_alert
    assert sku_of(link).price_fen == 1600  # the price still follows
    world.fakes[up.id].set("J", 3000, 5)  # another jump while the alert is pending: no second notice
    assert world.sync()["alerts"] == 0
    assert len(notices()) == 1 and len(world.mails) == 1
    assert notices()[0].ref == f"upstream_link:{link.id}" and notices()[0].site_id == world.site.id
    assert "上游价格变动超过 20%" in notices()[0].title and "Item J" in notices()[0].title  # the main site's language
    assert sync.clear_alert(link.id)
    world.fakes[up.id].set("J", 1000, 5)  # a drop of 67 % after the operator saw the last one
    world.sync()
    assert len(notices()) == 2 and fresh(link).price_alert


def test_a_failing_upstream_backs_off_shows_its_error_and_recovers(world):
    up = world.upstream()
    link = world.link(up, "B", 1000, 5, "margin", 0)
    fake = world.fakes[up.id]
    fake.error = "cannot reach 127.0.0.1: ConnectionRefusedError"
    assert world.sync(T0)["failed"] == 1
    up = fresh(up)
    assert up.failures == 1 and up.backoff_until == T0 + datetime.timedelta(minutes=1)
    assert "ConnectionRefusedError" in up.last_error and up.last_ok_at is None
    assert sku_of(link).stock == 5  # a failure alone keeps the last known stock
    calls = fake.calls
    world.sync(T0 + datetime.timedelta(seconds=30))  # still backing off: not asked
    assert fake.calls == calls
    world.sync(T0 + datetime.timedelta(seconds=61))
    up = fresh(up)
    assert up.failures == 2 and up.backoff_until == T0 + datetime.timedelta(seconds=61, minutes=2)
    fake.error = None
    fake.set("B", 1200, 3)
    world.sync(T0 + datetime.timedelta(minutes=4))
    up = fresh(up)
    assert (up.failures, up.backoff_until, up.last_error) == (0, None, "")
    assert up.last_ok_at == T0 + datetime.timedelta(minutes=4)
    assert (sku_of(link).price_fen, sku_of(link).stock) == (1200, 3)


def test_the_fallback_supplies_while_the_primary_fails_or_runs_out(world):
    primary, second = world.upstream("primary"), world.upstream("second")
    world.fakes[second.id].set("S", 1100, 8)
    link = world.link(primary, "P", 1000, 5, "margin", 200, fallback_upstream_id=second.id, fallback_ref="S")
    world.fakes[primary.id].set("P", 1000, 0)  # out of stock
    assert world.sync()["fallback"] == 1
    assert fresh(link).via_fallback and (sku_of(link).price_fen, sku_of(link).stock) == (1300, 8)
    assert fresh(link).cost_fen == 1100
    world.fakes[primary.id].set("P", 1000, 4)
    world.sync()
    assert not fresh(link).via_fallback and (sku_of(link).price_fen, sku_of(link).stock) == (1200, 4)
    world.fakes[primary.id].error = "HTTP 502"  # failing
    world.sync(T0 + datetime.timedelta(minutes=10))
    assert fresh(link).via_fallback and sku_of(link).stock == 8
    Upstream.update(status="paused").where(Upstream.id == second.id).execute()
    world.fakes[primary.id].error = None
    world.sync(T0 + datetime.timedelta(minutes=20))
    assert not fresh(link).via_fallback and sku_of(link).stock == 4


def test_a_paused_upstream_is_not_asked(world):
    up = world.upstream()
    world.link(up, "Z", 1000, 5)
    Upstream.update(status="paused").where(Upstream.id == up.id).execute()
    world.sync()
    assert world.fakes[up.id].calls == 0


# -- on every backend: concurrent syncs alert once ---------------------------------------------


def test_two_syncs_at_once_reprice_and_alert_once(db_instance, monkeypatch):
    monkeypatch.setattr(mail, "queue_operator_mail", lambda *a: True)
    init_database(db_instance.database_url)
    try:
        world = World(db_instance)
        up = world.upstream()
        link = world.link(up, "C", 1000, 5, "percent", 1000)
        world.fakes[up.id].set("C", 2000, 6)
        _results, errors = at_once(lambda _n: world.sync(), 2)
        assert errors == []
        assert (sku_of(link).price_fen, sku_of(link).stock) == (2200, 6)
        assert len(notices()) == 1
    finally:
        release_connections()


# -- connector_for ------------------------------------------------------------------------------


class EchoConnector:
    protocol = "echo"
    label = "Echo (tests)"
    settings_schema = {"type": "object", "required": ["token"],
                       "properties": {"token": {"type": "string", "writeOnly": True}, "name": {"type": "string"}}}
    idempotent = True

    def __init__(self, settings, *, allow_loopback=False):
        self.settings, self.allow_loopback = settings, allow_loopback


class EchoPlugin:
    from kamengsite.hookspecs import hookimpl

    @hookimpl
    def upstream_connectors(self, instance):
        return [EchoConnector]


def test_connector_for_builds_other_plugins_connectors_with_their_secrets_opened(host, monkeypatch):
    import json

    from kamengsite_upstreams import add_upstream, connector_classes, connector_for

    init_database(host.instance.database_url)
    host.plugins.register(EchoPlugin(), name="echo-connectors")
    classes = connector_classes(host.instance)
    assert list(classes)[:3] == ["kamengsite", "acgfaka", "dujiao"] and classes["echo"] is EchoConnector
    upstream = add_upstream("Echo", EchoConnector, {"token": "t0p-secret", "name": "x"}, host.instance)
    assert "t0p-secret" not in upstream.settings and json.loads(upstream.settings)["name"] == "x"
    monkeypatch.delenv("KAMENGSITE_API_ALLOW_LOOPBACK", raising=False)
    connector = connector_for(upstream, host.instance)
    assert connector.settings == {"token": "t0p-secret", "name": "x"} and connector.allow_loopback is False
    monkeypatch.setenv("KAMENGSITE_API_ALLOW_LOOPBACK", "1")
    assert connector_for(upstream, host.instance).allow_loopback is True
    Upstream.update(settings=json.dumps({"token": "bm90IHNlYWxlZA==", "name": "x"})).where(
        Upstream.id == upstream.id).execute()
    with pytest.raises(UpstreamError):
        connector_for(Upstream.get_by_id(upstream.id), host.instance)  # tampered: refused, not used


# -- the hooks ----------------------------------------------------------------------------------


def test_supply_order_and_register_jobs_hand_over_to_forwarding(host, monkeypatch):
    from huey import MemoryHuey

    import kamengsite_upstreams
    from kamengsite_upstreams import forwarding

    handed, jobs = [], []
    monkeypatch.setattr(forwarding, "on_supply_order", lambda order: handed.append(order))
    monkeypatch.setattr(forwarding, "register_jobs", lambda huey, instance: jobs.append(instance))
    host.plugins.pm.hook.supply_order(order="the order")
    assert handed == ["the order"]

    init_database(host.instance.database_url)
    huey = MemoryHuey("upstreams-test", immediate=True)
    kamengsite_upstreams.register_jobs(huey=huey, instance=host.instance)
    assert jobs == [host.instance]
    tasks = {t.__name__: t for t in huey._registry._periodic_tasks}
    task = tasks["upstreams_sync"]()
    assert task.validate_datetime(datetime.datetime(2026, 1, 1, 0, 15))
    assert not task.validate_datetime(datetime.datetime(2026, 1, 1, 0, 16))  # every 5 minutes
    world = World(host.instance)
    up = world.upstream()
    link = world.link(up, "JOB", 1000, 5, "margin", 100)
    Upstream.update(protocol="no-such-protocol").where(Upstream.id == up.id).execute()
    assert task.execute()["failed"] == 1  # the job syncs with the real connectors: this one cannot be built
    assert "no-such-protocol" in fresh(up).last_error and sku_of(link).stock == 5
