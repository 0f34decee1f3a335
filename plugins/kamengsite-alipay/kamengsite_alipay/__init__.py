"""支付宝开放平台 (Alipay Open Platform) payment channel for kamengsite: page / wap pay, QR precreate,
refunds; RSA2.

Protocol (see ``../shared/reference/payments.md``, "Alipay Open Platform — RSA2"):

* request (``alipay.trade.page.pay``): the public parameters plus ``biz_content`` (JSON); the
  content string is every parameter except ``sign`` (``sign_type`` *is* signed) with empty values
  left out, keys sorted, ``k=v`` joined by ``&``, raw values; ``sign`` = base64 SHA256withRSA
  (PKCS#1 v1.5) with the application private key. The buyer is redirected to
  ``{gateway}?{urlencoded parameters and sign}``.
* asynchronous notification (form POST): every field received except ``sign`` and
  ``sign_type``, keys sorted, ``k=v`` joined by ``&`` (values as received, URL-decoded), verified
  with the Alipay public key. Only ``TRADE_SUCCESS`` and ``TRADE_FINISHED`` are payments; ``app_id``,
  ``seller_id`` (when configured), ``out_trade_no`` and ``total_amount`` (Decimal → fen) are
  checked. The gateway trade number is ``trade_no``. The reply is exactly ``success``.
* ``product = "page"`` (default): 电脑网站支付 for a PC, 手机网站支付 (``alipay.trade.wap.pay``,
  ``QUICK_WAP_WAY``) for a phone — both a signed redirect. ``product = "qr"``: 当面付
  ``alipay.trade.precreate``, a server call whose ``qr_code`` is shown as a QR code.
* server calls (precreate, ``alipay.trade.refund``): the signed parameters are POSTed form-encoded
  to the gateway (``post_form``, urllib; replaceable with ``post=`` or by patching this module's
  ``post_form``). The answer ``{"<method>_response": {...}, "sign": "..."}`` is trusted only when
  ``sign`` verifies with the Alipay public key over the exact text of the ``..._response`` object as
  received; ``code == "10000"`` is success (a refund with ``fund_change != "Y"`` is accepted but
  pending: Alipay asks for a query to confirm it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import (Channel, Notification, PaymentAction, PaymentError, PayType, RefundResult, Rejection,
                                 fen_to_yuan, yuan_to_fen)

log = logging.getLogger(__name__)

GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"
PAID_STATUSES = ("TRADE_SUCCESS", "TRADE_FINISHED")
BEIJING = timezone(timedelta(hours=8))
SUBJECT_MAX_CHARS = 256
SUCCESS_CODE = "10000"
DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 20
MESSAGE_MAX = 200
REASON_MAX_CHARS = 256
QR_RE = re.compile(r"^https://\S{1,2000}$")
# Plain yuan with at most 2 decimals: no sign, no exponent, no NaN/Infinity, no spaces.
KEY_RE = r"^\s*(?:-----BEGIN [A-Z ]+-----[A-Za-z0-9+/=\s]+-----END [A-Z ]+-----|[A-Za-z0-9+/=\s]+)\s*$"

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see; default 支付宝"},  # i18n: keep - names in the gateway's console
        "app_id": {"type": ["string", "integer"], "pattern": r"^[0-9]{6,32}$", "minimum": 0,
                   "description": "APPID of the application (开放平台 → 应用 → APPID)"},  # i18n: keep - names in the gateway's console
        "seller_id": {"type": ["string", "integer"], "pattern": r"^2088[0-9]{12}$", "minimum": 0,
                      "description": "optional 商户PID (2088…); checked on every notification when set"},  # i18n: keep - names in the gateway's console
        "app_private_key": {"type": "string", "minLength": 64, "pattern": KEY_RE, "writeOnly": True,
                            "description": "应用私钥: PEM, or bare base64 PKCS#8 / PKCS#1 body"},  # i18n: keep - names in the gateway's console
        "alipay_public_key": {"type": "string", "minLength": 64, "pattern": KEY_RE,
                              "description": "支付宝公钥 (not the 应用公钥): PEM or bare base64 SPKI body"},  # i18n: keep - names in the gateway's console
        "gateway": {"type": "string", "pattern": r"^https://[^\s/?#]+/[^\s?#]*$",
                    "description": "default https://openapi.alipay.com/gateway.do"},
        "sandbox": {"type": "boolean", "description": "use the 沙箱 gateway (refused on production instances)"},  # i18n: keep - names in the gateway's console
        "product": {"enum": ["page", "qr"],
                    "description": "page = 电脑/手机网站支付 redirect (default); qr = 当面付 precreate, a QR code"},  # i18n: keep - names in the gateway's console
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60,
                    "description": "seconds to wait for the gateway's server calls (precreate, refunds; default 10)"},
    },
    "required": ["app_id", "app_private_key", "alipay_public_key"],
    "additionalProperties": False,
}


# -- keys and signatures -------------------------------------------------------------------------


def _der(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)


@functools.lru_cache(maxsize=32)
def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """PEM (``PRIVATE KEY`` or ``RSA PRIVATE KEY``) or a bare base64 PKCS#8 / PKCS#1 body."""
    text = (text or "").strip()
    try:
        if text.startswith("-----"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = serialization.load_der_private_key(_der(text), password=None)  # PKCS#8 and PKCS#1 DER
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("app_private_key is not an RSA private key (PEM or base64 PKCS#8/PKCS#1)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("app_private_key is not an RSA key")
    return key


@functools.lru_cache(maxsize=32)
def load_public_key(text: str) -> rsa.RSAPublicKey:
    """PEM (``PUBLIC KEY`` or ``RSA PUBLIC KEY``) or a bare base64 SPKI (or PKCS#1) body."""
    text = (text or "").strip()
    try:
        if text.startswith("-----"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(_der(text))
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("alipay_public_key is not an RSA public key (PEM or base64 SPKI)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("alipay_public_key is not an RSA key")
    return key


def request_content(params: dict) -> str:
    """What a request is signed over: all parameters but ``sign``, empty values dropped, sorted, ``k=v&…``."""
    kept = {k: v for k, v in params.items() if k != "sign" and v is not None and str(v) != ""}
    return "&".join(f"{k}={kept[k]}" for k in sorted(kept))


def notification_content(fields: dict) -> str:
    """What a notification is signed over: every field but ``sign`` and ``sign_type``, sorted, ``k=v&…``."""
    kept = {k: v for k, v in fields.items() if k not in ("sign", "sign_type")}
    return "&".join(f"{k}={kept[k]}" for k in sorted(kept))


def rsa2_sign(content: str, private_key_text: str) -> str:
    key = load_private_key(private_key_text)
    return base64.b64encode(key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa2_verify(content: str, signature: str, public_key_text: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        load_public_key(public_key_text).verify(raw, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        return False
    return True


def response_node(raw, method: str) -> tuple[dict, str, str]:
    """(the ``<method>_response`` object, its exact text, ``sign``) of a gateway answer; ValueError if unreadable.

    Alipay signs the response object's text as sent, so it is cut out of the body, not re-serialised.
    An ``error_response`` (e.g. a bad app_id) stands in for the method's own object.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    answer = json.loads(text)
    if not isinstance(answer, dict):
        raise ValueError("answer is not a JSON object")
    name = method.replace(".", "_") + "_response"
    key = name if name in answer else "error_response"
    found = re.search(r'"' + re.escape(key) + r'"\s*:\s*', text)
    if key not in answer or found is None:
        raise ValueError(f"answer has no {name}")
    node, end = json.JSONDecoder().raw_decode(text, found.end())
    if not isinstance(node, dict) or node != answer[key]:  # the text cut out must be the object parsed
        raise ValueError(f"{key} could not be located in the answer")
    return node, text[found.end():end], str(answer.get("sign") or "")


class SigningFailed(ValueError):
    """The application private key could not sign a request (a configuration problem)."""


class AnswerNotTrusted(ValueError):
    """A success answer whose signature does not verify with the Alipay public key."""


def post_form(url: str, fields: dict, timeout: float) -> bytes:
    """POST ``fields`` form-encoded (UTF-8); the response body. Raises on network errors and non-2xx answers."""
    body = urllib.parse.urlencode(fields).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Accept": "application/json",
        "User-Agent": "kamengsite-alipay/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - https gateway only (schema)
        return response.read(MAX_RESPONSE_BYTES)


def _gateway_message(node: dict) -> str:
    """Alipay's own words for the operator, e.g. ``ACQ.TRADE_NOT_EXIST 交易不存在``."""
    code = str(node.get("sub_code") or node.get("code") or "")
    words = str(node.get("sub_msg") or node.get("msg") or "")
    return f"{code} {words}".strip()[:MESSAGE_MAX]


def amount_to_fen(text) -> int:
    """``total_amount`` as Alipay writes it (no surrounding spaces) → fen, by the host's ``yuan_to_fen``."""
    if isinstance(text, str) and text != text.strip():
        raise ValueError(f"total_amount {text!r} has surrounding spaces")
    return yuan_to_fen(text)


# -- the channel ---------------------------------------------------------------------------------


class AlipayChannel(Channel):
    id = "alipay"
    devices = ("pc", "mobile")
    settings_schema = SETTINGS_SCHEMA
    success_body = "success"
    failure_body = "fail"
    failure_status = 400

    supports_refund = True

    @property
    def name(self):
        return _("Alipay")

    @property
    def pay_types(self):
        return (PayType("alipay", _("Alipay")),)

    def __init__(self, production: bool = False, post=None):
        self.production = production
        self._post = post  # ``post(url, fields, timeout) -> bytes``; None: this module's ``post_form`` at call time

    def gateway(self, profile) -> str:
        if profile.get("gateway"):
            return profile.get("gateway")
        return SANDBOX_GATEWAY if profile.get("sandbox") else GATEWAY

    def _sandbox_refused(self, profile) -> bool:
        return bool(profile.get("sandbox")) and self.production

    @staticmethod
    def signed_params(profile, method: str, biz: dict, notify_url: str = "", return_url: str = "") -> dict:
        """The public parameters plus ``biz_content``, signed with the application key (ValueError if it cannot)."""
        params = {
            "app_id": str(profile.get("app_id")),
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "notify_url": notify_url,
            "return_url": return_url,
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params = {k: v for k, v in params.items() if v}
        params["sign"] = rsa2_sign(request_content(params), profile.get("app_private_key"))
        return params

    def call(self, profile, method: str, biz: dict, notify_url: str = "") -> dict:
        """A server call whose answer verifies with the Alipay public key: the ``..._response`` object.

        Raises SigningFailed (our key), AnswerNotTrusted (a success must be signed by Alipay),
        ValueError for an unreadable answer and anything else for a network failure; a refusal
        (code != 10000) is returned as is: believing a "no" costs nothing.
        """
        try:
            params = self.signed_params(profile, method, biz, notify_url=notify_url)
        except (ValueError, TypeError) as exc:
            raise SigningFailed(str(exc)) from None
        timeout = float(profile.get("timeout") or DEFAULT_TIMEOUT)
        raw = (self._post or post_form)(self.gateway(profile), params, timeout)
        node, text, signature = response_node(raw, method)
        if str(node.get("code")) == SUCCESS_CODE and not rsa2_verify(text, signature, profile.get("alipay_public_key")):
            raise AnswerNotTrusted("bad signature (RSA2) on the answer")
        return node

    # -- paying ---------------------------------------------------------------------------

    def create_payment(self, profile, request):
        """QR precreate (``product = "qr"``), else a redirect: wap pay for a phone, page pay for a PC."""
        if self._sandbox_refused(profile):
            raise PaymentError(_("The payment channel is misconfigured (a sandbox account cannot be used on a live site); please contact the site owner"))
        biz = {
            "out_trade_no": request.order_no,
            "total_amount": fen_to_yuan(request.amount_fen),
            "subject": (request.subject or request.order_no)[:SUBJECT_MAX_CHARS],
        }
        if profile.get("product") == "qr":
            return self._precreate(profile, request, biz)
        if request.device == "mobile":
            method, biz = "alipay.trade.wap.pay", dict(biz, product_code="QUICK_WAP_WAY", quit_url=request.return_url)
        else:
            method, biz = "alipay.trade.page.pay", dict(biz, product_code="FAST_INSTANT_TRADE_PAY")
        try:
            params = self.signed_params(profile, method, biz, request.notify_url, request.return_url)
        except (ValueError, TypeError) as exc:
            raise PaymentError(_("The payment channel is misconfigured; please contact the site owner")) from exc
        return PaymentAction.redirect(f"{self.gateway(profile)}?{urllib.parse.urlencode(params)}")

    def _precreate(self, profile, request, biz: dict) -> PaymentAction:
        """当面付 ``alipay.trade.precreate``: Alipay answers the ``qr_code`` the buyer scans."""
        try:
            node = self.call(profile, "alipay.trade.precreate", biz, notify_url=request.notify_url)
        except SigningFailed as exc:
            raise PaymentError(_("The payment channel is misconfigured; please contact the site owner")) from exc
        except Exception as exc:  # noqa: BLE001 - network, unreadable or unsigned answer: one message
            log.warning("alipay precreate failed: profile=%s order=%s error=%s: %s",
                        profile.name, request.order_no, type(exc).__name__, str(exc)[:200])
            raise PaymentError(_("Cannot reach Alipay; please try again later")) from exc
        qr = str(node.get("qr_code") or "")
        if (str(node.get("code")) != SUCCESS_CODE or node.get("out_trade_no") != request.order_no
                or not QR_RE.match(qr)):
            log.warning("alipay precreate refused: profile=%s order=%s answer=%s",
                        profile.name, request.order_no, _gateway_message(node))
            raise PaymentError(_("Alipay could not create the payment; please try again later or contact the site owner"))
        return PaymentAction.qrcode(qr)

    # -- refunds --------------------------------------------------------------------------

    def refund(self, profile, request):
        """``alipay.trade.refund``; ``out_request_no`` (our refund number) makes a retry idempotent."""
        if not 0 < request.amount_fen <= request.total_fen:
            return RefundResult(False, message=_("The refund amount must be more than 0 and at most the order amount"))
        if self._sandbox_refused(profile):
            return RefundResult(False, message=_("A sandbox account cannot be used on a live site"))
        biz = {"out_trade_no": request.order_no, "trade_no": request.trade_no,
               "refund_amount": fen_to_yuan(request.amount_fen), "out_request_no": request.refund_no,
               "refund_reason": (request.reason or "")[:REASON_MAX_CHARS]}
        biz = {k: v for k, v in biz.items() if v}
        try:
            node = self.call(profile, "alipay.trade.refund", biz)
        except SigningFailed:
            return RefundResult(False, message=_("The application private key cannot sign; check the Alipay settings"))
        except Exception as exc:  # noqa: BLE001 - never raise to the caller: the refund is not known to have happened
            log.warning("alipay refund call failed: profile=%s order=%s error=%s: %s",
                        profile.name, request.order_no, type(exc).__name__, str(exc)[:200])
            if isinstance(exc, AnswerNotTrusted):
                return RefundResult(False, message=_(
                    "Alipay's answer failed signature verification, so the refund's outcome is unknown: "
                    "check it in the Alipay merchant center before retrying"))
            return RefundResult(False, message=_(
                "Cannot reach Alipay or its answer is unreadable (%(error)s), so the refund's outcome is unknown: "
                "check it in the Alipay merchant center before retrying", error=type(exc).__name__))
        if str(node.get("code")) != SUCCESS_CODE:
            return RefundResult(False, message=_("Alipay refused the refund: %(reason)s",
                                                 reason=_gateway_message(node) or _("no reason given")))
        if node.get("out_trade_no") not in (None, request.order_no):
            return RefundResult(False, message=_("The order number in Alipay's answer does not match the refunded order"))
        # fund_change "Y": money moved by this call; otherwise Alipay says to confirm with a refund query.
        return RefundResult(True, pending=node.get("fund_change") != "Y", message=_gateway_message(node))

    def verify_notification(self, profile, notice, now):
        if profile.get("sandbox") and self.production:
            return Rejection("sandbox profile on a production instance")
        if (notice.method or "").upper() != "POST":
            return Rejection(f"method {notice.method!r}: Alipay notifications are form POSTs")
        fields = notice.fields
        signature = (fields.get("sign") or "").strip()
        if not signature:
            return Rejection("no sign")
        sign_type = fields.get("sign_type")
        if sign_type is not None and sign_type.strip().upper() != "RSA2":
            return Rejection(f"sign_type {sign_type!r} is not RSA2")
        if not rsa2_verify(notification_content(fields), signature, profile.get("alipay_public_key")):
            return Rejection("bad signature (RSA2)")
        # Signed by Alipay from here on; now check that it is about this account's money.
        if (fields.get("app_id") or "") != str(profile.get("app_id")):
            return Rejection(f"app_id {fields.get('app_id')!r} is not this profile's application")
        seller = profile.get("seller_id")
        if seller not in (None, "") and (fields.get("seller_id") or "") != str(seller):
            return Rejection(f"seller_id {fields.get('seller_id')!r} is not this profile's merchant")
        for name in ("out_trade_no", "trade_no", "total_amount", "trade_status"):
            if not (fields.get(name) or "").strip():
                return Rejection(f"missing {name}")
        try:
            amount_fen = amount_to_fen(fields["total_amount"])
        except ValueError as exc:
            return Rejection(str(exc))
        status = fields["trade_status"].strip()
        return Notification(order_no=fields["out_trade_no"].strip(), amount_fen=amount_fen,
                            trade_no=fields["trade_no"].strip(),
                            status="paid" if status in PAID_STATUSES else "unpaid", raw_status=status)


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [AlipayChannel(production=bool(getattr(instance, "production", False)))]


plugin = _Plugin()
