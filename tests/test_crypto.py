"""Card keys at rest: AES-256-GCM sealing bound to the SKU, rotation, keyed digests."""

from __future__ import annotations

import base64
import hashlib
import os
from types import SimpleNamespace

import pytest

from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher, CardKeyCipherError, normalize_secret
from kamengsite.db import init_database, release_connections
from kamengsite.errors import KamengsiteError
from kamengsite.instance import Instance
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, delivered_keys, mark_paid
from kamengsite.tenancy import all_sites

K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))
DIGEST_KEY = b"d" * 32


def cipher(*keys, digest_key=DIGEST_KEY):
    return CardKeyCipher(list(keys), digest_key)


# -- sealing -------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["ABCD-EFGH-1234", "卡号 8800123 密码 6655", "x" * 1024, "tab\tinside", "é"])
def test_seal_opens_to_the_same_secret(secret):
    c = cipher(K1)
    sealed = c.seal(secret, 7)
    assert c.open(sealed, 7) == secret
    assert c.open(memoryview(sealed), 7) == secret  # PostgreSQL hands BLOBs back as memoryview
    assert c.open(bytearray(sealed), 7) == secret


def test_sealed_layout_is_key_id_nonce_ciphertext_tag_and_randomised():
    c = cipher(K1)
    a, b = c.seal("SAME-SECRET", 1), c.seal("SAME-SECRET", 1)
    assert a != b  # fresh nonce every time: equal keys are not visible as equal blobs
    assert a[:4] == b[:4] == c.active_key_id == hashlib.sha256(b"kamengsite-card-key-id:" + K1).digest()[:4]
    assert a[4:16] != b[4:16]
    assert len(a) == 4 + 12 + len("SAME-SECRET") + 16
    assert b"SAME-SECRET" not in a


def test_sealed_key_is_bound_to_its_sku():
    c = cipher(K1)
    sealed = c.seal("MOVE-ME", 1)
    with pytest.raises(CardKeyCipherError, match="tampered or moved"):
        c.open(sealed, 2)
    assert c.open(sealed, 1) == "MOVE-ME"


@pytest.mark.parametrize("position", [4, 10, 16, 20, -1, -16])  # nonce, ciphertext, tag
def test_any_flipped_byte_fails_authentication(position):
    c = cipher(K1)
    sealed = bytearray(c.seal("TAMPER-ME-PLEASE", 3))
    sealed[position] ^= 0x01
    with pytest.raises(CardKeyCipherError):
        c.open(bytes(sealed), 3)


def test_flipped_key_id_is_an_unknown_key():
    c = cipher(K1)
    sealed = bytearray(c.seal("X", 3))
    sealed[0] ^= 0xFF
    with pytest.raises(CardKeyCipherError, match="does not have"):
        c.open(bytes(sealed), 3)


@pytest.mark.parametrize("cut", [0, 3, 4, 10, 16, 20, 31])
def test_truncated_blob_is_a_cipher_error_not_a_crash(cut):
    c = cipher(K1)
    sealed = c.seal("SHORT", 3)[:cut]
    with pytest.raises(CardKeyCipherError):
        c.open(sealed, 3)


@pytest.mark.parametrize("value", [None, "not bytes", 12345])
def test_non_blob_is_a_cipher_error(value):
    with pytest.raises(CardKeyCipherError):
        cipher(K1).open(value, 3)


def test_another_instances_key_does_not_open():
    sealed = cipher(K1).seal("MINE", 1)
    with pytest.raises(CardKeyCipherError):
        cipher(K2).open(sealed, 1)


# -- rotation ------------------------------------------------------------------------


def test_rotation_new_first_key_seals_old_keys_still_open():
    old = cipher(K1)
    sealed_old = old.seal("OLD-ROW", 5)
    rotated = cipher(K2, K1)
    assert rotated.open(sealed_old, 5) == "OLD-ROW"
    assert rotated.needs_reseal(sealed_old) is True
    assert old.needs_reseal(sealed_old) is False

    sealed_new = rotated.seal("NEW-ROW", 5)
    assert sealed_new[:4] == rotated.active_key_id != old.active_key_id
    assert rotated.needs_reseal(sealed_new) is False
    assert rotated.needs_reseal(memoryview(sealed_old)) is True
    with pytest.raises(CardKeyCipherError):
        old.open(sealed_new, 5)  # a stale process without the new key cannot read new rows

    # Re-sealing moves a row to the active key; dropping the old key afterwards is then safe.
    resealed = rotated.seal(rotated.open(sealed_old, 5), 5)
    assert cipher(K2).open(resealed, 5) == "OLD-ROW"
    with pytest.raises(CardKeyCipherError):
        cipher(K2).open(sealed_old, 5)
    assert cipher(K3, K2, K1).open(sealed_old, 5) == "OLD-ROW"


def test_digest_survives_key_rotation_so_dedupe_keeps_working():
    assert cipher(K1).digest("CODE-1") == cipher(K2, K1).digest("CODE-1")


def test_from_instance_reads_base64_keys_first_seals(tmp_path):
    b64 = [base64.b64encode(k).decode() for k in (K2, K1)]
    instance = Instance(path=tmp_path, secret_key="s" * 64, card_key_keys=b64)
    c = CardKeyCipher.from_instance(instance)
    assert c.active_key_id == cipher(K2).active_key_id
    assert c.open(cipher(K1).seal("VIA-OLD", 9), 9) == "VIA-OLD"
    other = CardKeyCipher.from_instance(Instance(path=tmp_path, secret_key="t" * 64, card_key_keys=b64))
    assert c.digest("A") != other.digest("A")  # the digest key derives from the instance secret


