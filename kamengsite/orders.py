"""Orders: reservation at creation, payment, delivery and expiry — enforced by the database.

State machine (every transition is a conditional UPDATE on the current status)::

    created ──paid──▶ paid ──deliver──▶ delivered
       │                 └──(card stock gone)──▶ refund_pending
       └──expire──▶ expired ──late payment──▶ paid … (if stock can be re-reserved)
                                            └──▶ refund_pending

Stock is reserved when the order is created by a conditional decrement of
``sku.stock`` (``WHERE stock >= qty``), which also serialises buyers of one SKU,
then card keys are claimed with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL/MariaDB)
inside an IMMEDIATE transaction (SQLite). ``mark_paid`` is the single entry
point payment channels call; it is idempotent by the unique (channel, trade no).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
from dataclasses import dataclass

import peewee

from . import settlement
from .cardkeys import CardKey
from .catalog import Product, Sku
from .db import Statement, arg, database, is_sqlite, retry_transient
from .errors import KamengsiteError
from .i18n import _
from .models import BaseModel, utcnow
from .tenancy import TenantModel, acting_for, all_sites

log = logging.getLogger(__name__)
DEFAULT_TTL = datetime.timedelta(minutes=10)
STATUSES = ("created", "paid", "delivered", "expired", "refund_pending", "refunded", "cancelled")
#: Orders that hold or consumed stock: what a per-buyer limit counts.
HOLDING = ("created", "paid", "delivered")
CONTACT_MAX = 120  # the width of shop_order.contact
#: ``fee_bearer`` of an order paid into a direct-settlement site's own account (its cost was prepaid).
DIRECT = "direct"
ORDER_NO_ATTEMPTS = 5


class OrderError(KamengsiteError):
    code = "order_error"


class OutOfStock(OrderError):
    code = "out_of_stock"


class InvalidOrder(OrderError):
    code = "invalid_order"


class PaymentRejected(OrderError):
    """A payment that does not match its order; nothing was written."""

    code = "payment_rejected"


class Order(TenantModel):
    order_no = peewee.CharField(max_length=32, unique=True)
    product = peewee.ForeignKeyField(Product, on_delete="RESTRICT")
    sku = peewee.ForeignKeyField(Sku, on_delete="RESTRICT")
    quantity = peewee.IntegerField()
    unit_price_fen = peewee.BigIntegerField()
    amount_fen = peewee.BigIntegerField()
    status = peewee.CharField(max_length=16, default="created")
    contact = peewee.CharField(max_length=120, default="")
    query_hash = peewee.CharField(max_length=255, default="")
    member_id = peewee.IntegerField(null=True)
    channel = peewee.CharField(max_length=32, default="")
    channel_profile = peewee.CharField(max_length=32, default="")
    buyer_ip = peewee.CharField(max_length=45, default="")
    fields = peewee.TextField(default="")
    note = peewee.TextField(default="")
    # The money, frozen at creation: goods_fen + (fee_fen if the buyer bears it) = amount_fen;
    # cost_chain is the pricing.Quote's [[site_id, unit_cost_fen], …] (selling site first).
    goods_fen = peewee.BigIntegerField(default=0)
    discount_fen = peewee.BigIntegerField(default=0)  # what plugins took off unit price × quantity
    fee_fen = peewee.BigIntegerField(default=0)
    fee_bearer = peewee.CharField(max_length=8, default="")
    cost_chain = peewee.TextField(default="")
    hold = peewee.CharField(max_length=32, default="")  # the plugin that delivers this order later, if any
    expires_at = peewee.DateTimeField()
    paid_at = peewee.DateTimeField(null=True)
    delivered_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "shop_order"

    @property
    def costs(self) -> list[tuple[int, int]]:
        """``[(site_id, unit_cost_fen), …]`` from the selling site up; [] for main-site orders."""
        return [tuple(pair) for pair in json.loads(self.cost_chain)] if self.cost_chain else []

    @property
    def field_values(self) -> dict:
        """What the buyer filled in for a 代充 product."""
        return json.loads(self.fields) if self.fields else {}

    def check_query_password(self, password: str, secret: bytes = b"") -> bool:
        return bool(self.query_hash) and verify_password(password, self.query_hash, secret)


class Payment(BaseModel):
    order = peewee.ForeignKeyField(Order, backref="payments", on_delete="RESTRICT")
    channel = peewee.CharField(max_length=32)
    trade_no = peewee.CharField(max_length=64)
    amount_fen = peewee.BigIntegerField()
    state = peewee.CharField(max_length=16, default="applied")  # applied | refund_due | refunded
    created_at = peewee.DateTimeField(default=utcnow)


@dataclass(frozen=True)
class PaymentResult:
    order_no: str
    status: str  # the order's status after this call
    duplicate: bool = False  # this (channel, trade no) was already recorded
    refund_due: bool = False  # money arrived that no goods back: shown to buyer and operator


# -- compiled statements of the checkout path (see db.Statement) -------------------


def _unscoped(build):
    """A statement on a tenant table, compiled without the scope filter: it names its rows itself."""

    def build_unscoped():
        with all_sites():
            return build()

    return Statement(build_unscoped)


def _model(model, fields, row):
    """A model instance from a raw row of ``fields`` (values converted as peewee would)."""
    return model(**{f.name: f.python_value(v) for f, v in zip(fields, row)})


SKU_FIELDS = (Sku.id, Sku.status, Sku.price_fen)
PRODUCT_FIELDS = (Product.id, Product.name, Product.status, Product.kind, Product.loop_key, Product.members_only,
                  Product.min_qty, Product.max_qty, Product.per_buyer_limit, Product.delivery_order,
                  Product.low_stock_threshold, Product.low_stock_alerted, Product.supplier)
ORDER_FIELDS = (Order.id, Order.site, Order.order_no, Order.product, Order.sku, Order.quantity, Order.unit_price_fen,
                Order.amount_fen, Order.status, Order.contact, Order.query_hash, Order.member_id, Order.channel,
                Order.channel_profile, Order.fields, Order.note, Order.goods_fen, Order.fee_fen, Order.fee_bearer,
                Order.cost_chain, Order.discount_fen, Order.hold)
ORDER_INSERT_FIELDS = (Order.site, Order.order_no, Order.product, Order.sku, Order.quantity, Order.unit_price_fen,
                       Order.amount_fen, Order.status, Order.contact, Order.query_hash, Order.member_id, Order.channel,
                       Order.channel_profile, Order.buyer_ip, Order.fields, Order.note, Order.goods_fen,
                       Order.fee_fen, Order.fee_bearer, Order.cost_chain, Order.discount_fen, Order.hold, Order.expires_at, Order.created_at,
                       Order.updated_at)

SKU_WITH_PRODUCT = Statement(lambda: Sku.select(*SKU_FIELDS, *PRODUCT_FIELDS).join(Product)
                             .where(Sku.id == arg("sku")))
TAKE_STOCK = Statement(lambda: Sku.update(stock=Sku.stock - arg("qty")).where(
    (Sku.id == arg("sku")) & (Sku.stock >= arg("qty")) & (Sku.status == "on")))
ADD_SOLD = Statement(lambda: Sku.update(sold=Sku.sold + arg("qty")).where(Sku.id == arg("sku")))
INSERT_ORDER = _unscoped(lambda: Order.insert({f: arg(f.name) for f in ORDER_INSERT_FIELDS}))
ORDER_BY_NO = _unscoped(lambda: Order.select(*ORDER_FIELDS, *PRODUCT_FIELDS).join(Product)
                        .where(Order.order_no == arg("order_no")))
INSERT_PAYMENT = Statement(lambda: Payment.insert({Payment.order: arg("order"), Payment.channel: arg("channel"),
                                                   Payment.trade_no: arg("trade_no"),
                                                   Payment.amount_fen: arg("amount"), Payment.state: "applied",
                                                   Payment.created_at: arg("now")}))
FIRST_AVAILABLE_KEYS = Statement(lambda: _lockable(
    CardKey.select(CardKey.id).where((CardKey.sku == arg("sku")) & (CardKey.status == "available"))
    .order_by(CardKey.id).limit(arg("limit"))))
RESERVE_KEY = Statement(lambda: CardKey.update(status="reserved", order=arg("order")).where(
    (CardKey.id == arg("key")) & (CardKey.status == "available")))
SELL_KEYS = Statement(lambda: CardKey.update(status="sold", sold_at=arg("now")).where(
    (CardKey.order == arg("order")) & (CardKey.status == "reserved")))
SOLD_KEYS = Statement(lambda: CardKey.select(CardKey.sealed, CardKey.sku).where(
    (CardKey.order == arg("order")) & (CardKey.status == "sold")).order_by(CardKey.id))
_TRANSITIONS: dict[tuple, Statement] = {}


def _lockable(query):
    """Lock the selected rows, skipping rows other transactions hold (SQLite's IMMEDIATE lock suffices)."""
    return query if is_sqlite() else query.for_update("FOR UPDATE SKIP LOCKED")


def find_order(order_no: str, site_id: int | None = None) -> Order | None:
    """The order with this number (on ``site_id`` if given), with its product attached; None if none."""
    row = ORDER_BY_NO.first(order_no=order_no)
    if row is None:
        return None
    order = _model(Order, ORDER_FIELDS, row[:len(ORDER_FIELDS)])
    if site_id is not None and order.site_id != site_id:
        return None
    order.product = _model(Product, PRODUCT_FIELDS, row[len(ORDER_FIELDS):])
    return order


# -- query passwords ---------------------------------------------------------------


def hash_password(password: str, secret: bytes = b"") -> str:
    """Salted HMAC-SHA256 of a query password, keyed by a secret that never enters the database.

    A query password only guards one order's lookup and is checked online behind a
    rate limit; what an offline attacker with a copy of the database lacks is the
    key, not CPU time. So a fast keyed hash, not a slow KDF on every checkout
    (member account passwords use a real KDF).
    """
    salt = os.urandom(16)
    digest = hmac.new(secret, salt + password.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac-sha256${salt.hex()}${digest}"


def verify_password(password: str, stored: str, secret: bytes = b"") -> bool:
    try:
        scheme, salt, digest = stored.split("$")
        if scheme != "hmac-sha256":
            return False
        got = hmac.new(secret, bytes.fromhex(salt) + password.encode("utf-8"), hashlib.sha256).hexdigest()
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, digest)


def new_order_no() -> str:
    """'K' + UTC time + 8 random digits: sortable, unguessable enough to be no key on its own."""
    return "K" + utcnow().strftime("%Y%m%d%H%M%S") + f"{secrets.randbelow(10**8):08d}"


# -- creating ----------------------------------------------------------------------


def create_order(*, site_id: int, sku_id: int, quantity: int, contact: str, query_password: str = "",
                 unit_price_fen: int | None = None, buyer_ip: str = "", member_id: int | None = None,
                 channel: str = "", channel_profile: str = "", fields: dict | None = None,
                 ttl: datetime.timedelta = DEFAULT_TTL, query_secret: bytes = b"",
                 costs=(), fee: tuple[int, str] = (0, ""), prepaid: bool = False, discount_fen: int = 0,
                 hold: str = "", reserving=None) -> Order:
    """Create an order and reserve its stock atomically, or raise OutOfStock / InvalidOrder.

    ``costs`` is the pricing chain (``pricing.Quote.costs``) that the payment will be split
    by; ``fee`` the channel's fee and who bears it (``"buyer"`` adds it to the amount);
    ``prepaid``: the site settles directly, so the chain's costs are taken from its prepaid
    balance now (``settlement.post_prepay``), refused with InvalidOrder when it is short.
    ``discount_fen`` comes off unit price × quantity (never below the selling site's cost);
    ``hold`` names a plugin that delivers the order itself later (payment leaves it ``paid``,
    see ``deliver_held``); ``reserving(order)`` runs inside the creating transaction (the
    ``order_reserving`` hook): whatever it raises rolls the order back.
    """
    if not isinstance(sku_id, int) or isinstance(sku_id, bool):
        raise InvalidOrder(_("this item is not on sale"))
    row = SKU_WITH_PRODUCT.first(sku=sku_id)
    if row is None or row[1] != "on":
        raise InvalidOrder(_("this item is not on sale"))
    sku = _model(Sku, SKU_FIELDS, row[:len(SKU_FIELDS)])
    product = _model(Product, PRODUCT_FIELDS, row[len(SKU_FIELDS):])
    if product.status != "on":
        raise InvalidOrder(_("this item is not on sale"))
    if product.members_only and member_id is None:
        raise InvalidOrder(_("this item is for members only: please sign in"))
    _check_quantity(product, quantity)
    if product.per_buyer_limit > 0 and quantity > product.per_buyer_limit:
        raise InvalidOrder(_("at most %(n)s per buyer", n=product.per_buyer_limit))
    unit = sku.price_fen if unit_price_fen is None else unit_price_fen
    if not isinstance(unit, int) or isinstance(unit, bool) or unit < 0:
        raise InvalidOrder("price must be whole fen")
    contact = (contact or "").strip()
    if len(contact) > CONTACT_MAX:
        raise InvalidOrder(_("contact must be at most %(n)s characters", n=CONTACT_MAX))
    buyer_ip = (buyer_ip or "")[:45]  # the column's width: an odd proxy header must not fail the order
    query_hash = hash_password(query_password, query_secret) if query_password else ""
    goods = unit * quantity
    costs = _check_costs(costs, unit)
    if not isinstance(discount_fen, int) or isinstance(discount_fen, bool) or discount_fen < 0 \
            or goods - discount_fen < (costs[0][1] * quantity if costs else 0) or (goods and discount_fen >= goods):
        raise InvalidOrder("discount must leave the price above this site's cost")
    goods -= discount_fen
    if not isinstance(hold, str) or len(hold) > 32:
        raise InvalidOrder("hold must name a plugin")
    fee_fen, fee_bearer = fee
    if not isinstance(fee_fen, int) or isinstance(fee_fen, bool) or fee_fen < 0 or fee_bearer not in ("", "buyer", "seller"):
        raise InvalidOrder("fee must be whole fen borne by the buyer or the seller")
    if prepaid:  # paid into the site's own account: its gateway's fee is the site's own business
        fee_fen, fee_bearer = 0, DIRECT
    amount = goods + (fee_fen if fee_bearer == "buyer" else 0)
    prepay = None
    if prepaid:
        from . import settlement

        prepay = settlement.prepay_plan(site_id, costs, quantity)

    def reserve():
        now = utcnow()
        with acting_for(site_id), database.atomic():
            if not _take_stock(sku.id, quantity):
                raise OutOfStock("out of stock")
            _check_buyer_limit(product, quantity, member_id, contact)
            values = dict(
                site=site_id, order_no=new_order_no(), product=product.id, sku=sku.id, quantity=quantity,
                unit_price_fen=unit, amount_fen=amount, status="created", contact=contact,
                query_hash=query_hash, member_id=member_id, channel=channel, channel_profile=channel_profile,
                buyer_ip=buyer_ip, fields=json.dumps(fields, ensure_ascii=False) if fields else "", note="",
                goods_fen=goods, fee_fen=fee_fen, fee_bearer=fee_bearer,
                cost_chain=json.dumps([list(c) for c in costs]) if costs else "", discount_fen=discount_fen, hold=hold,
                expires_at=now + ttl, created_at=now, updated_at=now,
            )
            order = Order(id=INSERT_ORDER.insert(**values), **values)
            if _uses_key_rows(product):
                _claim_keys(order, product, sku.id, quantity)
            if prepay is not None:
                prepay.post(order)
            if reserving is not None:
                order.product = product
                reserving(order)
        return order

    for attempt in range(ORDER_NO_ATTEMPTS):
        try:
            return retry_transient(reserve)
        except peewee.IntegrityError as exc:
            # The order number was taken (the only unique column; other constraints name other
            # columns): the whole reservation was rolled back, so run it again under a new number.
            # Not a savepoint: on MariaDB a deadlock inside one rolls back the whole transaction
            # and the savepoint's own rollback then fails with an error no retry recognises.
            if "order_no" not in str(exc) or attempt == ORDER_NO_ATTEMPTS - 1:
                raise


def _check_costs(costs, unit_price: int) -> tuple:
    """The price chain as ((site_id, unit_cost), …): costs never rise going up, none above the price."""
    checked, ceiling = [], unit_price
    for pair in costs or ():
        site, cost = pair
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (site, cost)) or not 0 <= cost <= ceiling:
            raise InvalidOrder(_("price is below this site's cost"))
        checked.append((site, cost))
        ceiling = cost
    return tuple(checked)


