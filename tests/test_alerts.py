"""Low-stock alerts (库存预警): once per crossing, re-armed by restocking, on every backend."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from kamengsite import alerts, jobs
from kamengsite.alerts import Notice, check_low_stock
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Product, Sku, create_product
from kamengsite.cli import main
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import init_database, is_sqlite, release_connections
from kamengsite.testing import at_once
from kamengsite.models import Site
from kamengsite.orders import create_order, mark_paid
from kamengsite.tenancy import all_sites

from mailhelpers import SmtpServer, retry_due

ENV = ("KAMENGSITE_SMTP_URL", "KAMENGSITE_MAIL_FROM", "KAMENGSITE_OPERATOR_EMAIL", "REDIS_URL")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    yield
    jobs.bind(None)


class Shop:
    def __init__(self, instance):
        self.instance = instance
        init_database(instance.database_url)
        self.site = Site.create(slug="main").id
        self.other_site = Site.create(slug="shop2").id
        self.cipher = CardKeyCipher.from_instance(instance)
        self.serial = 0
        self.trade = 0

    def product(self, n_keys=6, threshold=3, skus=None):
        product = create_product(self.site, "月卡", 1000, kind="card", max_qty=0, low_stock_threshold=threshold,
                                 skus=skus)
        for sku in Sku.select().where(Sku.product == product.id):
            self.restock(sku, n_keys)
        return product

    def restock(self, sku, n):
        codes = [f"LS-{self.serial + i}" for i in range(n)]
        self.serial += n
        import_keys(sku, codes, self.cipher)

    def sell(self, sku, quantity=1, site=None):
        order = create_order(site_id=site or self.site, sku_id=sku.id, quantity=quantity,
                             contact="buyer@example.com", channel="alipay")
        self.trade += 1
        assert mark_paid(order.order_no, channel="alipay", trade_no=f"T{self.trade}",
                         amount_fen=order.amount_fen).status == "delivered"
        return order

    def sku(self, product, n=0):
        return list(Sku.select().where(Sku.product == product.id).order_by(Sku.sort, Sku.id))[n]

    def notices(self):
        with all_sites():
            return list(Notice.select().order_by(Notice.id))

    def alerted(self, product):
        return Product.get_by_id(product.id).low_stock_alerted


@pytest.fixture
def shop(db_instance):
    """A shop on every backend of the matrix."""
    s = Shop(db_instance)
    yield s
    release_connections()


@pytest.fixture
def local(instance):
    s = Shop(instance)
    jobs.bind(instance)
    yield s
    release_connections()


@pytest.fixture
def smtp(local):
    server = SmtpServer().start()
    local.instance.smtp_url = server.url
    local.instance.operator_email = "boss@example.com"
    yield server
    server.stop()


def test_alerts_once_when_a_sale_crosses_the_threshold(shop):
    product = shop.product(n_keys=6, threshold=3)
    sku = shop.sku(product)

    shop.sell(sku, 2)  # 4 left: above
    assert check_low_stock(product.id) is None
    assert shop.notices() == [] and not shop.alerted(product)

    shop.sell(sku, 1)  # 3 left: at the threshold
    assert check_low_stock(product.id) == alerts.ALERTED
    notices = shop.notices()
    assert [(n.kind, n.site_id, n.ref) for n in notices] == [("low_stock", shop.site, f"product:{product.id}")]
    assert "月卡" in notices[0].title and "≤ 3" in notices[0].title and "剩余 3" in notices[0].body
    assert shop.alerted(product)

    shop.sell(sku, 1)  # 2 left: still low, no second alert
    assert check_low_stock(product.id) is None
    shop.sell(sku, 2)  # sold out
    assert check_low_stock(product.id) is None
    assert len(shop.notices()) == 1


def test_restocking_rearms_the_alert(shop):
    product = shop.product(n_keys=4, threshold=3)
    sku = shop.sku(product)
    shop.sell(sku, 2)
    assert check_low_stock(product.id) == alerts.ALERTED

    shop.restock(sku, 1)  # 3: still at the threshold, stays alerted
    assert check_low_stock(product.id) is None and shop.alerted(product)
    shop.restock(sku, 5)  # 8: above again
    assert check_low_stock(product.id) == alerts.REARMED
    assert not shop.alerted(product)
    assert check_low_stock(product.id) is None  # nothing more to do

    shop.sell(sku, 5)  # 3 again: a new crossing, a new alert
    assert check_low_stock(product.id) == alerts.ALERTED
    assert len(shop.notices()) == 2


def test_a_threshold_of_zero_never_alerts(shop):
    product = shop.product(n_keys=2, threshold=0)
    shop.sell(shop.sku(product), 2)
    assert check_low_stock(product.id) is None
    assert shop.notices() == [] and not shop.alerted(product)


def test_any_low_sku_alerts_and_the_notice_names_it(shop):
    product = shop.product(n_keys=5, threshold=2, skus=[("周卡", 300), ("月卡", 1000)])
    week, month = shop.sku(product, 0), shop.sku(product, 1)
    shop.sell(month, 3)
    assert check_low_stock(product.id) == alerts.ALERTED
    body = shop.notices()[0].body
    assert f"月卡（SKU {month.id}）：剩余 2" in body and f"SKU {week.id}" not in body

    shop.restock(month, 10)  # every SKU above the threshold: re-armed
    assert check_low_stock(product.id) == alerts.REARMED
    Sku.update(status="off").where(Sku.id == week.id).execute()
    shop.sell(month, 5)  # 7 left: above
    Sku.update(stock=0).where(Sku.id == week.id).execute()  # off sale: not counted
    assert check_low_stock(product.id) is None


def test_sales_on_a_sub_site_alert_the_owning_site(shop):
    product = shop.product(n_keys=4, threshold=3)
    shop.sell(shop.sku(product), 1, site=shop.other_site)
    assert check_low_stock(product.id) == alerts.ALERTED
    assert [n.site_id for n in shop.notices()] == [shop.site]


def test_unknown_product_is_ignored(shop):
    assert check_low_stock(12345) is None


def test_concurrent_checks_alert_once(local):
    if not is_sqlite():
        pytest.skip("threads share one SQLite file here")
    product = local.product(n_keys=5, threshold=3)
    local.sell(local.sku(product), 3)
    results, errors = at_once(lambda _n: check_low_stock(product.id, instance=local.instance), 4)
    assert errors == []
    assert sorted(results, key=str) == [None, None, None, alerts.ALERTED]
    assert len(local.notices()) == 1


# -- mailing the operator ------------------------------------------------------------


def test_the_operator_gets_one_mail(local, smtp):
    product = local.product(n_keys=5, threshold=3)
    sku = local.sku(product)
    local.sell(sku, 2)
    check_low_stock(product.id)
    local.sell(sku, 1)
    check_low_stock(product.id)

    assert len(smtp.messages) == 1
    sender, recipients, message = smtp.messages[0]
    assert recipients == ["boss@example.com"]
    assert "库存预警" in message["Subject"] and "月卡" in message["Subject"]
    assert "剩余 3" in message.get_content()
    assert "LS-" not in message.get_content()  # stock counts, never keys


def test_operator_mail_is_retried(local, caplog):
    server = SmtpServer()  # down at first
    local.instance.smtp_url = server.url
    local.instance.operator_email = "boss@example.com"
    product = local.product(n_keys=3, threshold=3)
    local.sell(local.sku(product), 1)
    assert check_low_stock(product.id) == alerts.ALERTED
    huey = jobs.jobs_for(local.instance).huey
    assert huey.scheduled_count() == 1
    server.start()
    try:
        assert retry_due(local.instance) == 1
        assert [m[1] for m in server.messages] == [["boss@example.com"]]
    finally:
        server.stop()


def test_without_an_operator_address_only_the_notice_is_written(local, caplog):
    caplog.set_level(logging.INFO)
    server = SmtpServer().start()
    try:
        local.instance.smtp_url = server.url
        product = local.product(n_keys=3, threshold=3)
        local.sell(local.sku(product), 1)
        assert check_low_stock(product.id) == alerts.ALERTED
        assert len(local.notices()) == 1 and server.messages == []
        assert "no operator_email" in caplog.text
    finally:
        server.stop()


def test_keys_import_command_rearms_the_alert(local, tmp_path):
    product = local.product(n_keys=4, threshold=3)
    sku = local.sku(product)
    local.sell(sku, 2)
    assert check_low_stock(product.id) == alerts.ALERTED
    keys_file = tmp_path / "more.txt"
    keys_file.write_text("\n".join(f"NEW-{i}" for i in range(5)) + "\n")

    result = CliRunner().invoke(main, ["--instance", str(local.instance.path), "keys", "import",
                                       str(product.id), str(keys_file)])

    assert result.exit_code == 0, result.output
    assert not local.alerted(product)


def test_notices_are_read_per_site(local):
    alerts.add_notice(local.site, kind="x", title="for main")
    alerts.add_notice(local.other_site, kind="x", title="for shop2")
    assert [n.title for n in alerts.unread_notices(local.site)] == ["for main"]


def test_the_notice_is_in_the_owning_sites_language(shop, monkeypatch):
    from kamengsite import mail

    monkeypatch.setattr(mail, "site_locale", lambda site_id, instance=None: "en")
    product = shop.product(n_keys=4, threshold=3)
    sku = shop.sku(product)
    shop.sell(sku, 1)
    assert check_low_stock(product.id) == alerts.ALERTED
    [notice] = shop.notices()
    assert notice.title == "Low stock: 月卡 (≤ 3 left)"
    assert notice.body == (f"{sku.name or 'Default variant'} (SKU {sku.id}): 3 left\n\n"
                           f"The alert re-arms itself after restocking. Product ID: {product.id}")
