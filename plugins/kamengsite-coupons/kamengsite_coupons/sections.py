"""The "限时秒杀" section: running flash sales of this site (the home page), or of this product."""

from __future__ import annotations

from flask import url_for
from markupsafe import Markup

from kamengsite.catalog import Product, Sku
from kamengsite.i18n import _, _n, format_money, format_when
from kamengsite.models import utcnow

from . import rules

MAX_SHOWN = 12


def _site_id(site) -> int:
    from flask import current_app

    site_id = getattr(site, "site_id", None)
    return site_id if site_id is not None else current_app.extensions["kamengsite.site"].site_id


def render_flash_sales(context: dict) -> Markup:
    now = utcnow()
    sales = rules.active_flash_sales(_site_id(context.get("site")), now=now)
    product = context.get("product")
    if context.get("page") == "product" and product is not None:
        sales = [s for s in sales if s.product_id == product.id]
    sales = sales[:MAX_SHOWN]
    if not sales:
        return Markup("")
    names = {sku_id: (pname, sname) for sku_id, pname, sname in
             Sku.select(Sku.id, Product.name, Sku.name).join(Product)
             .where(Sku.id.in_([s.sku_id for s in sales])).tuples()}
    items = []
    for sale in sales:
        pname, sname = names.get(sale.sku_id, ("", ""))
        title = f"{pname} {sname}".strip()
        left = _("Sold out") if sale.remaining <= 0 else _n("%(num)d unit left", "%(num)d units left", sale.remaining)
        items.append(Markup(
            '<li data-flash-sale="{id}"><a href="{href}">{title}</a> <strong class="price">{price}</strong> '
            '<span class="left">{left}</span> <small>{ends}</small></li>').format(
            id=sale.id, href=url_for("storefront.product", product_id=sale.product_id), title=title,
            price=_("Flash sale price ¥%(price)s", price=format_money(sale.price_fen)), left=left,
            ends=_("Ends %(when)s", when=format_when(sale.ends_at))))
    return Markup('<h2>{}</h2><ul class="flash-sales">{}</ul>').format(_("Flash sales"), Markup("").join(items))


