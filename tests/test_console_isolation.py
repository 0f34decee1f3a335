"""Every console URL of sub-site A, called by A's owner with the ids of sub-site B's objects,
answers 403 or 404 and changes nothing of B.

The routes are enumerated from A's app (``url_map``), so a new console route with an id in its
URL is probed as soon as it exists, and this test fails if it forgets the site check. Each URL
argument is filled from what B owns, by the argument's name; a route whose argument this test
cannot fill fails the test (teach ``b_values`` the new name).
"""

from __future__ import annotations

import pytest

from kamengsite import background, domains, members, tickets, withdrawals
from kamengsite.account_security import ConsoleSession
from kamengsite.accounts import Account, create_account
from kamengsite.api import keys as api_keys
from kamengsite.api.models import ApiCallback, ApiKey
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Product, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.levels import seed_default_levels
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, mark_paid
from kamengsite.pricing import PriceRule, set_rule
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console

PASSWORD = "correct horse battery staple"
#: The core consoles only: test_tenant_probe.py turns the plugins on (by their entry-point names) and probes
#: their console routes too, with the plugins' objects of site B it adds to this fixture.
PLUGINS = ()
#: Arguments that name no site object: filled with a valid value and the route probed all the same.
NEUTRAL = {"direction": "credit", "action": None, "name": None, "filename": None, "token": "x"}
#: Routes whose arguments name no object of a site at all (plugin names, the editor's script files).
NOT_SITE_OBJECTS = {"admin_plugins.settings", "admin_plugins.toggle", "admin_theme.static", "admin_recovery.reset"}


@pytest.fixture
def two_shops(host, client_for):
    seed_default_levels()
    a = open_plugin_site(host, "shopa", PLUGINS, level="gold")
    b = open_plugin_site(host, "shopb", PLUGINS, level="gold")
    create_account(a, "owner-a", PASSWORD)
    staff_b = create_account(b, "clerk-b", PASSWORD, role="staff")
    cipher = CardKeyCipher.from_instance(host.instance)
    product = create_product(Site.get_by_id(b), "B 的自营卡", 1000)
    import_keys(product.skus[0], ["B-KEY-1", "B-KEY-2"], cipher)
    order = create_order(site_id=b, sku_id=product.skus[0].id, quantity=1, contact="b@example.com", channel="demo")
    mark_paid(order.order_no, channel="demo", trade_no="T-B-1", amount_fen=order.amount_fen)
    member = members.register(b, "member-b@example.com", PASSWORD)
    api_key, _secret = api_keys.issue_key(b, member.id, host.instance.secret_key, label="B 的密钥")
    with site_scope(b):
        callback = ApiCallback.create(site=b, api_key=api_key.id, order=order.id, event="order.delivered",
                                      url="https://b.example.com/cb", payload="{}", state="failed", attempts=7)
    tickets.post(b, order.order_no, "buyer", "B 的留言")
    rule = set_rule(b, "all", markup_percent_bp=1000)
    job = background.start_order_export(host.instance, b, staff_b.id)
    claim = domains.claim(Site.get_by_id(b), "shop-b.example.com", base_domain=host.instance.base_domain)
    with site_scope(b):
        Account.update(permissions="orders").where(Account.id == staff_b.id).execute()
    sign_in_console(client_for("shopb.localhost"), "clerk-b", PASSWORD)  # a console session of B's
    with site_scope(b):
        session_b = ConsoleSession.get(ConsoleSession.account == staff_b.id).id
    values = {
        "product_id": product.id, "order_no": order.order_no, "member_id": member.id, "account_id": staff_b.id,
        "job_id": job.id, "rule_id": rule.id, "claim_id": claim.id, "session_id": session_b,
        "refund_no": "R-none", "withdrawal_id": 999_999, "application_id": 999_999,
        "key_id": api_key.id, "callback_id": callback.id,
    }
    owner = sign_in_console(client_for("shopa.localhost"), "owner-a", PASSWORD)
    return host.app_for("shopa"), owner, values, b


