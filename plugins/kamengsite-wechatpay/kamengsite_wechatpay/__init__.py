"""微信支付 API v3, Native (QR code) payments, as a kamengsite payment channel (``wechatpay``).

Protocol (WeChat Pay API v3, public-key mode; ``cryptography`` only):

* **Create** — ``POST https://api.mch.weixin.qq.com/v3/pay/transactions/native`` with a JSON
  body ``{appid, mchid, description, out_trade_no, notify_url, amount:{total, currency}}`` and
  ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",
  timestamp="…",serial_no="…"`` where ``signature = base64(SHA256withRSA(merchant key,
  "POST\\n/v3/pay/transactions/native\\nTIMESTAMP\\nNONCE\\nBODY\\n"))``. The answer's
  ``code_url`` (``weixin://wxpay/bizpayurl?pr=…``) is shown to the buyer as a QR code. The HTTP
  call is ``post_json`` (urllib, 10 s timeout) — replaceable per channel (``transport=``) or by
  patching this module's ``post_json``.
* **Notify** — ``POST`` JSON with headers ``Wechatpay-Serial``, ``Wechatpay-Signature``,
  ``Wechatpay-Timestamp``, ``Wechatpay-Nonce``, ``Wechatpay-Signature-Type``. The signature is
  base64 SHA256withRSA PKCS#1 v1.5 over ``b"{timestamp}\\n{nonce}\\n" + RAW_BODY + b"\\n"`` with
  the platform public key (the raw bytes as received — never re-serialised JSON). Refused: a
  serial that is not the configured public key id, a missing/other signature type, a timestamp
  more than 300 s away, a bad signature (WeChat's deliberate ``WECHATPAY/SIGNTEST/`` probes
  included). Then ``resource`` is decrypted with AES-256-GCM (key = APIv3 key, nonce =
  ``resource.nonce``, aad = ``resource.associated_data``, ciphertext base64 with the 16-byte tag
  appended) and ``event_type == TRANSACTION.SUCCESS``, ``appid``, ``mchid``, ``trade_state ==
  SUCCESS``, ``amount.total`` (int fen) and ``amount.currency == CNY`` are checked. The trade
  number is ``transaction_id``.
* **Reply** — ``204`` with an empty body on success; ``400`` with
  ``{"code":"FAIL","message":"失败"}`` otherwise (the reason goes to the log only).
* **Refund** — ``POST /v3/refund/domestic/refunds`` with ``{transaction_id | out_trade_no,
  out_refund_no, reason, amount:{refund, total, currency}}``, signed like every request. The
  answer is believed only when its headers carry WeChat Pay's signature over
  ``TIMESTAMP\nNONCE\nRAW_BODY\n`` (same serial, window and key checks as a notification);
  ``status`` SUCCESS is a refund, PROCESSING an accepted (pending) one, anything else a "no". The
  call is ``post_raw`` (urllib; status, headers and body, HTTP errors included) — replaceable per
  channel (``raw_transport=``) or by patching this module's ``post_raw``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import (Channel, Notification, PaymentAction, PaymentError, PayType, RefundResult, Rejection,
                                 Reply)

log = logging.getLogger(__name__)

API_BASE = "https://api.mch.weixin.qq.com"
NATIVE_PATH = "/v3/pay/transactions/native"
REFUND_PATH = "/v3/refund/domestic/refunds"
REASON_MAX_CHARS = 80
MESSAGE_MAX = 200
MAX_RESPONSE_BYTES = 1 << 20
AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_WINDOW = 300
HTTP_TIMEOUT = 10.0
DESCRIPTION_MAX_BYTES = 127
FAIL_BODY = json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False, separators=(",", ":"))  # i18n: keep - protocol reply

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see, default 微信支付"},  # i18n: keep - names in the gateway's console
        "appid": {"type": "string", "pattern": r"^[A-Za-z0-9_]{6,32}$",
                  "description": "AppID bound to the merchant (公众号/小程序/开放平台), e.g. wx8888888888888888"},  # i18n: keep - names in the gateway's console
        "mchid": {"type": ["string", "integer"], "pattern": r"^\d{6,32}$", "description": "商户号"},  # i18n: keep - names in the gateway's console
        "merchant_private_key": {"type": "string", "minLength": 64, "writeOnly": True,
                                 "description": "商户API私钥 apiclient_key.pem (PEM or bare base64 PKCS#8)"},  # i18n: keep - names in the gateway's console
        "merchant_serial_no": {"type": "string", "pattern": r"^[0-9A-Fa-f]{8,64}$",
                               "description": "商户API证书序列号"},  # i18n: keep - names in the gateway's console
        "apiv3_key": {"type": "string", "pattern": r"^[\x21-\x7e]{32}$", "writeOnly": True,
                      "description": "APIv3密钥, exactly 32 characters"},  # i18n: keep - names in the gateway's console
        "platform_public_key": {"type": "string", "minLength": 64,
                                "description": "微信支付公钥 pub_key.pem (PEM or bare base64 SPKI)"},  # i18n: keep - names in the gateway's console
        "platform_public_key_id": {"type": "string", "pattern": r"^[A-Za-z0-9_]{8,80}$",
                                   "description": "微信支付公钥ID, e.g. PUB_KEY_ID_0112345678..."},  # i18n: keep - names in the gateway's console
        "api_base": {"type": "string", "pattern": r"^https://[A-Za-z0-9.-]+(:\d+)?$",
                     "description": "default https://api.mch.weixin.qq.com (backup: https://api2.mch.weixin.qq.com)"},
    },
    "required": ["appid", "mchid", "merchant_private_key", "merchant_serial_no", "apiv3_key",
                 "platform_public_key", "platform_public_key_id"],
    "additionalProperties": False,
}


# -- keys and signatures ------------------------------------------------------------------


def _pem(text: str, kind: str) -> bytes:
    text = text.strip()
    if text.startswith("-----"):
        return text.encode()
    return f"-----BEGIN {kind}-----\n{''.join(text.split())}\n-----END {kind}-----\n".encode()


@lru_cache(maxsize=32)
def load_private_key(text: str):
    key = serialization.load_pem_private_key(_pem(text, "PRIVATE KEY"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the merchant private key is not an RSA key")
    return key


@lru_cache(maxsize=32)
def load_public_key(text: str):
    key = serialization.load_pem_public_key(_pem(text, "PUBLIC KEY"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the platform public key is not an RSA key")
    return key


def request_message(method: str, url_path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n``: what the merchant signs for an API request."""
    return f"{method}\n{url_path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def notify_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """``TIMESTAMP\\nNONCE\\nBODY\\n`` over the raw body bytes: what WeChat Pay signs."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def authorization(profile, method: str, url_path: str, body: bytes, *, timestamp=None, nonce=None) -> str:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16).upper()
    key = load_private_key(profile.get("merchant_private_key"))
    signature = base64.b64encode(key.sign(request_message(method, url_path, timestamp, nonce, body),
                                          padding.PKCS1v15(), hashes.SHA256())).decode()
    return (f'{AUTH_SCHEMA} mchid="{profile.get("mchid")}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{profile.get("merchant_serial_no")}"')


