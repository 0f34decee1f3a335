"""Hostile input: every public form and the API's JSON bodies fuzzed with hypothesis, and the
hardening against hostile requests (errors that leak nothing, secure cookies behind a proxy, paths
from user input that cannot leave their folder).

The fuzzing sends random and hostile values (huge strings, control characters, NUL, unicode, wrong
types, missing fields, a missing or forged CSRF token) to the buy form (with coupon and top-up
fields), the order lookup, member registration and login, the buyer's message form, the sub-site
application and the password-reset request, and random JSON to the signed API. Never a 500; an
answer that is not a success writes nothing (a count of every table these forms write, before and
after). The schema-driven run of the API is ``test_api_schema.py``. Bounded to well under a minute.
"""

from __future__ import annotations

import json
import re
from io import BytesIO

import pytest
from flask import Blueprint, g, request
from hypothesis import HealthCheck, given, settings, strategies as st

from kamengsite import assets, layouts, members, ratelimit, tickets
from kamengsite.accounts import create_account
from kamengsite.api import keys as api_keys
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.config import check_slug
from kamengsite.crypto import CardKeyCipher
from kamengsite.errors import ConfigError
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import ApiClient, SiteClient, buy, csrf_token

from conftest import make_host, make_instance

PASSWORD = "correct horse battery staple"
SANDBOX = {"sandbox": {"demo": {"label": "sandbox"}}}
FUZZ = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Values no form should choke on.
HOSTILE = ["", " ", "\x00", "a\x00b", "\r\n\r\nSet-Cookie: x=1", "\t\x0b\x0c", "\u202e\u200b\ufeff", "😀" * 50,
           "Ａ１２３", "x" * 100_000, "<script>alert(1)</script>", "' OR 1=1 --", "../../../etc/passwd",
           "..\\..\\windows", "%00", "{{7*7}}", "-1", "0", "1e309", "99999999999999999999999999", "NaN",
           "13800138000", "buyer@example.com", "a@b", "main", "NEW10", "sandbox/demo", "../x", "null"]
hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=80),
                         st.text(alphabet=st.characters(max_codepoint=0x1f), max_size=20),
                         st.integers(min_value=-(2**70), max_value=2**70).map(str))
#: A form field: a hostile value, several values at once, or absent (None).
field = st.one_of(hostile_text, st.lists(hostile_text, min_size=2, max_size=3), st.none())
#: The CSRF token: the page's own, none, or a forged one.
csrf = st.sampled_from(["valid", "missing", "forged"])


@pytest.fixture
def instance(tmp_path):
    return make_instance(tmp_path / "instance", f"sqlite:///{tmp_path / 'instance.db'}", payments=SANDBOX)


@pytest.fixture
def shop(host):
    """The main site selling a card product (with a coupon plugin) and a top-up product; a buyer's order."""
    host.registry.update("main", plugins=["coupons"])
    main = Site.get(Site.slug == "main")
    card = create_product(main, "Fuzz card", 1000, max_qty=5)
    import_keys(card.skus[0], [f"FUZZ-{i:03d}" for i in range(50)], CardKeyCipher.from_instance(host.instance))
    topup = create_product(main, "Fuzz top-up", 500, kind="topup",
                           topup_fields=json.dumps([{"name": "phone", "label": "phone", "pattern": "^1\\d{10}$"}]))
    create_account(main.id, "admin", PASSWORD)
    buyer = SiteClient(host, "main.localhost")
    placed = buy(buyer, card, "sandbox/demo")
    assert placed.status_code == 302, placed.get_data(as_text=True)
    order_no = placed.headers["Location"].rsplit("/", 1)[1]
    return {"host": host, "card": card, "topup": topup, "buyer": buyer, "order_no": order_no, "main": main.id}


#: Every signed API request records its nonce (that is how a replay is refused) and stamps its key's
#: last use, whatever its body holds.
SIGNED_REQUEST_TABLES = {"api_nonce", "api_key"}
#: Tables a request may write whatever it carries: the console session's "last seen" stamp, and the
#: audit log, which records every console POST — refused ones too (that is its job).
TOUCHED_BY_ANY_REQUEST = {"console_session", "audit_entry"}


