"""The catalogue: categories, products and their SKUs (the unit a buyer pays for).

The main site owns the catalogue every sub-site sells from; ``site`` on these
rows is the owner. Per-site visibility, names and prices are layered on top by
the pricing hooks of the sub-site economy. ``Sku.stock`` counts the units that
can still be reserved: available card keys for card products (kept in the same
transactions that reserve and release keys), a plain counter otherwise.
"""

from __future__ import annotations

import json

import peewee

from .db import Statement, arg
from .models import Site, utcnow
from .pagecache import StampedModel  # every write moves the page cache's catalogue stamp

KINDS = ("card", "topup", "manual")  # 卡密自动发货 / 代充 / 人工发货
DELIVERY_ORDERS = ("fifo", "random")


class Category(StampedModel):
    site = peewee.ForeignKeyField(Site, on_delete="CASCADE")
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    name = peewee.CharField(max_length=60)
    sort = peewee.IntegerField(default=0)
    visible = peewee.BooleanField(default=True)
    created_at = peewee.DateTimeField(default=utcnow)


class Product(StampedModel):
    site = peewee.ForeignKeyField(Site, on_delete="CASCADE")
    category = peewee.ForeignKeyField(Category, null=True, backref="products", on_delete="SET NULL")
    name = peewee.CharField(max_length=120)
    summary = peewee.CharField(max_length=255, default="")
    description = peewee.TextField(default="")
    kind = peewee.CharField(max_length=16, default="card")
    supplier = peewee.CharField(max_length=32, default="")  # the plugin whose upstream supplies the goods; "" = own stock
    image = peewee.CharField(max_length=255, default="")
    members_only = peewee.BooleanField(default=False)
    per_buyer_limit = peewee.IntegerField(default=0)  # 0: no limit
    min_qty = peewee.IntegerField(default=1)
    max_qty = peewee.IntegerField(default=10)
    delivery_order = peewee.CharField(max_length=8, default="fifo")
    loop_key = peewee.BooleanField(default=False)  # one code sold many times
    topup_fields = peewee.TextField(default="")  # JSON: fields a 代充 buyer fills in
    low_stock_threshold = peewee.IntegerField(default=0)
    low_stock_alerted = peewee.BooleanField(default=False)
    status = peewee.CharField(max_length=8, default="on")
    sort = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)


class Sku(StampedModel):
    product = peewee.ForeignKeyField(Product, backref="skus", on_delete="CASCADE")
    name = peewee.CharField(max_length=60, default="")
    price_fen = peewee.BigIntegerField()
    stock = peewee.IntegerField(default=0)
    sold = peewee.IntegerField(default=0)
    sort = peewee.IntegerField(default=0)
    status = peewee.CharField(max_length=8, default="on")


def create_product(site, name: str, price_fen: int, *, category=None, kind="card", skus=None, **fields) -> Product:
    """A product with its SKUs (one unnamed SKU at ``price_fen`` unless ``skus`` lists (name, price_fen))."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check_fen(price_fen)
    _check_product_fields(fields)
    with Product._meta.database.atomic():
        product = Product.create(site=site, name=name, category=category, kind=kind, **fields)
        for sort, (sku_name, sku_price) in enumerate(skus or [("", price_fen)]):
            _check_fen(sku_price)
            Sku.create(product=product, name=sku_name, price_fen=sku_price, sort=sort)
    return product


def _check_product_fields(fields: dict):
    """Settings that would otherwise be silently misread when buying (a typo'd delivery order is FIFO)."""
    delivery_order = fields.get("delivery_order", "fifo")
    if delivery_order not in DELIVERY_ORDERS:
        raise ValueError(f"delivery_order must be one of {DELIVERY_ORDERS}, got {delivery_order!r}")
    for name in ("min_qty", "max_qty", "per_buyer_limit"):
        value = fields.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if fields.get("topup_fields"):
        from .topup import parse_fields

        topup = fields["topup_fields"]
        parse_fields(topup)  # raises ValueError naming the bad entry
        if not isinstance(topup, str):
            fields["topup_fields"] = json.dumps(topup, ensure_ascii=False)
    min_qty, max_qty = fields.get("min_qty", 1), fields.get("max_qty", 10)
    if max_qty and max(1, min_qty) > max_qty:  # max_qty 0: no upper bound
        raise ValueError(f"max_qty ({max_qty}) is below min_qty ({min_qty}): nobody could buy it")


def _check_fen(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"prices are whole fen (int >= 0), got {value!r}")


def storefront_products(site_owner_id, limit: int = 200):
    """Products on sale with their cheapest SKU price and total stock, for listing pages.

    ``site_owner_id``: the site whose catalogue is listed, or a tuple of them (the main
    catalogue and a sub-site's own goods)."""
    owners = tuple(site_owner_id) if isinstance(site_owner_id, (tuple, list)) else (site_owner_id,)
    rows = (
        Product.select(Product.id, Product.site, Product.name, Product.summary, Product.kind, Product.image,
                       peewee.fn.MIN(Sku.price_fen).alias("price_fen"),
                       peewee.fn.SUM(Sku.stock).alias("stock"))
        .join(Sku)
        .where(Product.site.in_(owners) & (Product.status == "on") & (Sku.status == "on"))
        .group_by(Product.id, Product.site, Product.name, Product.summary, Product.kind, Product.image, Product.sort)
        .order_by(Product.sort, Product.id)
        .limit(limit)
        .dicts()
    )
    return [dict(r, stock=int(r["stock"] or 0)) for r in rows]


_PAGE_PRODUCT_FIELDS = (Product.id, Product.site, Product.category, Product.name, Product.summary,
                        Product.description, Product.kind, Product.image, Product.status, Product.members_only,
                        Product.min_qty, Product.max_qty, Product.per_buyer_limit, Product.topup_fields,
                        Product.low_stock_threshold, Product.low_stock_alerted)
_PAGE_SKU_FIELDS = (Sku.id, Sku.product, Sku.name, Sku.price_fen, Sku.stock, Sku.sort, Sku.status)
_PRODUCT_ON_SALE = Statement(lambda: Product.select(*_PAGE_PRODUCT_FIELDS).where(
    (Product.id == arg("id")) & (Product.site == arg("owner")) & (Product.status == "on")))
_SKUS_ON_SALE = Statement(lambda: Sku.select(*_PAGE_SKU_FIELDS).where(
    (Sku.product == arg("product")) & (Sku.status == "on")).order_by(Sku.sort, Sku.id))


_SKU_STOCK = Statement(lambda: Sku.select(Sku.stock).where(Sku.id == arg("id")))


def sku_stock(sku_id: int) -> int | None:
    row = _SKU_STOCK.first(id=sku_id)
    return row[0] if row else None


def _from_row(model, fields, row):
    return model(**{f.name: f.python_value(v) for f, v in zip(fields, row)})


def product_on_sale(product_id: int, owner_id: int) -> Product | None:
    """A product of ``owner_id``'s catalogue that is on sale, for its page (one compiled query)."""
    row = _PRODUCT_ON_SALE.first(id=product_id, owner=owner_id)
    return _from_row(Product, _PAGE_PRODUCT_FIELDS, row) if row else None


def skus_on_sale(product_id: int) -> list[Sku]:
    return [_from_row(Sku, _PAGE_SKU_FIELDS, row) for row in _SKUS_ON_SALE.all(product=product_id)]
