"""App keys on the member's page (/member/api) and in the console (/admin/api): kamengsite/api/console.py."""

from __future__ import annotations

import re

import pytest
from kamengsite import members, outbound
from kamengsite.accounts import Account, create_account
from kamengsite.api import auth, keys, signing
from kamengsite.api.errors import ApiError
from kamengsite.api.models import ApiKey
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, sign_in_member, site_id

PASSWORD = "correct horse battery staple"
SECRET_RE = re.compile(r'id="new-secret-value">([0-9a-f]{64})<')
APP_KEY_RE = re.compile(r'id="new-app-key">(ks_[0-9a-f]{24})<')


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def alice(host, client_for):
    """A signed-in member of the main site."""
    member = members.register(site_id("main"), "alice@example.com", PASSWORD)
    client = sign_in_member(client_for("main.localhost"), "alice@example.com", PASSWORD)
    client.member = member
    return client


def create_key(client, label="my shop", callback_url=""):
    page = client.get("/member/api/")
    return client.post("/member/api/", data={"csrf_token": csrf_token(page), "label": label,
                                              "callback_url": callback_url})


def key_row(app_key: str) -> ApiKey:
    with all_sites():
        return ApiKey.get(ApiKey.app_key == app_key)


def signed_request_authenticates(host, slug: str, app_key: str, secret: str) -> bool:
    """Whether a request signed with ``secret`` passes ``auth.authenticate`` on site ``slug``."""
    body = b'{"x": 1}'
    headers = signing.signed_headers(app_key, secret, "POST", "/api/v1/orders", body)
    with host.app_for(slug).test_request_context("/api/v1/orders", method="POST", data=body, headers=headers):
        from flask import request

        try:
            auth.authenticate(request, site_id=site_id(slug), instance_secret=host.instance.secret_key)
        except ApiError:
            return False
    return True


@pytest.fixture
def public_dns(monkeypatch):
    """Host names resolve to what the test says (no network): everything public unless listed."""
    answers = {"reseller.example.com": ["93.184.216.34"], "internal.example.com": ["10.1.2.3"],
               "mixed.example.com": ["93.184.216.34", "192.168.1.20"]}
    real = outbound.resolve

    def resolve(host):
        return answers[host] if host in answers else real(host)

    monkeypatch.setattr(outbound, "resolve", resolve)
    return answers


# -- the member's page ---------------------------------------------------------------------------


def test_signing_in_is_required(host, client_for):
    response = client_for("main.localhost").get("/member/api/")
    assert response.status_code == 302 and "/member/login" in response.headers["Location"]


def test_the_account_page_links_to_the_api_page(alice):
    assert 'href="/member/api/"' in text(alice.get("/member/"))


def test_a_new_keys_secret_is_shown_once_and_signs_requests(host, alice):
    created = create_key(alice, label="my shop")
    assert created.status_code == 200
    assert "no-store" in created.headers["Cache-Control"]
    page = text(created)
    secret, app_key = SECRET_RE.search(page).group(1), APP_KEY_RE.search(page).group(1)
    key = key_row(app_key)
    assert (key.member_id, key.site_id, key.label, key.status) == (alice.member.id, site_id("main"), "my shop",
                                                                   "active")
    assert keys.secret_for(key, host.instance.secret_key) == secret
    assert signed_request_authenticates(host, "main", app_key, secret)
    assert not signed_request_authenticates(host, "main", app_key, "0" * 64)
    assert 'href="/api/docs"' in page

    again = text(alice.get("/member/api/"))
    assert app_key in again and secret not in again and SECRET_RE.search(again) is None
    assert secret not in key.salt  # the database never holds it
    with all_sites():
        stored = [str(v) for v in ApiKey.select().where(ApiKey.id == key.id).tuples().get()]
    assert secret not in stored


def test_the_form_needs_its_csrf_token(alice):
    response = alice.post("/member/api/", data={"label": "x"})
    assert response.status_code == 400
    with all_sites():
        assert ApiKey.select().count() == 0


