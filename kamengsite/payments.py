"""Payment channels: what channel plugins return, the per-instance credential profiles, and the
verify-then-apply path every gateway notification takes.

A channel plugin implements one hook, ``payment_channels(instance)`` (see ``hookspecs.py``),
returning ``Channel`` objects. The instance's ``payments`` setting holds credential
*profiles* per channel::

    [payments.epay.main]               # channel "epay", profile "main"
    api = "https://pay.example.com/"
    pid = "1000"
    key = "env:EPAY_MAIN_KEY"          # secrets may name an environment variable

Each profile is validated against its channel's ``settings_schema``; errors name the key
(``payments.epay.main.pid``) and never echo a secret. A notification is verified by its
channel *before* anything is written, then handed to ``orders.mark_paid`` — the one
entry point that checks amount, channel and profile and is idempotent.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import jsonschema

from .errors import ConfigError, KamengsiteError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ENV_PREFIX = "env:"
MASK = "******"
AMOUNT_RE = re.compile(r"^[0-9]{1,13}(?:\.[0-9]{1,8})?$")  # ASCII digits only (\d takes "１５"): no sign, exponent, NaN


class PaymentError(KamengsiteError):
    """A payment could not be started; the message is shown to the buyer."""


# -- what channels declare and return ------------------------------------------------


@dataclass(frozen=True)
class PayType:
    """A way to pay a channel offers, e.g. ``PayType("alipay", "支付宝")``."""

    id: str
    name: str


@dataclass(frozen=True, repr=False)
class Profile:
    """One configured credential set of a channel; ``settings`` has ``env:`` references resolved."""

    channel: str
    name: str
    settings: dict
    secret_keys: frozenset = frozenset()
    fee_bp: int = 0  # the gateway's percentage, in basis points (60 = 0.6 %)
    fee_fixed_fen: int = 0
    fee_bearer: str = "seller"  # seller: out of the margin; buyer: added to what the buyer pays
    sites: tuple = ()  # site names it is offered on; empty: every site that settles through the platform
    owner_site: str = ""  # a direct-settlement site's own merchant account: offered on that site only

    def offered_on(self, site_slug: str, settlement: str = "platform") -> bool:
        """Whether buyers of ``site_slug`` may pay with this profile."""
        if settlement == "direct":
            return self.owner_site == site_slug
        return not self.owner_site and (not self.sites or site_slug in self.sites)

    def fee_for(self, goods_fen: int) -> tuple[int, str]:
        """(fee in fen, who bears it) for an order of ``goods_fen``."""
        from .settlement import channel_fee

        return channel_fee(goods_fen, fee_bp=self.fee_bp, fee_fixed_fen=self.fee_fixed_fen), self.fee_bearer

    def get(self, key, default=None):
        return self.settings.get(key, default)

    @property
    def label(self) -> str:
        return str(self.settings.get("label") or "")

    def public_settings(self) -> dict:
        """The settings with every secret masked: what may be shown or logged."""
        return {k: (MASK if k in self.secret_keys else v) for k, v in self.settings.items()}

    def __repr__(self):  # never print a secret
        return f"Profile({self.channel}/{self.name}, {self.public_settings()!r})"


@dataclass(frozen=True)
class PayRequest:
    """What a channel needs to start paying one order."""

    order_no: str
    amount_fen: int
    subject: str
    notify_url: str
    return_url: str
    client_ip: str = ""
    pay_type: str = ""
    device: str = "pc"
    member_id: int | None = None  # the signed-in member on the selling site, if any (the balance channel needs one)
    site_id: int | None = None  # the selling site


@dataclass(frozen=True)
class PaymentAction:
    """What the buyer's browser does next: follow a URL, scan a QR payload, or submit a form."""

    kind: str  # "redirect" | "qrcode" | "form"
    url: str = ""
    qr: str = ""
    fields: dict = field(default_factory=dict)
    method: str = "POST"

    @classmethod
    def redirect(cls, url: str) -> "PaymentAction":
        return cls("redirect", url=url)

    @classmethod
    def qrcode(cls, payload: str) -> "PaymentAction":
        return cls("qrcode", qr=payload)

    @classmethod
    def form(cls, url: str, fields: dict, method: str = "POST") -> "PaymentAction":
        return cls("form", url=url, fields=dict(fields), method=method.upper())


