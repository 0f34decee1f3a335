"""The numbers of the console's 数据概览: pure queries over orders, refunds, members, sites and the ledger.

Every function takes a ``DateRange`` of Beijing days and a ``site_id``: ``None`` is the whole
platform (the main site's operator), an id is that site alone (a sub-site's owner sees only the
orders sold on their site, their own members and children, their own margin). Money is integer fen.

Times are stored as naive UTC; a day is a Beijing day (Asia/Shanghai, UTC+8 without daylight
saving since 1991), so a range becomes ``[since, until)`` in UTC and the by-day chart groups by
``DATE(t + 8 hours)`` in SQL, written per backend (SQLite, PostgreSQL, MariaDB).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import peewee
from peewee import SQL, NodeList, fn

from .db import database
from .i18n import _, _l
from .ledger import LedgerAccount, LedgerEntry, LedgerTxn
from .members import Member
from .models import Site, utcnow
from .orders import Order
from .refunds import Refund
from .tenancy import acting_for, all_sites

BEIJING = datetime.timezone(datetime.timedelta(hours=8), "Asia/Shanghai")
MAX_DAYS = 366
TOP = 10
PRESETS = {"today": _l("Today"), "7d": _l("7 days"), "30d": _l("30 days"), "month": _l("This month")}
DEFAULT_PRESET = "7d"
#: Ledger transactions that move a site's margin (a sale credits it, a refund takes it back).
MARGIN_TXNS = ("payment", "refund")
MARGIN_ACCOUNTS = ("site_frozen", "site_available")


class RangeError(ValueError):
    """A date range the dashboard refuses; the message is for the operator."""


@dataclass(frozen=True)
class DateRange:
    start: datetime.date  # Beijing days, both inclusive
    end: datetime.date

    @property
    def days(self) -> list[datetime.date]:
        return [self.start + datetime.timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    @property
    def since(self) -> datetime.datetime:
        """The first instant, as stored: naive UTC."""
        return _utc(self.start)

    @property
    def until(self) -> datetime.datetime:
        """The instant after the last day, naive UTC (exclusive)."""
        return _utc(self.end + datetime.timedelta(days=1))


def _utc(day: datetime.date) -> datetime.datetime:
    local = datetime.datetime.combine(day, datetime.time(), tzinfo=BEIJING)
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def beijing_today(now: datetime.datetime | None = None) -> datetime.date:
    """Today in Beijing; ``now`` is naive UTC (as ``utcnow()``)."""
    now = now or utcnow()
    return now.replace(tzinfo=datetime.timezone.utc).astimezone(BEIJING).date()


def preset_range(preset: str, today: datetime.date) -> DateRange:
    if preset == "today":
        return DateRange(today, today)
    if preset == "30d":
        return DateRange(today - datetime.timedelta(days=29), today)
    if preset == "month":
        return DateRange(today.replace(day=1), today)
    return DateRange(today - datetime.timedelta(days=6), today)  # 7d, the default


def make_range(start: datetime.date, end: datetime.date) -> DateRange:
    if start > end:
        raise RangeError(_("The start date is after the end date: swap them and try again"))
    if (end - start).days + 1 > MAX_DAYS:
        raise RangeError(_("At most %(days)s days at a time: narrow the date range", days=MAX_DAYS))
    return DateRange(start, end)


def parse_range(args, today: datetime.date) -> tuple[DateRange, str]:
    """The range a GET form asks for (``preset`` or ``from``/``to``) and an error to show ('' if none).

    A bad range never raises: the error is shown and the default (last 7 days) is used instead.
    """
    preset = (args.get("preset") or "").strip()
    first, last = (args.get("from") or "").strip(), (args.get("to") or "").strip()
    if preset in PRESETS or not (first or last):
        return preset_range(preset or DEFAULT_PRESET, today), ""
    try:
        start = datetime.date.fromisoformat(first or last)
        end = datetime.date.fromisoformat(last or first)
    except ValueError:
        return preset_range(DEFAULT_PRESET, today), _(
            "Invalid date: use a date like 2026-01-31. Showing the last 7 days instead.")
    try:
        return make_range(start, end), ""
    except RangeError as exc:
        return preset_range(DEFAULT_PRESET, today), _("%(error)s. Showing the last 7 days instead.", error=exc)


# -- scoping -----------------------------------------------------------------------------------------


def _scope(site_id: int | None):
    """The platform (operator) or one site: refuses to act for another site from inside a site's scope."""
    return all_sites() if site_id is None else acting_for(site_id)


