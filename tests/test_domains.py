"""Binding an owner's own domain (kamengsite/domains.py): claims, proof by HTTP (a fake fetcher,
the host answering the well-known path, and the real fetcher against a local server) and by DNS
(a fake resolver), refusals, the owner's console, and tenant isolation."""

from __future__ import annotations

import http.server
import sys
import threading
import time

import pytest

from kamengsite import domains
from kamengsite.domains import DomainClaim, DomainError, HttpFetcher
from kamengsite.levels import seed_default_levels
from kamengsite.models import Site, SiteDomain
from kamengsite.tenancy import all_sites
from kamengsite.testing import SiteClient
from test_opening import open_site, owner_login, text, token

BASE = "localhost"


class FakeFetcher:
    """Answers the well-known path of each domain with the given body."""

    def __init__(self, bodies):
        self.bodies = bodies
        self.asked = []

    def fetch(self, domain, path):
        self.asked.append((domain, path))
        if domain not in self.bodies:
            raise DomainError(f"无法访问 {domain}")
        return self.bodies[domain]


class FakeResolver:
    def __init__(self, records):
        self.records = records
        self.asked = []

    def txt(self, name):
        self.asked.append(name)
        return self.records.get(name, [])


class HostFetcher:
    """Fetches through the host itself, as if the domain's DNS pointed at the platform."""

    def __init__(self, host):
        self.host = host

    def fetch(self, domain, path):
        response = SiteClient(self.host, domain).get(path)
        if response.status_code != 200:
            raise DomainError(f"HTTP {response.status_code}")
        return text(response)


@pytest.fixture
def sites(host):
    """``silver1`` and ``silver2`` may bind domains (白银); ``bronze1`` may not (青铜)."""
    seed_default_levels()
    for slug, level in (("silver1", "silver"), ("silver2", "silver"), ("bronze1", "bronze")):
        open_site(host.registry, slug, level=level, username="owner")
    return {slug: Site.get(Site.slug == slug) for slug in ("silver1", "silver2", "bronze1")}


def claim_of(site_id, claim_id) -> DomainClaim:
    with all_sites():
        return DomainClaim.get_by_id(claim_id)


# -- what may be claimed ---------------------------------------------------------------------------


def test_domains_are_normalised():
    assert domains.normalize_domain("  Shop.Example.COM. ") == "shop.example.com"
    assert domains.normalize_domain("例子.中国") == "xn--fsqu00a.xn--fiqs8s"


@pytest.mark.parametrize("odd", [
    "", "http://shop.example.com", "shop.example.com/path", "shop.example.com:8080", "../etc/passwd",
    "shop..example.com", "-shop.example.com", "127.0.0.1", "[::1]", "localhost", "shop example.com",
    "shop.exa\nmple.com", "shop.example.com/", "a" * 64 + ".com", ("a" * 60 + ".") * 5 + "com", "*.example.com",
    "shop.example.c0m-",
])
def test_odd_domains_are_refused(sites, odd):
    with pytest.raises(DomainError):
        domains.claim(sites["silver1"], odd, base_domain=BASE)
    with all_sites():
        assert DomainClaim.select().count() == 0


def test_the_platforms_own_domain_and_levels_without_domains_are_refused(sites):
    with pytest.raises(DomainError, match="under the platform's domain"):
        domains.claim(sites["silver1"], "evil.localhost", base_domain=BASE)
    with pytest.raises(DomainError, match="current level cannot bind"):
        domains.claim(sites["bronze1"], "bronze.example.com", base_domain=BASE)


def test_a_claim_has_a_random_token_and_is_made_once(sites):
    first = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    again = domains.claim(sites["silver1"], "SHOP.example.com", base_domain=BASE)
    other = domains.claim(sites["silver2"], "shop.example.com", base_domain=BASE)  # a rival may claim too
    assert again.id == first.id and again.token == first.token
    assert other.id != first.id and other.token != first.token and len(first.token) >= 32


# -- proof by HTTP ------------------------------------------------------------------------------------


def test_http_proof_binds_the_domain_and_it_serves_the_site(host, sites, client_for):
    found = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    assert client_for("shop.example.com").get("/").status_code == 404  # not bound yet
    fetcher = FakeFetcher({"shop.example.com": found.token + "\n"})
    verified = domains.verify(host.registry, sites["silver1"].id, found.id, "http", fetcher=fetcher)
    assert fetcher.asked == [("shop.example.com", "/.well-known/kamengsite-verification.txt")]
    assert (verified.status, verified.method) == ("verified", "http")
    assert host.registry.load("silver1").domains == ("shop.example.com",)
    assert SiteDomain.get(SiteDomain.domain == "shop.example.com").site_id == sites["silver1"].id
    assert client_for("shop.example.com").get("/healthz").get_json()["site"] == "silver1"


