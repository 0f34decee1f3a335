"""Automatic segments from this site's paid orders: recency, frequency and spend per member.

One aggregate query (``GROUP BY member_id`` over ``shop_order``) gives, for every member of the
site with a paid or delivered order, how many orders they paid in all, when the last one was
paid, and how many / how much in the settings' windows; the rules below turn those numbers into
segments. ``refresh_segments`` stores the result in ``crm_member_segment``: a row that appears
is a member *entering* a segment (what segment campaigns fire on), a row that goes is a member
leaving it. Refunded, expired and unpaid orders never count; neither do disabled members.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from peewee import Case, fn

from kamengsite.db import database, retry_transient
from kamengsite.errors import ConfigError
from kamengsite.members import Member
from kamengsite.models import utcnow
from kamengsite.orders import Order
from kamengsite.plugin_settings import settings_for, with_defaults
from kamengsite.tenancy import acting_for

from .models import SEGMENTS, SETTINGS_SCHEMA, MemberSegment

log = logging.getLogger(__name__)

PAID = ("paid", "delivered")
CHUNK = 500  # ids per IN (…) / rows per INSERT


@dataclass(frozen=True)
class Stats:
    """One member's numbers from their paid orders (``now`` and the rules' windows applied)."""

    orders: int  # paid orders ever
    last_paid_at: datetime.datetime | None
    window_orders: int  # paid in the last ``window_days``
    window_spend_fen: int  # their goods_fen in that window
    recent_orders: int  # paid in the last ``potential_recent_days``
    orders_since_dormant_cutoff: int  # paid less than ``dormant_days`` ago


# -- settings ---------------------------------------------------------------------------


def default_rules() -> dict:
    return with_defaults(SETTINGS_SCHEMA, {})


def load_rules(site) -> dict:
    """The site's ``[settings.crm]``; invalid settings are logged and the defaults used (the shop stays up)."""
    if site is None:
        return default_rules()
    try:
        return settings_for(site, "crm", SETTINGS_SCHEMA)
    except ConfigError as exc:
        log.error("site %s: %s; using the default segment rules", getattr(site, "slug", "?"), exc)
        return default_rules()


def rules_for(site_id: int) -> dict:
    """The rules of ``site_id``, read from its folder (outside a request too)."""
    from kamengsite import hooks

    return load_rules(hooks.site_config(site_id))


# -- computing --------------------------------------------------------------------------


def _as_datetime(value):
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def order_stats(site_id: int, now: datetime.datetime, rules: dict, member_ids=None) -> dict[int, Stats]:
    """``{member_id: Stats}`` for the site's active members with paid orders (only ``member_ids`` if given)."""
    day = datetime.timedelta(days=1)
    window_from = now - rules["window_days"] * day
    recent_from = now - rules["potential_recent_days"] * day
    dormant_from = now - rules["dormant_days"] * day
    O = Order  # noqa: N806
    if member_ids is not None:
        member_ids = list(member_ids)
        if not member_ids:
            return {}
    with acting_for(site_id):
        query = (O.select(O.member_id, fn.COUNT(O.id), fn.MAX(O.paid_at),
                          fn.SUM(Case(None, [(O.paid_at >= window_from, 1)], 0)),
                          fn.SUM(Case(None, [(O.paid_at >= window_from, O.goods_fen)], 0)),
                          fn.SUM(Case(None, [(O.paid_at >= recent_from, 1)], 0)),
                          fn.SUM(Case(None, [(O.paid_at > dormant_from, 1)], 0)))
                 .join(Member, on=(Member.id == O.member_id))
                 .where((O.site == site_id) & (Member.site == site_id) & (Member.status == "active")
                        & O.status.in_(PAID) & O.paid_at.is_null(False) & (O.paid_at <= now))
                 .group_by(O.member_id))
        if member_ids is not None:
            query = query.where(O.member_id.in_(member_ids))
        rows = list(query.tuples())
    return {int(m): Stats(int(n), _as_datetime(last), int(wn or 0), int(ws or 0), int(rn or 0), int(dn or 0))
            for m, n, last, wn, ws, rn, dn in rows}