def snapshot(b: int) -> tuple:
    """Everything of B these routes could change."""
    with all_sites():
        return (
            [(p.id, p.name, p.status) for p in Product.select().where(Product.site == b).order_by(Product.id)],
            CardKey.select().join(Product, on=(CardKey.sku == Product.id)).count(),
            [(o.order_no, o.status) for o in Order.select().where(Order.site == b)],
            [(m.id, m.status) for m in members.Member.select().where(members.Member.site == b)],
            [(t.order_no, t.status, t.messages) for t in tickets.Ticket.select().where(tickets.Ticket.site == b)],
            [(a.id, a.permissions, a.password_hash) for a in Account.select().where(Account.site == b)],
            [(r.id, r.markup_percent_bp) for r in PriceRule.select().where(PriceRule.site == b)],
            [(c.id, c.status) for c in domains.DomainClaim.select().where(domains.DomainClaim.site == b)],
            [c.id for c in ConsoleSession.select().where(ConsoleSession.site == b)],
            withdrawals.Withdrawal.select().count(),
            [(k.id, k.status, k.callback_url) for k in ApiKey.select().where(ApiKey.site == b)],
            [(c.id, c.state, c.attempts, c.next_at) for c in ApiCallback.select().where(ApiCallback.site == b)],
        )


def probes(app, values):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or not rule.arguments or rule.endpoint in NOT_SITE_OBJECTS:
            continue
        args = {}
        for name in rule.arguments:
            if name in values:
                args[name] = values[name]
            elif name in NEUTRAL:
                converter = rule._converters[name]
                items = getattr(converter, "items", None)
                args[name] = NEUTRAL[name] or (sorted(items)[0] if items else "x")
            else:
                pytest.fail(f"{rule.endpoint} ({rule.rule}): no value of site B for <{name}>; add it to the test")
        path = rule.rule
        for name, value in args.items():
            path = path.replace(f"<{rule._converters[name].__class__.__name__}:{name}>", str(value))
        for piece in path.split("/"):
            if piece.startswith("<"):  # <int:x>, <any(...):x>, <x>
                name = piece.split(":")[-1].rstrip(">").lstrip("<")
                path = path.replace(piece, str(args[name]))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, path


def leaks_of(app, owner, values) -> tuple[int, list[str]]:
    token = csrf_token(owner.get("/admin/staff/"))
    tried, leaks = 0, []
    for endpoint, method, path in probes(app, values):
        if method == "GET":
            response = owner.get(path)
        else:
            response = owner.post(path, data={"csrf_token": token, "status": "disabled", "areas": ["orders"],
                                              "body": "injected", "amount": "5", "memo": "x", "reference": "r",
                                              "email": "", "note": "x"})
        tried += 1
        body = response.get_data(as_text=True)
        if response.status_code not in (403, 404) or "B 的" in body or "B-KEY" in body:
            leaks.append(f"{method} {path} ({endpoint}) → {response.status_code}")
    return tried, leaks


def test_site_bs_objects_are_out_of_reach_of_site_as_console(two_shops):
    app, owner, values, b = two_shops
    before = snapshot(b)
    tried, leaks = leaks_of(app, owner, values)
    assert tried >= 20  # the probe reached the console's routes
    assert leaks == [], "\n".join(leaks)
    assert snapshot(b) == before


def test_the_probe_catches_a_route_that_forgets_the_site(two_shops, monkeypatch):
    app, owner, values, b = two_shops

    def careless(site_id, order_no):  # looks the thread up in every site
        with all_sites():
            return tickets.Ticket.get_or_none(tickets.Ticket.order_no == order_no)

    monkeypatch.setattr(tickets, "ticket_for", careless)
    _, leaks = leaks_of(app, owner, values)
    assert any("admin_tickets.show" in leak for leak in leaks), leaks