def _orders(site_id: int | None):
    query = Order.select()
    return query if site_id is None else query.where(Order.site == site_id)


def _paid_in(rng: DateRange, site_id: int | None):
    """Orders paid in the range, whatever happened after (a refunded order still was a sale)."""
    return _orders(site_id).where((Order.paid_at >= rng.since) & (Order.paid_at < rng.until))


# -- the numbers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    gmv_fen: int
    paid_orders: int
    created_orders: int
    converted_orders: int  # of the orders created in the range, how many were paid
    refund_count: int
    refund_fen: int
    new_members: int
    new_sites: int  # the operator: every new sub-site; an owner: their new child sites
    margin_fen: int | None  # an owner's margin earned (None for the platform)

    @property
    def conversion_bp(self) -> int:
        """Paid / created, in basis points (10000 = 100 %)."""
        return self.converted_orders * 10000 // self.created_orders if self.created_orders else 0

    @property
    def average_fen(self) -> int:
        """Average order value, rounded half up to the fen."""
        return (2 * self.gmv_fen + self.paid_orders) // (2 * self.paid_orders) if self.paid_orders else 0


def summary(rng: DateRange, site_id: int | None = None) -> Summary:
    with _scope(site_id):
        gmv, paid = _paid_in(rng, site_id).select(fn.COALESCE(fn.SUM(Order.amount_fen), 0),
                                                   fn.COUNT(Order.id)).tuples().get()
        created = _orders(site_id).where((Order.created_at >= rng.since) & (Order.created_at < rng.until))
        created_count = created.count()
        converted = created.where(Order.paid_at.is_null(False)).count()
        members = Member.select().where((Member.created_at >= rng.since) & (Member.created_at < rng.until))
        if site_id is not None:
            members = members.where(Member.site == site_id)
        new_members = members.count()
    refunds = Refund.select(fn.COUNT(Refund.id), fn.COALESCE(fn.SUM(Refund.amount_fen), 0)).where(
        (Refund.created_at >= rng.since) & (Refund.created_at < rng.until) & (Refund.status != "failed"))
    if site_id is not None:
        refunds = refunds.where(Refund.site == site_id)
    refund_count, refund_fen = refunds.tuples().get()
    return Summary(int(gmv), paid, created_count, converted, refund_count, int(refund_fen), new_members,
                   _new_sites(rng, site_id), None if site_id is None else margin_earned(rng, site_id))


def _new_sites(rng: DateRange, site_id: int | None) -> int:
    query = Site.select().where((Site.created_at >= rng.since) & (Site.created_at < rng.until))
    if site_id is None:
        return query.where(Site.parent.is_null(False)).count()
    return query.where(Site.parent == site_id).count()


def _margins(rng: DateRange):
    """Margin entries (sales and refunds) in the range, on sites' frozen and available accounts."""
    return (LedgerEntry.select().join(LedgerAccount).switch(LedgerEntry).join(LedgerTxn)
            .where(LedgerAccount.kind.in_(MARGIN_ACCOUNTS) & LedgerTxn.kind.in_(MARGIN_TXNS)
                   & (LedgerTxn.created_at >= rng.since) & (LedgerTxn.created_at < rng.until)))


def margin_earned(rng: DateRange, site_id: int) -> int:
    """What ``site_id`` earned on sales in the range (its own and its children's), net of refunds."""
    total = _margins(rng).where(LedgerAccount.site == site_id).select(
        fn.COALESCE(fn.SUM(LedgerEntry.amount_fen), 0)).scalar()
    return int(total or 0)


