"""XSS payloads in every field a buyer, an owner or a plugin setting can fill render inert wherever
they appear, and every answer carries the security headers that back that up.

The payloads — ``<script>alert(1)</script>``, ``"><img src=x onerror=alert(1)>``, ``javascript:``
URLs and ``{{7*7}}`` — go into: the site's name and tagline, a category's name, product names and
descriptions (the description through the console's own form), a top-up field's label and the
buyer's value for it, the buyer's messages and the shop's reply, a member's display name (through
the registration form), an API key's label, an opening application's fields, the SEO plugin's
settings, an upstream's name, a coupon's note, CRM tags, campaigns and the messages they put in a member's
inbox, and values the forms echo back (lookup, registration, the buy form).
Every page that could show them is read — the storefront, the order and message pages, the member
pages, the API docs and every console page reachable from the console's menu and lists — and the
keys mail is built: the raw payload never appears unescaped, no tag gains a handler, no link a
``javascript:`` URL, no template expression is evaluated, and mail is plain text. Theme section
settings of every type are covered by ``test_section_xss.py``.
"""

from __future__ import annotations

import json
import re

import pytest

from kamengsite import csp, members, opening, tickets
from kamengsite.accounts import create_account
from kamengsite.api import keys as api_keys
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.levels import seed_default_levels
from kamengsite.mail import order_message, site_info
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, mark_paid
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import SiteClient, buy, csrf_token, sign_in_console

from conftest import make_host, make_instance