@dataclass(frozen=True)
class NotifyRequest:
    """A gateway notification as received: query and form fields merged, headers, raw body."""

    method: str
    fields: dict
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    duplicate_fields: tuple = ()  # names sent more than once with different values

    @classmethod
    def from_flask(cls, request) -> "NotifyRequest":
        # The raw body first: reading request.form first would consume it for a body that is JSON
        # sent with a form content type (some gateways do), leaving nothing to verify.
        body = request.get_data(cache=True)
        merged, dupes = {}, []
        for source in (request.args, request.form):
            for key, values in source.lists():
                for value in values:
                    if key in merged and merged[key] != value:
                        dupes.append(key)
                    merged.setdefault(key, value)
        return cls(method=request.method, fields=merged, headers=dict(request.headers),
                   body=body, duplicate_fields=tuple(sorted(set(dupes))))


@dataclass(frozen=True)
class Notification:
    """A verified notification: ``status`` is ``"paid"`` when the gateway says the money arrived."""

    order_no: str
    amount_fen: int
    trade_no: str
    status: str
    raw_status: str = ""


@dataclass(frozen=True)
class Rejection:
    """A notification that failed verification; ``reason`` goes to the log, never to the gateway."""

    reason: str


@dataclass(frozen=True)
class RefundRequest:
    """Give (part of) a paid order's money back through the gateway that took it."""

    order_no: str
    trade_no: str  # the gateway's trade number recorded at payment
    refund_no: str  # ours, unique per refund: gateways use it to make the call idempotent
    amount_fen: int  # what to give back now
    total_fen: int  # what the order paid in all
    reason: str = ""


@dataclass(frozen=True)
class RefundResult:
    """``ok``: the gateway accepted the refund; ``pending``: it will confirm later (treated as accepted)."""

    ok: bool
    gateway_refund_no: str = ""
    pending: bool = False
    message: str = ""  # the gateway's words on failure, for the operator


@dataclass(frozen=True)
class Reply:
    """The exact HTTP answer a gateway expects."""

    body: str
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"


class Channel:
    """Base class of payment channels; subclasses set the descriptor and implement the methods."""

    id: str = ""
    name: str = ""
    pay_types: tuple = ()
    settings_schema: dict = {"type": "object"}
    devices: tuple = ("pc", "mobile")
    success_body: str = "success"
    failure_body: str = "fail"
    failure_status: int = 400

    def create_payment(self, profile: Profile, request: PayRequest) -> PaymentAction:
        raise NotImplementedError

    def verify_notification(self, profile: Profile, notice: NotifyRequest, now: float) -> Notification | Rejection:
        raise NotImplementedError

    def reply(self, ok: bool) -> Reply:
        return Reply(self.success_body) if ok else Reply(self.failure_body, self.failure_status)

    #: True for channels only a signed-in member can use (the balance channel): hidden from guests.
    needs_member: bool = False
    #: True when ``refund`` gives money back through the gateway; otherwise refunds go to the buyer's balance.
    supports_refund: bool = False

    def refund(self, profile: Profile, request: RefundRequest) -> RefundResult:
        """Ask the gateway to give money back; only called when ``supports_refund``. Never raises for a
        gateway's "no": return ``RefundResult(False, message=...)``."""
        raise NotImplementedError

    def register_routes(self, app, instance):
        """Optional: add routes to every site app (e.g. a sandbox's gateway page)."""

    def offered_types(self, profile: Profile) -> tuple:
        """The pay types this profile offers buyers (default: all of ``pay_types``)."""
        return tuple(self.pay_types)

    def pay_type_name(self, pay_type: str) -> str:
        return next((t.name for t in self.pay_types if t.id == pay_type), pay_type)

    def __repr__(self):
        return f"<Channel {self.id}>"


# -- money and signing helpers shared by channels ---------------------------------------


def yuan_to_fen(text) -> int:
    """``"1"``, ``"1.00"``, ``"10.5"`` → fen as int; ValueError for anything else (never float)."""
    if not isinstance(text, str) or not AMOUNT_RE.match(text.strip()):
        raise ValueError(f"amount {text!r} is not a plain decimal number")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"amount {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"amount {text!r} is not a positive number")
    fen = value * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"amount {text!r} has more than 2 decimals")
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    """1234 → ``"12.34"``."""
    return f"{fen // 100}.{fen % 100:02d}"