def counts(ignore=()):
    """Every row of every table these forms could write (``database_digest``): equal before and after
    means nothing was written — no order, no reserved stock, no member, message or application."""
    return database_digest(ignore)


def _post(client, path: str, token_page: str, fields: dict, token_mode: str):
    """POST ``fields`` (None values left out) with the page's CSRF token, none, or a forged one."""
    data = {name: value for name, value in fields.items() if value is not None}
    if token_mode == "valid":
        data["csrf_token"] = csrf_token(client.get(token_page))
    elif token_mode == "forged":
        data["csrf_token"] = "IjAwMDAi.forged.token"
    return client.post(path, data=data)


def _check(response, before, *, success=(302,)):
    """Never a 500; a rejected request (anything but ``success``) wrote nothing."""
    assert response.status_code < 500, response.get_data(as_text=True)[:2000]
    if response.status_code not in success:
        assert counts() == before, f"a rejected request ({response.status_code}) wrote rows"


def _fuzz(shop, path, token_page, fields, token_mode, client=None, success=(302,)):
    ratelimit.reset()  # each example gets a full allowance; the limits have their own tests
    client = client or SiteClient(shop["host"], "main.localhost")
    before = counts()
    _check(_post(client, path, token_page, fields, token_mode), before, success=success)


# -- the public forms ------------------------------------------------------------------------------


@FUZZ
@given(sku=field, quantity=field, contact=field, password=field, pay=field, coupon=field, token=csrf)
def test_fuzz_the_buy_form(shop, sku, quantity, contact, password, pay, coupon, token):
    card = shop["card"]
    fields = {"sku": sku, "quantity": quantity, "contact": contact, "query_password": password, "pay": pay,
              "coupon": coupon}
    _fuzz(shop, f"/p/{card.id}", f"/p/{card.id}", fields, token)


@FUZZ
@given(phone=field, contact=field, quantity=field, token=csrf)
def test_fuzz_the_top_up_form(shop, phone, contact, quantity, token):
    topup = shop["topup"]
    fields = {"sku": str(topup.skus[0].id), "quantity": quantity, "contact": contact, "query_password": "pass1234",
              "pay": "sandbox/demo", "topup_phone": phone}
    _fuzz(shop, f"/p/{topup.id}", f"/p/{topup.id}", fields, token)


@FUZZ
@given(order_no=field, contact=field, password=field, token=csrf)
def test_fuzz_the_order_lookup(shop, order_no, contact, password, token):
    fields = {"order_no": order_no, "contact": contact, "query_password": password}
    _fuzz(shop, "/lookup", "/lookup", fields, token, success=())  # a lookup writes nothing at all


@FUZZ
@given(email=field, name=field, password=field, confirm=field, token=csrf)
def test_fuzz_member_registration(shop, email, name, password, confirm, token):
    fields = {"email": email, "display_name": name, "password": password, "confirm": confirm}
    _fuzz(shop, "/member/register", "/member/register", fields, token)


@FUZZ
@given(email=field, password=field, token=csrf)
def test_fuzz_member_login(shop, email, password, token):
    _fuzz(shop, "/member/login", "/member/login", {"email": email, "password": password}, token,
          success=(302,))  # a failed login writes nothing


@FUZZ
@given(body=field, token=csrf)
def test_fuzz_the_buyers_message_form(shop, body, token):
    path = f"/order/{shop['order_no']}/messages"
    _fuzz(shop, path, path, {"body": body}, token, client=shop["buyer"])


@FUZZ
@given(slug=field, name=field, template=field, level=field, contact=field, real_name=field, info=field,
       username=field, password=field, token=csrf)
def test_fuzz_the_sub_site_application(shop, slug, name, template, level, contact, real_name, info, username,
                                       password, token):
    fields = {"slug": slug, "name": name, "template": template, "level": level, "contact": contact,
              "real_name": real_name, "business_info": info, "username": username, "password": password,
              "password2": password, "submit_key": "k" * 20}
    _fuzz(shop, "/open", "/open", fields, token)


@FUZZ
@given(who=field, token=csrf)
def test_fuzz_the_password_reset_request(shop, who, token):
    _fuzz(shop, "/admin/login/forgot", "/admin/login/forgot", {"who": who}, token, success=())


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
              st.floats(allow_nan=False), hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)


