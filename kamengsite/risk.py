"""风控 · Risk control: per-site rules that refuse or hold orders, blacklists, and the review queue's actions.

What is checked, and where:

* **At checkout, before the order exists** (``screen``): the site's blacklists (an IP or an IP
  range in CIDR notation, a contact, an e-mail domain, a member). A blacklisted buyer is refused
  with one generic message that says nothing about why.
* **At checkout, inside the order's creating transaction** (the ``reserving`` callback of
  ``orders.create_order``, see ``reserving``): the velocity rules count the site's orders of the
  last ``window`` seconds — by buyer IP (default: more than 10 within 60 s), by contact, by
  member, by device (the ``ks_dev`` cookie) and small orders by IP (card testing, cheap top-ups)
  — and then the plugins' rules (the ``risk_rules(site)`` hook). A rule that says *hold* makes the
  order ``hold = "risk"``: it is created and paid normally but not delivered (its keys stay
  reserved) until an operator approves it in ``/admin/risk``; a rule that says *refuse* rolls the
  order back and the buyer gets the generic message.
* **At payment** (``payment_hold``, installed as ``orders.payment_hold_check`` and so run by every
  ``orders.mark_paid`` inside the payment's transaction, before delivery): the blacklists again,
  so a buyer blacklisted after ordering is held, not served.
* **At registration** (``signup_refusal``): more than ``signup_limit`` accounts from one IP within
  ``signup_window`` seconds are **refused** (not flagged: an account has nothing to review, and
  the owner can raise the limit), as are blacklisted IPs.

Why the count holds across processes: it is a count of committed ``shop_order`` rows, made in the
new order's own transaction, after its row was written, under a lock that buyers with the same
key share. SQLite's write transactions are IMMEDIATE (one writer at a time across processes), so
the count already sees every earlier order. PostgreSQL and MariaDB (both READ COMMITTED here)
let two transactions run at once, so each first locks a ``risk_gate`` row (``UPDATE … hits + 1``;
the row is one of ``GATE_SLOTS`` per site, picked by a hash of the IP / contact / member /
device), in slot order to rule out deadlocks: the second order from one IP waits there until the
first commits, and its count then includes it. The 11th order in a minute is therefore held
whichever process takes it; the gate is taken last in the transaction and only by buyers whose
keys hash alike, so unrelated buyers are not serialised.

The review queue (``risk_hold``, one row per held order): *approve* delivers
(``orders.deliver_held``) and *reject* refunds (``refunds.refund_order``, which gives the stock
back) or, for an order not paid yet, cancels it. Each decision is claimed first with a
conditional update of the row (``decision = ''``), so two clicks — or an approve and a reject at
once — have exactly one outcome.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import re
import secrets
import zlib
from dataclasses import asdict, dataclass, fields

import peewee

from . import orders
from .checkout import CheckoutRefused
from .db import is_sqlite
from .i18n import _, _l
from .models import utcnow
from .tenancy import TenantModel, acting_for, all_sites

log = logging.getLogger(__name__)

HOLD = "risk"  # the name held orders carry in ``shop_order.hold``
HOLD_ACTION, REFUSE_ACTION = "hold", "refuse"
GATE_SLOTS = 256
DEVICE_COOKIE = "ks_dev"
DEVICE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
DEVICE_MAX_AGE = 2 * 365 * 24 * 3600
BLOCK_KINDS = ("ip", "contact", "email_domain", "member")
BLOCK_VALUE_MAX = 120
DECISIONS = ("approved", "rejected")


class RiskError(ValueError):
    """Invalid settings or blacklist entry; the message is for the operator."""


# -- tables ------------------------------------------------------------------------------------


class RiskSetting(TenantModel):
    data = peewee.TextField(default="")
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "risk_setting"


class RiskBlock(TenantModel):
    kind = peewee.CharField(max_length=16)
    value = peewee.CharField(max_length=BLOCK_VALUE_MAX)
    note = peewee.CharField(max_length=200, default="")
    created_by = peewee.CharField(max_length=64, default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "risk_block"


class RiskHold(TenantModel):
    order = peewee.ForeignKeyField(orders.Order, on_delete="CASCADE", unique=True)
    rule = peewee.CharField(max_length=64)
    detail = peewee.TextField(default="")  # JSON: the figures the rule saw
    amount_fen = peewee.BigIntegerField(default=0)
    decision = peewee.CharField(max_length=16, default="")
    decided_by = peewee.CharField(max_length=64, default="")
    decided_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "risk_hold"

    @property
    def facts(self) -> dict:
        try:
            return json.loads(self.detail) if self.detail else {}
        except ValueError:
            return {}


class RiskDevice(TenantModel):
    order = peewee.ForeignKeyField(orders.Order, on_delete="CASCADE", unique=True)
    device = peewee.CharField(max_length=64)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "risk_device"


class RiskSignup(TenantModel):
    ip = peewee.CharField(max_length=45)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "risk_signup"


class RiskGate(TenantModel):
    slot = peewee.IntegerField()
    hits = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "risk_gate"


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskSettings:
    """A site's rules. A ``*_limit`` of 0 turns its rule off; windows are in seconds."""

    ip_limit: int = 10
    ip_window: int = 60
    contact_limit: int = 10
    contact_window: int = 60
    member_limit: int = 10
    member_window: int = 60
    device_limit: int = 10
    device_window: int = 60
    small_limit: int = 5
    small_window: int = 600
    small_under_fen: int = 100
    signup_limit: int = 10
    signup_window: int = 86400

    @classmethod
    def from_values(cls, values: dict) -> "RiskSettings":
        """Settings from a mapping (missing keys take the defaults); RiskError if a value is out of range."""
        known = {f.name for f in fields(cls)}
        checked = {}
        for name, value in values.items():
            if name not in known:
                continue
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value.strip())
            if not isinstance(value, int) or isinstance(value, bool):
                raise RiskError(_("%(name)s must be a whole number", name=name))
            low, high = _range_of(name)
            if not low <= value <= high:
                raise RiskError(_("%(name)s must be between %(low)s and %(high)s", name=name, low=low, high=high))
            checked[name] = value
        return cls(**checked)


