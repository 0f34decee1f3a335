"""Admin notices and low-stock alerts (库存预警).

``Notice`` rows are what a site's admin sees in its notice list: low stock,
mail that could not be delivered, and so on. They belong to one site.

A product with ``low_stock_threshold`` > 0 alerts its operator **once** when
the stock of one of its on-sale SKUs falls to or below the threshold (a
notice on the owning site plus a mail to ``operator_email``), and not on every
later sale: ``product.low_stock_alerted`` records that the alert went out.
When every on-sale SKU is above the threshold again (an import, a recount)
the flag is cleared and the next crossing alerts again. A threshold of 0
(the default) turns the alert off.

Both decisions are single conditional UPDATEs that test the stock in the same
statement, so concurrent sales alert once, and a stale read cannot re-arm an
alert that a concurrent sale just raised. ``check_low_stock(product_id)`` is
meant to be called after the transaction that changed the stock committed
(after delivery, after an import).
"""

from __future__ import annotations

import logging

import peewee

from .catalog import Product, Sku
from .db import database, retry_transient
from .models import utcnow
from .tenancy import TenantModel, all_sites

log = logging.getLogger(__name__)

ALERTED = "alerted"
REARMED = "rearmed"


class Notice(TenantModel):
    """A message to a site's admin."""

    kind = peewee.CharField(max_length=32)  # low_stock | mail_failed | …
    title = peewee.CharField(max_length=200)
    body = peewee.TextField(default="")
    ref = peewee.CharField(max_length=64, default="")  # what it is about: "product:12", "order:34"
    created_at = peewee.DateTimeField(default=utcnow)
    read_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "notice"


def add_notice(site_id: int, *, kind: str, title: str, body: str = "", ref: str = "") -> Notice:
    with all_sites():
        return Notice.create(site=site_id, kind=kind, title=title[:200], body=body, ref=ref[:64])


def unread_notices(site_id: int, limit: int = 100) -> list[Notice]:
    with all_sites():
        return list(Notice.select().where((Notice.site == site_id) & Notice.read_at.is_null())
                    .order_by(Notice.id.desc()).limit(limit))


def _low_skus_exist():
    """EXISTS(an on-sale SKU of the product being updated at or below its threshold)."""
    low = Sku.select(Sku.id).where((Sku.product == Product.id) & (Sku.status == "on")
                                   & (Sku.stock <= Product.low_stock_threshold))
    return peewee.fn.EXISTS(low)


def check_low_stock(product_id: int, *, instance=None) -> str | None:
    """Alert once when ``product_id``'s stock is low, re-arm when it is not; call after the commit.

    Returns ``"alerted"`` when this call raised the alert (notice written, operator
    mail queued), ``"rearmed"`` when it cleared a previous alert, None otherwise.
    ``instance`` (for the operator's mail) defaults to the current one.
    """
    product = Product.get_or_none(Product.id == product_id)
    if product is None:
        return None

    def raise_alert():
        with database.atomic():
            won = Product.update(low_stock_alerted=True).where(
                (Product.id == product_id) & (Product.low_stock_alerted == False)  # noqa: E712
                & (Product.low_stock_threshold > 0) & _low_skus_exist()).execute()
            if not won:
                return None
            low = list(Sku.select().where((Sku.product == product_id) & (Sku.status == "on")
                                          & (Sku.stock <= product.low_stock_threshold)).order_by(Sku.sort, Sku.id))
            threshold = Product.get_by_id(product_id).low_stock_threshold
            title, body = _low_stock_text(product, threshold, low, instance)
            add_notice(product.site_id, kind="low_stock", title=title, body=body, ref=f"product:{product_id}")
            return title, body

    def rearm():
        return Product.update(low_stock_alerted=False).where(
            (Product.id == product_id) & (Product.low_stock_alerted == True)  # noqa: E712
            & ((Product.low_stock_threshold <= 0) | ~_low_skus_exist())).execute()

    if not product.low_stock_alerted:
        alert = retry_transient(raise_alert)
        if alert is None:
            return None
        log.warning("low stock: product %s (%s)", product_id, alert[0])
        _mail_operator(instance, *alert)
        return ALERTED
    if retry_transient(rearm):
        log.info("low stock: product %s is above its threshold again, alert re-armed", product_id)
        return REARMED
    return None


def _low_stock_text(product, threshold: int, low_skus, instance=None) -> tuple[str, str]:
    """The low-stock notice's title and body, in the language of the site owning the product."""
    from .mail import site_gettext, site_locale

    gettext = site_gettext(site_locale(product.site_id, instance))
    title = gettext("Low stock: %(product)s (≤ %(threshold)s left)", product=product.name, threshold=threshold)
    lines = [gettext("%(sku)s (SKU %(id)s): %(stock)s left", sku=sku.name or gettext("Default variant"),
                     id=sku.id, stock=sku.stock) for sku in low_skus]
    body = "\n".join(lines) + "\n\n" + gettext(
        "The alert re-arms itself after restocking. Product ID: %(id)s", id=product.id)
    return title, body


def _mail_operator(instance, subject: str, body: str):
    from . import jobs, mail

    try:
        instance = instance or jobs.current_instance()
        if instance is None:
            log.warning("low-stock mail not queued: no instance known to this process")
            return
        mail.queue_operator_mail(instance, subject, body)
    except Exception:  # noqa: BLE001 - the notice is written; mail is best effort
        log.exception("low-stock mail could not be queued")
