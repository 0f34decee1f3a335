"""Invite codes, referral bonds and the commission arithmetic of the distribution plugin.

Everything here is per site: a code, a bond and a commission never cross from one site
to another (members are tenant rows, and so are these). Money is integer fen throughout.
"""

from __future__ import annotations

import logging
import secrets
from decimal import ROUND_DOWN, Decimal

from dataclasses import dataclass

import peewee

from kamengsite.db import database
from kamengsite.errors import ConfigError
from kamengsite.i18n import _l
from kamengsite.members import Member
from kamengsite.models import utcnow
from kamengsite.plugin_settings import settings_for
from kamengsite.tenancy import TenantModel, acting_for, all_sites

log = logging.getLogger(__name__)

MAX_DEPTH = 3  # hard cap: deeper trees look like a pyramid scheme and are refused
DEFAULT_DEPTH = 2
DEFAULT_RATES = (10, 5)  # percents of the seller's margin, depth 1 first
DEFAULT_FREEZE_DAYS = 7
MAX_FREEZE_DAYS = 365
PLUGIN = "distribution"  # the entry point name: [settings.distribution]
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: codes are read aloud and typed
CODE_LENGTH = 8
CODE_MAX = 16
CHAIN_WALK_LIMIT = 10000  # a referrer chain is walked at most this far (a guard, never reached in practice)

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "depth": {"type": "integer", "minimum": 1, "maximum": MAX_DEPTH, "default": DEFAULT_DEPTH,
                  "title": _l("Levels (1–3; when empty, as many as there are commission rates)")},
        "rates": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100},
                  "minItems": 1, "maxItems": MAX_DEPTH, "default": list(DEFAULT_RATES),
                  "title": _l("Commission rate per level (percent of the seller's margin, from level 1; "
                              "at most 100 in total)")},
        "freeze_days": {"type": "integer", "minimum": 0, "maximum": MAX_FREEZE_DAYS, "default": DEFAULT_FREEZE_DAYS,
                        "title": _l("Days commissions stay frozen (then moved to the member's balance; "
                                    "0 = available at once)")},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Settings:
    """A site's checked distribution settings: rates in basis points (``depth`` of them at most)."""

    rates: tuple[int, ...] = ()
    depth: int = DEFAULT_DEPTH
    freeze_days: int = DEFAULT_FREEZE_DAYS


class ReferralRefused(ValueError):
    """A referral bond that may not be made (self, cycle, other site, already bound, unknown code)."""


class InviteCode(TenantModel):
    member = peewee.ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
    code = peewee.CharField(max_length=CODE_MAX)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "distribution_invite_code"
        indexes = ((("site", "code"), True),)


class Referral(TenantModel):
    """``member`` was brought in by ``referrer``; one row per member, never changed."""

    member = peewee.ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
    referrer = peewee.ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "distribution_referral"


# -- settings ---------------------------------------------------------------------------


def load_settings(site) -> Settings:
    """The site's ``[settings.distribution]``, checked (``kamengsite.plugin_settings.settings_for``).

    ``depth`` (1–3) is how many levels up the buyer's chain are paid; without it, as many as
    ``rates`` has entries (2 when neither is given). Invalid settings (deeper than 3, not
    numbers, rates adding up to more than 100 %) are logged and the defaults used: a typo
    must neither take the shop down nor pay out more than the margin.
    """
    raw = (getattr(site, "settings", None) or {}).get(PLUGIN) or {}
    try:
        checked = settings_for(site, PLUGIN, SETTINGS_SCHEMA, environ={})
        rates = checked["rates"]
        if sum(Decimal(str(r)) for r in rates) > 100:
            raise ValueError(f"rates {rates!r} add up to more than 100 %")
    except (ConfigError, ValueError) as exc:
        log.error("site %s: [settings.%s] %s; using the defaults (rates %s, depth %s, freeze_days %s)",
                  getattr(site, "slug", "?"), PLUGIN, exc, list(DEFAULT_RATES), DEFAULT_DEPTH, DEFAULT_FREEZE_DAYS)
        return Settings(tuple(_basis_points(r) for r in DEFAULT_RATES))
    depth = checked["depth"] if isinstance(raw, dict) and "depth" in raw else (
        len(rates) if isinstance(raw, dict) and "rates" in raw else DEFAULT_DEPTH)
    return Settings(tuple(_basis_points(r) for r in rates[:depth]), depth, checked["freeze_days"])


def load_rates(site) -> tuple[int, ...]:
    """The site's commission rates in basis points, depth 1 first (at most ``depth`` of them)."""
    return load_settings(site).rates


def _basis_points(percent) -> int:
    # Decimal from the text, so 2.3 % is 230 bp and not 229.99…; finer than 0.01 % is dropped.
    return int((Decimal(str(percent)) * 100).to_integral_value(rounding=ROUND_DOWN))