def _range_of(name: str) -> tuple[int, int]:
    if name.endswith("_window"):
        return 1, 30 * 86400
    if name.endswith("_fen"):
        return 0, 10**9
    return 0, 100_000


def settings_for(site_id: int) -> RiskSettings:
    """The site's rules (the defaults until its owner saves some)."""
    with acting_for(site_id):
        row = RiskSetting.get_or_none()
    if row is None or not row.data:
        return RiskSettings()
    try:
        return RiskSettings.from_values(json.loads(row.data))
    except (ValueError, RiskError):  # a hand-edited row: the defaults are the safe reading
        log.warning("risk settings of site %s are unreadable; using the defaults", site_id)
        return RiskSettings()


def save_settings(site_id: int, values: dict) -> RiskSettings:
    settings = RiskSettings.from_values(values)
    data = json.dumps(asdict(settings))
    with acting_for(site_id):
        row = RiskSetting.get_or_none()
        if row is None:
            try:
                RiskSetting.create(site=site_id, data=data)
                return settings
            except peewee.IntegrityError:  # saved twice at once: the later save wins below
                row = RiskSetting.get()
        RiskSetting.update(data=data, updated_at=utcnow()).where(RiskSetting.id == row.id).execute()
    return settings


# -- blacklists --------------------------------------------------------------------------------


def normalize_block(kind: str, value: str, site_id: int | None = None) -> str:
    """The stored form of a blacklist entry, or RiskError (an IP range is kept in CIDR form)."""
    value = (value or "").strip()
    if kind not in BLOCK_KINDS:
        raise RiskError(_("Unknown kind of entry"))
    if not value or len(value) > BLOCK_VALUE_MAX:
        raise RiskError(_("Enter a value of at most %(n)s characters", n=BLOCK_VALUE_MAX))
    if kind == "ip":
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise RiskError(_("Not an IP address or range (e.g. 203.0.113.7 or 203.0.113.0/24)")) from None
        return str(network.network_address) if network.num_addresses == 1 else str(network)
    if kind == "email_domain":
        domain = value.lower().lstrip("@").rstrip(".")
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
            raise RiskError(_("Not an e-mail domain (e.g. example.com)"))
        return domain
    if kind == "member":
        return _member_id_of(value, site_id)
    return value.lower()