def _check_buyer_limit(product: Product, quantity: int, member_id: int | None, contact: str):
    """Refuse if this buyer already holds ``per_buyer_limit`` units of the product on this site."""
    limit = product.per_buyer_limit
    if limit <= 0:
        return
    if member_id is not None:
        buyer = Order.member_id == member_id
    elif contact:
        buyer = Order.contact == contact
    else:
        raise InvalidOrder(_("this item is limited per buyer: leave a contact"))
    if not is_sqlite():  # one product's buyers queue here, whichever of its SKUs they buy
        list(Product.select(Product.id).where(Product.id == product.id).for_update().tuples())
    held = Order.select(peewee.fn.COALESCE(peewee.fn.SUM(Order.quantity), 0)).where(
        buyer & (Order.product == product.id) & Order.status.in_(HOLDING)).scalar()
    if int(held or 0) + quantity > limit:
        raise InvalidOrder(_("at most %(n)s per buyer", n=limit))


def _check_quantity(product: Product, quantity):
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise InvalidOrder(_("quantity must be a whole number"))
    low, high = max(1, product.min_qty), product.max_qty
    if quantity < low or (high and quantity > high):
        if high:
            raise InvalidOrder(_("quantity must be between %(low)s and %(high)s", low=low, high=high))
        raise InvalidOrder(_("quantity must be at least %(low)s", low=low))