def test_a_wrong_token_is_refused_and_recorded(host, sites):
    found = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    for body in ("not-the-token", found.token[:-1], "", found.token + "x"):
        with pytest.raises(DomainError, match="does not match"):
            domains.verify(host.registry, sites["silver1"].id, found.id, "http",
                           fetcher=FakeFetcher({"shop.example.com": body}))
    after = claim_of(sites["silver1"].id, found.id)
    assert after.status == "pending" and "does not match" in after.last_error and after.method == "http"
    assert host.registry.load("silver1").domains == ()


def test_the_host_answers_the_well_known_path_for_a_pending_claim(host, sites, client_for):
    found = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    answer = client_for("shop.example.com").get("/.well-known/kamengsite-verification.txt")
    assert answer.status_code == 200 and text(answer).strip() == found.token
    assert client_for("other.example.com").get("/.well-known/kamengsite-verification.txt").status_code == 404
    assert client_for("shop.example.com").get("/").status_code == 404  # nothing else is served there
    verified = domains.verify(host.registry, sites["silver1"].id, found.id, "http", fetcher=HostFetcher(host))
    assert verified.status == "verified"
    assert client_for("shop.example.com").get("/healthz").get_json()["site"] == "silver1"


def test_with_two_claims_the_host_answers_neither_and_dns_decides(host, sites, client_for):
    mine = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    rival = domains.claim(sites["silver2"], "shop.example.com", base_domain=BASE)
    assert client_for("shop.example.com").get("/.well-known/kamengsite-verification.txt").status_code == 404
    with pytest.raises(DomainError, match="HTTP 404"):
        domains.verify(host.registry, sites["silver2"].id, rival.id, "http", fetcher=HostFetcher(host))
    resolver = FakeResolver({"_kamengsite.shop.example.com": ["v=other", mine.token]})
    assert domains.verify(host.registry, sites["silver1"].id, mine.id, "dns", resolver=resolver).status == "verified"
    assert resolver.asked == ["_kamengsite.shop.example.com"]
    # The rival's claim is settled, and a new claim on the bound domain is refused.
    assert claim_of(sites["silver2"].id, rival.id).status == "superseded"
    with pytest.raises(DomainError, match="already bound to another site"):
        domains.claim(sites["silver2"], "shop.example.com", base_domain=BASE)
    with pytest.raises(DomainError, match="claim the domain again"):
        domains.verify(host.registry, sites["silver2"].id, rival.id, "dns",
                       resolver=FakeResolver({"_kamengsite.shop.example.com": [rival.token]}))
    assert host.registry.load("silver2").domains == ()


# -- proof by DNS ---------------------------------------------------------------------------------------


def test_dns_proof(host, sites):
    found = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    with pytest.raises(DomainError, match="No verification code found in the TXT records of _kamengsite.shop.example.com"):
        domains.verify(host.registry, sites["silver1"].id, found.id, "dns", resolver=FakeResolver({}))
    with pytest.raises(DomainError, match="do not match"):
        domains.verify(host.registry, sites["silver1"].id, found.id, "dns",
                       resolver=FakeResolver({"_kamengsite.shop.example.com": ["wrong"]}))
    ok = FakeResolver({"_kamengsite.shop.example.com": [f" {found.token} "]})
    assert domains.verify(host.registry, sites["silver1"].id, found.id, "dns", resolver=ok).status == "verified"
    assert host.registry.load("silver1").domains == ("shop.example.com",)


def test_without_dnspython_dns_proof_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    monkeypatch.setitem(sys.modules, "dns.exception", None)
    with pytest.raises(DomainError, match="dnspython"):
        domains.DnsResolver().txt("_kamengsite.shop.example.com")


def test_a_domain_bound_elsewhere_or_a_level_that_changed_is_refused_at_proof(host, sites, site_files):
    found = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    host.registry.update("silver2", domains=["shop.example.com"])  # the operator bound it by hand meanwhile
    with pytest.raises(DomainError, match="already bound to another site"):
        domains.verify(host.registry, sites["silver1"].id, found.id, "http",
                       fetcher=FakeFetcher({"shop.example.com": found.token}))
    second = domains.claim(sites["silver1"], "two.example.com", base_domain=BASE)
    Site.update(level="bronze").where(Site.id == sites["silver1"].id).execute()
    with pytest.raises(DomainError, match="current level cannot bind"):
        domains.verify(host.registry, sites["silver1"].id, second.id, "http",
                       fetcher=FakeFetcher({"two.example.com": second.token}))
    assert host.registry.load("silver1").domains == ()


