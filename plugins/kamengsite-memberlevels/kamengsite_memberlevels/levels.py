"""Member levels of one site: the settings, a member's cumulative spend, level and discount.

Everything is per site: a member's spend is the sum of ``goods_fen`` of *that site's* orders
the member paid (``paid`` or ``delivered``; a refunded order no longer counts), computed from
``shop_order`` whenever a level is needed, so it is never stale. ``MemberLevel`` keeps the
owner's grant and a cache of spend and level (refreshed on payment and refund) for the console.

Queries name their site explicitly inside ``all_sites()``: the payment and refund hooks may run
in a request of another site's domain (a gateway notifying there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import peewee

from kamengsite.db import database, retry_transient
from kamengsite.errors import ConfigError
from kamengsite.i18n import _, _l, current_locale
from kamengsite.members import Member
from kamengsite.models import utcnow
from kamengsite.orders import Order
from kamengsite.plugin_settings import settings_for
from kamengsite.tenancy import TenantModel, all_sites

log = logging.getLogger(__name__)

PLUGIN = "member_levels"
PAID_STATUSES = ("paid", "delivered")
NAME_MAX = 20
MAX_LEVELS = 20
MAX_DISCOUNT_BP = 5000
SPEND = "spend"  # levels follow cumulative spend (an owner's grant still wins)
BOUGHT = "bought"  # levels are granted by the owner (after the member paid for one)

DEFAULT_LEVELS = [
    {"name": "普通会员", "min_spend_fen": 0, "discount_bp": 0},  # i18n: keep - default level names, the owner's data
    {"name": "银卡", "min_spend_fen": 10000, "discount_bp": 200},  # i18n: keep - default level names, the owner's data
    {"name": "金卡", "min_spend_fen": 50000, "discount_bp": 500},  # i18n: keep - default level names, the owner's data
    {"name": "钻石", "min_spend_fen": 200000, "discount_bp": 800},  # i18n: keep - default level names, the owner's data
]

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "basis": {
            "type": "string", "enum": [SPEND, BOUGHT], "default": SPEND,
            "enumNames": [_l("Upgrade automatically by total spending on this site"),
                          _l("Granted by the owner in the console (after the member pays offline)")],
            "title": _l("How levels are given"),
        },
        "levels": {
            "type": "array", "maxItems": MAX_LEVELS, "default": DEFAULT_LEVELS,
            "title": _l("Levels: name, spending threshold (fen), discount (basis points, 500 = 5 percent off, at most 5000), "
                        "price (fen, shown only)"),
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "title": _l("Name")},
                    "min_spend_fen": {"type": "integer", "minimum": 0, "maximum": 10**12, "title": _l("Spending threshold (fen)")},
                    "discount_bp": {"type": "integer", "minimum": 0, "maximum": MAX_DISCOUNT_BP,
                                    "title": _l("Discount (basis points)")},
                    "price_fen": {"type": "integer", "minimum": 0, "maximum": 10**12, "title": _l("Price (fen)")},
                },
                "required": ["name", "min_spend_fen", "discount_bp"],
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


class MemberLevel(TenantModel):
    """A member's grant and cached spend/level on one site (see migration 0014)."""

    member = peewee.ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
    level = peewee.CharField(max_length=40, default="")
    granted_level = peewee.CharField(max_length=40, default="")
    spend_fen = peewee.BigIntegerField(default=0)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "member_levels_member"


@dataclass(frozen=True)
class Level:
    name: str
    min_spend_fen: int
    discount_bp: int
    price_fen: int = 0

    @property
    def zhe(self) -> str:
        """The discount as Chinese shops write it: 500 bp off → "9.5 折" (English: "95% of the price"); none → "无折扣"."""
        if not self.discount_bp:
            return _("No discount")
        if current_locale() == "zh_CN":
            return f"{(10000 - self.discount_bp) / 1000:g} 折"  # i18n: keep - the Chinese way of writing a discount
        paid = "{:g}%".format((10000 - self.discount_bp) / 100)
        return _("%(percent)s of the price", percent=paid)

    @property
    def percent_off(self) -> str:
        return f"{self.discount_bp / 100:g}%"


@dataclass(frozen=True)
class Config:
    basis: str
    levels: tuple  # Level, lowest threshold first

    def named(self, name: str) -> Level | None:
        return next((lv for lv in self.levels if lv.name == name), None) if name else None


@dataclass(frozen=True)
class Standing:
    """Where a member stands: their level (None: below every level), spend, grant and the next level."""

    level: Level | None
    spend_fen: int
    granted: bool
    next_level: Level | None

    @property
    def to_next_fen(self) -> int:
        return max(0, self.next_level.min_spend_fen - self.spend_fen) if self.next_level else 0


# -- settings ---------------------------------------------------------------------------


def load_config(site) -> Config:
    """The site's ``[settings.member_levels]``; wrong settings are logged and give no levels at all.

    Failing closed: a typo must never hand out discounts the owner did not mean.
    """
    try:
        values = settings_for(site, PLUGIN, SETTINGS_SCHEMA)
    except ConfigError as exc:
        log.error("site %s: member levels disabled: %s", getattr(site, "slug", "?"), exc)
        return Config(SPEND, ())
    levels = [Level(lv["name"].strip(), lv["min_spend_fen"], lv["discount_bp"], lv.get("price_fen", 0))
              for lv in values["levels"]]
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names) or not all(names):
        log.error("site %s: member levels disabled: level names must be unique and not blank: %s",
                  getattr(site, "slug", "?"), names)
        return Config(values["basis"], ())
    return Config(values["basis"], tuple(sorted(levels, key=lambda lv: (lv.min_spend_fen, lv.discount_bp))))