def _uses_key_rows(product: Product) -> bool:
    """Whether the order reserves key rows of our own (an upstream's goods arrive with its answer)."""
    return product.kind == "card" and not product.loop_key and not product.supplier


def _take_stock(sku_id: int, quantity: int) -> bool:
    """Decrement the SKU's stock if enough is left; the row lock serialises buyers of this SKU."""
    return TAKE_STOCK.rowcount(sku=sku_id, qty=quantity) == 1


def _claim_keys(order: Order, product: Product, sku_id: int, quantity: int):
    ids = _available_key_ids(sku_id, quantity, random_pick=product.delivery_order == "random")
    claimed = 0
    if len(ids) == quantity:
        claimed = sum(RESERVE_KEY.rowcount(key=key_id, order=order.id) for key_id in ids)
    if claimed != quantity:
        # The counter said yes but the keys are not there: refuse, roll back, and say so loudly.
        raise OutOfStock(f"stock counter of sku {sku_id} is ahead of its keys; run `kamengsite keys recount`")


def _available_key_ids(sku_id: int, quantity: int, *, random_pick: bool) -> list[int]:
    base = CardKey.select(CardKey.id).where((CardKey.sku == sku_id) & (CardKey.status == "available"))
    if random_pick:
        bounds = base.select(peewee.fn.MIN(CardKey.id), peewee.fn.MAX(CardKey.id)).tuples().first()
        if bounds and bounds[0] is not None:
            start = random.randint(bounds[0], bounds[1])
            ids = _locked_ids(base.where(CardKey.id >= start).order_by(CardKey.id).limit(quantity))
            if len(ids) < quantity:
                ids += _locked_ids(base.where(CardKey.id < start).order_by(CardKey.id).limit(quantity - len(ids)))
            return ids
    return [row[0] for row in FIRST_AVAILABLE_KEYS.all(sku=sku_id, limit=quantity)]


