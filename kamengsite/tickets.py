"""Buyer messages: one thread per order between its buyer and the shop that sold it, and the
shop's FAQ shown before a thread is opened.

The shop is the selling site (``Order.site``): a sub-site's owner answers their own buyers and
the platform's operator the main site's; ``Ticket`` and ``FaqEntry`` are tenant rows of that
site, so no other console ever sees them. A thread is opened by the buyer's first message and
is ``open`` (waiting for the shop), ``answered`` (waiting for the buyer) or ``closed`` (by the
shop; the buyer's next message opens it again). Unread flags on each side drive the console's
badge and the buyer's notice; new messages are announced by mail (``notify_*``), never with
their text for the shop's side and never with any key.

One thread per order is a unique index, so two first messages sent at once still make one.
"""

from __future__ import annotations

import peewee

from .errors import KamengsiteError
from .models import utcnow
from .tenancy import TenantModel, acting_for

MAX_BODY = 2000
MAX_MESSAGES = 200  # per thread: a runaway conversation (or script) stops here
MAX_FAQ = 50
STATUSES = ("open", "answered", "closed")


class TicketError(KamengsiteError):
    """A message or FAQ entry refused (empty, too long, thread full)."""


class Ticket(TenantModel):
    order_no = peewee.CharField(max_length=32, unique=True)
    status = peewee.CharField(max_length=16, default="open")
    shop_unread = peewee.BooleanField(default=True)
    buyer_unread = peewee.BooleanField(default=False)
    messages = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ticket"
        indexes = ((("site", "status", "updated_at"), False),)


class TicketMessage(TenantModel):
    ticket = peewee.ForeignKeyField(Ticket, on_delete="CASCADE", index=True)
    author = peewee.CharField(max_length=8)  # "buyer" or "shop"
    account_id = peewee.IntegerField(null=True)  # the console account that answered
    body = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ticket_message"


class FaqEntry(TenantModel):
    question = peewee.CharField(max_length=200)
    answer = peewee.TextField()
    position = peewee.IntegerField(default=0)

    class Meta:
        table_name = "faq_entry"


def clean_body(text: str) -> str:
    body = (text or "").replace("\r\n", "\n").strip()
    if not body:
        raise TicketError("empty message")
    if len(body) > MAX_BODY:
        raise TicketError(f"message longer than {MAX_BODY} characters")
    return body


def ticket_for(site_id: int, order_no: str) -> Ticket | None:
    with acting_for(site_id):
        return Ticket.get_or_none(Ticket.order_no == order_no)


def thread(ticket: Ticket) -> list[TicketMessage]:
    with acting_for(ticket.site_id):
        return list(TicketMessage.select().where(TicketMessage.ticket == ticket.id).order_by(TicketMessage.id))


def _open_thread(site_id: int, order_no: str) -> Ticket:
    found = ticket_for(site_id, order_no)
    if found is not None:
        return found
    try:
        with acting_for(site_id), Ticket._meta.database.atomic():
            return Ticket.create(site=site_id, order_no=order_no)
    except peewee.IntegrityError:  # opened at the same moment by another request
        return ticket_for(site_id, order_no)


def post(site_id: int, order_no: str, author: str, text: str, *, account_id: int | None = None) -> Ticket:
    """Add a message to the order's thread (opening it); returns the thread as it is now."""
    if author not in ("buyer", "shop"):
        raise ValueError(f"unknown author {author!r}")
    body = clean_body(text)
    ticket = _open_thread(site_id, order_no) if author == "buyer" else ticket_for(site_id, order_no)
    if ticket is None:
        raise TicketError("no thread for this order")
    now = utcnow()
    with acting_for(site_id), Ticket._meta.database.atomic():
        # The count and the status move in one conditional update: a full thread takes nothing more.
        changes = {"messages": Ticket.messages + 1, "updated_at": now}
        if author == "buyer":
            changes.update(status="open", shop_unread=True)
        else:
            changes.update(status="answered", buyer_unread=True, shop_unread=False)
        moved = Ticket.update(changes).where((Ticket.id == ticket.id) & (Ticket.messages < MAX_MESSAGES)).execute()
        if not moved:
            raise TicketError(f"this conversation has reached {MAX_MESSAGES} messages")
        TicketMessage.create(site=site_id, ticket=ticket.id, author=author, account_id=account_id, body=body,
                             created_at=now)
        return Ticket.get_by_id(ticket.id)


def mark_read(ticket: Ticket, side: str):
    field = Ticket.shop_unread if side == "shop" else Ticket.buyer_unread
    with acting_for(ticket.site_id):
        Ticket.update({field: False}).where(Ticket.id == ticket.id).execute()


def close(site_id: int, order_no: str) -> bool:
    with acting_for(site_id):
        return bool(Ticket.update(status="closed", shop_unread=False, updated_at=utcnow()).where(
            (Ticket.order_no == order_no) & (Ticket.status != "closed")).execute())


def inbox(site_id: int, status: str | None = None, limit: int = 200) -> list[Ticket]:
    """The site's threads, those waiting for the shop first, newest first."""
    with acting_for(site_id):
        query = Ticket.select()
        if status in STATUSES:
            query = query.where(Ticket.status == status)
        return list(query.order_by(Ticket.shop_unread.desc(), Ticket.updated_at.desc()).limit(limit))


def unread_count(site_id: int) -> int:
    with acting_for(site_id):
        return Ticket.select().where(Ticket.shop_unread == True).count()  # noqa: E712 - SQL, not Python


# -- FAQ ------------------------------------------------------------------------------


def faq(site_id: int) -> list[FaqEntry]:
    with acting_for(site_id):
        return list(FaqEntry.select().order_by(FaqEntry.position, FaqEntry.id))


def save_faq(site_id: int, entries: list[tuple[str, str]]):
    """Replace the site's FAQ with ``entries`` [(question, answer)] in this order (blank rows dropped)."""
    kept = [(q.strip(), a.replace("\r\n", "\n").strip()) for q, a in entries if q.strip() or a.strip()]
    if len(kept) > MAX_FAQ:
        raise TicketError(f"at most {MAX_FAQ} questions")
    for question, answer in kept:
        if not question or not answer:
            raise TicketError("each question needs an answer")
        if len(question) > 200 or len(answer) > MAX_BODY:
            raise TicketError(f"a question has at most 200 characters and an answer {MAX_BODY}")
    with acting_for(site_id), FaqEntry._meta.database.atomic():
        FaqEntry.delete().execute()
        for position, (question, answer) in enumerate(kept):
            FaqEntry.create(site=site_id, question=question, answer=answer, position=position)