def sign_content(fields: dict, drop=("sign", "sign_type")) -> str:
    """The epay-family content string: drop ``drop`` and empty values, sort keys bytewise, join ``k=v`` by ``&``."""
    kept = {k: v for k, v in fields.items()
            if k not in drop and isinstance(v, str) and v.strip()}
    return "&".join(f"{k}={kept[k]}" for k in sorted(kept, key=lambda k: k.encode()))


# -- profiles: the instance's ``payments`` setting ------------------------------------


def _secret_keys(schema: dict) -> frozenset:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return frozenset(k for k, v in props.items() if isinstance(v, dict) and v.get("writeOnly"))


#: Settings every profile may carry, whatever its channel: read by the host, not the channel.
COMMON_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "fee_bp": {"type": "integer", "minimum": 0, "maximum": 10000},
        "fee_fixed_fen": {"type": "integer", "minimum": 0, "maximum": 100000},
        "fee_bearer": {"enum": ["seller", "buyer"]},
        "sites": {"type": "array", "items": {"type": "string", "maxLength": 32}, "uniqueItems": True},
        "owner_site": {"type": "string", "maxLength": 32},
    },
}
_common_validator = jsonschema.Draft202012Validator(COMMON_SCHEMA)


def _common_settings(raw: dict, where, key: str) -> dict:
    common = {k: raw[k] for k in COMMON_SCHEMA["properties"] if k in raw}
    for error in _common_validator.iter_errors(common):
        path = ".".join(str(p) for p in error.absolute_path)
        raise ConfigError(where, f"{key}.{path}", error.message)
    if "sites" in common:
        common["sites"] = tuple(common["sites"])
    return common


