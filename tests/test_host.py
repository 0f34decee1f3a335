"""Host dispatch (kamengsite/host.py): the Host header picks the site; nothing else ever leaks."""

from __future__ import annotations

import shutil

import pytest

from kamengsite.db import database
from kamengsite.host import Host
from kamengsite.models import Site, SiteDomain

from conftest import SiteClient

MAIN_NAME = "卡盟主站"  # sites/main/site.toml, the template of the main site
UNKNOWN = "站点不存在"  # kamengsite/templates/unknown_host.html
UNAVAILABLE = "站点维护中"  # kamengsite/templates/unavailable.html


def site_of(response):
    """The slug the response came from (/healthz answers with it)."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return response.get_json()["site"]


def assert_host_page(response, status, marker, *leaks):
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert marker in response.text
    assert "/static/theme.css" not in response.text  # no theme: the host's own page
    for leak in (MAIN_NAME, *leaks):
        assert leak not in response.text


@pytest.fixture
def shops(host):
    """Two sub-sites: shop1 (light, custom domain) and shop2 (dark)."""
    host.registry.create("shop1", template="shop", name="一号小店", domains=["shop1.example.com"])
    host.registry.create("shop2", template="gaming", name="二号电竞")
    return host


# -- which site answers --------------------------------------------------------------------------


def test_subdomain_serves_its_site(shops, client_for):
    response = client_for("shop1.localhost").get("/")
    assert response.status_code == 200
    assert "一号小店" in response.text
    assert "二号电竞" not in response.text and MAIN_NAME not in response.text
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"


def test_each_site_wears_its_theme(shops, client_for):
    assert "theme-light" in client_for("shop1.localhost").get("/").text
    assert "theme-dark" in client_for("shop2.localhost").get("/").text


@pytest.mark.parametrize("host_name", ["localhost", "www.localhost", "main.localhost", "localhost:8000", "WWW.LocalHost."])
def test_base_domain_and_www_serve_the_main_site(shops, client_for, host_name):
    assert site_of(client_for(host_name).get("/healthz")) == "main"
    assert MAIN_NAME in client_for(host_name).get("/").text


def test_custom_domain_serves_its_site(shops, client_for):
    assert site_of(client_for("shop1.example.com").get("/healthz")) == "shop1"
    assert "一号小店" in client_for("shop1.example.com").get("/").text


@pytest.mark.parametrize("host_name", [
    "SHOP1.LOCALHOST", "shop1.localhost.", "shop1.localhost:8080", "Shop1.LocalHost.:443",
])
def test_subdomain_host_header_is_normalised(shops, client_for, host_name):
    assert site_of(client_for(host_name).get("/healthz")) == "shop1"


@pytest.mark.parametrize("host_name", ["SHOP1.Example.COM", "shop1.example.com.", "shop1.example.com:8443"])
def test_custom_domain_host_header_is_normalised(shops, client_for, host_name):
    assert site_of(client_for(host_name).get("/healthz")) == "shop1"


def test_custom_domains_on_another_base_domain(host_factory):
    host = host_factory(base_domain="kameng.example.com")
    host.registry.create("shop1", template="shop", domains=["www.shop1.cn"])
    assert SiteClient(host, "kameng.example.com").get("/healthz").get_json()["site"] == "main"
    assert SiteClient(host, "shop1.kameng.example.com").get("/healthz").get_json()["site"] == "shop1"
    assert SiteClient(host, "www.shop1.cn").get("/healthz").get_json()["site"] == "shop1"
    assert SiteClient(host, "shop1.localhost").get("/").status_code == 404  # localhost is not this platform


# -- nobody answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("host_name", [
    "nosuch.localhost",         # no such folder
    "example.org",              # a domain nobody bound
    "other.example.com",        # a sibling of a bound domain
    "x.shop1.example.com",      # under a bound domain
    "a.shop1.localhost",        # two labels under the base domain
    "shop1.localhost.evil.com",
    "www.shop1.localhost",
    "admin.localhost",          # reserved labels never name a site
])
def test_unknown_host_gets_the_host_page(shops, client_for, host_name):
    for path in ("/", "/healthz", "/static/theme.css"):
        assert_host_page(client_for(host_name).get(path), 404, UNKNOWN, "一号小店", "二号电竞")


@pytest.mark.parametrize("host_name", [
    "[::1]", "[::1]:8000", "[2001:db8::1]:443", "127.0.0.1", "127.0.0.1:8000", "shop1 .localhost",
    "shop1.localhost@evil.com", "shop1..localhost", "-shop1.localhost", "shop1_x.localhost", "*.localhost",
    "../main.localhost", "shop1.localhost/x", "\u5c0f\u5e97.localhost",
])
def test_ipv6_ip_and_garbage_hosts_get_404(shops, client_for, host_name):
    assert_host_page(client_for(host_name).get("/"), 404, UNKNOWN, "一号小店")


def test_unknown_host_does_not_touch_the_cache(shops, client_for):
    client_for("nosuch.localhost").get("/")
    client_for("example.org").get("/")
    assert shops.cached_sites() == []


def test_404_inside_a_site_is_the_site_page(shops, client_for):
    response = client_for("shop1.localhost").get("/no/such/page")
    assert response.status_code == 404
    assert "页面不存在" in response.text and "一号小店" in response.text


def test_deleted_site_folder_stops_serving(shops, client_for):
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"
    shutil.rmtree(shops.registry.root / "shop2")
    assert_host_page(client_for("shop2.localhost").get("/"), 404, UNKNOWN, "二号电竞")
    assert site_of(client_for("shop1.localhost").get("/healthz")) == "shop1"


# -- broken and closed sites -----------------------------------------------------------------------


BREAKAGES = {
    "toml syntax": lambda files: files.write_text("shop1", 'name = "unterminated\ntheme = "light"\n'),
    "missing name": lambda files: files.write_text("shop1", 'theme = "light"\n'),
    "unknown key": lambda files: files.edit("shop1", colour="red"),
    "unknown theme": lambda files: files.edit("shop1", theme="neon"),
    "bad domain": lambda files: files.edit("shop1", domains=["Not A Domain"]),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_site_gets_503_while_others_serve_and_it_recovers(shops, client_for, site_files, breakage):
    good = site_files.read("shop1")
    assert site_of(client_for("shop1.localhost").get("/healthz")) == "shop1"

    BREAKAGES[breakage](site_files)
    for _ in range(2):  # the failure is cached per folder version, and stays a failure
        assert_host_page(client_for("shop1.localhost").get("/"), 503, UNAVAILABLE, "一号小店")
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"
    assert site_of(client_for("localhost").get("/healthz")) == "main"

    site_files.write("shop1", {**good, "name": "一号小店已修好"})
    response = client_for("shop1.localhost").get("/")
    assert response.status_code == 200 and "一号小店已修好" in response.text


def test_broken_site_behind_its_custom_domain_gets_503(shops, client_for, site_files):
    assert site_of(client_for("shop1.example.com").get("/healthz")) == "shop1"
    site_files.edit("shop1", theme="neon")
    assert_host_page(client_for("shop1.example.com").get("/"), 503, UNAVAILABLE, "一号小店")


def test_broken_site_never_blocks_a_fresh_host(shops, client_for, site_files):
    """A host started while a folder is broken serves every other site."""
    site_files.write_text("shop2", "this is not toml")
    fresh = Host(shops.instance)
    assert SiteClient(fresh, "shop1.localhost").get("/healthz").get_json()["site"] == "shop1"
    assert SiteClient(fresh, "shop2.localhost").get("/").status_code == 503


def test_disabled_site_shows_the_closed_page(shops, client_for):
    assert site_of(client_for("shop1.localhost").get("/healthz")) == "shop1"
    shops.registry.update("shop1", enabled=False)
    for host_name in ("shop1.localhost", "shop1.example.com"):
        for path in ("/", "/healthz", "/static/theme.css"):
            response = client_for(host_name).get(path)
            assert response.status_code == 503
            assert "一号小店 暂停营业" in response.text  # the closed page names the shop
            assert "暂无商品" not in response.text  # and shows none of its content
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"

    shops.registry.update("shop1", enabled=True)
    assert site_of(client_for("shop1.localhost").get("/healthz")) == "shop1"


def test_site_disabled_by_editing_its_folder_is_closed(shops, client_for, site_files):
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"
    site_files.edit("shop2", enabled=False)
    assert client_for("shop2.localhost").get("/").status_code == 503


# -- custom domains follow the folder, not the index ----------------------------------------------


def test_domain_removed_from_the_folder_stops_serving(shops, client_for, site_files):
    assert site_of(client_for("shop1.example.com").get("/healthz")) == "shop1"  # now cached as shop1's
    site_files.edit("shop1", domains=[])
    assert_host_page(client_for("shop1.example.com").get("/"), 404, UNKNOWN, "一号小店")
    assert_host_page(client_for("shop1.example.com").get("/"), 404, UNKNOWN, "一号小店")
    assert site_of(client_for("shop1.localhost").get("/healthz")) == "shop1"


def test_stale_domain_index_never_serves_the_wrong_site(shops, client_for):
    """The index says stale.example.com is shop2's; shop2's folder does not list it: 404."""
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"  # shop2's app is cached
    with database.connection_context():
        SiteDomain.create(domain="stale.example.com", site=Site.get(Site.slug == "shop2"))
    for _ in range(2):
        assert_host_page(client_for("stale.example.com").get("/"), 404, UNKNOWN, "二号电竞")
    assert site_of(client_for("shop2.localhost").get("/healthz")) == "shop2"


def test_stale_domain_index_on_a_fresh_host(shops):
    with database.connection_context():
        SiteDomain.create(domain="stale.example.com", site=Site.get(Site.slug == "shop2"))
    fresh = Host(shops.instance)
    response = SiteClient(fresh, "stale.example.com").get("/")
    assert response.status_code == 404 and "二号电竞" not in response.text


def test_domain_moved_to_another_site(shops, client_for):
    assert site_of(client_for("shop1.example.com").get("/healthz")) == "shop1"
    shops.registry.update("shop1", domains=[])
    shops.registry.update("shop2", domains=["shop1.example.com"])
    assert site_of(client_for("shop1.example.com").get("/healthz")) == "shop2"


# -- the app cache ---------------------------------------------------------------------------------


def test_apps_are_built_once_per_folder_version(shops, client_for, site_files):
    client_for("shop1.localhost").get("/")
    app = shops.app_for("shop1")
    client_for("shop1.localhost").get("/healthz")
    assert shops.app_for("shop1") is app
    site_files.edit("shop1", tagline="新的标语")
    assert "新的标语" in client_for("shop1.localhost").get("/").text
    assert shops.app_for("shop1") is not app


def test_lru_bound_is_respected_while_every_site_serves(host_factory):
    host = host_factory(app_cache_size=2)
    assert host.cache_size == 2
    slugs = ["main"] + [f"shop{i}" for i in range(1, 6)]
    for slug in slugs[1:]:
        host.registry.create(slug, template="shop", name=f"店铺{slug}")
    recent = []
    for _ in range(2):
        for slug in slugs + slugs[::-1]:
            response = SiteClient(host, f"{slug}.localhost").get("/healthz")
            assert response.status_code == 200 and response.get_json()["site"] == slug
            recent = [s for s in recent if s != slug] + [slug]
            assert len(host.cached_sites()) <= 2
            assert sorted(host.cached_sites()) == sorted(recent[-2:])  # the least recently used went


def test_cache_of_one(host_factory):
    host = host_factory(app_cache_size=1)
    host.registry.create("shop1", template="shop", name="一号")
    for _ in range(3):
        assert "一号" in SiteClient(host, "shop1.localhost").get("/").text
        assert MAIN_NAME in SiteClient(host, "localhost").get("/").text
        assert host.cached_sites() == ["main"]


def test_a_plugin_failing_while_a_site_is_built_takes_down_that_site_only(host, client_for):
    from kamengsite.hookspecs import hookimpl

    class Exploding:
        @hookimpl
        def prepare_site_app(self, app, site):
            if site.slug == "shop1":
                raise RuntimeError("plugin bug")

    host.plugins.register(Exploding(), name="exploding")
    host.plugins.core.add("exploding")
    host.registry.create("shop1", template="shop")
    host.registry.create("shop2", template="shop")
    assert client_for("shop1.localhost").get("/").status_code == 503
    assert client_for("shop2.localhost").get("/").status_code == 200


@pytest.mark.parametrize("proxies, expected", [(0, "127.0.0.1"), (1, "203.0.113.9")])
def test_client_address_comes_from_the_proxy_only_when_trusted(tmp_path, proxies, expected):
    from conftest import SiteClient, make_host, make_instance
    from kamengsite.hookspecs import hookimpl

    instance = make_instance(tmp_path / "i", f"sqlite:///{tmp_path / 'i.db'}", trusted_proxies=proxies)
    host = make_host(instance)

    class WhoAmI:
        @hookimpl
        def prepare_site_app(self, app, site):
            from flask import request

            app.add_url_rule("/whoami", "whoami", lambda: request.remote_addr)

    host.plugins.register(WhoAmI(), name="whoami")
    host.plugins.core.add("whoami")
    client = SiteClient(host, "main.localhost")
    response = client.get("/whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                          environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.get_data(as_text=True) == expected


def test_404_inside_a_site_speaks_the_visitors_language(shops, client_for):
    client = client_for("shop1.localhost")
    chinese = client.get("/no/such/page")
    assert '<html lang="zh-CN">' in chinese.text and "返回首页" in chinese.text
    english = client.get("/no/such/page?lang=en")
    assert english.status_code == 404 and '<html lang="en">' in english.text
    assert "Page not found" in english.text and "Back to the home page" in english.text
    assert "页面不存在" not in english.text and "一号小店" in english.text  # the site's name is content
