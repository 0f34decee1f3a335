"""Group offers, groups and their members; filling, failing and settling a group — plain functions over the DB.

A group's life: a buyer *starts* it with an order (that order is its first member), others
*join* with orders of their own; each order is created with ``hold="groupbuy"``, so its
payment leaves it ``paid`` with its stock still reserved. A group ends once, one way:

* **filled** — it has ``group_size`` members whose orders were paid before ``closes_at``:
  those members are *seated* and their orders delivered (``orders.deliver_held``);
* **failed** — ``closes_at`` passed without that: every paid member order is refunded
  (``refunds.refund_order(to="auto")``), which also gives its reserved stock back.

Both are one conditional update ``WHERE status = 'open'`` made after locking the group row
(``FOR UPDATE`` on PostgreSQL/MariaDB; SQLite's IMMEDIATE transactions serialise writers),
and both re-count the paid members under that lock, so a group is never both.

Delivering and refunding come after that commit, order by order, and each is idempotent on
the host's side (``deliver_held`` clears the hold with a conditional update; a refund is one
unique row per order). ``settle_members`` finishes what a group's outcome asks of every
member order still held — after a crash, or for a payment that arrived after the group ended —
and ``sweep`` (the job, every minute) runs it for every group that needs it: running it twice,
or twice at once, does nothing more.
"""

from __future__ import annotations

import datetime
import logging

import peewee

from kamengsite import orders
from kamengsite.catalog import Product, Sku
from kamengsite.checkout import CheckoutRefused
from kamengsite.db import database, is_sqlite, retry_transient
from kamengsite.i18n import _, _l, _n, format_money
from kamengsite.models import utcnow
from kamengsite.tenancy import TenantModel, acting_for, all_sites

log = logging.getLogger(__name__)

HOLD = "groupbuy"  # the name orders are held by (``shop_order.hold``)
INPUT = "groupbuy"  # the buy form's input: "start:<offer id>" or "join:<group id>"
MIN_SIZE, MAX_SIZE = 2, 50
MAX_WINDOW_MINUTES = 7 * 24 * 60
#: Member orders that keep their place in a group: unpaid (not yet expired) or paid.
PLACE_HOLDING = orders.HOLDING
PAID = ("paid", "delivered")
#: Refund reasons, stored with the refund by the sweep (a job, outside any request): written in the
#: shop's default language, as records.
REFUND_REASON = "拼团未成团，自动退款"  # i18n: keep
EXTRA_REASON = "拼团已满，多出的付款自动退款"  # i18n: keep

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "default_window_minutes": {"type": "integer", "minimum": 5, "maximum": MAX_WINDOW_MINUTES,
                                   "title": _l("Default time to fill a group (minutes)"), "default": 1440},
        "max_open_groups_per_member": {"type": "integer", "minimum": 0, "maximum": 100,
                                       "default": 3,
                                       "title": _l("Open groups a member may lead at once (0: no limit)")},
    },
    "additionalProperties": False,
}


