"""The operator's payments page (/admin/payments/, main site only): login, channels and profiles with
secrets masked, configuration errors, notify URLs, and the refused notifications with a channel filter."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from conftest import SiteClient
from kamengsite.accounts import create_account
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site
from kamengsite.payments import Channel, Notification, PayType, Rejection

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
PASSWORD = "correct horse battery staple"
SECRET = "s3cret-never-shown-7f3a9c"
PAGE = "/admin/payments/"


class Fake(Channel):
    id = "fake"
    name = "假渠道"
    pay_types = (PayType("x", "X 支付"),)
    supports_refund = True
    settings_schema = {"type": "object",
                       "properties": {"merchant": {"type": "string"}, "secret": {"type": "string", "writeOnly": True},
                                      "label": {"type": "string"}},
                       "required": ["merchant", "secret"], "additionalProperties": False}

    def verify_notification(self, profile, notice, now):
        if notice.fields.get("sig") != profile.get("secret"):
            return Rejection("bad signature")
        return Notification(notice.fields["out_trade_no"], 100, "T1", "unpaid", raw_status="WAIT_BUYER_PAY")


class Other(Fake):
    id = "other"
    name = "另一个渠道"
    supports_refund = False


class FakePlugin:
    @hookimpl
    def payment_channels(self, instance):
        return [Fake(), Other()]


@pytest.fixture
def host(host_factory):
    h = host_factory("admin-payments", payments={
        "fake": {"main": {"label": "假支付", "merchant": "M1000", "secret": SECRET},
                 "broken": {"merchant": "M1001"}},  # no secret: left out, reported
        "other": {"alt": {"merchant": "M2000", "secret": SECRET + "-other"}},
        "missing": {"x": {"key": "k"}},  # a channel nobody installed
    })
    h.plugins.register(FakePlugin(), name="fake-channels")
    h.registry.create("shop1", template="gaming")
    return h


@pytest.fixture
def console(host):
    create_account(Site.get(Site.slug == "main").id, "boss", PASSWORD)
    client = SiteClient(host, "main.localhost")
    page = client.get("/admin/login")
    token = TOKEN.search(page.get_data(as_text=True)).group(1)
    assert client.post("/admin/login", data={"csrf_token": token, "username": "boss",
                                             "password": PASSWORD}).status_code == 302
    return client


def text(response) -> str:
    return response.get_data(as_text=True)


def test_the_page_needs_an_operator(host):
    response = SiteClient(host, "main.localhost").get(PAGE)
    assert response.status_code == 302
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert location.path == "/admin/login" and urllib.parse.parse_qs(location.query) == {"next": [PAGE]}


def test_the_page_is_on_the_main_site_only(host, console):
    assert SiteClient(host, "shop1.localhost").get(PAGE).status_code == 404
    assert console.get(PAGE).status_code == 200


def test_channels_profiles_and_notify_urls_are_listed_and_secrets_masked(console):
    response = console.get(PAGE)
    html = text(response)
    assert "假渠道" in html and "另一个渠道" in html and "配置 main · 假支付" in html and "配置 alt" in html
    assert "<code>http://main.localhost/pay/notify/fake/main</code>" in html
    assert "<code>http://main.localhost/pay/notify/other/alt</code>" in html
    assert "<code>M1000</code>" in html and "X 支付" in html
    assert "支持原路退款" in html and "不支持原路退款" in html
    assert SECRET not in html  # not even the other profile's, which starts with it
    assert html.count("<code>******</code>") == 2


def test_configuration_errors_are_shown_without_secrets(console):
    html = text(console.get(PAGE))
    assert "payments.fake.broken" in html and "已停用" in html
    assert "payments.missing.x" in html  # unknown channel: shown above the channels
    assert "payments.fake.main" not in re.findall(r"配置 <code>([^<]+)</code> 有误", html)


def test_a_forged_notification_shows_up_as_rejected_and_the_filter_works(host, console):
    shop = SiteClient(host, "shop1.localhost")
    forged = shop.get("/pay/notify/fake/main?" + urllib.parse.urlencode(
        {"out_trade_no": "K2024070100000000001", "sig": "guess"}), environ_base={"REMOTE_ADDR": "198.51.100.23"})
    assert forged.status_code == 400
    closed = shop.get("/pay/notify/other/alt?" + urllib.parse.urlencode(
        {"out_trade_no": "K2024070100000000002", "sig": SECRET + "-other"}))
    assert closed.status_code == 200
    html = text(console.get(PAGE))
    row = re.search(r'<tr class="notice-rejected">(.*?)</tr>', html, re.S).group(1)
    for cell in ("fake/main", "K2024070100000000001", "已拒绝", "bad signature", "198.51.100.23"):
        assert cell in row
    assert '<tr class="notice-acknowledged">' in html and "K2024070100000000002" in html
    only_other = text(console.get(PAGE + "?channel=other"))
    assert "K2024070100000000002" in only_other and "K2024070100000000001" not in only_other
    assert '<option value="other" selected>' in only_other
    everything = text(console.get(PAGE + "?channel=<script>"))  # an unknown filter shows everything
    assert "K2024070100000000001" in everything and "<script>" not in everything


def test_the_console_menu_links_the_page_and_its_headers_are_the_consoles(console):
    assert f'href="{PAGE}"' in text(console.get("/admin/"))
    response = console.get(PAGE)
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]
    assert "退出登录" in text(response)  # the layout's log-out form works on this page too


def test_the_page_speaks_chinese_by_default_and_english_on_request(console):
    html = text(console.get(PAGE))
    assert "<h1>支付渠道</h1>" in html and "回调地址（notify URL）" in html and "Payment channels" not in html
    html = text(console.get(PAGE + "?lang=en"))
    assert "<h1>Payment channels</h1>" in html and "Notify URL" in html and "Refunds to the original payment" in html
    assert "Profile main · 假支付" in html  # the channel's and the profile's names are the operator's words
    assert "<code>config.toml</code>" in html and "Secrets are always shown as ******." in html
    for chinese in ("支付渠道", "回调地址", "支持原路退款", "已停用", "渠道与配置", "筛选"):
        assert chinese not in html, chinese
