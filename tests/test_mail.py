"""Order mail against a real SMTP server (aiosmtpd on a loopback port): keys, retries, skips, secrecy."""

from __future__ import annotations

import datetime
import logging

import pytest

from kamengsite import jobs, mail
from kamengsite.alerts import Notice
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.config import SiteConfig
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, init_database
from kamengsite.models import Site
from kamengsite.orders import create_order, delivered_keys, mark_paid
from kamengsite.plugins import CORE_PLUGINS, PluginHost
from kamengsite.tenancy import all_sites

from mailhelpers import SmtpServer, free_port, retry_due, self_signed_tls

ENV = ("KAMENGSITE_SMTP_URL", "KAMENGSITE_MAIL_FROM", "KAMENGSITE_OPERATOR_EMAIL", "REDIS_URL",
       "KAMENGSITE_JOBS_IMMEDIATE")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")  # jobs run at once; retries wait in memory
    yield
    jobs.bind(None)


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def shop(instance):
    init_database(instance.database_url)
    site = Site.create(slug="main")
    product = create_product(site.id, "Steam 充值卡", 1000, kind="card", skus=[("100元", 1000)])
    sku = Sku.get(Sku.product == product.id)
    cipher = CardKeyCipher.from_instance(instance)
    codes = [f"SECRET-KEY-{i:03d}" for i in range(6)]
    import_keys(sku, codes, cipher)
    jobs.bind(instance)  # as the worker, the CLI or a site app does
    config = SiteConfig(slug="main", path=instance.sites_dir / "main", name="Main Shop", theme="default")
    yield {"instance": instance, "site": site.id, "sku": sku, "codes": codes, "cipher": cipher, "config": config}
    if not database.is_closed():
        database.close()


def buy(shop, quantity=2, contact="buyer@example.com"):
    order = create_order(site_id=shop["site"], sku_id=shop["sku"].id, quantity=quantity, contact=contact,
                         channel="alipay")
    result = mark_paid(order.order_no, channel="alipay", trade_no=f"T{order.id}", amount_fen=order.amount_fen)
    assert result.status == "delivered"
    with all_sites():
        return type(order).get_by_id(order.id)


def delivered(order, shop):
    """What the core plugins do after the delivering transaction committed."""
    PluginHost(load_entry_points=False).pm.hook.order_delivered(order=order, site=shop["config"])


def all_log_text(caplog) -> str:
    """Everything logged in this process but by the test's own SMTP server (aiosmtpd's "mail.log")."""
    return "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records if r.name != "mail.log")


# -- sending the keys ------------------------------------------------------------------


def test_mail_is_a_core_plugin():
    assert "kamengsite.mail" in CORE_PLUGINS
    assert "kamengsite.mail" in PluginHost(load_entry_points=False).core


