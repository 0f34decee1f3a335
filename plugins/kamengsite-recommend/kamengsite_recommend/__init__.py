"""Recommendations for a site: "最近浏览" (recently viewed) and "买了又买" (bought together) sections.

Enabled per site (``plugins = ["recommendations"]``). Both come from that site's own data:
the product pages its visitors opened (recorded after each product page a visitor was shown),
and its paid orders. The sections show products as the site sells them — on sale, not hidden
by the owner, under the owner's name for them, at the site's price — and link to ``/p/<id>``.
"""

from __future__ import annotations

import logging
import secrets

import peewee
from flask import current_app, request, session, url_for
from markupsafe import Markup

from kamengsite.catalog import Product, Sku
from kamengsite.errors import ConfigError
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l, format_money
from kamengsite.member_routes import current_member_id
from kamengsite.plugin_settings import settings_for
from kamengsite.sections import Section

from . import data
from .data import ProductView  # noqa: F401

log = logging.getLogger(__name__)

PLUGIN = "recommendations"
SESSION_VISITOR = "recommend_visitor"  # a guest's random visitor token
SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "recent_count": {"type": "integer", "minimum": 0, "maximum": data.KEEP_VIEWS, "default": 6,
                         "title": _l("At most how many products “Recently viewed” shows (0 = hidden)")},
        "together_count": {"type": "integer", "minimum": 0, "maximum": 12, "default": 4,
                           "title": _l("At most how many products “Bought together” shows (0 = hidden)")},
    },
    "additionalProperties": False,
}
DEFAULTS = {"recent_count": 6, "together_count": 4}


def _site():
    return current_app.extensions["kamengsite.site"]


def settings(site) -> dict:
    """The site's ``[settings.recommendations]``; wrong settings are logged and the defaults used."""
    try:
        return settings_for(site, PLUGIN, SETTINGS_SCHEMA)
    except ConfigError as exc:
        log.error("site %s: recommendations use the defaults: %s", getattr(site, "slug", "?"), exc)
        return dict(DEFAULTS)


# -- the hooks --------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def prepare_site_app(app, site):
    app.after_request(_record_product_view)


@hookimpl
def theme_sections(site):
    return [Section("recently_viewed", _l("Recently viewed"), render_recently_viewed, pages=("home", "product")),
            Section("bought_together", _l("Bought together"), render_bought_together, pages=("product",))]


# -- recording views ----------------------------------------------------------------------


def visitor_key(create: bool = False) -> str:
    """``m<id>`` for a signed-in member, ``g<token>`` for a guest (token made when ``create``), or ""."""
    member_id = current_member_id()
    if member_id is not None:
        return f"m{member_id}"
    token = session.get(SESSION_VISITOR)
    if not (isinstance(token, str) and 0 < len(token) <= 32 and token.replace("-", "").replace("_", "").isalnum()):
        if not create:
            return ""
        token = session[SESSION_VISITOR] = secrets.token_urlsafe(16)
    return f"g{token}"


def _record_product_view(response):
    """After a product page was shown (GET, 200), remember it for this visitor. Never fails the page."""
    if request.endpoint != "storefront.product" or request.method != "GET" or response.status_code != 200:
        return response
    try:
        product_id = int((request.view_args or {}).get("product_id"))
        data.record_view(_site().site_id, visitor_key(create=True), product_id)
    except Exception:  # noqa: BLE001 - a lost view is nothing; a broken product page is
        log.exception("site %s: could not record a product view", _site().slug)
    return response


# -- the sections -----------------------------------------------------------------------


def shown_products(product_ids) -> list[dict]:
    """The products of ``product_ids`` this site sells now, in that order: listing rows
    (``id``, ``name``, ``price_fen`` as the site shows them); others (off sale, hidden) are left out."""
    from kamengsite import storefront

    ids = list(dict.fromkeys(product_ids))
    if not ids:
        return []
    rows = (Product.select(Product.id, Product.site, Product.name, Product.summary, Product.kind, Product.image,
                           peewee.fn.MIN(Sku.price_fen).alias("price_fen"), peewee.fn.SUM(Sku.stock).alias("stock"))
            .join(Sku)
            .where(Product.id.in_(ids) & Product.site.in_(list(storefront.catalog_owners()))
                   & (Product.status == "on") & (Sku.status == "on"))
            .group_by(Product.id, Product.site, Product.name, Product.summary, Product.kind, Product.image)
            .dicts())
    listed = storefront.pricer().listing([dict(r, stock=int(r["stock"] or 0)) for r in rows])
    by_id = {row["id"]: row for row in listed}
    return [by_id[i] for i in ids if i in by_id]


def _render(heading: str, css: str, products: list[dict]) -> Markup:
    if not products:
        return Markup("")
    items = Markup("").join(
        Markup('<li class="card"><h3><a href="{}">{}</a></h3><div class="price">¥{}</div></li>').format(
            url_for("storefront.product", product_id=p["id"]), p["name"], format_money(p["price_fen"]))
        for p in products)
    return Markup('<h2>{}</h2><ul class="grid {}">{}</ul>').format(heading, css, items)


def _current_product_id(context) -> int | None:
    product = context.get("product")
    return getattr(product, "id", None) if product is not None else None


def render_recently_viewed(context: dict) -> Markup:
    """This visitor's last viewed products on this site, newest first, without the page's own product."""
    count = settings(_site().config)["recent_count"]
    visitor = visitor_key()
    if not count or not visitor:
        return Markup("")
    current = _current_product_id(context)
    ids = [i for i in data.recent_views(_site().site_id, visitor) if i != current]
    return _render(_("Recently viewed"), "recently-viewed", shown_products(ids)[:count])


def render_bought_together(context: dict) -> Markup:
    """The products most often bought by the buyers of this page's product, on this site."""
    count = settings(_site().config)["together_count"]
    current = _current_product_id(context)
    if not count or current is None:
        return Markup("")
    ids = [product_id for product_id, _count in data.bought_together(_site().site_id, current)]
    return _render(_("People who bought this also bought"), "bought-together", shown_products(ids)[:count])


__all__ = ["PLUGIN", "ProductView", "SETTINGS_SCHEMA", "plugin_settings_schema", "prepare_site_app",
           "render_bought_together", "render_recently_viewed", "shown_products", "theme_sections", "visitor_key"]
