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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from kamengsite.hookspecs import hookimpl
from kamengsite.payments import (Channel, Notification, PaymentAction, PaymentError, PayType, Rejection,
                                 fen_to_yuan, sign_content, yuan_to_fen)

TIMESTAMP_WINDOW = 300
NAME_MAX_BYTES = 127

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 40, "description": "what buyers see, e.g. 支付宝/微信"},
        "version": {"enum": ["v1", "v2"], "description": "v1 = MD5 key, v2 = RSA keys"},
        "api": {"type": "string", "pattern": r"^https?://[^\s/]+", "description": "gateway address, e.g. https://pay.example.com/"},
        "pid": {"type": ["string", "integer"], "pattern": r"^\d{1,20}$", "description": "商户ID"},
        "key": {"type": "string", "minLength": 8, "writeOnly": True, "description": "V1 商户密钥 (MD5)"},
        "merchant_private_key": {"type": "string", "minLength": 64, "writeOnly": True,
                                 "description": "V2 商户私钥: bare base64 PKCS#8 body (or PEM)"},
        "platform_public_key": {"type": "string", "minLength": 64,
                                "description": "V2 平台公钥: bare base64 SPKI body (or PEM)"},
        "pay_types": {"type": "array", "items": {"enum": ["alipay", "wxpay", "qqpay", "bank", "jdpay", "usdt"]},
                      "minItems": 1, "uniqueItems": True, "description": "the types offered to buyers"},
        "sitename": {"type": "string", "maxLength": 60},
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


class EpayChannel(Channel):
    id = "epay"
    name = "易支付"
    pay_types = (PayType("alipay", "支付宝"), PayType("wxpay", "微信支付"), PayType("qqpay", "QQ钱包"))
    devices = ("pc", "mobile", "qq", "wechat", "alipay", "jump")
    settings_schema = SETTINGS_SCHEMA
    success_body = "success"
    failure_body = "fail"
    failure_status = 400

    @staticmethod
    def version(profile) -> str:
        return profile.get("version") or "v1"

    def offered_types(self, profile) -> tuple:
        wanted = profile.get("pay_types")
        return tuple(t for t in self.pay_types if not wanted or t.id in wanted)

    def create_payment(self, profile, request):
        """Page jump: an auto-submitting form to ``submit.php`` (V1) or ``api/pay/submit`` (V2)."""
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
        fields = {k: v for k, v in fields.items() if v}
        api = profile.get("api").rstrip("/")
        try:
            if self.version(profile) == "v2":
                fields["timestamp"] = str(int(time.time()))
                fields["sign"] = rsa_sign(fields, profile.get("merchant_private_key"))
                fields["sign_type"] = "RSA"
                return PaymentAction.form(f"{api}/api/pay/submit", fields)
        except (ValueError, TypeError) as exc:
            raise PaymentError("支付渠道配置有误，请联系站长") from exc
        fields["sign"] = md5_sign(fields, profile.get("key"))
        fields["sign_type"] = "MD5"
        return PaymentAction.form(f"{api}/submit.php", fields)

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