def _locked_ids(query) -> list[int]:
    return [row[0] for row in _lockable(query).tuples()]


# -- paying and delivering -------------------------------------------------------


def mark_paid(order_no: str, *, channel: str, trade_no: str, amount_fen: int,
              channel_profile: str | None = None, within=None, order: Order | None = None,
              hold_if=None) -> PaymentResult:
    """Record a verified payment and deliver the order: the one entry point for payment channels.

    Idempotent by (channel, trade_no): N identical calls, even concurrent, write one
    payment and deliver once. A payment that does not match its order raises
    PaymentRejected before anything is written.

    ``within(order)``, if given, runs inside the payment's database transaction before the
    payment row is written (the balance channel debits the wallet there): whatever it
    raises rolls the whole payment back. ``order``: the order as the caller already loaded it
    with ``find_order`` (saves a query); it is looked up otherwise. ``hold_if(order)`` (default:
    ``payment_hold_check``, the risk rules) runs in the same transaction before delivery and
    returns a hold name to keep the paid order undelivered for review, or "".
    """
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool):
        raise PaymentRejected("amount must be whole fen")
    # The payment row's columns: an empty or oversized trade no must be refused, not collide or fail late.
    if not isinstance(channel, str) or not channel.strip() or len(channel) > 32:
        raise PaymentRejected("channel must be a name of 1 to 32 characters")
    if not isinstance(trade_no, str) or not trade_no.strip() or len(trade_no) > 64:
        raise PaymentRejected("trade no must be 1 to 64 characters")
    with all_sites():  # notifications arrive on any domain; the order number names the site
        if order is None or order.order_no != order_no:
            order = find_order(order_no)
        if order is None:
            raise PaymentRejected(f"unknown order {order_no!r}")
        if order.channel and order.channel != channel:
            raise PaymentRejected(f"order {order_no} was created for channel {order.channel!r}, not {channel!r}")
        if order.channel_profile and order.channel_profile != channel_profile:
            raise PaymentRejected(f"order {order_no} was created for another account of {channel!r}")
        if amount_fen != order.amount_fen:
            raise PaymentRejected(f"amount {amount_fen} fen does not match order {order_no} ({order.amount_fen} fen)")
        settlement.warm_accounts(order)

        def record():
            with database.atomic():
                if within is not None:
                    within(order)
                payment = Payment(order=order.id, channel=channel, trade_no=trade_no, amount_fen=amount_fen)
                payment.id = INSERT_PAYMENT.insert(order=order.id, channel=channel, trade_no=trade_no,
                                                   amount=amount_fen, now=utcnow())
                result = _apply_payment(order, payment, hold_if or payment_hold_check)
                # The money's split is written with the payment, or not at all.
                if result.refund_due:
                    if order.fee_bearer != DIRECT:  # a direct site's buyer paid the site: the site owes it
                        settlement.post_owed(order, payment)
                else:
                    settlement.post_payment(order, payment)
                return result

        try:
            return retry_transient(record)
        except peewee.IntegrityError:
            existing = Payment.get_or_none((Payment.channel == channel) & (Payment.trade_no == trade_no))
            if existing is None:
                raise
            if existing.order_id != order.id:
                raise PaymentRejected(f"trade {trade_no} already paid another order") from None
            current = Order.get_by_id(order.id)
            return PaymentResult(order_no, current.status, duplicate=True,
                                 refund_due=existing.state == "refund_due")