# -- by day ------------------------------------------------------------------------------------------


def _beijing_day(field) -> peewee.Node:
    """``field`` (naive UTC) as its Beijing date, in the current backend's SQL."""
    db = database.obj
    if isinstance(db, peewee.PostgresqlDatabase):
        return fn.DATE(NodeList((field, SQL("+ INTERVAL '8 hours'"))))
    if isinstance(db, peewee.MySQLDatabase):
        return fn.DATE(NodeList((field, SQL("+ INTERVAL 8 HOUR"))))
    return fn.DATE(field, SQL("'+8 hours'"))  # SQLite's date() modifiers


def _as_date(value) -> datetime.date:
    # a date, a 'YYYY-MM-DD' string or (peewee converting as the column's type) a midnight datetime
    if isinstance(value, datetime.datetime):
        return value.date()
    return value if isinstance(value, datetime.date) else datetime.date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class Day:
    day: datetime.date
    gmv_fen: int
    orders: int


def by_day(rng: DateRange, site_id: int | None = None) -> list[Day]:
    """One row per day of the range (days without sales too): GMV and paid orders, grouped in SQL."""
    bucket = _beijing_day(Order.paid_at)
    with _scope(site_id):
        rows = (_paid_in(rng, site_id)
                .select(bucket.alias("bucket"), fn.SUM(Order.amount_fen), fn.COUNT(Order.id))
                .group_by(SQL("bucket")).tuples())
        found = {_as_date(day): (int(gmv), count) for day, gmv, count in rows}
    return [Day(day, *found.get(day, (0, 0))) for day in rng.days]


# -- rankings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductRow:
    product_id: int
    revenue_fen: int
    quantity: int
    name: str = ""


def top_products(rng: DateRange, site_id: int | None = None, *, by: str = "revenue",
                 limit: int = TOP) -> list[ProductRow]:
    """The best sellers of the range by ``revenue`` (fen) or ``quantity``; names are filled in by the caller."""
    revenue, quantity = fn.SUM(Order.amount_fen), fn.SUM(Order.quantity)
    order = (revenue.desc(), quantity.desc()) if by == "revenue" else (quantity.desc(), revenue.desc())
    with _scope(site_id):
        rows = (_paid_in(rng, site_id).select(Order.product, revenue, quantity).group_by(Order.product)
                .order_by(*order, Order.product).limit(limit).tuples())
        return [ProductRow(product_id, int(fen), int(qty)) for product_id, fen, qty in rows]


@dataclass(frozen=True)
class SiteRow:
    site_id: int
    slug: str
    value_fen: int


def sites_by_gmv(rng: DateRange, limit: int = TOP) -> list[SiteRow]:
    """Sub-sites (not the main site) ranked by what they sold in the range: the operator's view."""
    gmv = fn.SUM(Order.amount_fen)
    with all_sites():
        rows = list(_paid_in(rng, None).join(Site, on=(Order.site == Site.id))
                    .where(Site.parent.is_null(False)).select(Site.id, Site.slug, gmv)
                    .group_by(Site.id, Site.slug).order_by(gmv.desc(), Site.id).limit(limit).tuples())
    return [SiteRow(site_id, slug, int(fen)) for site_id, slug, fen in rows]


def sites_by_margin(rng: DateRange, limit: int = TOP) -> list[SiteRow]:
    """Sub-sites ranked by the margin they earned in the range (from the ledger): the operator's view."""
    total = fn.SUM(LedgerEntry.amount_fen)
    rows = list(_margins(rng).join(Site, on=(LedgerAccount.site == Site.id)).select(Site.id, Site.slug, total)
                .group_by(Site.id, Site.slug).order_by(total.desc(), Site.id).limit(limit).tuples())
    return [SiteRow(site_id, slug, int(fen)) for site_id, slug, fen in rows]