def test_revoking_a_key_refuses_its_signatures(host, alice):
    page = text(create_key(alice))
    secret, app_key = SECRET_RE.search(page).group(1), APP_KEY_RE.search(page).group(1)
    key = key_row(app_key)
    token = csrf_token(alice.get("/member/api/"))
    assert alice.post(f"/member/api/{key.id}/revoke", data={}).status_code == 400  # no token
    assert key_row(app_key).status == "active"
    assert alice.post(f"/member/api/{key.id}/revoke", data={"csrf_token": token}).status_code == 302
    assert key_row(app_key).status == "revoked" and keys.find_active(app_key) is None
    assert not signed_request_authenticates(host, "main", app_key, secret)
    listed = text(alice.get("/member/api/"))
    assert f'id="key-{key.id}" class="key-revoked"' in listed


def test_at_most_five_active_keys(alice):
    for n in range(keys.MAX_KEYS_PER_MEMBER):
        assert create_key(alice, label=f"k{n}").status_code == 200
    refused = create_key(alice, label="one too many")
    assert refused.status_code == 400 and SECRET_RE.search(text(refused)) is None
    with all_sites():
        assert ApiKey.select().where(ApiKey.status == "active").count() == keys.MAX_KEYS_PER_MEMBER
        first = ApiKey.select().order_by(ApiKey.id).first()
    token = csrf_token(alice.get("/member/api/"))
    alice.post(f"/member/api/{first.id}/revoke", data={"csrf_token": token})
    assert create_key(alice, label="after a revoke").status_code == 200