@pytest.mark.parametrize("keys, message", [
    ([], "no card-key encryption key"),
    ([b"short"], "32 bytes"),
    ([K1, b"x" * 16], "32 bytes"),
])
def test_cipher_refuses_missing_or_wrong_size_keys(keys, message):
    with pytest.raises(KamengsiteError, match=message):
        CardKeyCipher(keys, DIGEST_KEY)


@pytest.mark.parametrize("bad", ["not base64 at all!", base64.b64encode(b"16-byte-key-0000").decode()])
def test_from_instance_refuses_bad_configured_keys(tmp_path, bad):
    instance = Instance(path=tmp_path, secret_key="s" * 64, card_key_keys=[bad])
    with pytest.raises(KamengsiteError, match="card_key_keys|32 bytes"):
        CardKeyCipher.from_instance(instance)


# -- digests and normalisation -------------------------------------------------------------


def test_digest_is_keyed_and_never_the_plain_hash():
    secret = "ABCD-1234"
    d = cipher(K1).digest(secret)
    assert len(d) == 64
    assert d != hashlib.sha256(secret.encode()).hexdigest()
    assert d != cipher(K1, digest_key=b"other").digest(secret)


@pytest.mark.parametrize("variant", ["  ABCD-1234  ", "ＡＢＣＤ－１２３４", "ABCD-1234\r\n", "\ufeffABCD-1234",
                                     "ABCD-1234\u200b"])
def test_digest_compares_normalised_forms(variant):
    c = cipher(K1)
    assert c.digest(variant) == c.digest("ABCD-1234")
    assert normalize_secret(variant) == "ABCD-1234"


def test_digest_tells_different_codes_apart():
    c = cipher(K1)
    assert c.digest("ABCD-1234") != c.digest("ABCD-1235")
    assert c.digest("abcd-1234") != c.digest("ABCD-1234")  # codes are case-sensitive


# -- in the database -----------------------------------------------------------------


@pytest.fixture
def shop(db_instance):
    init_database(db_instance.database_url)
    site = Site.create(slug="crypto")
    c = CardKeyCipher.from_instance(db_instance)
    product = create_product(site.id, "sealed", 500)
    sku = Sku.get(Sku.product == product.id)
    other = Sku.create(product=product.id, name="other", price_fen=500)
    yield SimpleNamespace(site=site.id, cipher=c, sku=sku, other=other)
    release_connections()


def test_rows_stored_in_the_database_open_on_every_backend(shop):
    import_keys(shop.sku, ["DB-KEY-1", "DB-KEY-2"], shop.cipher)
    rows = list(CardKey.select().where(CardKey.sku == shop.sku.id).order_by(CardKey.id))
    assert [shop.cipher.open(r.sealed, r.sku_id) for r in rows] == ["DB-KEY-1", "DB-KEY-2"]
    assert not any(shop.cipher.needs_reseal(r.sealed) for r in rows)


def test_tampered_row_fails_to_open_and_is_not_delivered(shop):
    import_keys(shop.sku, ["TAMPER-ROW"], shop.cipher)
    row = CardKey.get(CardKey.sku == shop.sku.id)
    blob = bytearray(bytes(row.sealed))
    blob[-1] ^= 0x80
    CardKey.update(sealed=bytes(blob)).where(CardKey.id == row.id).execute()

    order = create_order(site_id=shop.site, sku_id=shop.sku.id, quantity=1, contact="t@example.com")
    assert mark_paid(order.order_no, channel="demo", trade_no="T1", amount_fen=500).status == "delivered"
    with all_sites():
        delivered = Order.get_by_id(order.id)
    with pytest.raises(CardKeyCipherError):
        delivered_keys(delivered, shop.cipher)


def test_row_moved_to_another_sku_fails_to_open(shop):
    import_keys(shop.sku, ["MOVED-ROW"], shop.cipher)
    row = CardKey.get(CardKey.sku == shop.sku.id)
    CardKey.update(sku=shop.other.id).where(CardKey.id == row.id).execute()
    moved = CardKey.get_by_id(row.id)
    assert moved.sku_id == shop.other.id
    with pytest.raises(CardKeyCipherError, match="tampered or moved"):
        shop.cipher.open(moved.sealed, moved.sku_id)
    assert shop.cipher.open(moved.sealed, shop.sku.id) == "MOVED-ROW"  # the blob itself is intact


def test_rotated_cipher_opens_rows_sealed_before_rotation(shop, db_instance):
    import_keys(shop.sku, ["BEFORE-ROTATION"], shop.cipher)
    new_key = os.urandom(32)
    rotated = CardKeyCipher.from_instance(Instance(
        path=db_instance.path, secret_key=db_instance.secret_key,
        card_key_keys=[base64.b64encode(new_key).decode(), *db_instance.card_key_keys]))
    import_keys(shop.sku, ["AFTER-ROTATION", "BEFORE-ROTATION"], rotated)  # the digest still dedupes
    rows = list(CardKey.select().where(CardKey.sku == shop.sku.id).order_by(CardKey.id))
    assert [rotated.open(r.sealed, r.sku_id) for r in rows] == ["BEFORE-ROTATION", "AFTER-ROTATION"]
    assert [rotated.needs_reseal(r.sealed) for r in rows] == [True, False]
    with pytest.raises(CardKeyCipherError):
        shop.cipher.open(rows[1].sealed, rows[1].sku_id)