@FUZZ
@given(body=st.one_of(
    json_value,
    st.fixed_dictionaries({"out_trade_no": json_value, "sku_id": json_value, "quantity": json_value},
                          optional={"fields": json_value, "callback_url": json_value})))
def test_fuzz_the_api_order_body(shop, api_client, body):
    ratelimit.reset()
    before = counts(SIGNED_REQUEST_TABLES)
    response = api_client.post("/api/v1/orders", body)
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json and response.get_json()["ok"] in (True, False)
    if response.status_code != 200:
        assert counts(SIGNED_REQUEST_TABLES) == before


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzz_the_api_with_bytes_that_are_not_json(shop, api_client, raw):
    ratelimit.reset()
    before = counts(SIGNED_REQUEST_TABLES)
    headers = api_client.headers("POST", "/api/v1/orders", raw)
    headers["Content-Type"] = "application/json"
    response = api_client.client.post("/api/v1/orders", data=raw, headers=headers)
    assert response.status_code in (400, 409, 422) and response.get_json()["ok"] is False
    assert counts(SIGNED_REQUEST_TABLES) == before


@pytest.fixture
def api_client(shop):
    member = members.register(shop["main"], "reseller@example.com", PASSWORD)
    members.credit_wallet(shop["main"], member.id, 1_000_000, reference="fuzz")
    key, secret = api_keys.issue_key(shop["main"], member.id, shop["host"].instance.secret_key)
    return ApiClient(SiteClient(shop["host"], "main.localhost"), key.app_key, secret)


# -- errors leak nothing ---------------------------------------------------------------------------------


def _failing_routes(app, site):
    boom = Blueprint("boom", __name__)

    @boom.get("/boom")
    def page():
        raise RuntimeError(f"secret {app.config['SECRET_KEY']} in {__file__}")

    @boom.get("/api/boom")
    def api():
        raise RuntimeError(f"secret {app.config['SECRET_KEY']} in {__file__}")

    @boom.get("/boom-twice")
    def twice():
        g.boom_twice = True  # the 500 page's own rendering fails too (see the context processor)
        raise RuntimeError("first")

    @boom.app_context_processor
    def _breaks_the_error_page():
        if g.get("boom_twice"):
            raise RuntimeError(f"second {app.config['SECRET_KEY']}")
        return {}

    app.register_blueprint(boom)


def test_an_exception_in_a_route_leaks_no_traceback_path_or_secret(host, register_plugin):
    register_plugin(host, _failing_routes, name="boom")
    client = SiteClient(host, "main.localhost")
    secrets = [host.instance.secret_key, host.app_for("main").config["SECRET_KEY"]]
    for path in ("/boom", "/api/boom", "/boom-twice"):
        response = client.get(path)
        body = response.get_data(as_text=True)
        assert response.status_code == 500, path
        for leak in ("Traceback", "RuntimeError", ".py", "secret", *secrets):
            assert leak not in body, (path, leak)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/boom").get_json()["error"]["code"] == "internal_error"


# -- cookies over HTTPS behind a trusted proxy ----------------------------------------------------------


def _session_cookie(response) -> str:
    return next(value for value in response.headers.getlist("Set-Cookie") if value.startswith("ks_session="))


@pytest.mark.parametrize("proxies, forwarded, secure", [
    (1, "https", True),    # nginx terminates TLS and says so: the cookie is Secure
    (1, "http", False),
    (0, "https", False),   # no trusted proxy: a client's own X-Forwarded-Proto is ignored
])
def test_the_session_cookie_is_secure_when_a_trusted_proxy_says_https(tmp_path, proxies, forwarded, secure):
    instance = make_instance(tmp_path / "i", f"sqlite:///{tmp_path / 'i.db'}", trusted_proxies=proxies)
    proxied = make_host(instance)
    try:
        response = SiteClient(proxied, "main.localhost").get(
            "/member/login", headers={"X-Forwarded-Proto": forwarded, "X-Forwarded-For": "203.0.113.9"})
        cookie = _session_cookie(response)
        assert ("; Secure" in cookie) is secure
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    finally:
        proxied.close()


# -- paths from user input ---------------------------------------------------------------------------------

