"""支付宝开放平台 (Alipay Open Platform) payment channel for kamengsite: page pay, RSA2.

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
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import urllib.parse
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kamengsite.hookspecs import hookimpl
from kamengsite.payments import Channel, Notification, PaymentAction, PaymentError, PayType, Rejection, fen_to_yuan, yuan_to_fen

GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"
PAID_STATUSES = ("TRADE_SUCCESS", "TRADE_FINISHED")
BEIJING = timezone(timedelta(hours=8))
SUBJECT_MAX_CHARS = 256
# Plain yuan with at most 2 decimals: no sign, no exponent, no NaN/Infinity, no spaces.
KEY_RE = r"^\s*(?:-----BEGIN [A-Z ]+-----[A-Za-z0-9+/=\s]+-----END [A-Z ]+-----|[A-Za-z0-9+/=\s]+)\s*$"

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see; default 支付宝"},
        "app_id": {"type": ["string", "integer"], "pattern": r"^[0-9]{6,32}$", "minimum": 0,
                   "description": "APPID of the application (开放平台 → 应用 → APPID)"},
        "seller_id": {"type": ["string", "integer"], "pattern": r"^2088[0-9]{12}$", "minimum": 0,
                      "description": "optional 商户PID (2088…); checked on every notification when set"},
        "app_private_key": {"type": "string", "minLength": 64, "pattern": KEY_RE, "writeOnly": True,
                            "description": "应用私钥: PEM, or bare base64 PKCS#8 / PKCS#1 body"},
        "alipay_public_key": {"type": "string", "minLength": 64, "pattern": KEY_RE,
                              "description": "支付宝公钥 (not the 应用公钥): PEM or bare base64 SPKI body"},
        "gateway": {"type": "string", "pattern": r"^https://[^\s/?#]+/[^\s?#]*$",
                    "description": "default https://openapi.alipay.com/gateway.do"},
        "sandbox": {"type": "boolean", "description": "use the 沙箱 gateway (refused on production instances)"},
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


def amount_to_fen(text) -> int:
    """``total_amount`` as Alipay writes it (no surrounding spaces) → fen, by the host's ``yuan_to_fen``."""
    if isinstance(text, str) and text != text.strip():
        raise ValueError(f"total_amount {text!r} has surrounding spaces")
    return yuan_to_fen(text)


# -- the channel ---------------------------------------------------------------------------------


class AlipayChannel(Channel):
    id = "alipay"
    name = "支付宝"
    pay_types = (PayType("alipay", "支付宝"),)
    devices = ("pc", "mobile")
    settings_schema = SETTINGS_SCHEMA
    success_body = "success"
    failure_body = "fail"
    failure_status = 400

    def __init__(self, production: bool = False):
        self.production = production

    def gateway(self, profile) -> str:
        if profile.get("gateway"):
            return profile.get("gateway")
        return SANDBOX_GATEWAY if profile.get("sandbox") else GATEWAY

    def create_payment(self, profile, request):
        """电脑网站支付 (``alipay.trade.page.pay``): a redirect to the gateway with signed parameters."""
        if profile.get("sandbox") and self.production:
            raise PaymentError("支付渠道配置有误（沙箱账号不能用于正式站点），请联系站长")
        biz = {
            "out_trade_no": request.order_no,
            "total_amount": fen_to_yuan(request.amount_fen),
            "subject": (request.subject or request.order_no)[:SUBJECT_MAX_CHARS],
            "product_code": "FAST_INSTANT_TRADE_PAY",
        }
        params = {
            "app_id": str(profile.get("app_id")),
            "method": "alipay.trade.page.pay",
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "notify_url": request.notify_url,
            "return_url": request.return_url,
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params = {k: v for k, v in params.items() if v}
        try:
            params["sign"] = rsa2_sign(request_content(params), profile.get("app_private_key"))
        except (ValueError, TypeError) as exc:
            raise PaymentError("支付渠道配置有误，请联系站长") from exc
        return PaymentAction.redirect(f"{self.gateway(profile)}?{urllib.parse.urlencode(params)}")

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