def _apply_payment(order: Order, payment: Payment, hold_if=None) -> PaymentResult:
    now = utcnow()
    if _transition(order.id, "created", "paid", paid_at=now):
        _hold_if_asked(order, hold_if)
        return _deliver(order, payment)
    if _transition(order.id, "expired", "paid", paid_at=now):
        # Late payment: the reservation was released; take stock again if there is any.
        product = order.product
        if order.fee_bearer == DIRECT and settlement.prepay_released(order.order_no):
            # A direct-settlement site got its cost back at expiry; its own account took the money.
            return _owe_refund(order, payment, "paid after expiry to the site's own account")
        if not _take_stock(order.sku_id, order.quantity):
            return _owe_refund(order, payment, "paid after expiry and the stock is gone")
        if _uses_key_rows(product):
            try:
                _claim_keys(order, product, order.sku_id, order.quantity)
            except OutOfStock as exc:
                # Undo the re-reservation by hand (no savepoint, see create_order) and keep the payment.
                _release(order.id, order.sku_id, order.quantity)
                return _owe_refund(order, payment, f"paid after expiry and {exc}")
        _hold_if_asked(order, hold_if)
        return _deliver(order, payment)
    # Already paid by another trade: this money is owed back, visibly.
    Payment.update(state="refund_due").where(Payment.id == payment.id).execute()
    current = Order.get_by_id(order.id)
    return PaymentResult(order.order_no, current.status, refund_due=True)


