"""Who may use which part of a console: the site's operators everything, staff their areas.

A console account is an ``operator`` (the site's owner, or the platform's operator on the
main site: everything on that console) or ``staff`` with a set of *areas*. Every console view
belongs to one area, decided by its endpoint (``AREA_OF_BLUEPRINT``; a view may say otherwise
with ``@area("…")``); a plugin's pages are in ``plugins`` unless the plugin marks them. A staff
account asking for a page outside its areas gets a 403, whatever the page's own checks, and
the menu hides what it may not use. Views nobody mapped are operators-only: a new page is
closed to staff until someone decides which area it belongs to.

Areas are per site: a staff account of site A is an account of site A only (``TenantModel``),
so nothing here can reach another site.
"""

from __future__ import annotations

from flask import abort, g, render_template, request

from .i18n import _l

#: Every area, in menu order, with what a staff member granted it may do.
AREAS = {
    "dashboard": _l("Dashboard"),
    "catalogue": _l("Products, categories and card keys"),
    "orders": _l("Orders and card-key reveals"),
    "prices": _l("Prices"),
    "money": _l("Balance, withdrawals, refunds and reconciliation"),
    "sites": _l("Sub-sites and domains"),
    "members": _l("Members and buyer messages"),
    "design": _l("Theme and page editor"),
    "plugins": _l("Plugins and payment channels"),
    "audit": _l("Audit log"),
}

#: Console pages every signed-in account may use: signing in and out, its own security.
OPEN_BLUEPRINTS = frozenset({"admin_account", "admin_recovery",
                             "admin_jobs"})  # its views check the area of each job's kind
OPEN_ENDPOINTS = frozenset({"admin.login", "admin.logout", "admin.home"})
#: Pages for operators only: who works on the console.
OPERATOR_BLUEPRINTS = frozenset({"admin_staff"})
#: Spending the site's own balance on its term or level: the owner's decision alone.
OPERATOR_ENDPOINTS = frozenset({"owner.renew", "owner.change_level"})

#: Where the console opens (and signing in lands): a staff member without that area goes to their first one.
LANDING_PATHS = frozenset({"/admin/", "/admin/dashboard"})

AREA_OF_BLUEPRINT = {
    "admin_dashboard": "dashboard",
    "admin": "catalogue",
    "admin_orders_keys": "orders",
    "admin_sites": "sites",
    "admin_theme": "design",
    "admin_plugins": "plugins",
    "admin_payments": "plugins",
    "admin_audit": "audit",
    "admin_tickets": "members",
    "admin_members": "members",
    "owner": "sites",  # a sub-site owner's overview and domains
    "admin_settings": "design",  # the shop's name, logo, language
}
AREA_OF_ENDPOINT = {
    "admin_money.order_list": "orders",
    "admin_money.order_resend": "orders",
    "admin_money.prices": "prices",
    "admin_money.delete_rule": "prices",
}
AREA_OF_BLUEPRINT_DEFAULT = {"admin_money": "money"}


def area(name: str):
    """Put a console view in area ``name`` (for plugins' pages, which default to ``plugins``)."""
    if name not in AREAS:
        raise ValueError(f"unknown console area {name!r} (areas: {', '.join(AREAS)})")

    def mark(view):
        view.console_area = name
        return view

    return mark


def parse_areas(text: str) -> frozenset[str]:
    return frozenset(part for part in (text or "").split(",") if part in AREAS)


def format_areas(areas) -> str:
    unknown = set(areas) - set(AREAS)
    if unknown:
        raise ValueError(f"unknown console area {', '.join(sorted(unknown))} (areas: {', '.join(AREAS)})")
    return ",".join(name for name in AREAS if name in set(areas))


def area_of(endpoint: str | None, view=None) -> str | None:
    """The area of a console endpoint; ``None`` for pages open to every signed-in account;
    ``"operator"`` for pages only operators may use."""
    if not endpoint:
        return "operator"
    marked = getattr(view, "console_area", None)
    if marked:
        return marked
    blueprint = endpoint.rpartition(".")[0]
    if endpoint in OPEN_ENDPOINTS or blueprint in OPEN_BLUEPRINTS:
        return None
    if blueprint in OPERATOR_BLUEPRINTS or endpoint in OPERATOR_ENDPOINTS:
        return "operator"
    if endpoint in AREA_OF_ENDPOINT:
        return AREA_OF_ENDPOINT[endpoint]
    if blueprint in AREA_OF_BLUEPRINT:
        return AREA_OF_BLUEPRINT[blueprint]
    if blueprint in AREA_OF_BLUEPRINT_DEFAULT:
        return AREA_OF_BLUEPRINT_DEFAULT[blueprint]
    if blueprint.startswith("admin_") or blueprint == "":
        return "operator"  # a host page nobody mapped: closed to staff until it is
    return "plugins"  # a plugin's console page


def allowed(account, area_name: str | None) -> bool:
    """Whether ``account`` may use a page of ``area_name`` (see ``area_of``)."""
    if account is None:
        return False
    if account.role == "operator":
        return True
    if area_name is None:
        return True
    if area_name == "operator":
        return False
    return area_name in parse_areas(account.permissions)


def can(area_name: str) -> bool:
    """Template global: whether the signed-in console account may use ``area_name`` (menus)."""
    return allowed(g.get("operator"), area_name)


def is_console_request() -> bool:
    return request.path == "/admin" or request.path.startswith("/admin/")


def enforce():
    """``before_request`` of every site app: a staff account outside its areas gets a 403."""
    if not is_console_request() or request.endpoint is None:
        return None
    from .admin import _current_operator
    from flask import current_app

    account = _current_operator()
    if account is None or account.role == "operator":
        return None  # not signed in: the view sends them to the login page; operators may do all
    view = current_app.view_functions.get(request.endpoint)
    needed = area_of(request.endpoint, view)
    if allowed(account, needed):
        return None
    if request.method == "GET" and request.path in LANDING_PATHS:
        from flask import redirect

        return redirect(first_allowed_endpoint(account))  # where signing in lands: their first area instead
    g.operator = account
    return render_template("admin/forbidden.html", area=AREAS.get(needed)), 403


def first_allowed_endpoint(account) -> str:
    """Where a signed-in account lands: the dashboard, or the first area a staff member has."""
    from flask import url_for

    landing = {
        "dashboard": "admin_dashboard.dashboard_page",
        "catalogue": "admin.products",
        "orders": "admin_money.order_list",
        "prices": "admin_money.prices",
        "money": "admin_money.balance",
        "sites": "admin_sites.sites",
        "members": "admin_tickets.index",
        "design": "admin_theme.editor",
        "plugins": "admin_plugins.index",
        "audit": "admin_audit.index",
    }
    from flask import current_app

    for name, endpoint in landing.items():
        if allowed(account, name) and endpoint in current_app.view_functions:
            return url_for(endpoint)
    return url_for("admin_account.overview")


def forbid_unless(area_name: str):
    """Inside a view: 403 unless the signed-in account may use ``area_name`` (for actions inside a page)."""
    if not can(area_name):
        abort(403)