def classify(stats: Stats, rules: dict) -> set[str]:
    """The order-based segments of one member's numbers."""
    found = set()
    if stats.window_spend_fen >= rules["high_value_spend_fen"] and stats.window_orders >= rules["high_value_min_orders"]:
        found.add("high_value")
    if "high_value" not in found and stats.orders <= rules["potential_max_orders"] and stats.recent_orders > 0:
        found.add("potential")
    if stats.orders > 0 and stats.orders_since_dormant_cutoff == 0:
        found.add("dormant")
    return found


def compute_segments(site_id: int, now: datetime.datetime | None = None, rules: dict | None = None) -> dict[str, set[int]]:
    """``{segment: {member_id, …}}`` for every segment, from the site's orders as they are now."""
    now = now or utcnow()
    rules = with_defaults(SETTINGS_SCHEMA, rules) if rules is not None else rules_for(site_id)
    result = {name: set() for name in SEGMENTS}
    stats = order_stats(site_id, now, rules)
    for member_id, numbers in stats.items():
        for name in classify(numbers, rules):
            result[name].add(member_id)
    new_from = now - datetime.timedelta(days=rules["new_days"])
    with acting_for(site_id):
        recent = Member.select(Member.id).where((Member.status == "active") & (Member.created_at >= new_from)
                                                & (Member.created_at <= now))
        result["new"] = {m for (m,) in recent.tuples() if m not in stats}
    return result


# -- storing ----------------------------------------------------------------------------


def refresh_segments(site_id: int, now: datetime.datetime | None = None, rules: dict | None = None) -> dict[str, list[int]]:
    """Bring ``crm_member_segment`` up to date; returns ``{segment: [member ids that entered it]}``.

    Safe to run twice or concurrently: leaving is a delete, entering an insert that ignores a
    row another run made first (the unique (site, segment, member) key).
    """
    now = now or utcnow()
    wanted = compute_segments(site_id, now, rules)
    with acting_for(site_id):
        have: dict[str, set[int]] = {}
        for segment, member_id in MemberSegment.select(MemberSegment.segment, MemberSegment.member).tuples():
            have.setdefault(segment, set()).add(member_id)
        entered = {name: sorted(ids - have.get(name, set())) for name, ids in wanted.items()}
        left = {name: sorted(ids - wanted.get(name, set())) for name, ids in have.items()}

        def store():
            with database.atomic():
                for name, ids in left.items():
                    for i in range(0, len(ids), CHUNK):
                        MemberSegment.delete().where((MemberSegment.segment == name)
                                                     & MemberSegment.member.in_(ids[i:i + CHUNK])).execute()
                rows = [{"member": m, "segment": name, "entered_at": now} for name, ids in entered.items() for m in ids]
                for i in range(0, len(rows), CHUNK):
                    MemberSegment.insert_many(rows[i:i + CHUNK]).on_conflict_ignore().execute()

        retry_transient(store)
    return {name: ids for name, ids in entered.items() if ids}


def segment_counts(site_id: int) -> dict[str, int]:
    with acting_for(site_id):
        rows = (MemberSegment.select(MemberSegment.segment, fn.COUNT(MemberSegment.id))
                .group_by(MemberSegment.segment).tuples())
        counts = dict(rows)
    return {name: int(counts.get(name, 0)) for name in SEGMENTS}


def segment_members(site_id: int, segment: str, limit: int = 200) -> list[tuple[int, datetime.datetime]]:
    """``[(member_id, entered_at), …]`` of a stored segment, latest first."""
    with acting_for(site_id):
        return [(m, _as_datetime(at)) for m, at in
                MemberSegment.select(MemberSegment.member, MemberSegment.entered_at)
                .where(MemberSegment.segment == segment)
                .order_by(MemberSegment.entered_at.desc(), MemberSegment.id.desc()).limit(limit).tuples()]