#: Set by ``kamengsite.risk``: ``check(order) -> hold name or ""`` for payments given no ``hold_if``.
payment_hold_check = None
HOLD_AT_PAYMENT = _unscoped(lambda: Order.update(hold=arg("hold"), updated_at=arg("now")).where(
    (Order.id == arg("order")) & (Order.hold == "")))


def _hold_if_asked(order: Order, hold_if):
    """Before delivery, inside the payment's transaction: hold the order if ``hold_if`` names a hold."""
    if hold_if is None or order.hold:
        return
    hold = hold_if(order)
    if hold and HOLD_AT_PAYMENT.rowcount(order=order.id, hold=hold, now=utcnow()) == 1:
        order.hold = hold


def _deliver(order: Order, payment: Payment) -> PaymentResult:
    if order.hold:  # a plugin delivers it later (deliver_held): its keys stay reserved for it
        return PaymentResult(order.order_no, "paid")
    now = utcnow()
    product = order.product
    if product.supplier:  # the supplier plugin forwards it and delivers with deliver_supplied
        ADD_SOLD.rowcount(sku=order.sku_id, qty=order.quantity)
        return PaymentResult(order.order_no, "paid")
    if _uses_key_rows(product):
        sold = SELL_KEYS.rowcount(order=order.id, now=now)
        if sold != order.quantity:
            # Keys vanished from the reservation (voided by hand?): deliver nothing, give the rest
            # back to stock, and owe the money.
            CardKey.update(status="available", sold_at=None, order=None).where(
                (CardKey.order == order.id) & (CardKey.status == "sold")).execute()
            Sku.update(stock=Sku.stock + sold).where(Sku.id == order.sku_id).execute()
            return _owe_refund(order, payment, f"{sold} of {order.quantity} reserved keys were left at payment")
    if product.kind == "card":
        _transition(order.id, "paid", "delivered", delivered_at=now)
        status = "delivered"
    else:
        status = "paid"  # 代充 / manual: fulfilled by the shop or an upstream
    ADD_SOLD.rowcount(sku=order.sku_id, qty=order.quantity)
    return PaymentResult(order.order_no, status)


