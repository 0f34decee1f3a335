"""The reseller API's tables (migration 0024)."""

from __future__ import annotations

import peewee

from ..models import BaseModel, utcnow
from ..orders import Order
from ..tenancy import TenantModel


class ApiKey(TenantModel):
    """An app key of a member of ``site``: orders placed with it are paid from that member's wallet."""

    member_id = peewee.IntegerField(index=True)
    app_key = peewee.CharField(max_length=32, unique=True)
    salt = peewee.CharField(max_length=64)  # with the instance secret, derives the key's secret (keys.secret_for)
    label = peewee.CharField(max_length=60, default="")
    callback_url = peewee.CharField(max_length=500, default="")  # the default for orders that name none
    status = peewee.CharField(max_length=12, default="active")  # active | revoked
    created_at = peewee.DateTimeField(default=utcnow)
    last_used_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "api_key"

    @property
    def active(self) -> bool:
        return self.status == "active"

    def __repr__(self):
        return f"<ApiKey {self.app_key} site={self.site_id} member={self.member_id} {self.status}>"


class ApiNonce(BaseModel):
    """A nonce seen within the signature window: the unique pair refuses a replay, in every process."""

    app_key = peewee.CharField(max_length=32)
    nonce = peewee.CharField(max_length=64)
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "api_nonce"
        indexes = ((("app_key", "nonce"), True),)


class ApiOrder(TenantModel):
    """A caller's order number → our order: the unique pair makes creating an order idempotent."""

    api_key = peewee.ForeignKeyField(ApiKey, on_delete="RESTRICT")
    out_trade_no = peewee.CharField(max_length=64)
    order = peewee.ForeignKeyField(Order, unique=True, on_delete="RESTRICT")
    callback_url = peewee.CharField(max_length=500, default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "api_order"
        indexes = ((("api_key", "out_trade_no"), True),)


class ApiCallback(TenantModel):
    """One status callback of one order (one row per order and event), and how delivering it went."""

    api_key = peewee.ForeignKeyField(ApiKey, on_delete="CASCADE")
    order = peewee.ForeignKeyField(Order, on_delete="CASCADE")
    event = peewee.CharField(max_length=32)  # order.delivered | order.refunded | order.cancelled …
    url = peewee.CharField(max_length=500)
    payload = peewee.TextField()
    state = peewee.CharField(max_length=12, default="pending")  # pending | delivered | failed
    attempts = peewee.IntegerField(default=0)
    last_status = peewee.IntegerField(null=True)
    last_error = peewee.TextField(default="")
    next_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "api_callback"
        indexes = ((("order", "event"), True),)