class GroupOffer(TenantModel):
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE", backref="+")
    sku = peewee.ForeignKeyField(Sku, on_delete="CASCADE", backref="+")
    group_size = peewee.IntegerField()
    group_price_fen = peewee.BigIntegerField()
    window_minutes = peewee.IntegerField()
    starts_at = peewee.DateTimeField(null=True)
    ends_at = peewee.DateTimeField(null=True)
    active = peewee.BooleanField(default=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "groupbuy_offer"

    def live(self, now: datetime.datetime) -> bool:
        """Whether a new group may be started now."""
        return bool(self.active) and (self.starts_at is None or self.starts_at <= now) \
            and (self.ends_at is None or now < self.ends_at)


class Group(TenantModel):
    offer = peewee.ForeignKeyField(GroupOffer, on_delete="RESTRICT", backref="+")
    leader_member_id = peewee.IntegerField(null=True)
    leader_contact = peewee.CharField(max_length=120, default="")
    group_size = peewee.IntegerField()
    status = peewee.CharField(max_length=8, default="open")  # open | filled | failed
    opened_at = peewee.DateTimeField(default=utcnow)
    closes_at = peewee.DateTimeField()
    filled_at = peewee.DateTimeField(null=True)
    failed_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "groupbuy_group"


class GroupMember(TenantModel):
    group = peewee.ForeignKeyField(Group, on_delete="RESTRICT", backref="+")
    order = peewee.ForeignKeyField(orders.Order, unique=True, on_delete="RESTRICT", backref="+")
    member_id = peewee.IntegerField(null=True)
    contact = peewee.CharField(max_length=120, default="")
    seated = peewee.BooleanField(default=False)  # one of the paid members that filled the group
    joined_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "groupbuy_member"


def now_() -> datetime.datetime:
    # Whole seconds: MariaDB's DATETIME drops the fraction, and comparisons must agree on every backend.
    return utcnow().replace(microsecond=0)


# -- offers ------------------------------------------------------------------------------


class OfferError(ValueError):
    """An offer the owner may not create (message for the console, in the owner's language)."""


def create_offer(site_id: int, sku_id: int, *, group_size: int, group_price_fen: int, window_minutes: int,
                 starts_at=None, ends_at=None, owners=None) -> GroupOffer:
    """A group offer on one SKU the site sells (``owners``: the catalogues it sells, None = any)."""
    for value in (group_size, group_price_fen, window_minutes):
        if not isinstance(value, int) or isinstance(value, bool):
            raise OfferError(_("Enter whole numbers"))
    if not MIN_SIZE <= group_size <= MAX_SIZE:
        raise OfferError(_("The group size must be between %(min)s and %(max)s", min=MIN_SIZE, max=MAX_SIZE))
    if group_price_fen < 1:
        raise OfferError(_("The group price must be more than 0"))
    if not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise OfferError(_("The time to fill must be between 1 and %(max)s minutes", max=MAX_WINDOW_MINUTES))
    if starts_at and ends_at and ends_at <= starts_at:
        raise OfferError(_("The end time must be after the start time"))
    sku = Sku.get_or_none(Sku.id == sku_id)
    if sku is None:
        raise OfferError(_("No such SKU"))
    product = Product.get_by_id(sku.product_id)
    if owners is not None and product.site_id not in owners:
        raise OfferError(_("No such SKU"))
    if product.min_qty > 1:
        raise OfferError(_("This product's minimum order is more than 1, so it cannot be a group buy "
                           "(each member buys 1 unit)"))
    from kamengsite import pricing

    quote = pricing.quote_sku(site_id, sku.id)
    if quote is not None and quote.costs and group_price_fen < quote.costs[0][1]:
        # The price pipeline never goes below the site's cost: the buyers would pay more than shown.
        raise OfferError(_("The group price cannot be below this site's cost of ¥%(cost)s",
                            cost=format_money(quote.costs[0][1])))
    with acting_for(site_id):
        return GroupOffer.create(product=product.id, sku=sku.id, group_size=group_size,
                                 group_price_fen=group_price_fen, window_minutes=window_minutes,
                                 starts_at=starts_at, ends_at=ends_at, active=True)


def set_offer_active(site_id: int, offer_id: int, active: bool) -> bool:
    with acting_for(site_id):
        return GroupOffer.update(active=active).where(GroupOffer.id == offer_id).execute() == 1


def live_offers(site_id: int, product_id: int, now=None) -> list[GroupOffer]:
    now = now or now_()
    with acting_for(site_id):
        offers = GroupOffer.select().where((GroupOffer.product == product_id) & (GroupOffer.active == True))  # noqa: E712
        return [o for o in offers.order_by(GroupOffer.id) if o.live(now)]


# -- reading groups ----------------------------------------------------------------------


def places_taken(group_id: int) -> int:
    """Members whose orders still hold their place (unpaid and not expired, or paid)."""
    with all_sites():
        return (GroupMember.select().join(orders.Order, on=(GroupMember.order == orders.Order.id))
                .where((GroupMember.group == group_id) & orders.Order.status.in_(PLACE_HOLDING)).count())


def _paid_in_time(group: Group) -> list[int]:
    """Ids of the members whose orders were paid before the group closed, in joining order."""
    with all_sites():
        rows = (GroupMember.select(GroupMember.id).join(orders.Order, on=(GroupMember.order == orders.Order.id))
                .where((GroupMember.group == group.id) & orders.Order.status.in_(PAID)
                       & (orders.Order.paid_at <= group.closes_at))
                .order_by(GroupMember.id).tuples())
        return [r[0] for r in rows]


def open_groups(site_id: int, offer_ids, now=None, limit: int = 10) -> list[tuple[Group, int]]:
    """Open groups of these offers still accepting members, with how many places are left."""
    now = now or now_()
    if not offer_ids:
        return []
    with acting_for(site_id):
        groups = list(Group.select().where(Group.offer.in_(list(offer_ids)) & (Group.status == "open")
                                           & (Group.closes_at > now)).order_by(Group.closes_at).limit(limit * 3))
    found = []
    for group in groups:
        taken = places_taken(group.id)
        if 0 < taken < group.group_size:  # a group whose every order expired unpaid is not offered
            found.append((group, group.group_size - taken))
    return found[:limit]


def group_of_order(order_id: int) -> GroupMember | None:
    with all_sites():
        return GroupMember.get_or_none(GroupMember.order == order_id)


def member_count(group_id: int) -> tuple[int, int]:
    """(places taken, members paid) of a group."""
    with all_sites():
        paid = (GroupMember.select().join(orders.Order, on=(GroupMember.order == orders.Order.id))
                .where((GroupMember.group == group_id) & orders.Order.status.in_(PAID)).count())
    return places_taken(group_id), paid


# -- the checkout side -------------------------------------------------------------------


def parse_choice(value) -> tuple[str, int] | None:
    """``"start:12"`` → ("start", 12); ``"join:7"`` → ("join", 7); None when it is not one of those."""
    mode, _, ident = (value or "").strip().partition(":")
    if mode not in ("start", "join") or not ident.isdigit() or len(ident) > 12:
        return None
    return mode, int(ident)


def resolve(site_id: int, product_id: int, sku_id: int, value: str, now=None, *, member_id=None, contact="",
            max_open: int = 0) -> tuple[str, GroupOffer, Group | None]:
    """What a buy form's ``groupbuy`` input asks for: (mode, offer, group), or CheckoutRefused. Reads only."""
    now = now or now_()
    choice = parse_choice(value)
    if choice is None:
        raise CheckoutRefused(_("Invalid group-buy link"))
    mode, ident = choice
    with acting_for(site_id):
        group = Group.get_or_none(Group.id == ident) if mode == "join" else None
        offer_id = group.offer_id if group is not None else (ident if mode == "start" else None)
        offer = GroupOffer.get_or_none(GroupOffer.id == offer_id) if offer_id else None
    if offer is None or (mode == "join" and group is None):
        raise CheckoutRefused(_("This group buy does not exist or has ended"))
    if offer.product_id != product_id:
        raise CheckoutRefused(_("This group buy does not exist or has ended"))
    if offer.sku_id != sku_id:
        raise CheckoutRefused(_("This SKU is not in the group buy; please choose the group-buy SKU"))
    if mode == "start":
        if not offer.live(now):
            raise CheckoutRefused(_("The group-buy offer has not started or has ended"))
        if member_id is not None and max_open > 0:
            with acting_for(site_id):  # open groups the member leads and still holds a place in
                mine = (Group.select(Group.id).distinct()
                        .join(GroupMember, on=(GroupMember.group == Group.id))
                        .join(orders.Order, on=(GroupMember.order == orders.Order.id))
                        .where((Group.leader_member_id == member_id) & (Group.status == "open")
                               & (GroupMember.member_id == member_id)
                               & orders.Order.status.in_(PLACE_HOLDING)).count())
            if mine >= max_open:
                raise CheckoutRefused(_n("You can lead at most %(num)d open group at once; please wait for it to end",
                                         "You can lead at most %(num)d open groups at once; please wait for one to end",
                                         max_open))
        return mode, offer, None
    if not offer.active:
        raise CheckoutRefused(_("The group-buy offer has ended"))
    if group.status != "open" or group.closes_at <= now:
        raise CheckoutRefused(_("This group has ended"))
    if places_taken(group.id) >= group.group_size:
        raise CheckoutRefused(_("This group is full"))
    if _already_in(group.id, member_id, contact):
        raise CheckoutRefused(_("You are already in this group"))
    return mode, offer, group


def _already_in(group_id: int, member_id, contact: str) -> bool:
    if member_id is not None:
        who = GroupMember.member_id == member_id
    elif contact:
        who = (GroupMember.contact == contact) & GroupMember.member_id.is_null()
    else:
        return False
    with all_sites():
        return (GroupMember.select().join(orders.Order, on=(GroupMember.order == orders.Order.id))
                .where((GroupMember.group == group_id) & who & orders.Order.status.in_(PLACE_HOLDING)).exists())


def _lock_group(group_id: int) -> Group | None:
    query = Group.select().where(Group.id == group_id)
    if not is_sqlite():  # SQLite: the IMMEDIATE transaction already holds the database's write lock
        query = query.for_update()
    return query.first()


def reserve_place(order, note: dict, now=None):
    """Inside the order's creating transaction: start the group, or take a place in it (CheckoutRefused)."""
    now = now or now_()
    if order.hold != HOLD:
        # never a member whose order delivers at once
        raise CheckoutRefused(_("Group buying is unavailable right now; please try again later"))
    with acting_for(order.site_id):
        if note["mode"] == "start":
            offer = GroupOffer.get_by_id(note["offer_id"])
            group_id = Group.insert(offer=offer.id, leader_member_id=order.member_id, leader_contact=order.contact,
                                    group_size=offer.group_size, status="open", opened_at=now,
                                    closes_at=now + datetime.timedelta(minutes=offer.window_minutes)).execute()
        else:
            group = _lock_group(note["group_id"])  # joiners of one group queue here
            if group is None or group.status != "open" or group.closes_at <= now:
                raise CheckoutRefused(_("This group has ended"))
            if places_taken(group.id) >= group.group_size:
                raise CheckoutRefused(_("This group is full"))
            group_id = group.id
        GroupMember.insert(group=group_id, order=order.id, member_id=order.member_id, contact=order.contact,
                           joined_at=now).execute()
    return group_id


# -- ending a group ----------------------------------------------------------------------


def _close(group_id: int, now: datetime.datetime, outcome: str) -> bool:
    """Fill or fail the group, under its lock, if its paid members say so; True if this call did it."""

    def run() -> bool:
        with all_sites(), database.atomic():
            group = _lock_group(group_id)
            if group is None or group.status != "open":
                return False
            seats = _paid_in_time(group)
            if outcome == "filled":
                if len(seats) < group.group_size:
                    return False
                moved = Group.update(status="filled", filled_at=now).where(
                    (Group.id == group_id) & (Group.status == "open")).execute()
                if moved == 1:
                    GroupMember.update(seated=True).where(GroupMember.id.in_(seats[:group.group_size])).execute()
            else:
                if now < group.closes_at or len(seats) >= group.group_size:
                    return False
                moved = Group.update(status="failed", failed_at=now).where(
                    (Group.id == group_id) & (Group.status == "open")).execute()
            return moved == 1

    return retry_transient(run)


def complete_group(group_id: int, now=None, registry=None) -> bool:
    """Fill the group if enough members paid in time, then deliver every seated member (idempotent)."""
    filled = _close(group_id, now or now_(), "filled")
    settle_members(group_id, registry)
    return filled


def fail_group(group_id: int, now=None, registry=None) -> bool:
    """Fail the group if its window closed unfilled, then refund every paid member (idempotent)."""
    failed = _close(group_id, now or now_(), "failed")
    settle_members(group_id, registry)
    return failed


def settle_members(group_id: int, registry=None) -> dict:
    """Do what the group's outcome asks of each member order still held: deliver it, or refund it.

    Filled: seated members' orders are delivered; a paid order that is not seated (a late payment
    of an order that had expired meanwhile) is refunded. Failed: every paid order is refunded.
    Open: nothing. Safe to run again and concurrently; one order's failure is logged and retried
    by the next sweep.
    """
    done = {"delivered": 0, "refunded": 0, "failed": 0}
    with all_sites():
        group = Group.get_or_none(Group.id == group_id)
        if group is None or group.status == "open":
            return done
        rows = list(GroupMember.select(GroupMember.seated, orders.Order.order_no)
                    .join(orders.Order, on=(GroupMember.order == orders.Order.id))
                    .where((GroupMember.group == group_id) & (orders.Order.status == "paid")
                           & (orders.Order.hold == HOLD)).order_by(GroupMember.id).tuples())
    for seated, order_no in rows:
        try:
            if group.status == "filled" and seated:
                if deliver(order_no):
                    done["delivered"] += 1
            else:
                refund(order_no, REFUND_REASON if group.status == "failed" else EXTRA_REASON, registry)
                done["refunded"] += 1
        except Exception:  # noqa: BLE001 - the next sweep tries this order again
            done["failed"] += 1
            log.exception("group %s: order %s not settled; the sweep will try again", group_id, order_no)
    return done


def deliver(order_no: str) -> bool:
    """Deliver a seated member's held order (once); mail the keys when it was this call that delivered."""
    result = orders.deliver_held(order_no, HOLD)
    if result is None:
        return False
    if result.status == "delivered":
        from kamengsite import hooks

        with all_sites():
            order = orders.find_order(order_no)
        order.status = "delivered"
        try:
            hooks.notify("order_delivered", order)
        except Exception:  # noqa: BLE001 - the keys are on the order page whatever the mail does
            log.exception("order_delivered of %s failed", order_no)
    return True


def refund(order_no: str, reason: str, registry=None):
    """Refund a member's held order to where it came from (or the member's balance) — once per order."""
    from kamengsite import refunds

    return refunds.refund_order(order_no, reason=reason, to="auto", registry=registry)


def settle_order(order, registry=None):
    """After a payment of ``order``: fill its group if this payment completed it, else settle it."""
    member = group_of_order(order.id)
    if member is None:
        return None
    return complete_group(member.group_id, registry=registry)


def sweep(now=None, registry=None, limit: int = 200) -> dict:
    """The job: fill groups paid up, fail groups past their window, finish what a crash left undone."""
    now = now or now_()
    counts = {"filled": 0, "failed": 0, "settled": 0}
    with all_sites():
        paid_up = (Group.select(Group.id).join(GroupMember, on=(GroupMember.group == Group.id))
                   .join(orders.Order, on=(GroupMember.order == orders.Order.id))
                   .where((Group.status == "open") & orders.Order.status.in_(PAID)
                          & (orders.Order.paid_at <= Group.closes_at))
                   .group_by(Group.id, Group.group_size)
                   .having(peewee.fn.COUNT(GroupMember.id) >= Group.group_size).limit(limit).tuples())
        full = [r[0] for r in paid_up]
        due = [r[0] for r in Group.select(Group.id).where((Group.status == "open") & (Group.closes_at <= now))
               .order_by(Group.closes_at).limit(limit).tuples()]
        held = [r[0] for r in Group.select(Group.id).distinct()
                .join(GroupMember, on=(GroupMember.group == Group.id))
                .join(orders.Order, on=(GroupMember.order == orders.Order.id))
                .where(Group.status.in_(("filled", "failed")) & (orders.Order.status == "paid")
                       & (orders.Order.hold == HOLD)).limit(limit).tuples()]
    for group_id in full:
        counts["filled"] += complete_group(group_id, now, registry)
    for group_id in due:
        if group_id not in full:
            counts["failed"] += fail_group(group_id, now, registry)
    for group_id in held:
        if group_id not in full and group_id not in due:
            settle_members(group_id, registry)
            counts["settled"] += 1
    return counts
