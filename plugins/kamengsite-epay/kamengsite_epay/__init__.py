"""易支付 (epay) payment channel for kamengsite: V1 (MD5) and V2 (RSA, SHA256withRSA).

Protocol (see docs/payments.md):

* content string: every field except ``sign``/``sign_type`` and empty values, keys sorted
  bytewise, ``k=v`` joined with ``&``, raw values;
* V1: ``sign = md5(content + key)`` lowercase hex, ``sign_type=MD5``;
* V2: ``sign = base64(SHA256withRSA(content))`` with the merchant private key for requests,
  verified with the platform public key for notifications; ``sign_type=RSA``; every message
  carries a 10-digit ``timestamp`` and is refused when ``|now - timestamp| > 300`` s.

Notifications (GET or POST) are verified, then ``pid``, ``trade_status == TRADE_SUCCESS``
and ``money`` (Decimal → fen) are checked. The reply is exactly ``success``.

Server calls (``post_form``, urllib; replaceable per channel with ``post=`` or by patching this
module's ``post_form``):

* ``mode = "mapi"`` creates the payment server to server instead of the page jump: V1
  ``POST {api}/mapi.php`` (adds ``clientip`` and ``device``; answers JSON ``code == 1`` with one of
  ``payurl`` / ``qrcode`` / ``urlscheme``, unsigned), V2 ``POST {api}/api/pay/create`` (adds
  ``method=web``; answers ``code == 0`` with ``pay_type`` / ``pay_info``, signed by the platform
  key, verified with the same 300 s window);
* refunds: V1 ``POST {api}/api.php?act=refund`` with ``pid``, ``key`` (the merchant key itself,
  as the 彩虹易支付 API asks — so only over https), ``trade_no``, ``out_trade_no``, ``money``;
  the answer ``{"code": 1, "msg": …}`` is unsigned. V2 ``POST {api}/api/pay/refund`` with
  ``trade_no``, ``money``, ``out_refund_no``, RSA-signed; the answer (``code == 0``) must carry a
  valid platform signature or the refund is reported as not accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import (MASK, Channel, Notification, PaymentAction, PaymentError, PayType, RefundResult,
                                 Rejection, fen_to_yuan, sign_content, yuan_to_fen)

log = logging.getLogger(__name__)

TIMESTAMP_WINDOW = 300
NAME_MAX_BYTES = 127
DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 20
MESSAGE_MAX = 200
HTTP_URL_RE = re.compile(r"^https?://[^\s]+$", re.IGNORECASE)
APP_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{1,31}://\S+$", re.IGNORECASE)
UNSAFE_SCHEMES = ("javascript", "data", "vbscript", "file")
QR_MAX = 2048

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see, e.g. 支付宝/微信"},  # i18n: keep - names in the gateway's console
        "version": {"enum": ["v1", "v2"], "description": "v1 = MD5 key, v2 = RSA keys"},
        "api": {"type": "string", "pattern": r"^https?://[^\s/]+", "description": "gateway address, e.g. https://pay.example.com/"},
        "pid": {"type": ["string", "integer"], "pattern": r"^\d{1,20}$", "description": "商户ID"},  # i18n: keep - names in the gateway's console
        "key": {"type": "string", "minLength": 8, "writeOnly": True, "description": "V1 商户密钥 (MD5)"},  # i18n: keep - names in the gateway's console
        "merchant_private_key": {"type": "string", "minLength": 64, "writeOnly": True,
                                 "description": "V2 商户私钥: bare base64 PKCS#8 body (or PEM)"},  # i18n: keep - names in the gateway's console
        "platform_public_key": {"type": "string", "minLength": 64,
                                "description": "V2 平台公钥: bare base64 SPKI body (or PEM)"},  # i18n: keep - names in the gateway's console
        "pay_types": {"type": "array", "items": {"enum": ["alipay", "wxpay", "qqpay", "bank", "jdpay", "usdt"]},
                      "minItems": 1, "uniqueItems": True, "description": "the types offered to buyers"},
        "sitename": {"type": "string", "maxLength": 60},
        "mode": {"enum": ["submit", "mapi"],
                 "description": "submit = page jump to the gateway (default); mapi = server API, QR code on our page"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60,
                    "description": "seconds to wait for the gateway's server API (mapi, refunds; default 10)"},
    },
    "required": ["api", "pid"],
    "additionalProperties": False,
    "if": {"properties": {"version": {"const": "v2"}}, "required": ["version"]},
    "then": {"required": ["merchant_private_key", "platform_public_key"]},
    "else": {"required": ["key"]},
}


def md5_sign(fields: dict, key: str) -> str:
    return hashlib.md5((sign_content(fields) + key).encode("utf-8")).hexdigest()


def _key_bytes(text: str, kind: str) -> bytes:
    text = text.strip()
    if text.startswith("-----"):
        return text.encode()
    body = "".join(text.split())
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()


def load_private_key(text: str):
    return serialization.load_pem_private_key(_key_bytes(text, "PRIVATE KEY"), password=None)


def load_public_key(text: str):
    return serialization.load_pem_public_key(_key_bytes(text, "PUBLIC KEY"))


def rsa_sign(fields: dict, private_key_text: str) -> str:
    key = load_private_key(private_key_text)
    return base64.b64encode(key.sign(sign_content(fields).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(fields: dict, signature: str, public_key_text: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        load_public_key(public_key_text).verify(raw, sign_content(fields).encode("utf-8"),
                                                padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _truncate_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8")[:limit]
    return raw.decode("utf-8", errors="ignore")


def php_text(value) -> str | None:
    """A JSON value as the gateway's PHP writes it into the content string; None = left out.

    The V2 SDK signs ``json_decode``d answers with ``$k=$v``: ints and floats become their
    shortest text (``1.0`` → ``1``), ``true`` → ``1``, ``false`` → empty, arrays and null are left out.
    """
    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def response_fields(answer: dict) -> dict:
    """A decoded V2 answer as the text fields its signature covers."""
    fields = {}
    for key, value in answer.items():
        text = php_text(value)
        if text is not None:
            fields[key] = text
    return fields


def verify_v2_answer(answer: dict, profile, now: float) -> str:
    """Why a V2 answer must not be trusted ("" when it verifies): platform signature and timestamp."""
    fields = response_fields(answer)
    signature = (fields.get("sign") or "").strip()
    if not signature:
        return "no sign"
    stamp = fields.get("timestamp", "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) == 10) or abs(now - int(stamp)) > TIMESTAMP_WINDOW:
        return f"timestamp {stamp[:20]!r} is not within {TIMESTAMP_WINDOW} s"
    if not rsa_verify(fields, signature, profile.get("platform_public_key")):
        return "bad signature (RSA)"
    return ""


# -- the HTTP call (injectable) ------------------------------------------------------------


def post_form(url: str, fields: dict, timeout: float) -> bytes:
    """POST ``fields`` form-encoded; the response body. Raises on network errors and non-2xx answers."""
    body = urllib.parse.urlencode(fields).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Accept": "application/json",
        "User-Agent": "kamengsite-epay/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (schema)
        return response.read(MAX_RESPONSE_BYTES)


def _json_object(raw) -> dict:
    text = raw.decode("utf-8-sig") if isinstance(raw, bytes) else str(raw)
    answer = json.loads(text)
    if not isinstance(answer, dict):
        raise ValueError("answer is not a JSON object")
    return answer


def _gateway_message(answer: dict, secret: str = "") -> str:
    """The gateway's own words for the operator: cut, and never echoing our key."""
    message = str(answer.get("msg") or answer.get("message") or "").strip()
    if secret:
        message = message.replace(secret, MASK)
    return message[:MESSAGE_MAX]