HELD_PAYMENT = Statement(lambda: Payment.select(Payment.id).where(
    (Payment.order == arg("order")) & (Payment.state == "applied")).order_by(Payment.id).limit(1))
RELEASE_HOLD = _unscoped(lambda: Order.update(hold="", updated_at=arg("now")).where(
    (Order.id == arg("order")) & (Order.hold == arg("hold")) & (Order.status == "paid")))


def deliver_held(order_no: str, hold: str) -> PaymentResult | None:
    """Deliver a paid order that plugin ``hold`` held back (a group-buy whose group filled).

    Exactly once however often and however concurrently it is called: the first call clears
    the hold with a conditional update and delivers in the same transaction; later calls,
    and calls for an order that is not paid and held by ``hold``, return None.
    """
    with all_sites():
        order = find_order(order_no)
        if order is None:
            return None

        def run():
            with database.atomic():
                if RELEASE_HOLD.rowcount(order=order.id, hold=hold, now=utcnow()) != 1:
                    return None
                row = HELD_PAYMENT.first(order=order.id)
                payment = Payment(id=row[0], order=order.id) if row else None
                order.hold = ""
                if payment is None:  # paid orders always have one; refuse to deliver goods unpaid
                    raise OrderError(f"order {order_no} is paid but has no applied payment")
                return _deliver(order, payment)

        return retry_transient(run)


DELIVER_SUPPLIED = _unscoped(lambda: Order.update(status="delivered", delivered_at=arg("now"), updated_at=arg("now"))
                              .where((Order.id == arg("order")) & (Order.status == "paid") & (Order.hold == "")))


def deliver_supplied(order_no: str, supplier: str, keys: list[str], cipher) -> bool:
    """Deliver a paid order of a supplied product with the goods its upstream answered; exactly once.

    ``keys`` are the card keys the upstream returned (sealed here into sold key rows of the
    order, so the buyer's page, mails and the console show them like our own); [] for a
    代充 the upstream fulfilled. One transaction: the conditional paid → delivered update
    (not held, not refunded meanwhile) and the key rows commit together, so a second or
    concurrent call writes nothing and returns False.
    """
    with all_sites():
        order = find_order(order_no)
        if order is None or order.product.supplier != supplier:
            raise OrderError(f"order {order_no} is not supplied by {supplier!r}")
        if order.product.kind == "card" and len(keys) != order.quantity:
            raise OrderError(f"order {order_no} needs {order.quantity} keys, the upstream gave {len(keys)}")
        if not all(isinstance(k, str) and k.strip() for k in keys):
            raise OrderError(f"order {order_no}: the upstream gave an empty key")

        def run() -> bool:
            now = utcnow()
            with database.atomic():
                if DELIVER_SUPPLIED.rowcount(order=order.id, now=now) != 1:
                    return False
                # The digest names the order too: an upstream may sell one loop key many times.
                rows = [{CardKey.sku: order.sku_id, CardKey.sealed: cipher.seal(key.strip(), order.sku_id),
                         CardKey.digest: cipher.digest(f"supplied:{order_no}:{i}:{key}"), CardKey.status: "sold",
                         CardKey.order: order.id, CardKey.batch: f"supplied:{supplier}"[:32], CardKey.created_at: now,
                         CardKey.sold_at: now} for i, key in enumerate(keys)]
                if rows:
                    CardKey.insert_many(rows).execute()
                return True

        return retry_transient(run)