def _member_id_of(value: str, site_id: int | None) -> str:
    """A member given by id or by e-mail, as the id (text)."""
    if value.isdigit():
        return str(int(value))
    from .members import Member, normalize_email

    if site_id is not None:
        with acting_for(site_id):
            member = Member.get_or_none(Member.email == normalize_email(value))
        if member is not None:
            return str(member.id)
    raise RiskError(_("No member with this id or e-mail"))


def add_block(site_id: int, kind: str, value: str, *, note: str = "", by: str = "") -> RiskBlock:
    value = normalize_block(kind, value, site_id)
    with acting_for(site_id):
        existing = RiskBlock.get_or_none((RiskBlock.kind == kind) & (RiskBlock.value == value))
        if existing is not None:
            return existing
        try:
            return RiskBlock.create(site=site_id, kind=kind, value=value, note=(note or "").strip()[:200],
                                    created_by=(by or "")[:64])
        except peewee.IntegrityError:  # added twice at once
            return RiskBlock.get((RiskBlock.kind == kind) & (RiskBlock.value == value))


def remove_block(site_id: int, block_id: int) -> bool:
    with acting_for(site_id):
        return RiskBlock.delete().where(RiskBlock.id == block_id).execute() == 1


def blocks(site_id: int) -> list[RiskBlock]:
    with acting_for(site_id):
        return list(RiskBlock.select().order_by(RiskBlock.kind, RiskBlock.value))


def _email_domains(contact: str) -> list[str]:
    """``a@mail.example.com`` → ["mail.example.com", "example.com"]: a domain's entry covers its subdomains."""
    _name, at, domain = (contact or "").strip().lower().rpartition("@")
    if not at or not domain:
        return []
    parts = domain.split(".")
    return [".".join(parts[i:]) for i in range(len(parts) - 1)]


def blocked(site_id: int, *, buyer_ip: str = "", contact: str = "", member_id: int | None = None) -> RiskBlock | None:
    """The blacklist entry this buyer matches, or None."""
    contact = (contact or "").strip().lower()
    matches = RiskBlock.kind == "ip"
    if contact:
        matches |= (RiskBlock.kind == "contact") & (RiskBlock.value == contact)
    domains = _email_domains(contact)
    if domains:
        matches |= (RiskBlock.kind == "email_domain") & RiskBlock.value.in_(domains)
    if member_id is not None:
        matches |= (RiskBlock.kind == "member") & (RiskBlock.value == str(member_id))
    with acting_for(site_id):
        found = list(RiskBlock.select().where(matches))
    address = _address(buyer_ip)
    for entry in found:
        if entry.kind != "ip":
            return entry
        if address is not None and _in_network(address, entry.value):
            return entry
    return None


def _address(text: str):
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def _in_network(address, network: str) -> bool:
    try:
        return address in ipaddress.ip_network(network, strict=False)
    except (ValueError, TypeError):
        return False


def refusal_message() -> str:
    """What a refused buyer reads: nothing about which rule or list."""
    return _("this order cannot be accepted. If you think this is a mistake, please contact the shop")


def screen(site_id: int, *, buyer_ip: str = "", contact: str = "", member_id: int | None = None):
    """Before an order is created: raise ``CheckoutRefused`` (generic) for a blacklisted buyer."""
    entry = blocked(site_id, buyer_ip=buyer_ip, contact=contact, member_id=member_id)
    if entry is not None:
        log.warning("checkout on site %s refused: blacklisted %s %s", site_id, entry.kind, entry.value)
        raise CheckoutRefused(refusal_message())


# -- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A rule's answer: hold the order for review, or refuse it."""

    action: str  # HOLD_ACTION | REFUSE_ACTION
    rule: str  # "ip", "contact", "member", "device", "small", "blacklist", "plugin:<name>"…
    facts: dict | None = None  # the figures shown to the reviewer (JSON-able)