def _safe_target(text: str) -> bool:
    """An http(s) URL, or an app scheme (``alipays://``, ``weixin://``) that is not script or data."""
    if HTTP_URL_RE.match(text):
        return True
    return bool(APP_SCHEME_RE.match(text)) and text.split(":", 1)[0].lower() not in UNSAFE_SCHEMES


def _action_for(kind: str, payload: str) -> PaymentAction | None:
    """``payurl``/``jump``/``urlscheme`` → redirect, ``qrcode`` → QR; None for what we cannot show safely."""
    payload = (payload or "").strip()
    if not payload:
        return None
    if kind == "qrcode":
        return PaymentAction.qrcode(payload) if len(payload) <= QR_MAX and payload.isprintable() else None
    if kind in ("payurl", "jump", "urlscheme") and _safe_target(payload):
        return PaymentAction.redirect(payload)
    return None


class EpayChannel(Channel):
    id = "epay"
    devices = ("pc", "mobile", "qq", "wechat", "alipay", "jump")
    settings_schema = SETTINGS_SCHEMA
    success_body = "success"
    failure_body = "fail"
    failure_status = 400

    @property
    def name(self):
        return _("Epay")

    @property
    def pay_types(self):
        return (PayType("alipay", _("Alipay")), PayType("wxpay", _("WeChat Pay")), PayType("qqpay", _("QQ Wallet")))
    supports_refund = True

    def __init__(self, post=None):
        self._post = post  # ``post(url, fields, timeout) -> bytes``; None: this module's ``post_form`` at call time

    @staticmethod
    def version(profile) -> str:
        return profile.get("version") or "v1"

    def offered_types(self, profile) -> tuple:
        wanted = profile.get("pay_types")
        return tuple(t for t in self.pay_types if not wanted or t.id in wanted)

    def _call(self, profile, path: str, fields: dict) -> dict:
        """POST to the gateway's server API; the decoded JSON object (raises on any failure)."""
        url = profile.get("api").rstrip("/") + "/" + path
        timeout = float(profile.get("timeout") or DEFAULT_TIMEOUT)
        return _json_object((self._post or post_form)(url, fields, timeout))

    @staticmethod
    def _payment_fields(profile, request) -> dict:
        fields = {
            "pid": str(profile.get("pid")),
            "type": request.pay_type,
            "out_trade_no": request.order_no,
            "notify_url": request.notify_url,
            "return_url": request.return_url,
            "name": _truncate_bytes(request.subject, NAME_MAX_BYTES),
            "money": fen_to_yuan(request.amount_fen),
        }
        if profile.get("sitename"):
            fields["sitename"] = profile.get("sitename")
        return fields

    def create_payment(self, profile, request):
        """Page jump (``mode = "submit"``, the default) or the server API (``mode = "mapi"``)."""
        if profile.get("mode") == "mapi":
            return self._create_by_api(profile, request)
        fields = {k: v for k, v in self._payment_fields(profile, request).items() if v}
        api = profile.get("api").rstrip("/")
        try:
            if self.version(profile) == "v2":
                fields["timestamp"] = str(int(time.time()))
                fields["sign"] = rsa_sign(fields, profile.get("merchant_private_key"))
                fields["sign_type"] = "RSA"
                return PaymentAction.form(f"{api}/api/pay/submit", fields)
        except (ValueError, TypeError) as exc:
            raise PaymentError(_("The payment channel is misconfigured; please contact the site owner")) from exc
        fields["sign"] = md5_sign(fields, profile.get("key"))
        fields["sign_type"] = "MD5"
        return PaymentAction.form(f"{api}/submit.php", fields)

    # -- the server API: mapi.php (V1) / api/pay/create (V2) ------------------------------

    def _signed(self, profile, fields: dict) -> dict:
        """``fields`` without empty values, signed for this profile's version (V2 adds ``timestamp``)."""
        fields = {k: v for k, v in fields.items() if isinstance(v, str) and v.strip()}
        if self.version(profile) == "v2":
            fields["timestamp"] = str(int(time.time()))
            fields["sign"] = rsa_sign(fields, profile.get("merchant_private_key"))
            fields["sign_type"] = "RSA"
        else:
            fields["sign"] = md5_sign(fields, profile.get("key"))
            fields["sign_type"] = "MD5"
        return fields

    def _create_by_api(self, profile, request):
        fields = self._payment_fields(profile, request)
        # Both are required by the server API; a WSGI server always knows the address, a bare test may not.
        fields.update(clientip=request.client_ip or "127.0.0.1", device=request.device or "pc")
        v2 = self.version(profile) == "v2"
        if v2:
            fields["method"] = "web"  # the gateway picks jump / QR / app scheme for the device
        try:
            signed = self._signed(profile, fields)
        except (ValueError, TypeError) as exc:
            raise PaymentError(_("The payment channel is misconfigured; please contact the site owner")) from exc
        try:
            answer = self._call(profile, "api/pay/create" if v2 else "mapi.php", signed)
        except Exception as exc:  # noqa: BLE001 - network, TLS, HTTP status, not JSON: one message for the buyer
            log.warning("epay server API failed: profile=%s order=%s error=%s",
                        profile.name, request.order_no, type(exc).__name__)
            raise PaymentError(_("Cannot reach the payment gateway; please try again later")) from exc
        action = self._action_from_v2(profile, answer) if v2 else self._action_from_v1(answer)
        if action is None:
            log.warning("epay server API refused or answered badly: profile=%s order=%s code=%r msg=%s",
                        profile.name, request.order_no, answer.get("code"), _gateway_message(answer))
            raise PaymentError(_("The payment gateway could not create the order; please try again later or contact the site owner"))
        return action

    @staticmethod
    def _action_from_v1(answer: dict) -> PaymentAction | None:
        if str(answer.get("code")) != "1":
            return None
        for kind in ("qrcode", "payurl", "urlscheme"):  # the gateway returns one of them
            if answer.get(kind):
                return _action_for(kind, str(answer[kind]))
        return None

    @staticmethod
    def _action_from_v2(profile, answer: dict) -> PaymentAction | None:
        if str(answer.get("code")) != "0":
            return None
        why = verify_v2_answer(answer, profile, time.time())
        if why:  # a forged answer could send the buyer anywhere: refuse it
            log.warning("epay V2 create answer refused: profile=%s reason=%s", profile.name, why)
            return None
        return _action_for(str(answer.get("pay_type") or ""), str(answer.get("pay_info") or ""))

    # -- refunds: api.php?act=refund (V1) / api/pay/refund (V2) ---------------------------

    def refund(self, profile, request):
        if not 0 < request.amount_fen <= request.total_fen:
            return RefundResult(False, message=_("The refund amount must be more than 0 and at most the order amount"))
        if self.version(profile) == "v2":
            return self._refund_v2(profile, request)
        return self._refund_v1(profile, request)

    def _refund_v1(self, profile, request):
        if not profile.get("api", "").lower().startswith("https://"):
            # The V1 refund API takes the merchant key itself: never send it in clear text.
            return RefundResult(False, message=_("An Epay V1 refund sends the merchant key to the gateway: the API address must be https://"))
        fields = {"pid": str(profile.get("pid")), "key": profile.get("key"), "trade_no": request.trade_no,
                  "out_trade_no": request.order_no, "money": fen_to_yuan(request.amount_fen)}
        fields = {k: v for k, v in fields.items() if v}
        answer = self._refund_call(profile, request, "api.php?act=refund", fields)
        if isinstance(answer, RefundResult):
            return answer
        message = _gateway_message(answer, profile.get("key"))
        if str(answer.get("code")) != "1":
            return RefundResult(False, message=_("The gateway refused the refund: %(reason)s",
                                                 reason=message or _("no reason given")))
        return RefundResult(True, gateway_refund_no=str(answer.get("refund_no") or "")[:64], message=message)

    def _refund_v2(self, profile, request):
        fields = {"pid": str(profile.get("pid")), "money": fen_to_yuan(request.amount_fen),
                  "out_refund_no": request.refund_no}
        if request.trade_no:
            fields["trade_no"] = request.trade_no
        else:
            fields["out_trade_no"] = request.order_no
        try:
            signed = self._signed(profile, fields)
        except (ValueError, TypeError):
            return RefundResult(False, message=_("The Epay V2 merchant private key cannot sign; check the settings"))
        answer = self._refund_call(profile, request, "api/pay/refund", signed)
        if isinstance(answer, RefundResult):
            return answer
        message = _gateway_message(answer)
        if str(answer.get("code")) != "0":
            return RefundResult(False, message=_("The gateway refused the refund: %(reason)s",
                                                 reason=message or _("no reason given")))
        why = verify_v2_answer(answer, profile, time.time())
        if why:
            log.warning("epay V2 refund answer refused: profile=%s order=%s reason=%s",
                        profile.name, request.order_no, why)
            return RefundResult(False, message=_(
                "The gateway's answer failed signature verification (%(why)s), so the refund's outcome is unknown: "
                "check it in the Epay back office", why=why))
        return RefundResult(True, gateway_refund_no=str(answer.get("refund_no") or "")[:64], message=message)

    def _refund_call(self, profile, request, path: str, fields: dict):
        """The gateway's decoded answer, or a not-ok RefundResult when it could not be had."""
        try:
            return self._call(profile, path, fields)
        except Exception as exc:  # noqa: BLE001 - network, TLS, HTTP status, not JSON: never raise to the caller
            log.warning("epay refund call failed: profile=%s order=%s error=%s",
                        profile.name, request.order_no, type(exc).__name__)
            return RefundResult(False, message=_(
                "Cannot reach the Epay gateway or its answer is unreadable (%(error)s), so the refund's outcome is "
                "unknown: check it in the Epay back office before retrying", error=type(exc).__name__))

    def verify_notification(self, profile, notice, now):
        fields = notice.fields
        signature = (fields.get("sign") or "").strip()
        if not signature:
            return Rejection("no sign")
        sign_type = (fields.get("sign_type") or "").strip().upper()
        if self.version(profile) == "v2":
            if sign_type != "RSA":
                return Rejection(f"sign_type {sign_type or '(none)'!r} is not RSA")
            stamp = fields.get("timestamp", "")
            if not (stamp.isascii() and stamp.isdigit() and len(stamp) == 10):
                return Rejection(f"timestamp {stamp!r} is not 10-digit seconds")
            if abs(now - int(stamp)) > TIMESTAMP_WINDOW:
                return Rejection(f"timestamp {stamp} is outside the {TIMESTAMP_WINDOW} s window")
            if not rsa_verify(fields, signature, profile.get("platform_public_key")):
                return Rejection("bad signature (RSA)")
        else:
            if sign_type not in ("", "MD5"):  # some compatible gateways omit sign_type
                return Rejection(f"sign_type {sign_type!r} is not MD5")
            if not hmac.compare_digest(md5_sign(fields, profile.get("key")), signature.lower()):
                return Rejection("bad signature (MD5)")
        # Signed by the gateway from here on; now check that it is about our money.
        if str(fields.get("pid", "")).strip() != str(profile.get("pid")):
            return Rejection(f"pid {fields.get('pid')!r} is not this profile's merchant")
        for name in ("out_trade_no", "trade_no", "money", "trade_status"):
            if not (fields.get(name) or "").strip():
                return Rejection(f"missing {name}")
        try:
            amount_fen = yuan_to_fen(fields["money"])
        except ValueError as exc:
            return Rejection(str(exc))
        status = fields["trade_status"].strip()
        return Notification(order_no=fields["out_trade_no"].strip(), amount_fen=amount_fen,
                            trade_no=fields["trade_no"].strip(),
                            status="paid" if status == "TRADE_SUCCESS" else "unpaid", raw_status=status)


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [EpayChannel()]


plugin = _Plugin()