PASSWORD = "correct horse battery staple"
SANDBOX = {"sandbox": {"demo": {"label": "sandbox"}}}
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
#: ``Z{{7*7}}Z`` evaluated by a template would read ``Z49Z``.
TEMPLATE = "Z{{7*7}}Z"
#: Fits a 60-character field; LONG is for the fields that take more.
SHORT = IMG + TEMPLATE
LONG = SCRIPT + IMG + TEMPLATE + "<a href=\"javascript:alert(1)\">x</a>"
JS_URL = "javascript:alert(1)"
UNSAFE = [
    ("a script element", re.compile(r"<script>alert\(1\)", re.I)),
    ("an injected tag with a handler", re.compile(r"<img src=x onerror", re.I)),
    ("a javascript: URL", re.compile(r"""(?:href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.I)),
    ("an evaluated template", re.compile(r"Z49Z")),
]


def unsafe_in(body: str) -> list[str]:
    return [what for what, pattern in UNSAFE if pattern.search(body)]


def test_the_checks_catch_every_payload_left_raw():
    assert unsafe_in(LONG.replace("{{7*7}}", "49")) == [what for what, _pattern in UNSAFE]
    assert unsafe_in(LONG.replace("<", "&lt;").replace('"', "&#34;")) == []


@pytest.fixture
def instance(tmp_path):
    return make_instance(tmp_path / "instance", f"sqlite:///{tmp_path / 'instance.db'}", payments=SANDBOX)


@pytest.fixture
def planted(host, client_for):
    """The main site with payloads in every field someone can fill; (clients by role, ids)."""
    seed_default_levels()
    registry = host.registry
    registry.update("main", name=SHORT, tagline=LONG, plugins=["seo", "upstreams", "coupons", "crm"],
                    settings={"seo": {"title": LONG, "description": LONG, "keywords": LONG}})
    main = Site.get(Site.slug == "main")
    with site_scope(main.id):
        category = Category.create(site=main.id, name=SHORT)
    card = create_product(main, LONG[:120], 1000, category=category, max_qty=5)
    import_keys(card.skus[0], [f"XSS-{i:03d}" for i in range(20)], CardKeyCipher.from_instance(host.instance))
    topup = create_product(main, SHORT, 500, kind="topup", category=category,
                           topup_fields=json.dumps([{"name": "note", "label": SHORT}]))
    create_account(main.id, "admin", PASSWORD)
    console = sign_in_console(client_for("main.localhost"), "admin", PASSWORD)
    console_product = _create_through_the_console(console, category.id)

    buyer = client_for("main.localhost")
    order_no = buy(buyer, card, "sandbox/demo").headers["Location"].rsplit("/", 1)[1]
    page = buyer.get(f"/order/{order_no}/messages")
    assert buyer.post(f"/order/{order_no}/messages", data={"csrf_token": csrf_token(page),
                                                          "body": LONG}).status_code == 302
    tickets.post(main.id, order_no, "shop", LONG)
    with all_sites():
        Sku.update(stock=100).where(Sku.product == topup.id).execute()
    topup_order = create_order(site_id=main.id, sku_id=topup.skus[0].id, quantity=1, contact="t@example.com",
                               channel="demo", fields={"note": LONG})
    mark_paid(topup_order.order_no, channel="demo", trade_no="T-XSS", amount_fen=topup_order.amount_fen)

    member = client_for("main.localhost")
    page = member.get("/member/register")
    registered = member.post("/member/register", data={"csrf_token": csrf_token(page), "email": "m@example.com",
                                                       "display_name": SHORT[:30], "password": PASSWORD,
                                                       "confirm": PASSWORD})
    assert registered.status_code == 302, registered.get_data(as_text=True)
    with site_scope(main.id):
        member_row = members.Member.get(members.Member.email == "m@example.com")
    api_keys.issue_key(main.id, member_row.id, host.instance.secret_key, label=SHORT)
    opening.submit_application(opening.registry_for(host.instance),
                               {"slug": "xssshop", "name": SHORT, "template": "shop", "level": "bronze",
                                "contact": "a@example.com", "username": "xssowner", "password": PASSWORD,
                                "real_name": SHORT, "business_info": LONG}, submit_key="x" * 24)
    from kamengsite_coupons.models import Coupon
    from kamengsite_crm.models import Campaign, Message, Tag
    from kamengsite_upstreams.models import Upstream

    Upstream.create(name=SHORT, protocol="kamengsite", settings="{}")
    with site_scope(main.id):  # the owner's plugin rows: a coupon's note, a CRM tag, campaign and inbox message
        Coupon.create(site=main.id, code="XSS10", kind="percent", value=10, note=LONG[:120])
        Tag.create(site=main.id, name=SHORT[:32])
        campaign = Campaign.create(site=main.id, name=SHORT, fires_on="tag:x", subject=LONG[:120], body=LONG)
        Message.create(site=main.id, member=member_row.id, campaign=campaign.id, subject=LONG[:120], body=LONG)
    return {"buyer": buyer, "member": member, "console": console, "order_no": order_no, "card": card,
            "topup_order": topup_order.order_no, "category": category.id, "main": main.id, "topup": topup,
            "console_product": console_product}


def _create_through_the_console(console, category_id: int) -> Product:
    """A product whose name, summary, description and variant name are payloads, made with the console's form."""
    page = console.get("/admin/products/new")
    response = console.post("/admin/products/new", data={
        "csrf_token": csrf_token(page), "name": SHORT, "category": str(category_id), "kind": "card",
        "summary": LONG, "description": LONG, "skus-0-name": SHORT[:60], "skus-0-price": "15", "skus-0-stock": "0",
        "skus-0-status": "on", "more_skus": "", "min_qty": "1", "max_qty": "10", "per_buyer_limit": "0",
        "delivery_order": "fifo", "low_stock_threshold": "0", "status": "on"})
    assert response.status_code == 302, response.get_data(as_text=True)
    with all_sites():
        return Product.get(Product.summary == LONG)


def test_the_payloads_were_really_planted(planted):
    with all_sites():
        assert Product.get_by_id(planted["card"].id).name.startswith(SCRIPT)
        assert tickets.Ticket.select().count() == 1
        assert Order.select().where(Order.order_no == planted["topup_order"]).get().fields


def _check(client, path: str, problems: list, *, method="GET", data=None):
    response = client.get(path) if method == "GET" else client.post(path, data=data)
    body = response.get_data(as_text=True)
    found = unsafe_in(body)
    if found or response.status_code >= 500:
        problems.append(f"{method} {path} → {response.status_code}: {found}")
    return response, body


def test_storefront_order_and_member_pages_render_the_payloads_inert(planted):
    buyer, member, problems = planted["buyer"], planted["member"], []
    shown, missing = 0, []
    for path in ("/", f"/p/{planted['card'].id}", f"/p/{planted['topup'].id}",
                 f"/p/{planted['console_product'].id}", f"/c/{planted['category']}",
                 f"/order/{planted['order_no']}", f"/order/{planted['order_no']}/messages", "/lookup", "/api/docs",
                 "/member/register", "/open"):
        response, body = _check(buyer, path, problems)
        shown += "img src=x onerror" in body.replace("&lt;", "<")  # it is there, escaped
        missing += [path] if response.status_code != 200 else []
    for path in ("/member/", "/member/api/", "/member/messages", "/member/profile"):
        response, body = _check(member, path, problems)
        shown += "img src=x onerror" in body.replace("&lt;", "<")
        missing += [path] if response.status_code != 200 else []
    assert problems == [], "\n".join(problems)
    assert missing == []  # every page was really read
    assert shown >= 8  # the payloads really are on these pages (as text)


def test_values_the_forms_echo_back_stay_inert(planted, client_for):
    client, problems = client_for("main.localhost"), []
    token = csrf_token(client.get("/lookup"))
    _check(client, "/lookup", problems, method="POST",
           data={"csrf_token": token, "order_no": LONG, "contact": LONG, "query_password": LONG})
    _check(client, "/member/register", problems, method="POST",
           data={"csrf_token": token, "email": LONG, "display_name": LONG, "password": "x", "confirm": "y"})
    _check(client, "/member/login", problems, method="POST", data={"csrf_token": token, "email": LONG, "password": "x"})
    card = planted["card"]
    _check(client, f"/p/{card.id}", problems, method="POST",
           data={"csrf_token": token, "sku": card.skus[0].id, "quantity": "1", "contact": LONG,
                 "query_password": "p", "pay": LONG, "coupon": LONG})
    _check(client, f"/p/{planted['topup'].id}", problems, method="POST",
           data={"csrf_token": token, "sku": planted["topup"].skus[0].id, "quantity": LONG, "contact": JS_URL,
                 "query_password": "pass1234", "topup_note": "x" * 5000})
    _check(client, "/open", problems, method="POST",
           data={"csrf_token": token, "slug": LONG, "name": LONG, "contact": JS_URL, "username": LONG})
    _check(client, "/admin/login", problems, method="POST",
           data={"csrf_token": token, "username": LONG, "password": "x"})
    _check(client, "/admin/login/forgot", problems, method="POST", data={"csrf_token": token, "who": LONG})
    assert problems == [], "\n".join(problems)


CONSOLE_LINK = re.compile(r'href="(/admin/[^"#?]*)"')


def test_every_console_page_renders_the_payloads_inert(planted):
    """The console's pages, found by following its links two levels from the dashboard (GET only)."""
    console, problems, shown = planted["console"], [], set()
    seen, queue = set(), ["/admin/", "/admin/orders", f"/admin/orders/{planted['topup_order']}/keys",
                          f"/admin/tickets/{planted['order_no']}", "/admin/sites/applications", "/admin/upstreams/",
                          "/admin/plugins/", "/admin/settings/", "/admin/members/", "/admin/api/", "/admin/crm/",
                          "/admin/coupons/"]
    for _depth in range(3):
        following = []
        for path in queue:
            if path in seen or "logout" in path or "/reveal" in path:
                continue
            seen.add(path)
            response, body = _check(console, path, problems)
            if response.status_code == 200:
                following += CONSOLE_LINK.findall(body)
                if "img src=x onerror" in body.replace("&lt;", "<"):
                    shown.add(path)
        queue = following
    assert problems == [], "\n".join(problems)
    assert len(seen) >= 30  # the crawl reached the console's pages…
    for page in ("/admin/orders", "/admin/products", "/admin/members/", "/admin/sites/applications", "/admin/upstreams/",
                 "/admin/crm/", "/admin/coupons/", f"/admin/tickets/{planted['order_no']}", "/admin/settings/"):
        assert page in shown, page  # …and the payloads were on them, as text


def test_the_theme_editor_renders_with_a_plugin_section_on(planted):
    response, body = _check(planted["console"], "/admin/theme/", [])
    assert response.status_code == 200 and unsafe_in(body) == []


def test_the_keys_mail_is_plain_text_with_the_payloads_as_text(planted, host):
    with all_sites():
        order = Order.get(Order.order_no == planted["order_no"])
    site = site_info(host.instance, host.registry.load("main"))
    message = order_message(host.instance, order, LONG, ["XSS-000"], site)
    parts = list(message.walk())
    assert all(part.get_content_type() in ("text/plain", "multipart/alternative", "multipart/mixed")
               for part in parts)
    assert not any(part.get_content_type() == "text/html" for part in parts)
    assert LONG in message.get_content()  # as plain text: a mail reader shows it, runs nothing


def test_a_mail_header_cannot_be_injected_through_the_site_name(planted, host):
    with all_sites():
        order = Order.get(Order.order_no == planted["order_no"])
    site = dict(site_info(host.instance, host.registry.load("main")), name="Shop\r\nBcc: evil@example.com")
    try:
        message = order_message(host.instance, order, "x", ["k"], site)
    except ValueError:
        return  # refused outright: fine
    assert message["Bcc"] is None and "evil@example.com" not in str(message["To"])


# -- the headers behind it ---------------------------------------------------------------------------


def _baseline(response, where: str):
    headers = response.headers
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("Referrer-Policy") in ("strict-origin-when-cross-origin", "same-origin", "no-referrer"), where
    assert headers.get("X-Frame-Options") in ("SAMEORIGIN", "DENY"), where
    assert "Content-Security-Policy" in headers or headers.get("Content-Type", "").startswith(
        ("application/json", "text/plain", "text/css", "image/", "application/javascript", "text/javascript")), where


def test_every_kind_of_answer_carries_the_security_headers(host, client_for, site_files):
    host.registry.create("shop1", template="shop")
    host.registry.create("shop2", template="shop")
    host.registry.update("shop2", enabled=False)
    site_files.write_text("shop3", 'name = "x"\ntheme = "no-such-theme"\n')  # a broken folder
    main = client_for("main.localhost")
    answers = {
        "storefront page": main.get("/"),
        "missing page": main.get("/no-such-page"),
        "JSON": main.get("/healthz"),
        "API error": main.get("/api/v1/ping"),
        "API docs": main.get("/api/docs"),
        "static file": main.get("/_kamengsite/" + _a_static_file(host)),
        "console login": main.get("/admin/login"),
        "unknown host": client_for("nowhere.example.net").get("/"),
        "closed site": client_for("shop2.localhost").get("/"),
        "broken site": client_for("shop3.localhost").get("/"),
    }
    assert answers["unknown host"].status_code == 404 and answers["closed site"].status_code == 503
    assert answers["broken site"].status_code == 503
    for where, response in answers.items():
        _baseline(response, where)
    for where in ("unknown host", "closed site", "broken site"):
        assert answers[where].headers["Content-Security-Policy"] == csp.HOST_PAGE_POLICY
    assert answers["console login"].headers["X-Frame-Options"] == "DENY"  # the console keeps its stricter own
    assert all("Strict-Transport-Security" not in r.headers for r in answers.values())  # not production


def _a_static_file(host) -> str:
    from kamengsite.themes import HOST_TEMPLATES

    static = HOST_TEMPLATES.parent / "static"
    return next(p for p in static.rglob("*") if p.is_file()).relative_to(static).as_posix()


def test_cached_pages_carry_the_headers_too(host, client_for):
    client = client_for("main.localhost")
    first, second = client.get("/"), client.get("/")  # the second comes from the page cache
    for response in (first, second):
        _baseline(response, "home")


@pytest.mark.parametrize("proxies, headers, hsts", [
    (1, {"X-Forwarded-Proto": "https"}, True),
    (1, {"X-Forwarded-Proto": "http"}, False),
    (0, {"X-Forwarded-Proto": "https"}, False),  # an untrusted header is ignored
])
def test_hsts_in_production_over_https_only(tmp_path, proxies, headers, hsts):
    instance = make_instance(tmp_path / "i", f"sqlite:///{tmp_path / 'i.db'}", trusted_proxies=proxies,
                             production=True)
    served = make_host(instance)
    try:
        for host_name in ("main.localhost", "nowhere.example.net"):
            response = SiteClient(served, host_name).get("/", headers=headers)
            assert ("Strict-Transport-Security" in response.headers) is hsts, host_name
            if hsts:
                assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        served.close()