@dataclass(frozen=True)
class OrderFacts:
    """What a rule sees about a new order (inside its creating transaction: the order is counted)."""

    site_id: int
    order_id: int
    order_no: str
    buyer_ip: str
    contact: str
    member_id: int | None
    device: str
    amount_fen: int
    created_at: datetime.datetime
    checkout: object = None  # the kamengsite.checkout.Checkout, when there is one

    def count_orders(self, seconds: int, **match) -> int:
        """This site's orders of the last ``seconds`` whose columns equal ``match`` (e.g. ``buyer_ip=…``)."""
        return count_recent(self.site_id, self.created_at, seconds, **match)


def count_recent(site_id: int, now: datetime.datetime, seconds: int, **match) -> int:
    since = now - datetime.timedelta(seconds=seconds)
    where = (orders.Order.site == site_id) & (orders.Order.created_at >= since)
    for column, value in match.items():
        if column == "amount_below":
            where &= orders.Order.amount_fen < value
        else:
            where &= getattr(orders.Order, column) == value
    with acting_for(site_id):
        return orders.Order.select(peewee.fn.COUNT(orders.Order.id)).where(where).scalar() or 0


def _count_devices(facts: OrderFacts, seconds: int) -> int:
    since = facts.created_at - datetime.timedelta(seconds=seconds)
    with acting_for(facts.site_id):
        return RiskDevice.select(peewee.fn.COUNT(RiskDevice.id)).where(
            (RiskDevice.device == facts.device) & (RiskDevice.created_at >= since)).scalar() or 0


def velocity_verdict(settings: RiskSettings, facts: OrderFacts) -> Verdict | None:
    """The first velocity rule this order exceeds (it is counted itself), or None."""
    checks = []
    if facts.buyer_ip:
        checks.append(("ip", settings.ip_limit, settings.ip_window, facts.buyer_ip,
                       lambda w: facts.count_orders(w, buyer_ip=facts.buyer_ip)))
    if facts.contact:
        checks.append(("contact", settings.contact_limit, settings.contact_window, facts.contact,
                       lambda w: facts.count_orders(w, contact=facts.contact)))
    if facts.member_id is not None:
        checks.append(("member", settings.member_limit, settings.member_window, str(facts.member_id),
                       lambda w: facts.count_orders(w, member_id=facts.member_id)))
    if facts.device:
        checks.append(("device", settings.device_limit, settings.device_window, facts.device[:8] + "…",
                       lambda w: _count_devices(facts, w)))
    if facts.buyer_ip and facts.amount_fen < settings.small_under_fen:
        checks.append(("small", settings.small_limit, settings.small_window, facts.buyer_ip,
                       lambda w: facts.count_orders(w, buyer_ip=facts.buyer_ip,
                                                    amount_below=settings.small_under_fen)))
    for rule, limit, window, value, count in checks:
        if limit <= 0:
            continue
        seen = count(window)
        if seen > limit:
            return Verdict(HOLD_ACTION, rule, {"count": seen, "limit": limit, "window": window, "value": value,
                                               "under_fen": settings.small_under_fen if rule == "small" else None})
    return None


def plugin_rules(relay, site_config, site_id: int) -> list:
    """The rule objects the site's plugins add (``risk_rules(site)``), flattened."""
    if relay is None or not relay.risk_rules.get_hookimpls():
        return []
    from .hooks import call_isolated

    found = []
    for answer in call_isolated(relay.risk_rules, "risk_rules", site_id=site_id, site=site_config):
        found.extend(answer if isinstance(answer, (list, tuple)) else [answer])
    return found


def plugin_verdict(rules, facts: OrderFacts) -> Verdict | None:
    """A plugin rule's answer: ``rule.evaluate(facts)`` → Verdict, "hold", "refuse" or None.

    A rule that raises holds the order (a broken check must not let an order through unseen).
    """
    for rule in rules:
        name = f"plugin:{getattr(rule, 'name', type(rule).__name__)}"[:64]
        try:
            answer = rule.evaluate(facts)
        except CheckoutRefused:
            raise
        except Exception:  # noqa: BLE001 - a plugin's bug: held for a human, logged
            log.exception("risk rule %s failed; holding order %s", name, facts.order_no)
            return Verdict(HOLD_ACTION, name, {"error": True})
        if isinstance(answer, Verdict):
            return answer
        if answer in (HOLD_ACTION, REFUSE_ACTION):
            return Verdict(answer, name, {})
    return None