REFUSED_URLS = [
    "http://10.0.0.1/callback",
    "http://169.254.169.254/latest/meta-data",
    "http://127.0.0.1:8080/callback",
    "http://[::1]/callback",
    "http://[::ffff:127.0.0.1]/callback",
    "https://internal.example.com/callback",  # a name that resolves to a private address
    "https://mixed.example.com/callback",  # one of its addresses is private
    "ftp://reseller.example.com/callback",
    "https://user:pass@reseller.example.com/callback",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_a_callback_url_to_a_private_address_is_refused_at_its_field(alice, public_dns, url):
    response = create_key(alice, callback_url=url)
    assert response.status_code == 400
    page = text(response)
    assert re.search(r'id="callback_url"[^>]*>\s*<span class="error">[^<]+</span>', page), page
    assert SECRET_RE.search(page) is None
    with all_sites():
        assert ApiKey.select().count() == 0


def test_a_public_callback_url_is_kept_and_can_be_changed(alice, public_dns):
    page = text(create_key(alice, callback_url="https://reseller.example.com/cb?shop=1"))
    key = key_row(APP_KEY_RE.search(page).group(1))
    assert key.callback_url == "https://reseller.example.com/cb?shop=1"
    token = csrf_token(alice.get("/member/api/"))
    refused = alice.post(f"/member/api/{key.id}/callback", data={"csrf_token": token,
                                                                 "callback_url": "http://169.254.169.254/"})
    assert refused.status_code == 400
    assert re.search(rf'id="callback-{key.id}"[^>]*>\s*<span class="error">[^<]+</span>', text(refused))
    assert key_row(key.app_key).callback_url == "https://reseller.example.com/cb?shop=1"
    saved = alice.post(f"/member/api/{key.id}/callback", data={"csrf_token": token,
                                                               "callback_url": " https://reseller.example.com/v2 "})
    assert saved.status_code == 302 and key_row(key.app_key).callback_url == "https://reseller.example.com/v2"
    cleared = alice.post(f"/member/api/{key.id}/callback", data={"csrf_token": token, "callback_url": ""})
    assert cleared.status_code == 302 and key_row(key.app_key).callback_url == ""


def test_loopback_needs_the_switch_and_a_non_production_instance(host, alice, monkeypatch):
    from kamengsite.api import callbacks

    assert create_key(alice, callback_url="http://127.0.0.1:9/cb").status_code == 400
    monkeypatch.setenv(callbacks.LOOPBACK_ENV, "1")
    assert callbacks.loopback_allowed(host.instance)
    assert create_key(alice, callback_url="http://10.0.0.1/cb").status_code == 400  # private stays refused
    assert create_key(alice, callback_url="http://169.254.169.254/cb").status_code == 400
    assert create_key(alice, callback_url="http://127.0.0.1:9/cb").status_code == 200
    monkeypatch.setattr(host.instance, "production", True)
    assert not callbacks.loopback_allowed(host.instance)
    monkeypatch.setattr(host.instance, "production", False)
    monkeypatch.setenv(callbacks.LOOPBACK_ENV, "yes")
    assert not callbacks.loopback_allowed(host.instance)


def test_a_member_reaches_only_their_own_keys_on_their_own_site(host, alice, client_for):
    main = site_id("main")
    shopb = open_plugin_site(host, "shopb", ())
    bob = members.register(main, "bob@example.com", PASSWORD)
    carol = members.register(shopb, "carol@example.com", PASSWORD)
    bobs, _secret = keys.issue_key(main, bob.id, host.instance.secret_key, label="bob's")
    carols, _secret = keys.issue_key(shopb, carol.id, host.instance.secret_key, label="carol's")
    page = text(alice.get("/member/api/"))
    assert bobs.app_key not in page and carols.app_key not in page
    token = csrf_token(alice.get("/member/api/"))
    for key in (bobs, carols):
        assert alice.post(f"/member/api/{key.id}/revoke", data={"csrf_token": token}).status_code == 404
        assert alice.post(f"/member/api/{key.id}/callback",
                          data={"csrf_token": token, "callback_url": ""}).status_code == 404
        assert key_row(key.app_key).status == "active"
    # Carol, on her own site, sees hers only.
    carol_client = sign_in_member(client_for("shopb.localhost"), "carol@example.com", PASSWORD)
    own = text(carol_client.get("/member/api/"))
    assert carols.app_key in own and bobs.app_key not in own


# -- the console -----------------------------------------------------------------------------------


@pytest.fixture
def console(host, client_for):
    create_account(site_id("main"), "boss", PASSWORD)
    return sign_in_console(client_for("main.localhost"), "boss", PASSWORD)


def test_the_console_lists_and_revokes_the_sites_keys(host, console, alice):
    main = site_id("main")
    shopb = open_plugin_site(host, "shopb", ())
    carol = members.register(shopb, "carol@example.com", PASSWORD)
    mine, _secret = keys.issue_key(main, alice.member.id, host.instance.secret_key, label="alice's shop")
    theirs, _secret = keys.issue_key(shopb, carol.id, host.instance.secret_key, label="carol's")
    page = console.get("/admin/api/")
    assert page.status_code == 200
    body = text(page)
    assert mine.app_key in body and "alice@example.com" in body and "alice&#39;s shop" in body
    assert theirs.app_key not in body and "carol@example.com" not in body
    assert 'href="/admin/api/"' in body  # in the console menu
    token = csrf_token(page)
    assert console.post(f"/admin/api/keys/{theirs.id}/revoke", data={"csrf_token": token}).status_code == 404
    assert key_row(theirs.app_key).status == "active"
    assert console.post(f"/admin/api/keys/{mine.id}/revoke", data={}).status_code == 400
    assert console.post(f"/admin/api/keys/{mine.id}/revoke", data={"csrf_token": token}).status_code == 302
    assert key_row(mine.app_key).status == "revoked"


def test_a_sub_sites_console_sees_its_own_members_keys_only(host, client_for):
    main, shopb = site_id("main"), open_plugin_site(host, "shopb", ())
    alice = members.register(main, "alice@example.com", PASSWORD)
    carol = members.register(shopb, "carol@example.com", PASSWORD)
    alices, _secret = keys.issue_key(main, alice.id, host.instance.secret_key)
    carols, _secret = keys.issue_key(shopb, carol.id, host.instance.secret_key)
    create_account(shopb, "owner", PASSWORD)
    owner = sign_in_console(client_for("shopb.localhost"), "owner", PASSWORD)
    page = owner.get("/admin/api/")
    assert carols.app_key in text(page) and alices.app_key not in text(page)
    assert owner.post(f"/admin/api/keys/{alices.id}/revoke",
                      data={"csrf_token": csrf_token(page)}).status_code == 404
    assert key_row(alices.app_key).status == "active"


@pytest.mark.parametrize("areas, allowed", [("orders", False), ("members", True)])
def test_staff_need_the_members_area(host, client_for, areas, allowed):
    main = site_id("main")
    alice = members.register(main, "alice@example.com", PASSWORD)
    key, _secret = keys.issue_key(main, alice.id, host.instance.secret_key)
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions=areas).where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    page = clerk.get("/admin/api/")
    assert page.status_code == (200 if allowed else 403)
    token = csrf_token(clerk.get("/admin/account")) if not allowed else csrf_token(page)
    revoked = clerk.post(f"/admin/api/keys/{key.id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == (302 if allowed else 403)
    assert key_row(key.app_key).status == ("revoked" if allowed else "active")
