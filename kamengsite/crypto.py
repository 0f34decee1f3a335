"""Card keys at rest: AES-256-GCM with keys from the instance, rotatable.

A sealed value is ``key id (4 bytes) | nonce (12) | ciphertext+tag``. The key id
is a fingerprint of the key, so the instance can list several keys (the first
seals, all open) and ``kamengsite keys rotate`` can re-seal old rows. The
associated data binds a ciphertext to its SKU, so a row copied onto another
product does not open. Dedupe uses an HMAC digest, never the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import KamengsiteError


class CardKeyCipherError(KamengsiteError):
    """A sealed card key cannot be opened (unknown key, tampered row)."""


def _fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"kamengsite-card-key-id:" + key).digest()[:4]


#: Invisible characters editors leave around a line: a UTF-8 BOM (Windows Notepad) and zero-width ones.
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"

#: key id (4) + nonce (12) + GCM tag (16): no sealed value is shorter.
_MIN_SEALED = 4 + 12 + 16


def normalize_secret(secret: str) -> str:
    """The form a card key is compared in: NFKC, surrounding whitespace and invisible marks dropped."""
    text = unicodedata.normalize("NFKC", secret)
    previous = None
    while text != previous:  # " \ufeffKEY " and "\ufeff KEY": strip both kinds until nothing changes
        previous = text
        text = text.strip().strip(_INVISIBLE)
    return text


class CardKeyCipher:
    def __init__(self, keys: list[bytes], digest_key: bytes):
        if not keys:
            raise KamengsiteError("no card-key encryption key configured (card_key_keys in the instance config)")
        for key in keys:
            if len(key) != 32:
                raise KamengsiteError("card-key encryption keys must be 32 bytes (AES-256)")
        self._active_id = _fingerprint(keys[0])
        self._active = AESGCM(keys[0])
        self._by_id = {_fingerprint(k): AESGCM(k) for k in keys}
        self._digest_key = digest_key

    @classmethod
    def from_instance(cls, instance) -> "CardKeyCipher":
        keys = []
        for number, encoded in enumerate(instance.card_key_keys, start=1):
            try:
                keys.append(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError, TypeError):
                raise KamengsiteError(
                    f"card_key_keys entry {number} in the instance config is not valid base64") from None
        digest_key = hmac.new(instance.secret_key.encode(), b"card-key-digest", hashlib.sha256).digest()
        return cls(keys, digest_key)

    @property
    def active_key_id(self) -> bytes:
        return self._active_id

    def seal(self, secret: str, sku_id: int) -> bytes:
        nonce = os.urandom(12)
        aad = b"sku:%d" % sku_id
        return self._active_id + nonce + self._active.encrypt(nonce, secret.encode("utf-8"), aad)

    def open(self, sealed: bytes, sku_id: int) -> str:
        if not isinstance(sealed, (bytes, bytearray, memoryview)):
            raise CardKeyCipherError(f"card key is not a sealed value ({type(sealed).__name__})")
        sealed = bytes(sealed)
        if len(sealed) < _MIN_SEALED:
            raise CardKeyCipherError("card key is truncated (tampered)")
        aead = self._by_id.get(sealed[:4])
        if aead is None:
            raise CardKeyCipherError("card key sealed with a key this instance does not have")
        try:
            return aead.decrypt(sealed[4:16], sealed[16:], b"sku:%d" % sku_id).decode("utf-8")
        except InvalidTag:
            raise CardKeyCipherError("card key failed authentication (tampered or moved)") from None

    def needs_reseal(self, sealed: bytes) -> bool:
        return bytes(sealed[:4]) != self._active_id

    def digest(self, secret: str) -> str:
        """Stable keyed digest of a card key, for duplicate detection."""
        return hmac.new(self._digest_key, normalize_secret(secret).encode("utf-8"), hashlib.sha256).hexdigest()