# -- at checkout -------------------------------------------------------------------------------


def device_of(request) -> str:
    """The buyer's ``ks_dev`` cookie if it is one we could have set, else ""."""
    value = request.cookies.get(DEVICE_COOKIE, "")
    return value if DEVICE_RE.match(value) else ""


def remember_device(response):
    """``after_request``: give a product page's visitor a random device id (httponly) if they have none."""
    from flask import request

    if request.endpoint == "storefront.product" and not device_of(request) and response.status_code < 400:
        response.set_cookie(DEVICE_COOKIE, secrets.token_urlsafe(24), max_age=DEVICE_MAX_AGE, httponly=True,
                            samesite="Lax", secure=request.is_secure)
    return response


def reserving(checkout, chained=None, *, relay=None, device: str = ""):
    """The ``reserving`` callback for ``orders.create_order``: ``chained`` (the plugins'), then the rules.

    The settings and plugin rules are read here, before the order's transaction begins.
    """
    settings = settings_for(checkout.site_id)
    rules = plugin_rules(relay, checkout.site, checkout.site_id)

    def reserve(order):
        if chained is not None:
            chained(order)
        facts = OrderFacts(site_id=order.site_id, order_id=order.id, order_no=order.order_no,
                           buyer_ip=order.buyer_ip or "", contact=(order.contact or "").strip(),
                           member_id=order.member_id, device=device, amount_fen=order.amount_fen,
                           created_at=order.created_at, checkout=checkout)
        verdict = assess_new_order(settings, rules, facts)
        if verdict is not None:
            _apply_verdict(order, verdict)

    return reserve


def assess_new_order(settings: RiskSettings, rules, facts: OrderFacts) -> Verdict | None:
    """Inside the creating transaction: lock the buyer's gates, then run the velocity and plugin rules."""
    if facts.device:
        with acting_for(facts.site_id):
            RiskDevice.insert(site=facts.site_id, order=facts.order_id, device=facts.device,
                              created_at=facts.created_at).execute()
    _lock_gates(facts)
    return velocity_verdict(settings, facts) or plugin_verdict(rules, facts)


def _lock_gates(facts: OrderFacts):
    """Queue the transactions of buyers who share a key (see the module docstring); SQLite needs none."""
    if is_sqlite():
        return
    keys = [f"ip:{facts.buyer_ip}", f"contact:{facts.contact}", f"member:{facts.member_id}", f"device:{facts.device}"]
    slots = sorted({zlib.crc32(key.encode("utf-8")) % GATE_SLOTS for key in keys})
    with acting_for(facts.site_id):
        for slot in slots:
            gate = (RiskGate.site == facts.site_id) & (RiskGate.slot == slot)
            if RiskGate.update(hits=RiskGate.hits + 1).where(gate).execute() == 0:
                RiskGate.insert(site=facts.site_id, slot=slot, hits=0).on_conflict_ignore().execute()
                RiskGate.update(hits=RiskGate.hits + 1).where(gate).execute()


def _apply_verdict(order, verdict: Verdict):
    if verdict.action == REFUSE_ACTION:
        log.warning("order %s refused by risk rule %s", order.order_no, verdict.rule)
        raise CheckoutRefused(refusal_message())
    if order.hold and order.hold != HOLD:
        # Held by a plugin already (a group-buy): one order carries one hold, so it is refused instead.
        log.warning("order %s (held by %s) refused by risk rule %s", order.order_no, order.hold, verdict.rule)
        raise CheckoutRefused(refusal_message())
    with acting_for(order.site_id):
        orders.Order.update(hold=HOLD).where((orders.Order.id == order.id) & (orders.Order.hold == "")).execute()
    order.hold = HOLD
    _record_hold(order, verdict)
    log.info("order %s held for review by risk rule %s", order.order_no, verdict.rule)


