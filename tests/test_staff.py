"""Staff accounts and their areas (kamengsite/permissions.py, kamengsite/admin_staff.py)."""

from __future__ import annotations

import re

import pytest

from kamengsite import permissions
from kamengsite.accounts import Account, authenticate, create_account
from kamengsite.audit import AuditEntry
from kamengsite.tenancy import site_scope
from kamengsite.testing import SiteClient, csrf_token, open_plugin_site, sign_in_console, site_id

PASSWORD = "correct horse battery staple"


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def operator(host, client_for):
    create_account(site_id("main"), "boss", PASSWORD)
    return sign_in_console(client_for("main.localhost"), "boss", PASSWORD)


def add_staff(client, username, areas, email=""):
    page = client.get("/admin/staff/")
    assert page.status_code == 200
    response = client.post("/admin/staff/", data={"csrf_token": csrf_token(page), "username": username,
                                                  "email": email, "areas": list(areas)})
    assert response.status_code == 200, text(response)
    return re.search(r'<code id="password">([^<]+)</code>', text(response)).group(1)


def test_an_operator_adds_staff_who_sign_in_with_the_shown_password(host, operator, client_for):
    password = add_staff(operator, "clerk", ["orders"], email="clerk@example.com")
    with site_scope(site_id("main")):
        clerk = Account.get(Account.username == "clerk")
    assert clerk.role == "staff" and clerk.permissions == "orders" and clerk.email == "clerk@example.com"
    assert authenticate(site_id("main"), "clerk", password) is not None
    staff = sign_in_console(client_for("main.localhost"), "clerk", password)
    assert staff.get("/admin/orders").status_code == 200


@pytest.mark.parametrize("path, method", [
    ("/admin/products", "GET"), ("/admin/categories", "GET"), ("/admin/staff/", "GET"),
    ("/admin/plugins/", "GET"), ("/admin/theme/", "GET"), ("/admin/balance", "GET"),
    ("/admin/prices", "GET"), ("/admin/audit/", "GET"), ("/admin/sites/", "GET"),
    ("/admin/withdrawals", "GET"), ("/admin/staff/", "POST"), ("/admin/plugins/kamengsite_seo/toggle", "POST"),
])
def test_staff_get_403_outside_their_areas(host, client_for, path, method):
    main = site_id("main")
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions="orders").where(Account.username == "clerk").execute()
    client = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    token = csrf_token(client.get("/admin/orders"))
    response = client.get(path) if method == "GET" else client.post(path, data={"csrf_token": token})
    assert response.status_code == 403
    assert "无权访问" in text(response)


def test_the_menu_shows_staff_only_their_areas(host, client_for):
    main = site_id("main")
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions="orders,catalogue").where(Account.username == "clerk").execute()
    page = text(sign_in_console(client_for("main.localhost"), "clerk", PASSWORD).get("/admin/orders"))
    nav = page.split("<nav", 1)[1].split("</nav>", 1)[0]
    assert "/admin/orders" in nav and "/admin/products" in nav
    for hidden in ("/admin/staff", "/admin/theme", "/admin/balance", "/admin/plugins", "/admin/dashboard"):
        assert hidden not in nav


def test_granting_an_area_opens_it_at_once(host, operator, client_for):
    password = add_staff(operator, "clerk", [])
    staff = sign_in_console(client_for("main.localhost"), "clerk", password)
    assert staff.get("/admin/products").status_code == 403
    with site_scope(site_id("main")):
        clerk = Account.get(Account.username == "clerk")
    page = operator.get("/admin/staff/")
    response = operator.post(f"/admin/staff/{clerk.id}", data={"csrf_token": csrf_token(page),
                                                               "areas": ["catalogue"], "email": ""})
    assert response.status_code == 302
    assert staff.get("/admin/products").status_code == 200


