"""数据概览 ``/admin/dashboard``: a core plugin, on every site's console.

The main site's operator sees the whole platform (GMV, orders, conversion, refunds, top products,
the sub-site rankings, new members and sub-sites); a sub-site's owner sees the same for the orders
sold on their own site only, plus their margin and balances. Which site is always the request's
(its host), never a parameter: a ``site`` in the query string is ignored.

The numbers come from ``dashboard.py`` (SQL aggregates), the charts from ``charts.py`` (inline SVG,
no script), each with a table of the same numbers.
"""

from __future__ import annotations

from flask import flash, render_template, request

from . import admin, charts, dashboard, pricing
from .app import current_site
from .catalog import Product
from .hookspecs import hookimpl
from .settlement import site_balances
from .themes import format_fen

bp = admin.console_blueprint("admin_dashboard", __name__, "/admin")

BALANCE_LABELS = {"site_frozen": "冻结", "site_available": "可用", "site_payout": "提现中", "prepaid_hold": "预存占用"}


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


def _charts(days, by_revenue, by_quantity, names, ranking):
    yuan = format_fen
    result = {
        "gmv": charts.line_chart([charts.Point(d.day.strftime("%m-%d"), d.gmv_fen) for d in days],
                                 title="每日成交额", desc="按北京时间每天已支付订单的金额（元）", fmt=yuan, unit=" 元"),
        "orders": charts.line_chart([charts.Point(d.day.strftime("%m-%d"), d.orders) for d in days],
                                    title="每日支付订单数", desc="按北京时间每天已支付的订单数", unit=" 单"),
        "top_revenue": charts.bar_chart(_named(by_revenue, names), title="商品销售额前 10",
                                        desc="按已支付订单金额排序的商品", fmt=yuan, unit=" 元"),
        "top_quantity": charts.bar_chart(
            [charts.Point(names.get(r.product_id, f"#{r.product_id}"), r.quantity) for r in by_quantity],
            title="商品销量前 10", desc="按已支付数量排序的商品", unit=" 件"),
    }
    if ranking is not None:
        by_gmv, by_margin = ranking
        result["sites_gmv"] = charts.bar_chart([charts.Point(r.slug, r.value_fen) for r in by_gmv],
                                               title="分站成交额排行", desc="按已支付订单金额排序的分站",
                                               fmt=yuan, unit=" 元")
        result["sites_margin"] = charts.bar_chart([charts.Point(r.slug, r.value_fen) for r in by_margin],
                                                  title="分站分润排行", desc="按账本中分站赚到的分润排序（扣除退款）",
                                                  fmt=yuan, unit=" 元")
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
    return render_template(
        "admin/dashboard.html", rng=rng, totals=totals, days=days, by_revenue=by_revenue, by_quantity=by_quantity,
        names=names, ranking=ranking, charts=_charts(days, by_revenue, by_quantity, names, ranking), main=main,
        balances=None if main else site_balances(site_id), balance_labels=BALANCE_LABELS,
        presets=dashboard.PRESETS, preset=request.args.get("preset", ""), max_days=dashboard.MAX_DAYS)


# -- plugin -------------------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