def _record_hold(order, verdict: Verdict):
    with acting_for(order.site_id):
        RiskHold.insert(site=order.site_id, order=order.id, rule=verdict.rule[:64],
                        detail=json.dumps(verdict.facts or {}, ensure_ascii=False),
                        amount_fen=order.amount_fen, created_at=utcnow()).on_conflict_ignore().execute()


# -- at payment --------------------------------------------------------------------------------


def payment_hold(order) -> str:
    """``orders.payment_hold_check``: inside the payment's transaction, HOLD for a blacklisted buyer, else "".

    A check that fails holds the order (it is reviewed, not lost).
    """
    if order.hold:
        return ""  # held already (by us at checkout, or by a plugin that delivers it)
    try:
        with all_sites():
            buyer_ip = orders.Order.select(orders.Order.buyer_ip).where(orders.Order.id == order.id).scalar() or ""
        entry = blocked(order.site_id, buyer_ip=buyer_ip, contact=order.contact, member_id=order.member_id)
        if entry is None:
            return ""
        verdict = Verdict(HOLD_ACTION, "blacklist", {"kind": entry.kind, "value": entry.value, "at": "payment"})
    except Exception:  # noqa: BLE001 - fail towards review, never towards delivery
        log.exception("risk check of order %s at payment failed; holding it", order.order_no)
        verdict = Verdict(HOLD_ACTION, "check_failed", {"at": "payment"})
    _record_hold(order, verdict)
    return HOLD


orders.payment_hold_check = payment_hold


# -- at registration ---------------------------------------------------------------------------


def signup_refusal(site_id: int, ip: str) -> str | None:
    """Why a new member account from ``ip`` is refused (generic), or None."""
    if blocked(site_id, buyer_ip=ip) is not None:
        return _("Registration is not possible right now. Please contact the shop")
    settings = settings_for(site_id)
    if ip and settings.signup_limit > 0:
        since = utcnow() - datetime.timedelta(seconds=settings.signup_window)
        with acting_for(site_id):
            count = RiskSignup.select().where((RiskSignup.ip == ip) & (RiskSignup.created_at >= since)).count()
        if count >= settings.signup_limit:
            log.warning("registration on site %s refused: %s accounts from %s", site_id, count, ip)
            return _("Registration is not possible right now. Please contact the shop")
    return None


def record_signup(site_id: int, ip: str):
    if ip:
        with acting_for(site_id):
            RiskSignup.create(site=site_id, ip=ip[:45])


# -- the review queue --------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One row of the review queue."""

    hold: RiskHold
    order_no: str
    status: str
    order_hold: str
    buyer_ip: str
    contact: str
    member_id: int | None
    amount_fen: int
    created_at: datetime.datetime


def queue(site_id: int, *, decided: bool = False, limit: int = 200) -> list[Held]:
    """Held orders waiting for a decision (or, ``decided``, the latest decisions), oldest waiting first."""
    Order = orders.Order
    with acting_for(site_id):
        query = (RiskHold.select(RiskHold, Order.order_no, Order.status, Order.hold, Order.buyer_ip, Order.contact,
                                 Order.member_id, Order.amount_fen.alias("order_amount"),
                                 Order.created_at.alias("ordered_at"))
                 .join(Order, on=(RiskHold.order == Order.id)).where(Order.site == site_id))
        if decided:
            query = query.where(RiskHold.decision != "").order_by(RiskHold.decided_at.desc())
        else:
            query = query.where(RiskHold.decision == "").order_by(RiskHold.created_at)
        rows = []
        for row in query.limit(limit).objects():
            rows.append(Held(row, row.order_no, row.status, row.hold, row.buyer_ip, row.contact, row.member_id,
                             row.order_amount, row.ordered_at))
        return rows


def waiting_count(site_id: int) -> int:
    with acting_for(site_id):
        return RiskHold.select().where(RiskHold.decision == "").count()


def hold_of(site_id: int, order_no: str) -> RiskHold | None:
    """The hold of this site's order ``order_no`` (None for another site's order)."""
    order = orders.find_order(order_no, site_id=site_id)
    if order is None:
        return None
    with acting_for(site_id):
        return RiskHold.get_or_none(RiskHold.order == order.id)