TRAVERSALS = ["..", "../main", "../../etc/passwd", "/etc/passwd", "a/../b", "..\\main", "a\\b", "main\x00",
              "\x00", "%2e%2e", "..%2fmain", "C:\\x", "~root", ".hidden", "main/", ""]


def test_site_names_refuse_traversal(host):
    for name in TRAVERSALS:
        with pytest.raises(ConfigError):
            check_slug(name)
        with pytest.raises(ConfigError):
            host.registry.folder(name)
        with pytest.raises(ConfigError):
            host.registry.create(name, template="shop")
        assert host.registry.version(name) is None, name  # never a stat() of "main/", "../x" or a NUL
        assert host.app_for(name) is None, name


def test_theme_and_plugin_names_refuse_traversal(host):
    for name in TRAVERSALS + ["../../themes/dark"]:
        with pytest.raises(ConfigError):
            host.registry.update("main", theme=name)
        with pytest.raises(ConfigError):
            host.registry.update("main", plugins=[name])
        assert host.registry.load("main").theme != name


def test_layout_handles_refuse_traversal(host):
    config = host.registry.load("main")
    theme = host.themes.get(config.theme)
    for handle in TRAVERSALS + ["-x", "A", "x" * 41]:
        with pytest.raises(ConfigError):
            layouts.create_custom_page(config.path, handle, "title", theme=theme)
        with pytest.raises(ValueError):
            layouts.layout_path(config.path, f"custom/{handle}")
        for draft in (False, True):
            with pytest.raises(ValueError):
                layouts.layout_path(config.path, f"../{handle}", draft=draft)
    assert not list(host.registry.root.parent.glob("*.json"))


def test_asset_names_refuse_traversal(host):
    folder = host.registry.load("main").path
    for name in TRAVERSALS + ["0123456789abcdef.png/../../site.toml", "../0123456789abcdef.png"]:
        with pytest.raises(ConfigError):
            assets.delete_image(folder, name)
    assert (folder / "site.toml").exists()


def test_an_uploaded_images_name_is_ours_whatever_the_file_was_called(host):
    from PIL import Image

    folder = host.registry.load("main").path
    png = BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    url = assets.store_image(folder, png.getvalue(), "../../../evil.png")
    name = url.rsplit("/", 1)[1]
    assert assets.NAME_RE.match(name) and (folder / "assets" / name).is_file()
    assert not (folder.parent / "evil.png").exists() and not (host.instance.path / "evil.png").exists()


URL_TRAVERSALS = ["/static/../site.toml", "/static/..%2fsite.toml", "/static/%2e%2e/%2e%2e/config.toml",
                  "/static/..%5c..%5cconfig.toml", "/static/x%00.css", "/_kamengsite/../app.py",
                  "/_kamengsite/..%2f..%2fapp.py", "/assets/..%2fsite.toml", "/assets/%2e%2e", "/assets/x%00.png",
                  "/pages/..%2f..%2fsite", "/pages/%2e%2e", "/pages/a%00", "/pages/..%5csite",
                  "/admin/theme/assets/..%2f..%2f..%2fadmin.py", "/admin/theme/assets/../../../admin.py",
                  "/admin/theme/assets/%2e%2e/%2e%2e/csp.py", "/admin/plugins/..%2f..%2fx/settings",
                  "/admin/plugins/..%5cx/settings", "/admin/jobs/..%2f1/download"]


def test_urls_cannot_reach_outside_their_folder(host, client_for):
    from kamengsite.testing import sign_in_console

    create_account(Site.get(Site.slug == "main").id, "admin", PASSWORD)
    client = sign_in_console(client_for("main.localhost"), "admin", PASSWORD)  # the console's routes too
    for path in URL_TRAVERSALS:
        response = client.get(path)
        body = response.get_data(as_text=True)
        assert response.status_code in (400, 404), (path, response.status_code)
        assert "secret_key" not in body and "[settings" not in body and "import " not in body, path


HOST_TRAVERSALS = ["..localhost", "../main.localhost", "main.localhost/../x", "main\x00.localhost", "main%2e.localhost",
                   "..", "main.localhost\\..", "[::1]", "a..localhost", "main/.localhost", ".localhost"]


def test_host_names_cannot_name_a_folder_outside_the_sites(host):
    for host_name in HOST_TRAVERSALS:
        response = SiteClient(host, host_name).get("/")
        assert response.status_code == 404, host_name
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


