"""Site levels (青铜/白银/黄金 …): what a sub-site at a level pays for goods and what it may do.

A level is a platform-wide row the operator manages (``kamengsite level …``, the admin).
A site names its level in ``site.toml`` (``level = "silver"``), mirrored into ``site.level``.

What a level sets:

* the cost rule for sites directly under the main site: ``cost_percent_bp`` over the
  base price (the main site's price; negative for a discount, e.g. -1500 = 85 %),
  then ``cost_fixed_fen`` added — or an explicit per-SKU tier price (``LevelPrice``);
* how much a site at this level may add on top of its own cost for its child sites
  (``max_child_markup_bp``), and whether it may open children at all;
* permissions: bind its own domain, list its own goods (the platform keeping
  ``own_goods_commission_bp``), self-service opening;
* money: opening fee, renewal fee and term (0 days = no expiry), how long profit stays
  frozen (``freeze_days``), withdrawal minimum and fee.
"""

from __future__ import annotations

import re

import peewee

from .catalog import Sku
from .db import database
from .errors import KamengsiteError
from .models import utcnow
from .pagecache import StampedModel  # a level's cost rules are in every sub-site's prices

CODE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
#: Basis points: 10000 = 100 %.
BP = 10000


class LevelError(KamengsiteError):
    """A level cannot be saved as given; the message names the field."""


class Level(StampedModel):
    code = peewee.CharField(max_length=32, unique=True)
    name = peewee.CharField(max_length=32)
    sort = peewee.IntegerField(default=0)
    cost_percent_bp = peewee.IntegerField(default=0)
    cost_fixed_fen = peewee.BigIntegerField(default=0)
    max_child_markup_bp = peewee.IntegerField(default=0)
    may_bind_domain = peewee.BooleanField(default=False)
    may_open_children = peewee.BooleanField(default=False)
    may_list_own_goods = peewee.BooleanField(default=False)
    own_goods_commission_bp = peewee.IntegerField(default=0)
    opening_fee_fen = peewee.BigIntegerField(default=0)
    renewal_fee_fen = peewee.BigIntegerField(default=0)
    term_days = peewee.IntegerField(default=0)
    self_service = peewee.BooleanField(default=False)
    freeze_days = peewee.IntegerField(default=7)
    withdraw_min_fen = peewee.BigIntegerField(default=10000)
    withdraw_fee_bp = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "site_level"

    def __str__(self):
        return f"{self.name} ({self.code})"


class LevelPrice(StampedModel):
    """An explicit cost of one SKU for sites of one level (a 价格模板 row); beats the percent rule."""

    level = peewee.ForeignKeyField(Level, backref="prices", on_delete="CASCADE")
    sku = peewee.ForeignKeyField(Sku, on_delete="CASCADE")
    price_fen = peewee.BigIntegerField()

    class Meta:
        table_name = "level_price"
        indexes = ((("level", "sku"), True),)


#: Seeded by ``kamengsite init`` / the demo: a starting point the operator edits (its names are data, not interface).
DEFAULT_LEVELS = (
    dict(code="bronze", name="青铜", sort=1, cost_percent_bp=-500, max_child_markup_bp=0,  # i18n: keep
         opening_fee_fen=9900, term_days=365, renewal_fee_fen=9900, self_service=True,
         freeze_days=3, withdraw_min_fen=10000, withdraw_fee_bp=100),
    dict(code="silver", name="白银", sort=2, cost_percent_bp=-1000, max_child_markup_bp=1000,  # i18n: keep
         may_bind_domain=True, may_open_children=True, opening_fee_fen=29900, term_days=365,
         renewal_fee_fen=29900, self_service=True, freeze_days=3, withdraw_min_fen=10000, withdraw_fee_bp=50),
    dict(code="gold", name="黄金", sort=3, cost_percent_bp=-1500, max_child_markup_bp=2000,  # i18n: keep
         may_bind_domain=True, may_open_children=True, may_list_own_goods=True, own_goods_commission_bp=500,
         opening_fee_fen=99900, term_days=365, renewal_fee_fen=99900, freeze_days=1,
         withdraw_min_fen=10000, withdraw_fee_bp=0),
)
_MONEY_FIELDS = ("cost_fixed_fen", "opening_fee_fen", "renewal_fee_fen", "withdraw_min_fen")
_BP_FIELDS = {"cost_percent_bp": (-9000, 100 * BP), "max_child_markup_bp": (0, 10 * BP),
              "own_goods_commission_bp": (0, BP), "withdraw_fee_bp": (0, BP)}
_DAY_FIELDS = ("term_days", "freeze_days")


def check_level_values(values: dict) -> dict:
    """Validate a level's fields; LevelError names the first bad one."""
    code = values.get("code", "")
    if not isinstance(code, str) or not CODE_RE.match(code):
        raise LevelError(f"code: {code!r} must be 1-32 of a-z, 0-9, '_' and '-', starting with a letter")
    name = values.get("name", "")
    if not isinstance(name, str) or not name.strip() or len(name) > 32:
        raise LevelError("name: 1 to 32 characters")
    for key in _MONEY_FIELDS:
        value = values.get(key, 0)
        if not _is_int(value) or value < 0:
            raise LevelError(f"{key}: must be whole fen, zero or more")
    for key, (low, high) in _BP_FIELDS.items():
        value = values.get(key, 0)
        if not _is_int(value) or not low <= value <= high:
            raise LevelError(f"{key}: must be between {low} and {high} basis points")
    for key in _DAY_FIELDS:
        value = values.get(key, 0)
        if not _is_int(value) or not 0 <= value <= 3660:
            raise LevelError(f"{key}: must be 0 to 3660 days")
    return values


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def save_level(**values) -> Level:
    """Create or update the level ``values["code"]``."""
    check_level_values(values)
    level = Level.get_or_none(Level.code == values["code"])
    if level is None:
        return Level.create(**values)
    for key, value in values.items():
        setattr(level, key, value)
    level.save()
    return level


def seed_default_levels() -> int:
    """Create the default levels that do not exist yet; returns how many were created."""
    created = 0
    for values in DEFAULT_LEVELS:
        if Level.get_or_none(Level.code == values["code"]) is None:
            save_level(**values)
            created += 1
    return created


def get_level(code: str) -> Level | None:
    return Level.get_or_none(Level.code == code) if code else None


def all_levels() -> list[Level]:
    return list(Level.select().order_by(Level.sort, Level.id))


def set_tier_price(level: Level, sku_id: int, price_fen: int | None):
    """Set (or with None, remove) the explicit cost of one SKU for one level."""
    if price_fen is not None and (not _is_int(price_fen) or price_fen < 0):
        raise LevelError("price_fen: must be whole fen, zero or more")
    with database.atomic():
        LevelPrice.delete().where((LevelPrice.level == level) & (LevelPrice.sku == sku_id)).execute()
        if price_fen is not None:
            LevelPrice.create(level=level, sku=sku_id, price_fen=price_fen)
