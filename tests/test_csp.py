"""The Content-Security-Policy of site pages: scripts from the site only, or inline with the request's nonce."""

from __future__ import annotations

import re

import pytest

from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.hookspecs import hookimpl
from kamengsite.members import register
from kamengsite.models import Site
from kamengsite.payments import Channel, PaymentAction, PayType
from kamengsite.testing import SiteClient, csrf_token, sign_in_console, sign_in_member, site_id

PASSWORD = "correct horse battery staple"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*\btype=\"application/json\")([^>]*)>", re.I)
HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def policy(response) -> dict:
    """The CSP header as {directive: [sources]}."""
    parts = (p.split() for p in response.headers["Content-Security-Policy"].split(";") if p.strip())
    return {p[0]: p[1:] for p in parts}


def assert_storefront_policy(response):
    found = policy(response)
    assert found["default-src"] == ["'self'"] and found["object-src"] == ["'none'"]
    assert found["script-src"][0] == "'self'" and "'unsafe-inline'" not in found["script-src"]
    assert all(s == "'self'" or s.startswith("'nonce-") for s in found["script-src"])
    assert found["style-src"] == ["'self'", "'unsafe-inline'"]  # the theme's colours are an inline <style>
    assert found["frame-ancestors"] == ["'self'"] and found["form-action"] == ["'self'", "https:"]
    assert found["base-uri"] == ["'self'"]


def assert_no_inline_script(html: str):
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html).group(0)
    assert not HANDLER.search(html), HANDLER.search(html).group(0)


@pytest.fixture
def shop(host):
    main = Site.get(Site.slug == "main")
    games = Category.create(site=main, name="游戏点卡")
    product = create_product(main, "测试月卡", 1500, category=games)
    import_keys(product.skus[0], ["K-1", "K-2"], CardKeyCipher.from_instance(host.instance))
    host.registry.create("shop1", template="gaming")
    return host, product, games


@pytest.mark.parametrize("path", ["/", "/c/{category}", "/p/{product}", "/lookup", "/member/login",
                                  "/member/register"])
def test_storefront_pages_have_the_policy_and_no_inline_script(shop, path):
    host, product, games = shop
    for hit in range(2):  # the second GET of a cached page comes from the page cache
        response = SiteClient(host, "shop1.localhost").get(path.format(category=games.id, product=product.id))
        assert response.status_code == 200
        assert_storefront_policy(response)
        html = response.get_data(as_text=True)
        assert_no_inline_script(html)
    assert "<style>" in html  # inline styles are what the policy allows


def test_member_pages_have_the_policy(shop):
    host, _, _ = shop
    register(site_id("shop1"), "m@example.com", PASSWORD)
    member = sign_in_member(SiteClient(host, "shop1.localhost"), "m@example.com", PASSWORD)
    for path in ("/member/", "/"):
        response = member.get(path)
        assert response.status_code == 200
        assert_storefront_policy(response)
        assert_no_inline_script(response.get_data(as_text=True))


def test_not_found_pages_have_the_policy(shop):
    host, _, _ = shop
    response = SiteClient(host, "shop1.localhost").get("/no-such-page")
    assert response.status_code == 404
    assert_storefront_policy(response)


def test_console_pages_keep_their_own_stricter_policy(shop):
    host, _, _ = shop
    create_account(site_id("shop1"), "owner", PASSWORD)
    console = sign_in_console(SiteClient(host, "shop1.localhost"), "owner", PASSWORD)
    response = console.get("/admin/")
    assert response.status_code == 200
    found = policy(response)
    assert found["script-src"] == ["'none'"] and found["frame-ancestors"] == ["'none'"]
    assert len(response.headers.getlist("Content-Security-Policy")) == 1


class FormChannel(Channel):
    """A gateway that is paid by posting a form to it (the pay page submits it by script)."""

    id = "formpay"
    name = "表单支付"
    pay_types = (PayType("x", "X"),)
    settings_schema = {"type": "object"}

    def create_payment(self, profile, request):
        return PaymentAction.form("https://pay.example.com/submit", {"order": request.order_no, "sign": '"><x'})


class FormChannelPlugin:
    @hookimpl
    def payment_channels(self, instance):
        return [FormChannel()]


def test_the_pay_page_script_carries_the_nonce_of_its_policy(host_factory):
    host = host_factory("formpay", payments={"formpay": {"a": {}}})
    host.plugins.register(FormChannelPlugin(), name="form-channel")
    product = create_product(Site.get(Site.slug == "main"), "月卡", 100)
    import_keys(product.skus[0], ["K-1"], CardKeyCipher.from_instance(host.instance))
    client = SiteClient(host, "main.localhost")
    page = client.get(f"/p/{product.id}")
    created = client.post(f"/p/{product.id}", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1, "pay": "formpay/a",
        "contact": "a@b.cd", "query_password": "pass1234"})
    order_no = created.headers["Location"].rsplit("/", 1)[1]
    order_page = client.get(f"/order/{order_no}")
    nonces = set()
    for _ in range(2):
        response = client.post(f"/pay/{order_no}", data={"csrf_token": csrf_token(order_page), "channel": "formpay",
                                                         "profile": "a", "type": "x"})
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        scripts = INLINE_SCRIPT.findall(html)
        assert len(scripts) == 1
        nonce = re.fullmatch(r' nonce="([^"]+)"', scripts[0]).group(1)
        assert policy(response)["script-src"] == ["'self'", f"'nonce-{nonce}'"]
        assert 'action="https://pay.example.com/submit"' in html and '"><x' not in html  # escaped
        nonces.add(nonce)
    assert len(nonces) == 2 and all(len(n) >= 16 for n in nonces)  # a new one per request