# -- floods: the rate limits the issue names hold, per site and per client ---------------------------------

LIMITED = {  # limit name → (path, form fields); each a POST a flood would repeat
    "order": ("/p/{card}", {"sku": "{sku}", "quantity": "1", "contact": "a@example.com", "query_password": "pass1234",
                            "pay": "sandbox/demo"}),
    "lookup": ("/lookup", {"order_no": "K1"}),
    "member_register": ("/member/register", {"email": "x", "password": "x", "confirm": "y"}),
    "member_login": ("/member/login", {"email": "x@example.com", "password": "wrong password"}),
    "login": ("/admin/login", {"username": "admin", "password": "wrong password"}),
}


@pytest.mark.parametrize("name", sorted(LIMITED))
def test_a_flood_of_posts_is_refused_per_site_and_client(tmp_path, name):
    instance = make_instance(tmp_path / "i", f"sqlite:///{tmp_path / 'i.db'}", payments=SANDBOX, trusted_proxies=1,
                             rate_limits={name: "3/minute"})
    flooded = make_host(instance)
    try:
        flooded.registry.create("shop1", template="shop")
        card = create_product(Site.get(Site.slug == "main"), "Flood card", 100, max_qty=5)
        import_keys(card.skus[0], [f"F-{i}" for i in range(10)], CardKeyCipher.from_instance(instance))
        path, fields = LIMITED[name]
        path = path.format(card=card.id)
        fields = {key: value.format(sku=card.skus[0].id) for key, value in fields.items()}

        def post(host_name, ip):
            client = SiteClient(flooded, host_name)
            headers = {"X-Forwarded-For": ip}
            token = csrf_token(client.get(path if name != "order" else f"/p/{card.id}", headers=headers))
            return client.post(path, data={**fields, "csrf_token": token}, headers=headers).status_code

        answers = [post("main.localhost", "203.0.113.1") for _ in range(4)]
        assert 429 not in answers[:3] and answers[3] == 429, answers
        assert post("main.localhost", "203.0.113.2") != 429  # another client keeps its allowance
        if name != "order":  # shop1 sells nothing of its own: its product page is a 404, not a flood test
            assert post("shop1.localhost", "203.0.113.1") != 429  # and so does the same client on another site
    finally:
        flooded.close()


