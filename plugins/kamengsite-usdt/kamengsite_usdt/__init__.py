"""USDT (TRC20) payment channel for kamengsite, through an epusdt-style gateway.

Protocol (see ``../shared/reference/payments.md``, "USDT (TRC20) through an epusdt-style gateway"):

* signature: lowercase MD5 of the sorted (bytewise) ``k=v`` pairs joined by ``&`` of every
  non-empty field except ``signature``, with the API token appended directly (no ``&``);
* create: ``POST {api}/api/v1/order/create-transaction`` with the JSON body
  ``{order_id, amount, notify_url, redirect_url, signature}``; ``amount`` is CNY yuan sent as a
  JSON number written without trailing zeros (``15``, ``15.5``, ``15.01``) — the text that is
  signed. The answer ``{status_code: 200, data: {trade_id, order_id, amount, actual_amount,
  token, expiration_time, payment_url}}``. When it names the wallet (``token``) and the exact
  ``actual_amount``, the buyer goes to our own page ``/pay/usdt/<profile>/<order_no>`` (wallet, QR
  of the wallet drawn on the server, exact USDT amount, expiry countdown); its data travels in the
  URL, signed with a key derived from the API token, so the page can be reloaded without a second
  create call (the gateway refuses a second one for the same order). Otherwise, or with
  ``cashier = "gateway"``, the buyer goes to the gateway's ``payment_url``;
* notification: ``POST`` JSON ``{trade_id, order_id, amount, actual_amount, token,
  block_transaction_id, signature, status}``. The signature covers the **raw text** of each
  value as received (``100`` and ``"100.00"`` sign differently; ``actual_amount`` may be a
  string), so the body is parsed keeping every number's original text. ``status == 2`` means
  paid; ``amount`` (CNY) is a Decimal → fen compared to the order by ``orders.mark_paid``;
  the gateway trade number is ``trade_id``. The reply is exactly ``ok`` (``fail``, HTTP 400,
  for anything refused).
* refunds: the gateway has no refund API (the USDT went to the merchant's wallet on chain), so
  ``supports_refund`` is False — refunds are paid to the buyer's balance or by hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from flask import Blueprint, abort, redirect, render_template_string, request, url_for
from markupsafe import Markup, escape

from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import (Channel, Notification, PaymentAction, PaymentError, PayType, Rejection,
                                 yuan_to_fen)

log = logging.getLogger(__name__)

CREATE_PATH = "/api/v1/order/create-transaction"
DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 20
MAX_NOTIFY_BYTES = 64 * 1024
PAID_STATUS = "2"
URL_RE = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
WALLET_RE = re.compile(r"^[A-Za-z0-9]{20,128}$")  # TRC20 (T…, base58) and the other chains' plain addresses
USDT_RE = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,8})?$")
PAGE_PATH = "/pay/usdt/{profile}/{order_no}"
PAGE_KEY_CONTEXT = b"kamengsite-usdt:pay-page"
RELOAD_SECONDS = 15  # the page reloads itself: a paid order sends the buyer on to the order page
BEIJING = timezone(timedelta(hours=8))

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see, e.g. USDT (TRC20)"},
        "api": {"type": "string", "pattern": r"^https?://[^\s/]+",
                "description": "gateway base URL, e.g. https://usdt.example.com/"},
        "token": {"type": "string", "minLength": 8, "writeOnly": True,
                  "description": "API token (api_auth_token) of the gateway"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60,
                    "description": "seconds to wait for the gateway when creating a payment (default 10)"},
        "cashier": {"enum": ["own", "gateway"],
                    "description": "own = our page with the wallet, its QR and the exact amount (default); "
                                   "gateway = the gateway's payment_url"},
    },
    "required": ["api", "token"],
    "additionalProperties": False,
}


# -- signing -------------------------------------------------------------------------------


def sign_string(fields: dict) -> str:
    """``k=v&...`` of every non-empty field except ``signature``, keys sorted bytewise, raw values."""
    kept = {k: v for k, v in fields.items() if k != "signature" and v != ""}
    return "&".join(f"{k}={kept[k]}" for k in sorted(kept, key=lambda k: k.encode("utf-8")))


def signature(fields: dict, token: str) -> str:
    """Lowercase MD5 of ``sign_string(fields) + token``; every value must already be its text."""
    return hashlib.md5((sign_string(fields) + token).encode("utf-8")).hexdigest()


def amount_text(fen: int) -> str:
    """Fen → yuan written as the gateway writes numbers: no trailing zeros (1500 → ``15``, 1550 → ``15.5``)."""
    if not isinstance(fen, int) or fen <= 0:
        raise ValueError(f"amount {fen!r} fen is not a positive integer")
    whole, cents = divmod(fen, 100)
    return str(whole) if cents == 0 else f"{whole}.{cents:02d}".rstrip("0")


# -- raw-text JSON -------------------------------------------------------------------------


class _Refused(ValueError):
    pass


class _Raw(str):
    """A JSON number kept as the exact text it was sent as."""


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(f"field {key!r} sent twice")
        seen[key] = value
    return seen


def _refuse_constant(name):
    raise _Refused(f"{name} is not a number")


def parse_raw_json(body: bytes) -> dict:
    """The top-level JSON object with every value as the text that was signed.

    Numbers keep their original text (``100`` stays ``"100"``, ``15.625`` stays ``"15.625"``),
    strings are their decoded value, booleans ``true``/``false``. ``null``, arrays, nested
    objects, duplicate keys, ``NaN``/``Infinity`` and anything but a JSON object raise ValueError.
    """
    text = body.decode("utf-8")
    data = json.loads(text, parse_float=_Raw, parse_int=_Raw, parse_constant=_refuse_constant,
                      object_pairs_hook=_no_duplicates)
    if not isinstance(data, dict):
        raise _Refused("body is not a JSON object")
    fields = {}
    for key, value in data.items():
        if isinstance(value, bool):
            fields[key] = "true" if value else "false"
        elif isinstance(value, str):  # strings and raw number text
            fields[key] = str(value)
        else:
            raise _Refused(f"field {key!r} is not a string or number")
    return fields


# -- the HTTP call (injectable) ------------------------------------------------------------


def post_json(url: str, body: bytes, timeout: float) -> bytes:
    """POST ``body`` as JSON and return the response body; raises on network errors and non-2xx."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "kamengsite-usdt/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (schema)
        return response.read(MAX_RESPONSE_BYTES)


