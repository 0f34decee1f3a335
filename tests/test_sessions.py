"""Sessions (kamengsite/app.py): a session cookie of one site is worthless on every other site."""

from __future__ import annotations

import pytest
from flask import jsonify, request, session

from kamengsite.host import Host
from kamengsite.instance import Instance

from conftest import SiteClient

COOKIE = "ks_session"


def session_routes(app, site):
    """Test-only routes: store a value in the session, read it back."""

    @app.get("/_test/session/set")  # GET: the storefront's CSRF protection guards every POST
    def _set():
        session["who"] = request.args["who"]
        return "stored"

    @app.get("/_test/session")
    def _get():
        return jsonify(site=site.slug, who=session.get("who"))


@pytest.fixture
def shops(host, register_plugin):
    register_plugin(host, session_routes, name="test_sessions")  # core: on every site
    host.registry.create("shop1", template="shop", domains=["shop1.example.com"])
    host.registry.create("shop2", template="shop")
    return host


def login(host, host_name, who) -> str:
    """Store ``who`` in the session on ``host_name``; return the raw session cookie value."""
    response = SiteClient(host, host_name).get("/_test/session/set", query_string={"who": who})
    assert response.status_code == 200 and response.text == "stored"
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{COOKIE}=")]
    assert len(cookies) == 1, response.headers
    return cookies[0].split(";", 1)[0].split("=", 1)[1]


def who_on(host, host_name, cookie_value):
    """Replay a cookie on ``host_name`` the way an attacker would: sent by hand, whatever its origin."""
    client = SiteClient(host, host_name, use_cookies=False)
    response = client.get("/_test/session", headers={"Cookie": f"{COOKIE}={cookie_value}"})
    assert response.status_code == 200, response.text[:300]
    return response.get_json()["who"]


def test_session_of_one_site_is_void_on_another(shops):
    cookie = login(shops, "shop1.localhost", "alice")
    assert who_on(shops, "shop1.localhost", cookie) == "alice"  # valid where it was issued
    assert who_on(shops, "shop2.localhost", cookie) is None
    assert who_on(shops, "localhost", cookie) is None  # the main site is just another site
    assert who_on(shops, "shop1.localhost", cookie) == "alice"  # and still valid on shop1 afterwards


def test_main_site_session_is_void_on_sub_sites(shops):
    cookie = login(shops, "localhost", "operator")
    assert who_on(shops, "localhost", cookie) == "operator"
    assert who_on(shops, "shop1.localhost", cookie) is None
    assert who_on(shops, "shop2.localhost", cookie) is None


def test_session_belongs_to_the_site_not_the_host_name(shops):
    cookie = login(shops, "shop1.example.com", "bob")
    assert who_on(shops, "shop1.localhost", cookie) == "bob"
    assert who_on(shops, "shop2.localhost", cookie) is None


def test_each_site_keeps_its_own_session(shops):
    one = login(shops, "shop1.localhost", "alice")
    two = login(shops, "shop2.localhost", "mallory")
    assert one != two
    assert who_on(shops, "shop1.localhost", one) == "alice"
    assert who_on(shops, "shop2.localhost", two) == "mallory"
    assert who_on(shops, "shop1.localhost", two) is None
    assert who_on(shops, "shop2.localhost", one) is None


def test_a_browser_keeps_sessions_apart(shops):
    """One browser visiting two sites: each site only ever sees its own session."""
    browser = SiteClient(shops, "shop1.localhost")
    browser.get("/_test/session/set", query_string={"who": "alice"})
    assert browser.get("/_test/session").get_json() == {"site": "shop1", "who": "alice"}
    assert browser.get("/_test/session", headers={"Host": "shop2.localhost"}).get_json() == {"site": "shop2", "who": None}


def test_cookie_is_host_only_and_http_only(shops):
    response = SiteClient(shops, "shop1.localhost").get("/_test/session/set", query_string={"who": "alice"})
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{COOKIE}="))
    attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert not any(a.startswith("domain") for a in attributes)  # never shared with sibling sub-domains
    assert "httponly" in attributes
    assert "samesite=lax" in attributes


def test_tampered_cookie_is_ignored(shops):
    cookie = login(shops, "shop1.localhost", "alice")
    assert who_on(shops, "shop1.localhost", cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None


def test_session_of_another_instance_is_void(shops, host_factory, register_plugin):
    """Same slug, other instance (other generated secret): the cookie does not carry over."""
    cookie = login(shops, "shop1.localhost", "alice")
    other = host_factory(name="other")
    register_plugin(other, session_routes, name="test_sessions")
    other.registry.create("shop1", template="shop")
    assert other.instance.secret_key != shops.instance.secret_key
    assert who_on(other, "shop1.localhost", cookie) is None
    assert who_on(shops, "shop1.localhost", cookie) == "alice"


def test_rotating_the_secret_key_ends_every_session(shops, monkeypatch):
    cookie = login(shops, "shop1.localhost", "alice")
    monkeypatch.setenv("KAMENGSITE_SECRET_KEY", "rotated-" + shops.instance.secret_key[:8])
    rotated = Host(Instance.load(shops.instance.path), plugins=shops.plugins)
    assert who_on(rotated, "shop1.localhost", cookie) is None


def test_site_plugins_run_only_where_enabled(host, register_plugin, site_files):
    """A non-core plugin's routes exist on the sites that list it in ``plugins`` and nowhere else."""
    register_plugin(host, session_routes, name="test_sessions", core=False)
    host.registry.create("shop1", template="shop")
    host.registry.create("shop2", template="shop")
    site_files.edit("shop1", plugins=["test_sessions"])
    assert SiteClient(host, "shop1.localhost").get("/_test/session").status_code == 200
    assert SiteClient(host, "shop2.localhost").get("/_test/session").status_code == 404
    assert SiteClient(host, "localhost").get("/_test/session").status_code == 404