def test_the_api_is_limited_per_key(tmp_path):
    instance = make_instance(tmp_path / "i", f"sqlite:///{tmp_path / 'i.db'}", rate_limits={"api": "3/minute"})
    served = make_host(instance)
    try:
        main = Site.get(Site.slug == "main").id
        clients = []
        for email in ("one@example.com", "two@example.com"):
            member = members.register(main, email, PASSWORD)
            key, secret = api_keys.issue_key(main, member.id, instance.secret_key)
            clients.append(ApiClient(SiteClient(served, "main.localhost"), key.app_key, secret))
        answers = [clients[0].get("/api/v1/ping").status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        assert clients[0].get("/api/v1/ping").get_json()["error"]["code"] == "rate_limited"
        assert clients[1].get("/api/v1/ping").status_code == 200
    finally:
        served.close()


# -- no secret in the repository -----------------------------------------------------------------------------


def test_the_repository_holds_no_instance_secrets():
    import subprocess

    from kamengsite.instance import PROJECT_ROOT

    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    assert files, "not a git checkout"
    assert not [f for f in files if f.endswith(("config.toml", ".env", ".pem", ".key")) and "/tests/" not in f
                and not f.startswith(("tests/", "docs/"))]
    pattern = re.compile(r"""^\s*(secret_key|card_key_keys)\s*=\s*["'][^"']{16,}""", re.M)
    leaks = [f for f in files if f.endswith((".py", ".toml", ".cfg", ".ini", ".json"))
             and not f.startswith("tests/") and pattern.search((PROJECT_ROOT / f).read_text(errors="replace"))]
    assert leaks == []


# -- CSRF on every write --------------------------------------------------------------------------------------

#: POST endpoints that are not forms: signed by a gateway or an API key instead of a CSRF token.
SIGNED_NOT_FORMS = ("/api/", "/pay/notify/")


def database_digest(ignore=()) -> dict:
    """Every row of every table (but those any request touches), to see whether a request wrote anything."""
    from kamengsite.db import database

    digest = {}
    for table in sorted(database.get_tables()):
        if table in TOUCHED_BY_ANY_REQUEST or table in ignore:
            continue
        rows = database.execute_sql(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - names from the schema
        digest[table] = sorted(map(repr, rows))
    return digest


def test_only_signed_endpoints_are_exempt_from_the_csrf_check(host, client_for):
    from kamengsite import storefront

    client_for("main.localhost").get("/")  # the app is built: every plugin has registered its views
    assert {bp.name for bp in storefront.csrf._exempt_blueprints} == {"api"}  # signed requests
    assert storefront.csrf._exempt_views <= {"kamengsite.payment_routes.notify"}  # signed by the gateway


def _csrf_less_posts(shop, host) -> tuple[int, list[str]]:
    """POST to every form endpoint of the main site without a CSRF token, as its owner, a member and a
    buyer, each with ids of real objects of the site: (requests, the ones that wrote something or failed)."""
    from kamengsite.testing import sign_in_console, sign_in_member

    main = shop["main"]
    with all_sites():
        registered = members.Member.select().where(members.Member.email == "m@example.com").exists()
    if not registered:
        members.register(main, "m@example.com", PASSWORD)
    console = sign_in_console(SiteClient(host, "main.localhost"), "admin", PASSWORD)
    member = sign_in_member(SiteClient(host, "main.localhost"), "m@example.com", PASSWORD)
    with all_sites():
        member_id = members.Member.get(members.Member.email == "m@example.com").id
    values = {"product_id": shop["card"].id, "order_no": shop["order_no"], "member_id": member_id,
              "account_id": 1, "category_id": 1}
    app = host.app_for("main")
    tried, wrote = 0, []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if "POST" not in rule.methods or rule.rule.startswith(SIGNED_NOT_FORMS):
            continue
        args = {}
        for name in rule.arguments:
            items = getattr(rule._converters[name], "items", None)
            args[name] = values.get(name) or (sorted(items)[0] if items else 1 if "int" in repr(
                rule._converters[name]) else "x")
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: str(args[m.group(1)]), rule.rule)
        for who, client in (("owner", console), ("member", member), ("buyer", shop["buyer"])):
            ratelimit.reset()
            before = database_digest()
            response = client.post(path, data={"order_no": shop["order_no"], "status": "disabled", "body": "x", "name": "x", "amount": "5",
                                               "email": "z@example.com", "password": PASSWORD, "confirm": PASSWORD,
                                               "contact": "z@example.com", "query_password": "pass1234",
                                               "sku": str(shop["card"].skus[0].id), "quantity": "1",
                                               "pay": "sandbox/demo", "who": "admin", "label": "x"})
            tried += 1
            after = database_digest()
            changed = sorted(t for t in after if after[t] != before.get(t))
            if changed or response.status_code >= 500:
                wrote.append(f"{who}: POST {path} ({rule.endpoint}) → {response.status_code}, wrote {changed}")
    return tried, wrote


def test_no_post_without_its_csrf_token_writes_anything(shop, host):
    tried, wrote = _csrf_less_posts(shop, host)
    assert tried >= 60
    assert wrote == [], "\n".join(wrote)


def _careless_form(app, site):
    careless = Blueprint("careless", __name__)

    @careless.post("/careless/note")
    def note():  # exempted from the app's CSRF check, and no form of its own either
        tickets.post(Site.get(Site.slug == site.slug).id, request.form.get("order_no", "x"), "buyer", "planted")
        return "ok"

    from kamengsite import storefront

    storefront.csrf.exempt(note)
    app.register_blueprint(careless)


def test_the_csrf_check_catches_a_post_route_without_a_form(shop, host, register_plugin, monkeypatch):
    from kamengsite import storefront

    monkeypatch.setattr(storefront.csrf, "_exempt_views", set(storefront.csrf._exempt_views))  # undone after
    register_plugin(host, _careless_form, name="careless")
    host.registry.update("main", tagline="rebuilt")  # a new folder version: the app is built with the plugin
    _, wrote = _csrf_less_posts(shop, host)
    assert any("careless.note" in line and "ticket" in line for line in wrote), wrote