def release_held(order: Order) -> bool:
    """Give a held, paid, undelivered order's reservation back (its refund is being written); once."""
    if not order.hold or RELEASE_HOLD.rowcount(order=order.id, hold=order.hold, now=utcnow()) != 1:
        return False
    _release(order.id, order.sku_id, order.quantity)
    return True


def _owe_refund(order: Order, payment: Payment, why: str) -> PaymentResult:
    _transition(order.id, "paid", "refund_pending", note=why)
    Payment.update(state="refund_due").where(Payment.id == payment.id).execute()
    return PaymentResult(order.order_no, "refund_pending", refund_due=True)


def _transition(order_id: int, from_status: str, to_status: str, **changes) -> bool:
    """Move an order between states if — and only if — it is still in ``from_status``."""
    changes.setdefault("updated_at", utcnow())
    key = tuple(sorted(changes))
    statement = _TRANSITIONS.get(key)
    if statement is None:
        statement = _TRANSITIONS[key] = _unscoped(lambda: Order.update(
            {Order.status: arg("to"), **{getattr(Order, name): arg(name) for name in key}}).where(
            (Order.id == arg("order")) & (Order.status == arg("from"))))
    return statement.rowcount(order=order_id, to=to_status, **{"from": from_status}, **changes) == 1


# -- expiry ------------------------------------------------------------------------


def expire_due(now: datetime.datetime | None = None, limit: int = 500, expiring=None) -> int:
    """Expire unpaid orders past their deadline and release their stock; safe to run concurrently.

    ``expiring(order)`` runs inside each order's expiring transaction (the ``order_expiring``
    hook); if it raises, that order stays unexpired for the next sweep and the rest go on.
    """
    now = now or utcnow()
    expired = 0
    with all_sites():
        due = list(Order.select(Order.id, Order.site, Order.order_no, Order.sku, Order.quantity, Order.product,
                                Order.member_id, Order.hold, Order.discount_fen, Order.goods_fen)
                   .where((Order.status == "created") & (Order.expires_at < now)).limit(limit))
        for order in due:
            try:
                expired += retry_transient(lambda: _expire_one(order, expiring))
            except Exception as exc:  # noqa: BLE001 - one order's plugin failing must not stop the sweep
                from .hooks import record_closed_failure

                if expiring is None or not record_closed_failure(exc, order.site_id):
                    raise
                log.error("order %s not expired: a plugin's order_expiring failed (%s)", order.order_no, exc)
    return expired


def cancel_unpaid(order_no: str, expiring=None) -> bool:
    """Cancel an unpaid order now (its payment failed for good): its stock and keys go back; once.

    Like expiry, with ``cancelled`` as the end state: False if the order was paid, expired or
    cancelled meanwhile. ``expiring(order)`` gives back what plugins reserved (``order_expiring``).
    """
    with all_sites():
        order = find_order(order_no)
        if order is None:
            return False
        return bool(retry_transient(lambda: _expire_one(order, expiring, to_status="cancelled")))


def _expire_one(order: Order, expiring=None, to_status: str = "expired") -> int:
    with database.atomic():
        if not _transition(order.id, "created", to_status):
            return 0  # paid or expired meanwhile
        _release(order.id, order.sku_id, order.quantity)
        settlement.release_prepay(order.order_no)
        if expiring is not None:
            expiring(order)
        return 1


def _release(order_id: int, sku_id: int, quantity: int):
    """Give an order's reservation back: its reserved keys and its units on the SKU's counter."""
    CardKey.update(status="available", order=None).where(
        (CardKey.order == order_id) & (CardKey.status == "reserved")).execute()
    Sku.update(stock=Sku.stock + quantity).where(Sku.id == sku_id).execute()


# -- reading -----------------------------------------------------------------------


def delivered_keys(order: Order, cipher, product: Product | None = None) -> list[str]:
    """The plaintext card keys of a delivered order, for its buyer's page."""
    if order.status != "delivered":
        return []
    product = product or Product.get_by_id(order.product_id)
    if product.loop_key:
        key = (CardKey.select().where((CardKey.sku == order.sku_id) & (CardKey.status != "void"))
               .order_by(CardKey.id).first())
        return [cipher.open(key.sealed, key.sku_id)] * order.quantity if key else []
    return [cipher.open(sealed, sku_id) for sealed, sku_id in SOLD_KEYS.all(order=order.id)]
