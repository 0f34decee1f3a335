"""The rejected-notification log: every gateway notification the notify route refused or
acknowledged without a payment, kept for the operator's payments page (/admin/payments).

A row holds what helps an operator tell a misconfigured profile from a forger — channel,
profile, the order number the notification named, the outcome, the reason and the sender's
address — and nothing more: no signature, no key, no body. Every text is cut to its column.

Recording is best effort: a failure is logged and swallowed, because the gateway's reply must
never depend on this table. The table is platform-wide (channels are instance-wide) and keeps
about the last ``KEEP_ROWS`` rows: anyone can post to a notify URL, so it must not grow without
bound.
"""

from __future__ import annotations

import logging

import peewee

from .db import database
from .i18n import _l
from .models import BaseModel, utcnow

log = logging.getLogger(__name__)

REJECTED = "rejected"
ACKNOWLEDGED = "acknowledged"
OUTCOMES = (REJECTED, ACKNOWLEDGED)
OUTCOME_LABELS = {REJECTED: _l("Rejected"), ACKNOWLEDGED: _l("Acknowledged (not paid)")}

KEEP_ROWS = 10_000
PRUNE_EVERY = 100  # prune on every 100th row: one cheap DELETE instead of one per notification
CHANNEL_MAX, PROFILE_MAX, ORDER_MAX, REASON_MAX, IP_MAX = 32, 32, 64, 255, 45


class PaymentNotice(BaseModel):
    """One refused (or acknowledged-without-payment) gateway notification."""

    channel = peewee.CharField(max_length=CHANNEL_MAX)
    profile = peewee.CharField(max_length=PROFILE_MAX)
    order_no = peewee.CharField(max_length=ORDER_MAX, default="")
    outcome = peewee.CharField(max_length=16)  # rejected | acknowledged
    reason = peewee.CharField(max_length=REASON_MAX, default="")
    remote_ip = peewee.CharField(max_length=IP_MAX, default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "payment_notice"

    @property
    def outcome_label(self) -> str:
        return str(OUTCOME_LABELS.get(self.outcome, self.outcome))


def _clip(value, limit: int) -> str:
    """Printable text of at most ``limit`` characters: URL parts and gateway fields are untrusted."""
    text = "" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def record_notice(*, channel: str, profile: str, outcome: str, reason: str, order_no: str = "",
                  remote_ip: str = "") -> PaymentNotice | None:
    """Write one row; None (and a log line) when the database refuses — never raises."""
    if outcome not in OUTCOMES:
        log.error("payment notice not recorded: outcome %r is not one of %s", outcome, OUTCOMES)
        return None
    try:
        with database.atomic():
            row = PaymentNotice.create(channel=_clip(channel, CHANNEL_MAX), profile=_clip(profile, PROFILE_MAX),
                                       order_no=_clip(order_no, ORDER_MAX), outcome=outcome,
                                       reason=_clip(reason, REASON_MAX), remote_ip=_clip(remote_ip, IP_MAX))
        if row.id % PRUNE_EVERY == 0:
            _prune(row.id)
        return row
    except Exception:  # noqa: BLE001 - the gateway's reply must not depend on this log
        log.exception("payment notice could not be recorded: channel=%s profile=%s outcome=%s",
                      _clip(channel, CHANNEL_MAX), _clip(profile, PROFILE_MAX), outcome)
        return None


def _prune(newest_id: int):
    with database.atomic():
        PaymentNotice.delete().where(PaymentNotice.id <= newest_id - KEEP_ROWS).execute()


def latest_notices(channel: str = "", limit: int = 100) -> list[PaymentNotice]:
    """The newest notices first, of one channel when ``channel`` is given."""
    query = PaymentNotice.select()
    if channel:
        query = query.where(PaymentNotice.channel == channel)
    return list(query.order_by(PaymentNotice.id.desc()).limit(limit))


def notice_channels() -> list[str]:
    """The channels that have notices, for the filter."""
    query = PaymentNotice.select(PaymentNotice.channel).distinct().order_by(PaymentNotice.channel)
    return [row.channel for row in query]