def test_delivered_keys_are_mailed_to_the_buyer(shop, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    shop["instance"].smtp_url = smtp.url
    shop["instance"].mail_from = "shop@example.com"
    order = buy(shop, 2)

    delivered(order, shop)

    assert len(smtp.messages) == 1
    sender, recipients, message = smtp.messages[0]
    assert sender == "shop@example.com" and recipients == ["buyer@example.com"]
    assert message["To"] == "buyer@example.com"
    assert message["From"].addresses[0].display_name == "Main Shop"
    assert order.order_no in message["Subject"] and "Main Shop" in message["Subject"]
    body = message.get_content()
    keys = delivered_keys(order, shop["cipher"])
    assert keys == shop["codes"][:2]
    for key in keys:
        assert key in body
    for other in shop["codes"][2:]:
        assert other not in body  # only this order's keys
    assert "Steam 充值卡 100元 × 2" in body and "http://main.localhost/" in body
    log_text = all_log_text(caplog)
    assert order.order_no in log_text  # it did log…
    assert not any(code in log_text for code in shop["codes"])  # …but never a key


def test_english_sites_get_english_mail(shop, smtp):
    shop["instance"].smtp_url = smtp.url
    shop["config"] = SiteConfig(slug="en1", path=shop["instance"].sites_dir / "en1", name="Key Shop",
                                theme="default", locale="en", domains=("keys.example.com",))
    shop["instance"].production = True
    delivered(buy(shop, 1), shop)
    message = smtp.messages[0][2]
    assert message["Subject"].startswith("[Key Shop] Card keys of order")
    body = message.get_content().replace("\r\n", "\n")
    assert "Card keys:\nSECRET-KEY-000\n\n" in body
    assert "Your orders: https://keys.example.com/" in body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login_with_percent_encoded_password(shop):
    server = SmtpServer(credentials=("mailer", "p@ss:w/rd")).start()
    try:
        shop["instance"].smtp_url = f"smtp://mailer:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}"
        delivered(buy(shop, 1), shop)
        assert server.logins == [("mailer", "p@ss:w/rd")]
        assert len(server.messages) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_to_the_smtp_server(shop, tmp_path, monkeypatch, security):
    context, ca_file = self_signed_tls(tmp_path)
    server = SmtpServer(tls=(security, context)).start()
    try:
        shop["instance"].smtp_url = server.url
        delivered(buy(shop, 1), shop)
        assert server.messages == []  # the certificate is not trusted (yet): nothing was sent in clear
        assert jobs.jobs_for(shop["instance"]).huey.scheduled_count() == 1  # retried later
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # now it is
        assert retry_due(shop["instance"]) == 1
        assert len(server.messages) == 1
    finally:
        server.stop()


def test_smtp_url_from_the_environment_wins(shop, smtp, monkeypatch):
    shop["instance"].smtp_url = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("KAMENGSITE_SMTP_URL", smtp.url)
    monkeypatch.setenv("KAMENGSITE_MAIL_FROM", "env@example.com")
    delivered(buy(shop, 1), shop)
    assert [m[0] for m in smtp.messages] == ["env@example.com"]


@pytest.mark.parametrize("contact", ["13800138000", "QQ 12345678", "buyer@example", "",
                                     "a@example.com\r\nBcc: thief@example.com", "a b@example.com"])
def test_keys_go_only_to_an_email_contact(shop, smtp, contact, caplog):
    caplog.set_level(logging.INFO)
    shop["instance"].smtp_url = smtp.url
    order = buy(shop, 1, contact=contact)
    delivered(order, shop)
    assert smtp.messages == []
    assert f"order {order.order_no}: the contact is not an email address" in caplog.text
    # and the job itself refuses too, should one be queued by other means
    assert mail.deliver_order_mail(shop["instance"], order.id, {}) == "skipped: no email contact"
    assert smtp.messages == []


def test_without_smtp_mail_is_skipped_not_an_error(shop, caplog):
    caplog.set_level(logging.INFO)
    order = buy(shop, 1)
    delivered(order, shop)  # does not raise
    assert f"order {order.order_no}: mail skipped, no SMTP server configured" in caplog.text
    assert jobs.jobs_for(shop["instance"]).huey.scheduled_count() == 0
    assert mail.deliver_order_mail(shop["instance"], order.id, {}) == "skipped: no smtp"


def test_an_order_that_is_not_delivered_is_not_mailed(shop, smtp):
    shop["instance"].smtp_url = smtp.url
    order = create_order(site_id=shop["site"], sku_id=shop["sku"].id, quantity=1, contact="b@example.com")
    assert mail.deliver_order_mail(shop["instance"], order.id, {}) == "skipped: not delivered"
    assert smtp.messages == []


# -- failures ----------------------------------------------------------------------------


def test_mail_is_retried_until_the_server_is_up(shop, caplog):
    caplog.set_level(logging.DEBUG)
    server = SmtpServer()  # not started: connections are refused
    shop["instance"].smtp_url = server.url
    order = buy(shop, 2)

    delivered(order, shop)  # the first attempt fails; the hook does not raise
    huey = jobs.jobs_for(shop["instance"]).huey
    assert huey.scheduled_count() == 1
    assert retry_due(shop["instance"], after=datetime.timedelta(seconds=jobs.MAIL_RETRY_DELAY - 5)) == 0  # not yet
    assert f"order {order.order_no}: mail failed, will retry" in caplog.text

    server.start()
    try:
        assert retry_due(shop["instance"]) == 1
        assert len(server.messages) == 1
        assert huey.scheduled_count() == 0  # delivered: no more retries
        body = server.messages[0][2].get_content()
        assert all(key in body for key in shop["codes"][:2])
    finally:
        server.stop()
    with all_sites():
        assert Notice.select().count() == 0
    assert not any(code in all_log_text(caplog) for code in shop["codes"])


def test_mail_gives_up_after_its_retries_and_tells_the_shop(shop, caplog):
    shop["instance"].smtp_url = f"smtp://127.0.0.1:{free_port()}"
    order = buy(shop, 1)
    delivered(order, shop)
    attempts = 1
    while retry_due(shop["instance"]):
        attempts += 1
    assert attempts == 1 + jobs.MAIL_RETRIES
    with all_sites():
        notices = list(Notice.select())
    assert [(n.kind, n.site_id, n.ref) for n in notices] == [("mail_failed", shop["site"], f"order:{order.id}")]
    assert order.order_no in notices[0].title and "buyer@example.com" in notices[0].body
    assert shop["codes"][0] not in notices[0].body
    assert f"order {order.order_no}: mail failed for good" in caplog.text


def test_the_hook_never_raises(shop, monkeypatch, caplog):
    shop["instance"].smtp_url = "http://not-smtp.example.com"  # invalid setting
    order = buy(shop, 1)
    delivered(order, shop)
    assert f"order {order.order_no}: its mail could not be queued" in caplog.text

    shop["instance"].smtp_url = "smtp://127.0.0.1:25"

    def queue_down(instance):
        raise ConnectionError("queue storage unavailable")

    monkeypatch.setattr(jobs, "jobs_for", queue_down)
    delivered(order, shop)  # still no exception for the buyer's request


def test_without_a_known_instance_nothing_is_queued(shop, caplog):
    jobs.bind(None)
    order = buy(shop, 1)
    delivered(order, shop)
    assert "no instance known to this process" in caplog.text


def test_a_site_app_binds_the_instance_for_later_jobs(host):
    jobs.bind(None)
    assert jobs.current_instance() is None
    host.app_for(host.instance.main_site)
    assert jobs.current_instance() is host.instance


# -- settings ------------------------------------------------------------------------------


def test_parse_smtp_url():
    plain = mail.parse_smtp_url("smtp://mail.example.com")
    assert (plain.host, plain.port, plain.security, plain.username) == ("mail.example.com", 25, "plain", "")
    tls = mail.parse_smtp_url("smtp+starttls://u:p@mail.example.com")
    assert (tls.port, tls.security, tls.username, tls.password) == (587, "starttls", "u", "p")
    ssl_ = mail.parse_smtp_url("smtps://u%40x:p%25@mail.example.com:2465")
    assert (ssl_.port, ssl_.security, ssl_.username, ssl_.password) == (2465, "ssl", "u@x", "p%")
    assert "p%" not in repr(ssl_)
    for bad, why in [("http://x", "must start with"), ("smtp://", "no host"), ("smtp://x:notaport", "not a valid URL")]:
        with pytest.raises(mail.KamengsiteError, match=why):
            mail.parse_smtp_url(bad)


@pytest.mark.parametrize("contact, ok", [
    ("buyer@example.com", True), ("  buyer.name+tag@mail.example.cn ", True), ("a@b.co", True),
    ("13800138000", False), ("buyer@localhost", False), ("a@b@example.com", False), ("<a@example.com>", False),
    ("a@example.com\nBcc: b@example.com", False), ("a@example.com,b@example.com", False), (None, False),
    ("x" * 250 + "@example.com", False),
])
def test_is_email(contact, ok):
    assert mail.is_email(contact) is ok


def test_default_sender_and_operator_address(instance, monkeypatch):
    assert mail.mail_from(instance) == "noreply@localhost"
    instance.operator_email = "boss@example.com"
    assert mail.operator_email(instance) == "boss@example.com"
    monkeypatch.setenv("KAMENGSITE_OPERATOR_EMAIL", "ops@example.com")
    assert mail.operator_email(instance) == "ops@example.com"


def test_mail_settings_are_instance_config_keys(tmp_path):
    from kamengsite.instance import Instance

    created = Instance.create(tmp_path / "i", smtp_url="smtps://m.example.com", mail_from="s@example.com",
                              operator_email="o@example.com", redis_url="redis://127.0.0.1:6379/1")
    loaded = Instance.load(created.path)
    assert (loaded.smtp_url, loaded.mail_from, loaded.operator_email, loaded.redis_url) == (
        "smtps://m.example.com", "s@example.com", "o@example.com", "redis://127.0.0.1:6379/1")


def test_mail_and_notices_are_written_in_the_selling_sites_language(shop, smtp):
    shop["instance"].smtp_url = smtp.url
    delivered(buy(shop, 1), shop)  # the site's locale: zh_CN, the default
    message = smtp.messages[0][2]
    assert message["Subject"].startswith("【Main Shop】订单 ") and message["Subject"].endswith(" 的卡密")
    body = message.get_content().replace("\r\n", "\n")
    assert "您好，您在 Main Shop 购买的商品已发货。" in body and "卡密：\nSECRET-KEY-000\n" in body
    assert "Card keys" not in body
    # Outside any request, whoever sends it (the worker): the language is the site's, not the process's.
    assert mail.site_gettext("zh_CN")("Reason: %(reason)s", reason="x") == "原因：x"
    assert mail.site_gettext("en")("Reason: %(reason)s", reason="x") == "Reason: x"
    assert mail.site_gettext("xx")("Card keys:") == "卡密："  # an unknown locale: the default language


def test_an_english_site_is_told_in_english_that_its_mail_failed(shop):
    shop["instance"].smtp_url = f"smtp://127.0.0.1:{free_port()}"
    shop["config"] = SiteConfig(slug="main", path=shop["instance"].sites_dir / "main", name="Key Shop",
                                theme="default", locale="en")
    order = buy(shop, 1)
    delivered(order, shop)
    while retry_due(shop["instance"]):
        pass
    with all_sites():
        [notice] = list(Notice.select())
    assert notice.title == f"The card keys mail of order {order.order_no} was not sent"
    assert notice.body.startswith("Buyer's contact: buyer@example.com\nReason: ")