# -- the real fetcher, against a server on this machine ---------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - the stdlib's name
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0))
        if delay:
            time.sleep(delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the fetcher gave up (timeout, size): what it is meant to do
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    _Handler.routes = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Handler.routes
    server.shutdown()
    server.server_close()


def local_fetcher(port, **kwargs):
    return HttpFetcher(allow_private=True, resolve=lambda domain: ["127.0.0.1"], port=port, **kwargs)


def test_the_fetcher_never_touches_private_addresses_unless_told(local_server):
    port, routes = local_server
    routes["/t"] = (200, {}, b"TOKEN", 0)
    for address in ("127.0.0.1", "10.0.0.8", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1"):
        fetcher = HttpFetcher(resolve=lambda domain, a=address: [a], port=port)
        with pytest.raises(DomainError, match="private or reserved address"):
            fetcher.fetch("shop.example.com", "/t")
    # A public first answer does not let a private second one through.
    with pytest.raises(DomainError, match="private or reserved address"):
        HttpFetcher(resolve=lambda domain: ["93.184.216.34", "127.0.0.1"], port=port).fetch("shop.example.com", "/t")
    assert local_fetcher(port).fetch("shop.example.com", "/t") == "TOKEN"


def test_the_fetcher_follows_redirects_on_the_same_host_only(local_server):
    port, routes = local_server
    routes["/same"] = (302, {"Location": f"http://shop.example.com:{port}/t"}, b"", 0)
    routes["/relative"] = (301, {"Location": "/t"}, b"", 0)
    routes["/elsewhere"] = (302, {"Location": f"http://169.254.169.254:{port}/t"}, b"", 0)
    routes["/other-port"] = (302, {"Location": "http://shop.example.com:22/t"}, b"", 0)
    routes["/loop"] = (302, {"Location": "/loop"}, b"", 0)
    routes["/t"] = (200, {}, b"TOKEN", 0)
    fetcher = local_fetcher(port)
    assert fetcher.fetch("shop.example.com", "/same") == "TOKEN"
    assert fetcher.fetch("shop.example.com", "/relative") == "TOKEN"
    with pytest.raises(DomainError, match="Redirects to another host are not allowed"):
        fetcher.fetch("shop.example.com", "/elsewhere")
    with pytest.raises(DomainError, match="Redirects to another host are not allowed"):
        fetcher.fetch("shop.example.com", "/other-port")
    with pytest.raises(DomainError, match="Too many redirects"):
        fetcher.fetch("shop.example.com", "/loop")


def test_the_fetcher_limits_size_and_time(local_server):
    port, routes = local_server
    routes["/big"] = (200, {}, b"x" * 5000, 0)
    routes["/slow"] = (200, {}, b"TOKEN", 2)
    routes["/missing-file"] = (404, {}, b"", 0)
    with pytest.raises(DomainError, match="too large"):
        local_fetcher(port).fetch("shop.example.com", "/big")
    started = time.monotonic()
    with pytest.raises(DomainError, match="timed out"):
        local_fetcher(port, timeout=0.3).fetch("shop.example.com", "/slow")
    assert time.monotonic() - started < 1.5
    with pytest.raises(DomainError, match="HTTP 404"):
        local_fetcher(port).fetch("shop.example.com", "/missing-file")


# -- the owner's console, and isolation between sites ---------------------------------------------------------


@pytest.fixture
def fake_checkers(host, register_plugin):
    """The consoles' proofs go through fakes (registered before any site app is built)."""
    checkers = {"fetcher": FakeFetcher({}), "resolver": FakeResolver({})}
    register_plugin(host, lambda app, site: app.extensions.__setitem__("kamengsite.domain_checkers", checkers),
                    name="fake-domain-checkers")
    return checkers


def test_the_owner_claims_and_proves_a_domain_in_the_console(host, fake_checkers, sites, client_for):
    owner = client_for("silver1.localhost")
    assert owner_login(owner).status_code == 302
    page = owner.get("/admin/domains")
    assert page.status_code == 200
    assert owner.post("/admin/domains", data={"domain": "shop.example.com"}).status_code == 400  # no token
    response = owner.post("/admin/domains", data={"csrf_token": token(page), "domain": "shop.example.com"})
    assert response.status_code == 302
    found = domains.claims_of(sites["silver1"].id)[0]
    listing = text(owner.get("/admin/domains"))
    assert found.token in listing and "_kamengsite.shop.example.com" in listing
    fake_checkers["resolver"].records["_kamengsite.shop.example.com"] = [found.token]
    owner.post(f"/admin/domains/{found.id}/verify", data={"csrf_token": token(page), "method": "dns"})
    assert claim_of(sites["silver1"].id, found.id).status == "verified"
    assert "验证成功" in text(owner.get("/admin/domains"))
    assert client_for("shop.example.com").get("/healthz").get_json()["site"] == "silver1"
    owner.post("/admin/domains/unbind", data={"csrf_token": token(page), "domain": "shop.example.com"})
    assert host.registry.load("silver1").domains == ()
    assert client_for("shop.example.com").get("/healthz").status_code == 404


def test_a_bronze_owner_cannot_claim_in_the_console(fake_checkers, sites, client_for):
    owner = client_for("bronze1.localhost")
    owner_login(owner)
    page = owner.get("/admin/domains")
    assert "当前等级不能绑定自己的域名" in text(page)
    response = owner.post("/admin/domains", data={"csrf_token": token(page), "domain": "shop.example.com"})
    assert "当前等级不能绑定自己的域名" in text(response)
    with all_sites():
        assert DomainClaim.select().count() == 0


def test_one_sites_owner_never_sees_or_acts_on_anothers_claims(host, fake_checkers, sites, client_for):
    theirs = domains.claim(sites["silver1"], "shop.example.com", base_domain=BASE)
    fake_checkers["fetcher"].bodies["shop.example.com"] = theirs.token  # even with a valid proof
    intruder = client_for("silver2.localhost")
    owner_login(intruder)
    page = intruder.get("/admin/domains")
    assert "shop.example.com" not in text(page) and theirs.token not in text(page)
    assert intruder.post(f"/admin/domains/{theirs.id}/verify",
                         data={"csrf_token": token(page), "method": "http"}).status_code == 404
    assert intruder.post(f"/admin/domains/{theirs.id}/cancel", data={"csrf_token": token(page)}).status_code == 404
    after = claim_of(sites["silver1"].id, theirs.id)
    assert (after.status, after.last_error, after.checked_at) == ("pending", "", None)
    assert host.registry.load("silver1").domains == () and host.registry.load("silver2").domains == ()
    with pytest.raises(DomainError, match="No such domain claim"):
        domains.verify(host.registry, sites["silver2"].id, theirs.id, "http", fetcher=fake_checkers["fetcher"])
    # The operator's pages do not exist on a sub-site, and one site's login is void on another.
    assert intruder.get("/admin/sites/applications").status_code == 404
    assert intruder.get("/admin/sites/").status_code == 404
    other = client_for("silver1.localhost")
    other.set_cookie("ks_session", intruder.get_cookie("ks_session", domain="silver2.localhost").value,
                     domain="silver1.localhost")
    assert other.get("/admin/domains").status_code == 302  # to the login page


# -- in English ----------------------------------------------------------------------------------


def test_the_owners_domain_page_and_its_errors_in_english(fake_checkers, sites, client_for):
    owner = client_for("silver1.localhost")
    owner_login(owner)
    assert "绑定新域名" in text(owner.get("/admin/domains"))  # Chinese by default
    page = owner.get("/admin/domains?lang=en")
    body = text(page)
    assert "Bind a new domain" in body and "Just the domain itself" in body and "绑定新域名" not in body
    response = owner.post("/admin/domains", data={"csrf_token": token(page), "domain": "evil.localhost"})
    assert "is under the platform&#39;s domain" in text(response)
    owner.post("/admin/domains", data={"csrf_token": token(page), "domain": "shop.example.com"})
    listing = text(owner.get("/admin/domains"))
    assert "Awaiting verification" in listing and "add a DNS TXT record: host <code>_kamengsite.shop.example.com" in listing
    assert "待验证" not in listing
    found = domains.claims_of(sites["silver1"].id)[0]
    owner.post(f"/admin/domains/{found.id}/verify", data={"csrf_token": token(page), "method": "dns"})
    assert ("Verification failed: No verification code found in the TXT records of _kamengsite.shop.example.com"
            in text(owner.get("/admin/domains")))
