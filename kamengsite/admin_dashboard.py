"""数据概览 ``/admin/dashboard``: a core plugin, on every site's console.

The main site's operator sees the whole platform (GMV, orders, conversion, refunds, top products,
the sub-site rankings, new members and sub-sites); a sub-site's owner sees the same for the orders
sold on their own site only, plus their margin and balances. Which site is always the request's
(its host), never a parameter: a ``site`` in the query string is ignored. The main site's page also
lists the operational alerts (``incidents.py``): open incidents and the ones cleared recently.

The numbers come from ``dashboard.py`` (SQL aggregates), the charts from ``charts.py`` (inline SVG,
no script), each with a table of the same numbers.
"""

from __future__ import annotations

from flask import flash, render_template, request
from flask_babel import format_date

from . import admin, charts, dashboard, incidents, pricing
from .app import current_site
from .catalog import Product
from .hookspecs import hookimpl
from .i18n import _, _l, _n, current_locale, format_money
from .settlement import site_balances

bp = admin.console_blueprint("admin_dashboard", __name__, "/admin")

#: The KPI label of each balance the owner's dashboard shows.
BALANCE_LABELS = {"site_frozen": _l("Frozen balance (¥)"), "site_available": _l("Available balance (¥)")}


def _product_names(rows, site_id: int | None) -> dict[int, str]:
    """Names as the viewing site shows them (a sub-site owner's rename)."""
    ids = list({row.product_id for row in rows})
    if not ids:
        return {}
    products = Product.select(Product.id, Product.name).where(Product.id.in_(ids))
    if site_id is None:
        return {p.id: p.name for p in products}
    pricer = pricing.Pricer.for_site(site_id)
    return {p.id: pricer.display_name(p) for p in products}


def _named(rows, names):
    return [charts.Point(names.get(row.product_id, f"#{row.product_id}"), row.revenue_fen) for row in rows]


def _day(day) -> str:
    """A chart's day label: ``03-10`` in Chinese, ``10 Mar`` in English."""
    return format_date(day, "MM-dd" if current_locale() == "zh_CN" else "d MMM")


def _yuan(fen: int) -> str:
    return _("¥%(amount)s", amount=format_money(fen))


def _orders(count: int) -> str:
    return _n("%(num)d order", "%(num)d orders", count)


def _items(count: int) -> str:
    return _n("%(num)d item", "%(num)d items", count)


def _charts(days, by_revenue, by_quantity, names, ranking):
    money = {"fmt": format_money, "value_fmt": _yuan}
    result = {
        "gmv": charts.line_chart([charts.Point(_day(d.day), d.gmv_fen) for d in days], title=_("Daily sales"),
                                 desc=_("Amount of the orders paid each day, Beijing time (¥)"), **money),
        "orders": charts.line_chart([charts.Point(_day(d.day), d.orders) for d in days],
                                    title=_("Paid orders per day"),
                                    desc=_("Number of orders paid each day, Beijing time"), value_fmt=_orders),
        "top_revenue": charts.bar_chart(_named(by_revenue, names), title=_("Top 10 products by revenue"),
                                        desc=_("Products ranked by the amount of their paid orders"), **money),
        "top_quantity": charts.bar_chart(
            [charts.Point(names.get(r.product_id, f"#{r.product_id}"), r.quantity) for r in by_quantity],
            title=_("Top 10 products by quantity"), desc=_("Products ranked by the quantity paid for"),
            value_fmt=_items),
    }
    if ranking is not None:
        by_gmv, by_margin = ranking
        result["sites_gmv"] = charts.bar_chart([charts.Point(r.slug, r.value_fen) for r in by_gmv],
                                               title=_("Sub-sites by sales"),
                                               desc=_("Sub-sites ranked by the amount of their paid orders"), **money)
        result["sites_margin"] = charts.bar_chart(
            [charts.Point(r.slug, r.value_fen) for r in by_margin], title=_("Sub-sites by margin"),
            desc=_("Sub-sites ranked by the margin they earned in the ledger (net of refunds)"), **money)
    return result


@bp.get("/dashboard")
@admin.operator_required
def dashboard_page():
    main = admin.is_main_site()
    site_id = None if main else current_site().site_id  # the request's site, never a parameter
    rng, error = dashboard.parse_range(request.args, dashboard.beijing_today())
    if error:
        flash(error, "error")
    totals = dashboard.summary(rng, site_id)
    days = dashboard.by_day(rng, site_id)
    by_revenue = dashboard.top_products(rng, site_id, by="revenue")
    by_quantity = dashboard.top_products(rng, site_id, by="quantity")
    names = _product_names(by_revenue + by_quantity, site_id)
    ranking = (dashboard.sites_by_gmv(rng), dashboard.sites_by_margin(rng)) if main else None
    # Operational alerts are the platform's: the main site's operator sees them, with the worker's
    # heartbeat judged by this request (the worker cannot report its own absence).
    alerts = incidents.dashboard_view(current_site().instance) if main else None
    return render_template(
        "admin/dashboard.html", rng=rng, totals=totals, days=days, by_revenue=by_revenue, by_quantity=by_quantity,
        names=names, ranking=ranking, charts=_charts(days, by_revenue, by_quantity, names, ranking), main=main,
        balances=None if main else site_balances(site_id), balance_labels=BALANCE_LABELS,
        presets=dashboard.PRESETS, preset=request.args.get("preset", ""), max_days=dashboard.MAX_DAYS,
        incidents=alerts)


# -- plugin -------------------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