def rsa_verify(public_key_text: str, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        load_public_key(public_key_text).verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        return False
    return True


def signature_problem(profile, headers: dict, body: bytes, now: float, *, type_required: bool = True) -> str:
    """Why a message (notification or API answer) is not WeChat Pay's; "" when it is.

    The serial must be the configured public key id, the timestamp within the window, and the
    signature over ``TIMESTAMP\\nNONCE\\nRAW_BODY\\n`` must verify with the platform public key.
    Notifications always name the signature type; API answers may leave it out.
    """
    sign_type = _header(headers, "Wechatpay-Signature-Type")
    if (sign_type or type_required) and sign_type != AUTH_SCHEMA:
        return f"Wechatpay-Signature-Type {sign_type or '(none)'!r} is not {AUTH_SCHEMA}"
    serial = _header(headers, "Wechatpay-Serial")
    if not hmac.compare_digest(serial.encode(), str(profile.get("platform_public_key_id")).encode()):
        return f"Wechatpay-Serial {serial or '(none)'!r} is not the configured public key id"
    stamp = _header(headers, "Wechatpay-Timestamp")
    if not (stamp.isascii() and stamp.isdigit() and 1 <= len(stamp) <= 12):
        return f"Wechatpay-Timestamp {stamp!r} is not seconds"
    if abs(now - int(stamp)) > TIMESTAMP_WINDOW:
        return f"Wechatpay-Timestamp {stamp} is outside the {TIMESTAMP_WINDOW} s window"
    nonce = _header(headers, "Wechatpay-Nonce")
    signature = _header(headers, "Wechatpay-Signature")
    if not nonce or not signature:
        return "missing Wechatpay-Nonce or Wechatpay-Signature"
    if not rsa_verify(profile.get("platform_public_key"), notify_message(stamp, nonce, body), signature):
        probe = signature.startswith("WECHATPAY/SIGNTEST/")  # WeChat's deliberate mis-signed test messages
        return "bad signature" + (" (WeChat Pay signature probe)" if probe else "")
    return ""


def decrypt_resource(apiv3_key: str, resource: dict) -> bytes:
    """AES-256-GCM: key = APIv3 key bytes, nonce, aad = associated_data, base64 ciphertext||tag."""
    key = apiv3_key.encode()
    if len(key) != 32:
        raise ValueError("the APIv3 key is not 32 bytes")
    nonce, aad, ciphertext = resource.get("nonce"), resource.get("associated_data", ""), resource.get("ciphertext")
    if not isinstance(nonce, str) or not nonce or not isinstance(ciphertext, str) or not isinstance(aad, str):
        raise ValueError("resource lacks nonce or ciphertext")
    data = base64.b64decode(ciphertext, validate=True)
    if len(data) <= 16:
        raise ValueError("ciphertext is too short")
    return AESGCM(key).decrypt(nonce.encode(), data, aad.encode() if aad else None)


# -- the HTTP call (needs the network; replaced in tests) -------------------------------------


def post_json(url: str, body: bytes, headers: dict, timeout: float = HTTP_TIMEOUT) -> dict:
    """POST ``body`` to ``url``; the decoded JSON answer, or PaymentError for any failure."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - https API base only
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        log.error("wechatpay: %s answered HTTP %s: %s", url, exc.code, detail)
        raise PaymentError(_("WeChat Pay could not create the payment; please try again later")) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.error("wechatpay: %s unreachable: %s", url, exc)
        raise PaymentError(_("Cannot reach WeChat Pay; please try again later")) from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise PaymentError(_("WeChat Pay returned an unreadable answer")) from exc


@dataclass(frozen=True)
class HttpAnswer:
    """An API answer as received: what its signature is checked over."""

    status: int
    headers: dict
    body: bytes


def post_raw(url: str, body: bytes, headers: dict, timeout: float = HTTP_TIMEOUT) -> HttpAnswer:
    """POST ``body``; the answer with its headers, 4xx/5xx included. Raises only when nothing came back."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - https API base only
            return HttpAnswer(response.status, dict(response.headers), response.read(MAX_RESPONSE_BYTES))
    except urllib.error.HTTPError as exc:  # WeChat Pay answers refusals with 4xx and a JSON body
        return HttpAnswer(exc.code, dict(exc.headers or {}), exc.read(MAX_RESPONSE_BYTES))


def _header(headers: dict, name: str) -> str:
    wanted = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted:
            return str(value).strip()
    return ""


def _truncate_bytes(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


class WechatPayChannel(Channel):
    id = "wechatpay"
    devices = ("pc", "mobile")
    settings_schema = SETTINGS_SCHEMA

    supports_refund = True

    @property
    def name(self):
        return _("WeChat Pay")

    @property
    def pay_types(self):
        return (PayType("wxpay", _("WeChat Pay")),)

    def __init__(self, transport=None, raw_transport=None):
        self.transport = transport  # ``transport(url, body, headers, timeout) -> dict``; default post_json
        self.raw_transport = raw_transport  # ``(url, body, headers, timeout) -> HttpAnswer``; default post_raw

    # -- paying -------------------------------------------------------------------------

    def native_request(self, profile, request) -> tuple[str, bytes, dict]:
        """The signed ``POST /v3/pay/transactions/native``: (url, body bytes, headers)."""
        payload = {
            "appid": profile.get("appid"),
            "mchid": str(profile.get("mchid")),
            "description": _truncate_bytes(request.subject or request.order_no, DESCRIPTION_MAX_BYTES),
            "out_trade_no": request.order_no,
            "notify_url": request.notify_url,
            "amount": {"total": int(request.amount_fen), "currency": "CNY"},
        }
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Authorization": authorization(profile, "POST", NATIVE_PATH, body),
                   "Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "kamengsite-wechatpay/0.1"}
        return (profile.get("api_base") or API_BASE).rstrip("/") + NATIVE_PATH, body, headers

    def create_payment(self, profile, request):
        try:
            url, body, headers = self.native_request(profile, request)
        except (ValueError, TypeError) as exc:
            log.error("wechatpay profile %s: cannot sign the request: %s", profile.name, type(exc).__name__)
            raise PaymentError(_("The payment channel is misconfigured; please contact the site owner")) from exc
        answer = (self.transport or post_json)(url, body, headers, HTTP_TIMEOUT)
        code_url = answer.get("code_url") if isinstance(answer, dict) else None
        if not isinstance(code_url, str) or not code_url.startswith("weixin://"):
            log.error("wechatpay profile %s: no code_url in the answer (%s)", profile.name,
                      (answer or {}).get("code") if isinstance(answer, dict) else type(answer).__name__)
            raise PaymentError(_("WeChat Pay could not create the payment; please try again later"))
        return PaymentAction.qrcode(code_url)

    # -- refunds --------------------------------------------------------------------------

    def refund_request(self, profile, request) -> tuple[str, bytes, dict]:
        """The signed ``POST /v3/refund/domestic/refunds``: (url, body bytes, headers)."""
        payload = {"out_refund_no": request.refund_no}
        if request.trade_no:
            payload["transaction_id"] = request.trade_no
        else:
            payload["out_trade_no"] = request.order_no
        if request.reason:
            payload["reason"] = request.reason[:REASON_MAX_CHARS]
        payload["amount"] = {"refund": int(request.amount_fen), "total": int(request.total_fen), "currency": "CNY"}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Authorization": authorization(profile, "POST", REFUND_PATH, body),
                   "Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "kamengsite-wechatpay/0.1"}
        return (profile.get("api_base") or API_BASE).rstrip("/") + REFUND_PATH, body, headers

    def refund(self, profile, request):
        if not 0 < request.amount_fen <= request.total_fen:
            return RefundResult(False, message=_("The refund amount must be more than 0 and at most the order amount"))
        try:
            url, body, headers = self.refund_request(profile, request)
        except (ValueError, TypeError):
            return RefundResult(False, message=_("The merchant API private key cannot sign; check the WeChat Pay settings"))
        try:
            answer = (self.raw_transport or post_raw)(url, body, headers, HTTP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - network, TLS, timeout: never raise to the caller
            log.warning("wechatpay refund call failed: profile=%s order=%s error=%s",
                        profile.name, request.order_no, type(exc).__name__)
            return RefundResult(False, message=_("Cannot reach WeChat Pay (%(error)s); please retry later",
                                                 error=type(exc).__name__))
        return self._refund_result(profile, request, answer)

    def _refund_result(self, profile, request, answer: HttpAnswer) -> RefundResult:
        try:
            data = json.loads(answer.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return RefundResult(False, message=_("WeChat Pay returned an unreadable answer (HTTP %(status)s)",
                                                 status=answer.status))
        if not 200 <= answer.status < 300:  # a "no" needs no proof: believing it costs nothing
            words = f"{data.get('code') or ''} {data.get('message') or ''}".strip()[:MESSAGE_MAX]
            words = words or "HTTP %s" % answer.status
            return RefundResult(False, message=_("WeChat Pay refused the refund: %(reason)s", reason=words))
        why = signature_problem(profile, answer.headers, answer.body, time.time(), type_required=False)
        if why:
            log.warning("wechatpay refund answer refused: profile=%s order=%s reason=%s",
                        profile.name, request.order_no, why)
            return RefundResult(False, message=_(
                "WeChat Pay's answer failed signature verification (%(why)s), so the refund's outcome is unknown: "
                "check it on the merchant platform", why=why[:80]))
        if data.get("out_refund_no") != request.refund_no:
            return RefundResult(False, message=_("The refund number in WeChat Pay's answer does not match the request"))
        status, refund_id = str(data.get("status") or ""), str(data.get("refund_id") or "")[:64]
        if status == "SUCCESS":
            return RefundResult(True, gateway_refund_no=refund_id)
        if status == "PROCESSING":
            return RefundResult(True, gateway_refund_no=refund_id, pending=True, message=_("Refund in progress"))
        return RefundResult(False, gateway_refund_no=refund_id,
                            message=_("WeChat Pay refund status: %(status)s", status=status[:32] or _("unknown")))

    # -- notifications --------------------------------------------------------------------

    def verify_notification(self, profile, notice, now):
        if notice.method != "POST":
            return Rejection(f"method {notice.method} is not POST")
        headers, body = notice.headers, notice.body or b""
        why = signature_problem(profile, headers, body, now)
        if why:
            return Rejection(why)
        # Signed by WeChat Pay from here on.
        try:
            event = json.loads(body)
        except ValueError:
            return Rejection("body is not JSON")
        if not isinstance(event, dict):
            return Rejection("body is not a JSON object")
        if event.get("event_type") != "TRANSACTION.SUCCESS":
            return Rejection(f"event_type {event.get('event_type')!r} is not TRANSACTION.SUCCESS")
        resource = event.get("resource")
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            return Rejection("resource is not AEAD_AES_256_GCM")
        if resource.get("original_type", "transaction") != "transaction":
            return Rejection(f"resource original_type {resource.get('original_type')!r} is not transaction")
        try:
            plain = decrypt_resource(profile.get("apiv3_key"), resource)
        except InvalidTag:
            return Rejection("resource does not decrypt (bad AES-GCM tag or wrong APIv3 key)")
        except (ValueError, TypeError, binascii.Error) as exc:
            return Rejection(f"resource does not decrypt: {exc}")
        try:
            trade = json.loads(plain)
        except ValueError:
            return Rejection("decrypted resource is not JSON")
        if not isinstance(trade, dict):
            return Rejection("decrypted resource is not a JSON object")
        if trade.get("appid") != profile.get("appid"):
            return Rejection(f"appid {trade.get('appid')!r} is not this profile's")
        if str(trade.get("mchid", "")) != str(profile.get("mchid")):
            return Rejection(f"mchid {trade.get('mchid')!r} is not this profile's merchant")
        for name in ("out_trade_no", "transaction_id", "trade_state"):
            if not isinstance(trade.get(name), str) or not trade[name].strip():
                return Rejection(f"missing {name}")
        amount = trade.get("amount")
        if not isinstance(amount, dict):
            return Rejection("missing amount")
        total = amount.get("total")
        if type(total) is not int or total < 0:  # fen; bool, float and str are refused
            return Rejection(f"amount.total {total!r} is not an integer number of fen")
        if amount.get("currency") != "CNY":
            return Rejection(f"amount.currency {amount.get('currency')!r} is not CNY")
        state = trade["trade_state"].strip()
        return Notification(order_no=trade["out_trade_no"].strip(), amount_fen=total,
                            trade_no=trade["transaction_id"].strip(),
                            status="paid" if state == "SUCCESS" else "unpaid", raw_status=state)

    def reply(self, ok: bool) -> Reply:
        if ok:
            return Reply("", 204)
        return Reply(FAIL_BODY, 400, "application/json; charset=utf-8")


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [WechatPayChannel()]


plugin = _Plugin()