def _claim(hold: RiskHold, decision: str, by: str) -> bool:
    with acting_for(hold.site_id):
        return RiskHold.update(decision=decision, decided_by=(by or "")[:64], decided_at=utcnow()).where(
            (RiskHold.id == hold.id) & (RiskHold.decision == "")).execute() == 1


def _unclaim(hold: RiskHold, decision: str):
    with acting_for(hold.site_id):
        RiskHold.update(decision="", decided_by="", decided_at=None).where(
            (RiskHold.id == hold.id) & (RiskHold.decision == decision)).execute()


#: What ``approve`` / ``reject`` answer.
DONE, DECIDED, NOT_PAID, FAILED = "done", "decided", "not_paid", "failed"


def approve(site_id: int, order_no: str, *, by: str = "") -> str:
    """Deliver a held, paid order (once): DONE, DECIDED (someone decided first), NOT_PAID or FAILED."""
    hold = hold_of(site_id, order_no)
    if hold is None or hold.decision:
        return DECIDED
    order = orders.find_order(order_no, site_id=site_id)
    if order.status != "paid" or order.hold != HOLD:
        return NOT_PAID
    if not _claim(hold, "approved", by):
        return DECIDED
    try:
        result = orders.deliver_held(order_no, HOLD)
    except Exception:
        _unclaim(hold, "approved")
        raise
    if result is None:  # refunded or delivered another way meanwhile
        _unclaim(hold, "approved")
        return FAILED
    _after_delivery(order_no, result)
    return DONE


def _after_delivery(order_no: str, result):
    """What a payment would have triggered on delivery: ``order_delivered`` (mail, API callback) or the supplier."""
    from . import hooks

    with all_sites():
        order = orders.find_order(order_no)
    order.status = result.status
    try:
        if result.status == "delivered":
            hooks.notify("order_delivered", order)
        elif order.product.supplier:
            hooks.supply(order)
    except Exception:  # noqa: BLE001 - the goods are on the order page whatever a plugin does
        log.exception("after approving order %s", order_no)


def reject(site_id: int, order_no: str, *, by: str = "", registry=None) -> str:
    """Refund a held, paid order (or cancel an unpaid one), once: DONE, DECIDED or FAILED."""
    from . import hooks, refunds

    hold = hold_of(site_id, order_no)
    if hold is None or hold.decision:
        return DECIDED
    order = orders.find_order(order_no, site_id=site_id)
    if not _claim(hold, "rejected", by):
        return DECIDED
    try:
        if order.status == "created":
            done = orders.cancel_unpaid(order_no, expiring=hooks.expiring_callback())
        elif order.status == "paid":
            refund = refunds.refund_order(order_no, to="auto", reason="risk review", registry=registry)
            done = refund.status in ("done", "pending")
        else:  # expired, cancelled or refunded meanwhile: nothing left to undo
            done = True
    except Exception:
        _unclaim(hold, "rejected")
        raise
    if not done:
        _unclaim(hold, "rejected")
        return FAILED
    return DONE


# -- how a hold reads in the console -----------------------------------------------------------

RULE_LABELS = {
    "ip": _l("Orders from one IP"),
    "contact": _l("Orders with one contact"),
    "member": _l("Orders by one member"),
    "device": _l("Orders from one device"),
    "small": _l("Burst of small orders"),
    "blacklist": _l("Blacklisted"),
    "check_failed": _l("The risk check failed"),
}


def rule_label(rule: str) -> str:
    if rule.startswith("plugin:"):
        return _("Plugin rule %(name)s", name=rule.partition(":")[2])
    return str(RULE_LABELS.get(rule, rule))


def describe(hold: RiskHold) -> str:
    """The figures behind a hold, for the reviewer."""
    facts = hold.facts
    if "count" in facts:
        return _("%(count)s orders within %(window)s s (limit %(limit)s): %(value)s", count=facts.get("count"),
                 window=facts.get("window"), limit=facts.get("limit"), value=facts.get("value", ""))
    if "kind" in facts:
        return _("%(kind)s %(value)s is on the blacklist", kind=facts.get("kind"), value=facts.get("value", ""))
    return ""