def test_new_password_and_removal_end_the_staff_sessions(host, operator, client_for):
    password = add_staff(operator, "clerk", ["orders"])
    staff = sign_in_console(client_for("main.localhost"), "clerk", password)
    with site_scope(site_id("main")):
        clerk = Account.get(Account.username == "clerk")
    page = operator.get("/admin/staff/")
    response = operator.post(f"/admin/staff/{clerk.id}/password", data={"csrf_token": csrf_token(page)})
    new_password = re.search(r'<code id="password">([^<]+)</code>', text(response)).group(1)
    assert new_password != password
    assert staff.get("/admin/orders").status_code == 302  # signed out: off to the login page
    staff = sign_in_console(client_for("main.localhost"), "clerk", new_password)
    operator.post(f"/admin/staff/{clerk.id}/delete", data={"csrf_token": csrf_token(operator.get("/admin/staff/"))})
    assert staff.get("/admin/orders").status_code == 302
    with site_scope(site_id("main")):
        assert not Account.select().where(Account.username == "clerk").exists()


def test_staff_writes_are_audited(host, operator):
    add_staff(operator, "clerk", ["orders"])
    with site_scope(site_id("main")):
        actions = [e.action for e in AuditEntry.select()]
    assert any("staff" in action for action in actions), actions


def test_staff_cannot_manage_staff_even_with_every_area(host, client_for):
    main = site_id("main")
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions=",".join(permissions.AREAS)).where(Account.username == "clerk").execute()
    client = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    assert client.get("/admin/products").status_code == 200
    assert client.get("/admin/staff/").status_code == 403


def test_an_owner_of_site_a_cannot_touch_staff_of_site_b(host, client_for):
    open_plugin_site(host, "shopa", ())
    open_plugin_site(host, "shopb", ())
    create_account(site_id("shopa"), "owner-a", PASSWORD)
    victim = create_account(site_id("shopb"), "clerk-b", PASSWORD, role="staff")
    owner = sign_in_console(client_for("shopa.localhost"), "owner-a", PASSWORD)
    token = csrf_token(owner.get("/admin/staff/"))
    for path in (f"/admin/staff/{victim.id}", f"/admin/staff/{victim.id}/password", f"/admin/staff/{victim.id}/delete"):
        assert owner.post(path, data={"csrf_token": token, "areas": ["orders"]}).status_code == 404
    assert "clerk-b" not in text(owner.get("/admin/staff/"))
    # and B's staff cannot sign in on A
    page = client_for("shopa.localhost").get("/admin/login")
    response = SiteClient(host, "shopa.localhost").post("/admin/login", data={
        "csrf_token": csrf_token(page), "username": "clerk-b", "password": PASSWORD})
    assert response.status_code != 302


def test_every_console_page_of_the_host_belongs_to_a_known_area(host):
    """A new console page must be placed in an area on purpose (else it is operators-only)."""
    for slug in ("main",):
        app = host.app_for(slug)
        for rule in app.url_map.iter_rules():
            if not rule.rule.startswith("/admin") or rule.endpoint.endswith(".static"):
                continue
            found = permissions.area_of(rule.endpoint, app.view_functions[rule.endpoint])
            assert found is None or found == "operator" or found in permissions.AREAS, rule.endpoint
            if rule.endpoint.split(".")[0] in ("admin", "admin_money", "admin_theme", "admin_sites"):
                assert found in permissions.AREAS or rule.endpoint in permissions.OPEN_ENDPOINTS, rule.endpoint


def test_area_names_are_checked():
    with pytest.raises(ValueError):
        permissions.area("nope")
    with pytest.raises(ValueError):
        permissions.format_areas(["orders", "nope"])
    assert permissions.format_areas(["money", "orders"]) == "orders,money"
    assert permissions.parse_areas("orders,bogus,money") == {"orders", "money"}


def test_the_console_opens_on_a_staff_members_first_area(host, client_for):
    main = site_id("main")
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions="orders").where(Account.username == "clerk").execute()
    client = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    for landing in ("/admin/", "/admin/dashboard"):
        response = client.get(landing)
        assert response.status_code == 302 and response.headers["Location"].endswith("/admin/orders")
