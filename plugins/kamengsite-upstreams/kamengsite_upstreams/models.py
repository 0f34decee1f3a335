"""The upstreams plugin's tables (made by ``kamengsite/migrations/0025_upstreams.py``).

Instance-wide rows of the operator (the main site): not tenant rows. ``Upstream.settings`` is
JSON; the fields a connector's schema marks ``writeOnly`` are stored sealed with the instance's
card-key cipher (``seal(value, -upstream.id)``, base64) and opened only to build the connector.
"""

from __future__ import annotations

import peewee

from kamengsite.catalog import Product, Sku
from kamengsite.models import BaseModel, utcnow
from kamengsite.orders import Order

STATUSES = ("active", "paused")
RULES = ("margin", "percent")
FORWARD_STATES = ("pending", "sending", "sent", "delivered", "refunded")


class Upstream(BaseModel):
    name = peewee.CharField(max_length=60)
    protocol = peewee.CharField(max_length=32)
    settings = peewee.TextField(default="{}")
    status = peewee.CharField(max_length=12, default="active")
    failures = peewee.IntegerField(default=0)
    backoff_until = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(default="")
    last_sync_at = peewee.DateTimeField(null=True)
    last_ok_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "upstream"

    def failing(self, now=None) -> bool:
        """Whether the last sync failed (it stays failing until a success)."""
        return self.failures > 0

    def in_backoff(self, now=None) -> bool:
        now = now or utcnow()
        return self.backoff_until is not None and self.backoff_until > now


class UpstreamLink(BaseModel):
    sku = peewee.ForeignKeyField(Sku, unique=True, on_delete="CASCADE", backref="+")
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE", backref="+")
    upstream = peewee.ForeignKeyField(Upstream, on_delete="RESTRICT", backref="+")
    ref = peewee.CharField(max_length=64)
    fallback_upstream = peewee.ForeignKeyField(Upstream, null=True, on_delete="SET NULL", backref="+")
    fallback_ref = peewee.CharField(max_length=64, default="")
    rule = peewee.CharField(max_length=8, default="margin")
    rule_value = peewee.IntegerField(default=0)  # fen for margin; basis points for percent (1500 = +15 %)
    cost_fen = peewee.BigIntegerField(default=0)  # the current supplier's unit price to us
    upstream_stock = peewee.IntegerField(default=0)
    via_fallback = peewee.BooleanField(default=False)  # the last sync took price and stock from the fallback
    price_alert = peewee.TextField(default="")
    synced_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "upstream_link"


class UpstreamForward(BaseModel):
    order = peewee.ForeignKeyField(Order, unique=True, on_delete="RESTRICT", backref="+")
    site_id = peewee.IntegerField(index=True)
    link = peewee.ForeignKeyField(UpstreamLink, on_delete="RESTRICT", backref="+")
    upstream = peewee.ForeignKeyField(Upstream, null=True, on_delete="SET NULL", backref="+")
    state = peewee.CharField(max_length=12, default="pending")
    attempts = peewee.IntegerField(default=0)
    next_at = peewee.DateTimeField(default=utcnow)
    upstream_order_no = peewee.CharField(max_length=64, default="")
    last_error = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "upstream_forward"