# -- spend and level ---------------------------------------------------------------------


def spend_of(site_id: int, member_id: int) -> int:
    """What the member has paid for goods on this site (paid and delivered orders; refunds drop out)."""
    with all_sites():
        total = (Order.select(peewee.fn.COALESCE(peewee.fn.SUM(Order.goods_fen), 0))
                 .where((Order.site == site_id) & (Order.member_id == member_id) & Order.status.in_(PAID_STATUSES))
                 .scalar())
    return int(total or 0)


def spends(site_id: int, member_ids) -> dict[int, int]:
    """``{member_id: spend}`` of several members of one site, in one grouped query."""
    ids = list(member_ids)
    if not ids:
        return {}
    with all_sites():
        rows = (Order.select(Order.member_id, peewee.fn.SUM(Order.goods_fen))
                .where((Order.site == site_id) & Order.member_id.in_(ids) & Order.status.in_(PAID_STATUSES))
                .group_by(Order.member_id).tuples())
        found = {member_id: int(total or 0) for member_id, total in rows}
    return {member_id: found.get(member_id, 0) for member_id in ids}


def grants(site_id: int, member_ids) -> dict[int, str]:
    ids = list(member_ids)
    if not ids:
        return {}
    with all_sites():
        return {m: g for m, g in MemberLevel.select(MemberLevel.member, MemberLevel.granted_level)
                .where((MemberLevel.site == site_id) & MemberLevel.member.in_(ids)).tuples()}


def level_for_spend(config: Config, spend_fen: int) -> Level | None:
    """The highest level whose threshold the spend reaches (a threshold reached exactly counts)."""
    reached = [lv for lv in config.levels if lv.min_spend_fen <= spend_fen]
    return reached[-1] if reached else None


def standing_of(config: Config, spend_fen: int, granted_level: str = "") -> Standing:
    """A member's level: the owner's grant wins (while that level exists); otherwise their spend
    (basis ``spend``), or the free base level (basis ``bought``: the lowest level, if its threshold is 0)."""
    granted = config.named(granted_level)
    if granted is not None:
        level = granted
    elif config.basis == SPEND:
        level = level_for_spend(config, spend_fen)
    else:  # bought: without a grant, the lowest level if it is free (threshold 0)
        base = config.levels[0] if config.levels else None
        level = base if base is not None and base.min_spend_fen == 0 else None
    following = None
    if config.basis == SPEND and granted is None:
        following = next((lv for lv in config.levels if lv.min_spend_fen > spend_fen), None)
    return Standing(level, spend_fen, granted is not None, following)


def standing(config: Config, site_id: int, member_id: int) -> Standing:
    """The member's standing, computed now from the site's orders and the owner's grant."""
    return standing_of(config, spend_of(site_id, member_id), grants(site_id, [member_id]).get(member_id, ""))


def discounted(unit_fen: int, discount_bp: int) -> int:
    """The unit price less ``discount_bp`` basis points, the discount rounded down to the fen."""
    return unit_fen - unit_fen * discount_bp // 10000


# -- the cache row, refreshed on payment and refund, and the owner's grant --------------------


def _member_of_site(site_id: int, member_id: int) -> bool:
    with all_sites():
        return Member.select().where((Member.site == site_id) & (Member.id == member_id)).exists()


def _upsert(site_id: int, member_id: int, **values):
    values["updated_at"] = utcnow()
    with all_sites():
        mine = (MemberLevel.site == site_id) & (MemberLevel.member == member_id)
        for _attempt in range(3):
            # Not "update, and create when no row changed": MySQL counts changed rows, not matched ones.
            if MemberLevel.select(MemberLevel.id).where(mine).exists():
                MemberLevel.update(**values).where(mine).execute()
                return
            try:
                retry_transient(lambda: _create(site_id, member_id, values))
                return
            except peewee.IntegrityError:
                continue  # made concurrently: update it
    raise RuntimeError(f"could not record the level of member {member_id} of site {site_id}")


def _create(site_id: int, member_id: int, values: dict):
    with database.atomic():
        MemberLevel.create(site=site_id, member=member_id, **values)


def refresh(config: Config, site_id: int, member_id: int) -> Standing:
    """Recompute the member's spend and level and store them (the console's cache)."""
    now = standing(config, site_id, member_id)
    if _member_of_site(site_id, member_id):
        _upsert(site_id, member_id, spend_fen=now.spend_fen, level=now.level.name if now.level else "")
    return now


def grant(config: Config, site_id: int, member_id: int, level_name: str) -> Standing:
    """The owner sets the member's level (``""``: back to the automatic level). ValueError if unknown."""
    if level_name and config.named(level_name) is None:
        raise ValueError(f"no level {level_name!r} on this site")
    if not _member_of_site(site_id, member_id):
        raise ValueError(f"member {member_id} is not a member of this site")
    _upsert(site_id, member_id, granted_level=level_name)
    return refresh(config, site_id, member_id)