# -- invite codes -----------------------------------------------------------------------


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def invite_code(site_id: int, member_id: int) -> str:
    """The member's invite code, made on first use (random, unique within the site)."""
    with acting_for(site_id):
        for _ in range(10):
            found = InviteCode.get_or_none(InviteCode.member == member_id)
            if found is not None:
                return found.code
            try:
                with database.atomic():
                    return InviteCode.create(member=member_id, code=_new_code()).code
            except peewee.IntegrityError:
                continue  # the code was taken, or another request made this member's code: look again
    raise RuntimeError(f"could not make an invite code for member {member_id} of site {site_id}")


def normalize_code(code) -> str:
    """The code as stored (upper case, no spaces), or "" when it cannot be one."""
    text = (code or "").strip().upper() if isinstance(code, str) else ""
    return text if 0 < len(text) <= CODE_MAX and text.isascii() and text.isalnum() else ""


def member_of_code(site_id: int, code) -> int | None:
    """The member of ``site_id`` owning ``code``; None for unknown codes and codes of other sites."""
    code = normalize_code(code)
    if not code:
        return None
    with acting_for(site_id):
        found = InviteCode.get_or_none(InviteCode.code == code)
    return found.member_id if found is not None else None


# -- referral bonds ---------------------------------------------------------------------


def referrer_of(site_id: int, member_id: int) -> int | None:
    # Explicitly unscoped + filtered: also called inside a payment recorded on another site's domain.
    with all_sites():
        row = Referral.get_or_none((Referral.site == site_id) & (Referral.member == member_id))
    return row.referrer_id if row is not None else None


def upline(site_id: int, member_id: int, depth: int) -> list[int]:
    """The referrers of ``member_id`` nearest first, at most ``depth``; stops before any repeat."""
    chain, seen, current = [], {member_id}, member_id
    while len(chain) < depth:
        current = referrer_of(site_id, current)
        if current is None or current in seen:
            break
        chain.append(current)
        seen.add(current)
    return chain


def _would_cycle(site_id: int, member_id: int, referrer_id: int) -> bool:
    """True if ``member_id`` already is ``referrer_id`` or one of its referrers."""
    return member_id == referrer_id or member_id in upline(site_id, referrer_id, CHAIN_WALK_LIMIT)


def bind(site_id: int, member_id: int, referrer_id: int) -> Referral:
    """Bond ``member_id`` to ``referrer_id`` for good, or ReferralRefused (nothing written)."""
    with acting_for(site_id):
        if Member.get_or_none(Member.id == member_id) is None or Member.get_or_none(Member.id == referrer_id) is None:
            raise ReferralRefused("both members must belong to this site")
        if member_id == referrer_id:
            raise ReferralRefused("a member cannot refer themself")
        if Referral.select().where(Referral.member == member_id).exists():
            raise ReferralRefused(f"member {member_id} already has a referrer")
        if _would_cycle(site_id, member_id, referrer_id):
            raise ReferralRefused(f"member {referrer_id} is below member {member_id}: that would be a cycle")
        try:
            with database.atomic():
                return Referral.create(member=member_id, referrer=referrer_id)
        except peewee.IntegrityError:  # bound concurrently: the first bond stands
            raise ReferralRefused(f"member {member_id} already has a referrer") from None


def bind_by_code(site_id: int, member_id: int, code) -> Referral:
    """Bond the member to the owner of ``code`` on this site (a code of another site is unknown here)."""
    referrer_id = member_of_code(site_id, code)
    if referrer_id is None:
        raise ReferralRefused(f"no invite code {code!r} on this site")
    return bind(site_id, member_id, referrer_id)


# -- commissions ------------------------------------------------------------------------


def split(margin_fen: int, rates_bp) -> list[int]:
    """Each depth's share of ``margin_fen``, rounded down; never more than the margin in total."""
    shares, left = [], max(0, margin_fen)
    for bp in rates_bp:
        share = min(left, margin_fen * bp // 10000) if margin_fen > 0 else 0
        shares.append(share)
        left -= share
    return shares


def commissions(order, margin_fen: int, rates_bp) -> list[tuple[int, int]]:
    """``[(member_id, fen), …]`` for the buyer's referrer chain on the selling site. Reads only."""
    if order.member_id is None or margin_fen <= 0 or not rates_bp:
        return []
    chain = upline(order.site_id, order.member_id, len(rates_bp))
    active = _active_members(order.site_id, chain)
    paid = []
    for member_id, fen in zip(chain, split(margin_fen, rates_bp)):
        if fen and member_id in active and member_id != order.member_id:
            paid.append((member_id, fen))  # a disabled referrer's share stays with the seller
    return paid


def _active_members(site_id: int, member_ids) -> set[int]:
    if not member_ids:
        return set()
    with all_sites():
        rows = Member.select(Member.id).where((Member.site == site_id) & Member.id.in_(list(member_ids))
                                              & (Member.status == "active")).tuples()
        return {member_id for (member_id,) in rows}