@dataclass(frozen=True)
class UsdtPaymentAction(PaymentAction):
    """A redirect to the gateway's cashier that also carries what a QR view would show."""

    trade_id: str = ""
    wallet: str = ""           # the TRC20 address (``token`` in the gateway's answer)
    actual_amount: str = ""    # the exact USDT amount to send (raw text)
    expiration_time: str = ""


# -- our own payment page: its data signed into the URL ------------------------------------


def _page_key(token: str) -> bytes:
    """A key for the page URLs only: the API token itself never signs anything but gateway calls."""
    return hmac.new(token.encode("utf-8"), PAGE_KEY_CONTEXT, hashlib.sha256).digest()


def page_query(token: str, data: dict) -> dict:
    """``{"d": payload, "s": mac}`` for the page URL: the gateway's answer, tamper-evident."""
    payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    return {"d": payload, "s": hmac.new(_page_key(token), payload.encode(), hashlib.sha256).hexdigest()}


def read_page_query(token: str, payload: str, mac: str) -> dict | None:
    """The data of a page URL, or None when it was not made with this profile's token."""
    expected = hmac.new(_page_key(token), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    return data if isinstance(data, dict) else None


def expiry_seconds(value) -> int:
    """``expiration_time`` as Unix seconds (epusdt sends seconds; milliseconds are tolerated); 0 if unknown."""
    text = str(value or "").strip()
    if not (text.isascii() and text.isdigit()):
        return 0
    number = int(text)
    return number // 1000 if number > 10**11 else number


PAGE = """{% extends "base.html" %}
{% block title %}{{ t.title }} · {{ site.name }}{% endblock %}
{% block body %}
<article class="card pay usdt-pay">
  <h1>{{ t.heading }}</h1>
  <p>{{ t.order }} · {{ order.product.name }} · <span class="price">¥{{ order.amount_fen|money }}</span></p>
  {% if expired %}
  <p class="error" role="alert">{{ t.expired }}</p>
  {% else %}
  <p>{{ t.exact }}</p>
  <p class="usdt-amount"><strong id="usdt-amount">{{ amount }}</strong> USDT</p>
  <p>{{ t.wallet }}</p>
  <p class="usdt-wallet"><code id="usdt-wallet">{{ wallet }}</code></p>
  {% if qr %}<p class="qrcode" data-qrcode="{{ wallet }}">
    <span class="qr-image" role="img" aria-label="{{ t.qr }}">{{ qr }}</span></p>{% endif %}
  {% if expires %}
  <p>{{ t.deadline }}</p>
  <script>
  (function () {
    // Counted from the server's "seconds left", not the buyer's clock (which may be off).
    var el = document.getElementById("usdt-countdown"), started = Date.now();
    var end = started + Number(el.dataset.left) * 1000, shape = {{ t.countdown|tojson }};
    function tick() {
      var left = Math.max(0, Math.floor((end - Date.now()) / 1000));
      el.textContent = shape.replace("{m}", Math.floor(left / 60)).replace("{s}", ("0" + left % 60).slice(-2));
      if (left === 0 || Date.now() - started > {{ reload_ms }}) { location.reload(); return; }
      setTimeout(tick, 1000);
    }
    tick();
  })();
  </script>
  {% endif %}
  <p class="muted">{{ t.arrives }}</p>
  {% endif %}
  <p><a href="{{ url_for('storefront.order', order_no=order.order_no) }}">{{ t.back }}</a>
  {% if payment_url %} · <a href="{{ payment_url }}" rel="noreferrer">{{ t.gateway }}</a>{% endif %}</p>
</article>
{% endblock %}
"""


def _encode_create_body(fields: dict, amount: str) -> bytes:
    """JSON with ``amount`` written as a number with exactly the signed text."""
    parts = [f"{json.dumps(k)}:{amount if k == 'amount' else json.dumps(v, ensure_ascii=False)}"
             for k, v in fields.items()]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


class UsdtChannel(Channel):
    id = "usdt"
    name = "USDT (TRC20)"
    pay_types = (PayType("usdt", "USDT (TRC20)"),)
    devices = ("pc", "mobile")
    settings_schema = SETTINGS_SCHEMA
    success_body = "ok"
    failure_body = "fail"
    failure_status = 400

    supports_refund = False  # an epusdt gateway cannot send USDT back: refunds go to the balance or by hand

    def __init__(self, post=None):
        self._post = post  # None: the module's ``post_json`` (looked up at call time)

    def post(self, url: str, body: bytes, timeout: float) -> bytes:
        return (self._post or post_json)(url, body, timeout)

    # -- create ------------------------------------------------------------------------

    def create_request(self, profile, request) -> tuple[str, bytes]:
        """The URL and exact JSON body of the create-transaction call for ``request``."""
        amount = amount_text(request.amount_fen)
        fields = {"order_id": request.order_no, "amount": amount,
                  "notify_url": request.notify_url, "redirect_url": request.return_url}
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["signature"] = signature(fields, profile.get("token"))
        url = profile.get("api").rstrip("/") + CREATE_PATH
        return url, _encode_create_body(fields, amount)

    def create_payment(self, profile, request):
        url, body = self.create_request(profile, request)
        timeout = float(profile.get("timeout") or DEFAULT_TIMEOUT)
        try:
            raw = self.post(url, body, timeout)
        except Exception as exc:  # noqa: BLE001 - network, TLS, HTTP status: the buyer sees one message
            log.warning("usdt gateway call failed: profile=%s order=%s error=%s: %s",
                        profile.name, request.order_no, type(exc).__name__, exc)
            raise PaymentError(_("Cannot reach the USDT payment gateway right now; please try again later")) from exc
        try:
            # Decimal: the exact USDT amount is shown to the buyer as the gateway wrote it, never as a float.
            answer = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw, parse_float=Decimal)
            data = answer.get("data") if isinstance(answer, dict) else None
            if str(answer.get("status_code")) != "200" or not isinstance(data, dict):
                raise ValueError(f"status_code={answer.get('status_code')!r} message={answer.get('message')!r}")
            payment_url = str(data.get("payment_url") or "")
            if not URL_RE.match(payment_url):
                raise ValueError(f"payment_url {payment_url[:100]!r} is not an http(s) URL")
            if str(data.get("order_id", request.order_no)) != request.order_no:
                raise ValueError(f"answer is about order {data.get('order_id')!r}")
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("usdt gateway refused or answered badly: profile=%s order=%s error=%s",
                        profile.name, request.order_no, exc)
            raise PaymentError(_("The USDT payment gateway could not create the order; please try again later or contact the site owner")) from exc
        wallet, usdt = str(data.get("token") or ""), str(data.get("actual_amount") or "")
        trade_id, expires = str(data.get("trade_id") or ""), str(data.get("expiration_time") or "")
        url = payment_url
        if profile.get("cashier") != "gateway" and WALLET_RE.match(wallet) and USDT_RE.match(usdt):
            url = self.page_url(profile, request, {"w": wallet, "a": usdt, "e": expiry_seconds(expires),
                                                   "t": trade_id[:64], "u": payment_url[:500]})
        return UsdtPaymentAction("redirect", url=url, trade_id=trade_id, wallet=wallet, actual_amount=usdt,
                                 expiration_time=expires)

    # -- our payment page ---------------------------------------------------------------

    @staticmethod
    def page_url(profile, request, data: dict) -> str:
        """The site-relative URL of our page for this order, carrying the gateway's answer signed."""
        query = page_query(profile.get("token"), dict(data, o=request.order_no))
        path = PAGE_PATH.format(profile=urllib.parse.quote(profile.name), order_no=urllib.parse.quote(request.order_no))
        return f"{path}?{urllib.parse.urlencode(query)}"

    def register_routes(self, app, instance):
        bp = Blueprint("kamengsite_usdt", __name__)
        bp.add_url_rule(PAGE_PATH.replace("{profile}", "<profile>").replace("{order_no}", "<order_no>"),
                        "page", self._page, methods=["GET"])
        app.register_blueprint(bp)

    def _page(self, profile, order_no):
        """Wallet, QR, exact amount and countdown for an unpaid order; a paid one goes on to its order page."""
        from kamengsite import orders
        from kamengsite.app import current_site
        from kamengsite.payment_routes import qr_image, registry

        found = registry().find(self.id, profile)
        if found is None:
            abort(404)
        data = read_page_query(found[1].get("token"), request.args.get("d", ""), request.args.get("s", ""))
        if data is None or data.get("o") != order_no:  # not ours, or made for another order
            abort(404)
        order = orders.find_order(order_no, site_id=current_site().site_id)
        if order is None or (order.channel, order.channel_profile) != (self.id, profile):
            abort(404)
        if order.status != "created":  # paid (or closed): nothing to transfer any more
            return redirect(url_for("storefront.order", order_no=order_no))
        wallet, expires = str(data.get("w", "")), int(data.get("e") or 0)
        left = expires - int(time.time())
        shown = datetime.fromtimestamp(expires, BEIJING) if expires else None
        seconds = "%02d" % (max(left, 0) % 60)
        remaining = _("%(m)s min %(s)s s", m=max(left, 0) // 60, s=seconds)
        sentence = _("Please complete the transfer before %(time)s (Beijing time); time left: %(left)s.")
        deadline = Markup(escape(sentence)) % {
            "time": Markup('<time datetime="{}">{}</time>').format(shown.isoformat() if shown else "",
                                                                 shown.strftime("%H:%M:%S") if shown else ""),
            "left": Markup('<strong id="usdt-countdown" data-left="{}">{}</strong>').format(max(left, 0), remaining)}
        return render_template_string(
            PAGE, order=order, wallet=wallet, amount=str(data.get("a", "")), qr=qr_image(wallet),
            expired=bool(expires) and left <= 0, expires=expires, reload_ms=RELOAD_SECONDS * 1000,
            payment_url=str(data.get("u", "")) if URL_RE.match(str(data.get("u", ""))) else "",
            t=_page_text(order, deadline))

    # -- notifications ----------------------------------------------------------------

    def verify_notification(self, profile, notice, now):
        body = notice.body or b""
        if not body.strip():
            return Rejection("empty body (expected a JSON notification)")
        if len(body) > MAX_NOTIFY_BYTES:
            return Rejection("body too large")
        try:
            fields = parse_raw_json(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return Rejection(f"body is not an acceptable JSON object: {exc}")
        given = fields.get("signature", "")
        if not given:
            return Rejection("no signature")
        expected = signature(fields, profile.get("token"))
        if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8")):
            return Rejection("bad signature (MD5)")
        # Signed by the gateway from here on; now check that it is about our money.
        for name in ("trade_id", "order_id", "amount", "status"):
            if not fields.get(name, "").strip():
                return Rejection(f"missing {name}")
        try:
            amount_fen = yuan_to_fen(fields["amount"])
        except ValueError as exc:
            return Rejection(str(exc))
        status = fields["status"].strip()
        return Notification(order_no=fields["order_id"].strip(), amount_fen=amount_fen,
                            trade_no=fields["trade_id"].strip(),
                            status="paid" if status == PAID_STATUS else "unpaid", raw_status=status)


def _page_text(order, deadline) -> dict:
    """The payment page's words in the buyer's language (the page is a string, not a template file)."""
    exact = Markup("<strong>{}</strong>").format(_("exact amount"))
    return {
        "title": _("USDT payment %(no)s", no=order.order_no),
        "heading": _("USDT (TRC20) payment"),
        "order": _("Order %(no)s", no=order.order_no),
        "expired": _("The payment has timed out: do not transfer anything more to the address below. "
                     "Go back to the order page and start the payment again."),
        "exact": Markup(escape(_("Please transfer the %(exact)s (one cent more or less cannot be matched "
                                 "automatically):"))) % {"exact": exact},
        "wallet": _("Receiving address (TRC20 network only):"),
        "qr": _("QR code of the receiving address"),
        "deadline": deadline,
        "countdown": _("%(m)s min %(s)s s", m="{m}", s="{s}"),
        "arrives": _("Once the payment arrives, this page moves on to the order page (block confirmation "
                     "usually takes 1 to 3 minutes)."),
        "back": _("Back to the order page"),
        "gateway": _("Open the gateway's checkout"),
    }


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [UsdtChannel()]


plugin = _Plugin()