def load_profile(channel: Channel, name: str, raw, where, environ=None) -> Profile:
    """Resolve ``env:`` references and validate one profile; ConfigError names the key, never a secret."""
    environ = os.environ if environ is None else environ
    key = f"payments.{channel.id}.{name}"
    if not NAME_RE.match(name):
        raise ConfigError(where, key, "profile names are 1-32 of a-z, 0-9, '_' and '-'")
    if not isinstance(raw, dict):
        raise ConfigError(where, key, "must be a table of settings")
    common = _common_settings(raw, where, key)
    raw = {k: v for k, v in raw.items() if k not in COMMON_SCHEMA["properties"]}
    settings = {}
    for k, v in raw.items():
        if isinstance(v, str) and v.startswith(ENV_PREFIX):
            var = v[len(ENV_PREFIX):]
            if not var or var not in environ:
                raise ConfigError(where, f"{key}.{k}", f"environment variable {var!r} is not set")
            v = environ[var]
        settings[k] = v
    secrets_ = _secret_keys(channel.settings_schema)
    errors = sorted(jsonschema.Draft202012Validator(channel.settings_schema).iter_errors(settings),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        error = errors[0]
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path = missing or path
            reason = "is required"
        elif error.validator == "additionalProperties":
            extra = sorted(set(settings) - set(channel.settings_schema.get("properties", {})))
            path = extra[0] if extra else path
            reason = "unknown setting"
        elif path.split(".")[0] in secrets_:
            reason = f"invalid value ({error.validator})"  # never echo a secret
        else:
            reason = error.message
        raise ConfigError(where, f"{key}.{path}" if path else key, reason)
    return Profile(channel=channel.id, name=name, settings=settings, secret_keys=secrets_, **common)


def check_payments_config(payments: dict, channels: dict, where="config.toml", environ=None) -> dict:
    """Every profile of ``payments`` as ``{(channel, profile): Profile}``; the first error raises ConfigError."""
    profiles = {}
    if not isinstance(payments, dict):
        raise ConfigError(where, "payments", "must be a table")
    for channel_id, named in payments.items():
        channel = channels.get(channel_id)
        if channel is None:
            known = ", ".join(sorted(channels)) or "none installed"
            raise ConfigError(where, f"payments.{channel_id}", f"unknown payment channel (known: {known})")
        if not isinstance(named, dict) or not named:
            raise ConfigError(where, f"payments.{channel_id}", "must be a table of profiles, e.g. [payments.epay.main]")
        for name, raw in named.items():
            profiles[(channel_id, name)] = load_profile(channel, name, raw, where, environ)
    return profiles


class PaymentRegistry:
    """The channels installed (from the hook) and the profiles configured on this instance."""

    def __init__(self, channels: list, payments: dict, where="config.toml", environ=None):
        self.channels: dict[str, Channel] = {}
        for channel in channels:
            if not isinstance(channel, Channel) or not NAME_RE.match(channel.id or ""):
                log.error("payment channel %r ignored: not a Channel with a valid id", channel)
                continue
            if channel.id in self.channels:
                log.error("payment channel %r declared twice; the first one is kept", channel.id)
                continue
            self.channels[channel.id] = channel
        self.profiles: dict[tuple[str, str], Profile] = {}
        self.errors: dict[str, str] = {}
        for channel_id, named in (payments or {}).items():
            for name, raw in (named.items() if isinstance(named, dict) else [("", None)]):
                try:
                    self.profiles.update(check_payments_config({channel_id: {name: raw}}, self.channels, where, environ))
                except ConfigError as exc:  # a bad profile is left out; the others keep working
                    self.errors[f"payments.{channel_id}.{name}"] = str(exc)
                    log.error("payment profile left out: %s", exc)

    @classmethod
    def from_hook(cls, hook, instance) -> "PaymentRegistry":
        channels = [c for found in hook.payment_channels(instance=instance) for c in (found or [])]
        return cls(channels, getattr(instance, "payments", {}) or {}, where=instance.path / "config.toml")

    def find(self, channel_id: str, profile_name: str) -> tuple[Channel, Profile] | None:
        profile = self.profiles.get((channel_id, profile_name))
        if profile is None:
            return None
        return self.channels[channel_id], profile

    def options(self, site_slug: str | None = None, settlement: str = "platform") -> list[tuple[Channel, Profile]]:
        """What a buyer (of ``site_slug``, if given) may choose from, in configuration order."""
        return [(self.channels[c], p) for (c, _), p in self.profiles.items()
                if site_slug is None or p.offered_on(site_slug, settlement)]


# -- notifications: verify, then apply -------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str = ""
    result: object = None  # orders.PaymentResult when ok
    notification: Notification | None = None
    order: object = None  # the orders.Order it paid, with its product, when ok
    acknowledged: bool = False  # genuine, but no payment (e.g. TRADE_CLOSED): answer success, write nothing


def verify_and_apply(channel: Channel, profile: Profile, notice: NotifyRequest, now: float | None = None) -> Outcome:
    """Verify a notification with its channel, then record it through ``orders.mark_paid``.

    Nothing is written unless the signature, merchant, status, order, channel, profile
    and amount all check out. Replays of a recorded trade succeed again (idempotent).
    """
    from . import orders
    from .settlement import SettlementError
    from .tenancy import all_sites

    now = time.time() if now is None else now
    if notice.duplicate_fields:
        return Outcome(False, f"fields sent twice with different values: {', '.join(notice.duplicate_fields)}")
    try:
        parsed = channel.verify_notification(profile, notice, now)
    except Exception as exc:  # a channel bug must not turn into a payment
        log.exception("payment channel %s failed to verify a notification", channel.id)
        return Outcome(False, f"verification error: {type(exc).__name__}")
    if isinstance(parsed, Rejection):
        return Outcome(False, parsed.reason)
    if not isinstance(parsed, Notification):
        return Outcome(False, "channel returned no verdict")
    if parsed.status != "paid":
        # Verified but not a payment: acknowledged so the gateway stops resending it; nothing is written.
        return Outcome(False, f"trade status {parsed.raw_status or parsed.status!r} is not a payment",
                       notification=parsed, acknowledged=True)
    with all_sites():
        order = orders.find_order(parsed.order_no)
    if order is None:
        return Outcome(False, f"unknown order {parsed.order_no!r}", notification=parsed)
    # Stricter than mark_paid: an order made without a channel is never paid by a notification.
    if order.channel != channel.id or order.channel_profile != profile.name:
        return Outcome(False, f"order {order.order_no} was created for {order.channel or '-'}/"
                              f"{order.channel_profile or '-'}, not {channel.id}/{profile.name}", notification=parsed)
    try:
        result = orders.mark_paid(parsed.order_no, channel=channel.id, trade_no=parsed.trade_no,
                                  amount_fen=parsed.amount_fen, channel_profile=profile.name, order=order)
    except orders.PaymentRejected as exc:
        return Outcome(False, str(exc), notification=parsed)
    except SettlementError as exc:  # a commission plugin failed: nothing was written, the gateway retries
        log.error("payment of order %s not recorded: %s", parsed.order_no, exc)
        return Outcome(False, f"settlement failed: {exc}", notification=parsed)
    return Outcome(True, result=result, notification=parsed, order=order)
