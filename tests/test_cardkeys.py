"""Card key import: dedupe within the batch and against stock, invalid lines, stock counter, secrecy at rest."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from kamengsite import cardkeys
from kamengsite.cardkeys import MAX_KEY_LENGTH, CardKey, ImportReport, check_key_line, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import backend_name, database, init_database, release_connections
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, delivered_keys, mark_paid
from kamengsite.tenancy import all_sites


def _open(instance):
    init_database(instance.database_url)
    site = Site.create(slug="keys")
    product = create_product(site.id, "keys", 800, skus=[("A", 800), ("B", 900)])
    sku_a, sku_b = Sku.select().where(Sku.product == product.id).order_by(Sku.sort)
    return SimpleNamespace(site=site.id, product=product, sku=sku_a, sku_b=sku_b,
                           cipher=CardKeyCipher.from_instance(instance), backend=backend_name(instance.database_url))


@pytest.fixture
def local(instance):
    """A SQLite shop: enough for logic that is the same on every backend."""
    yield _open(instance)
    release_connections()


@pytest.fixture
def shop(db_instance):
    """The same shop on every backend of the matrix."""
    yield _open(db_instance)
    release_connections()


def _stock(sku) -> int:
    return Sku.get_by_id(sku.id).stock


def _codes(sku, cipher, status=None) -> list[str]:
    query = CardKey.select().where(CardKey.sku == sku.id)
    if status:
        query = query.where(CardKey.status == status)
    return [cipher.open(k.sealed, k.sku_id) for k in query.order_by(CardKey.id)]


# -- line checks --------------------------------------------------------------------


@pytest.mark.parametrize("line, problem", [
    ("OK-KEY", None),
    ("卡号 123 密码 456", None),
    ("number\tpassword", None),  # tab-separated card number and password is a common format
    ("x" * MAX_KEY_LENGTH, None),
    ("x" * (MAX_KEY_LENGTH + 1), "longer than"),
    ("NUL\x00INSIDE", "control"),
    ("ESC\x1b[31m", "control"),
    ("DEL\x7f", "control"),
    ("CR\rINSIDE", "control"),
    ("LF\nINSIDE", "control"),
    ("NEL\x85INSIDE", "control"),
    ("LS\u2028INSIDE", "control"),
])
def test_check_key_line(line, problem):
    got = check_key_line(line)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


# -- import --------------------------------------------------------------------------


def test_import_dedupes_within_the_batch_and_reports_invalid_lines_by_number(local):
    lines = [
        "KEY-A",          # 1
        "KEY-B",          # 2
        "KEY-A",          # 3 duplicate in batch
        "",               # 4 empty: skipped, still counted in the numbering
        "   ",            # 5 blank
        "  KEY-B  ",      # 6 duplicate after trimming
        "BAD\x00KEY",     # 7 invalid
        "K" * 1025,       # 8 invalid
        "ＫＥＹ－Ｃ",      # 9 full-width: NFKC makes it KEY-C
        "KEY-C",          # 10 duplicate of line 9
        "KEY-D\r\n",      # 11 CRLF file
    ]
    report = import_keys(local.sku, lines, local.cipher)
    assert report.imported == 4
    assert report.duplicates_in_batch == 3
    assert report.duplicates_in_stock == 0
    assert report.duplicates == 3
    assert [number for number, _ in report.invalid] == [7, 8]
    assert "control" in report.invalid[0][1] and "longer" in report.invalid[1][1]
    assert _codes(local.sku, local.cipher) == ["KEY-A", "KEY-B", "KEY-C", "KEY-D"]  # file order: FIFO
    assert _stock(local.sku) == 4
    assert len(report.batch) == 32
    assert {k.batch for k in CardKey.select()} == {report.batch}
    assert report.as_dict() == {"imported": 4, "duplicates_in_batch": 3, "duplicates_in_stock": 0, "invalid": 2,
                                "invalid_lines": report.invalid, "batch": report.batch}


def test_import_dedupes_against_stock_including_sold_keys(local):
    import_keys(local.sku, ["S-1", "S-2", "S-3"], local.cipher)
    order = create_order(site_id=local.site, sku_id=local.sku.id, quantity=1, contact="c@example.com")
    mark_paid(order.order_no, channel="demo", trade_no="T-SOLD", amount_fen=800)
    assert _codes(local.sku, local.cipher, "sold") == ["S-1"]

    report = import_keys(local.sku, ["S-1", "S-3", "S-4", "S-4"], local.cipher)
    assert (report.imported, report.duplicates_in_stock, report.duplicates_in_batch) == (1, 2, 1)
    assert _codes(local.sku, local.cipher) == ["S-1", "S-2", "S-3", "S-4"]  # a sold code never comes back
    assert CardKey.select().where(CardKey.status == "sold").count() == 1
    assert _stock(local.sku) == 3 == CardKey.select().where(CardKey.status == "available").count()


def test_same_code_may_be_stocked_in_two_skus(local):
    assert import_keys(local.sku, ["SHARED"], local.cipher).imported == 1
    assert import_keys(local.sku_b, ["SHARED"], local.cipher).imported == 1
    assert (_stock(local.sku), _stock(local.sku_b)) == (1, 1)
    assert _codes(local.sku_b, local.cipher) == ["SHARED"]


def test_dedupe_across_chunk_boundaries(local, monkeypatch):
    monkeypatch.setattr(cardkeys, "CHUNK", 3)
    monkeypatch.setattr(cardkeys, "SQLITE_CHUNK", 3, raising=False)
    lines = [f"C-{n}" for n in range(10)] + ["C-1", "C-9"] + [f"C-{n}" for n in range(10, 14)]
    report = import_keys(local.sku.id, lines, local.cipher)  # a bare SKU id works too
    assert (report.imported, report.duplicates_in_batch, report.duplicates_in_stock) == (14, 2, 0)
    assert _codes(local.sku, local.cipher) == [f"C-{n}" for n in range(14)]
    assert _stock(local.sku) == 14


def test_import_accepts_a_generator_and_a_whole_text(local):
    report = import_keys(local.sku, (f"G-{n}" for n in range(3)), local.cipher)
    assert report.imported == 3
    text = "\ufeffT-1\r\nT-2\n\nT-1\nBAD\x00\n"  # a file saved by Notepad: BOM and CRLF
    report = import_keys(local.sku, text, local.cipher)
    assert (report.imported, report.duplicates_in_batch) == (2, 1)
    assert [n for n, _ in report.invalid] == [5]
    assert _codes(local.sku, local.cipher) == ["G-0", "G-1", "G-2", "T-1", "T-2"]


def test_bom_on_the_first_line_does_not_defeat_dedupe(local):
    import_keys(local.sku, ["BOM-KEY", "OTHER"], local.cipher)
    report = import_keys(local.sku, ["\ufeffBOM-KEY", "NEW\u200b"], local.cipher)
    assert (report.imported, report.duplicates_in_stock) == (1, 1)
    assert _codes(local.sku, local.cipher) == ["BOM-KEY", "OTHER", "NEW"]


def test_empty_import_writes_nothing(local):
    report = import_keys(local.sku, ["", "  ", "\n"], local.cipher)
    assert report == ImportReport(batch=report.batch)
    assert CardKey.select().count() == 0 and _stock(local.sku) == 0


def test_card_key_repr_never_shows_the_key(local):
    import_keys(local.sku, ["REPR-SECRET-1"], local.cipher)
    key = CardKey.get()
    assert "REPR-SECRET" not in repr(key) and "REPR-SECRET" not in str(key)
    assert repr(key) == f"<CardKey {key.id} sku={local.sku.id} available>"


# -- on every backend ------------------------------------------------------------------------


def test_import_keeps_file_order_and_stock_on_every_backend(shop):
    lines = [f"ORDERED-{n:03d}" for n in range(50)]
    lines.reverse()  # not sorted: the order of the file is the delivery order
    report = import_keys(shop.sku, lines, shop.cipher)
    again = import_keys(shop.sku, lines[:10] + ["ORDERED-NEW"], shop.cipher)
    assert (report.imported, again.imported, again.duplicates_in_stock) == (50, 1, 10)
    assert _codes(shop.sku, shop.cipher) == lines + ["ORDERED-NEW"]
    assert _stock(shop.sku) == 51 == CardKey.select().where(CardKey.status == "available").count()

    order = create_order(site_id=shop.site, sku_id=shop.sku.id, quantity=3, contact="fifo@example.com")
    mark_paid(order.order_no, channel="demo", trade_no="T-FIFO", amount_fen=order.amount_fen)
    with all_sites():
        assert delivered_keys(Order.get_by_id(order.id), shop.cipher) == lines[:3]


PLAINTEXTS = [
    "PLAINTEXT-CANARY-0001-ABCDEFGH",
    "卡号8800123456密码665544",
    "steam-wallet-XK3P9-QQ7LM-ZT4RW",
    "canary\ttab-separated-password",
]


def test_keys_are_unreadable_in_the_raw_database(shop):
    import_keys(shop.sku, PLAINTEXTS, shop.cipher)
    order = create_order(site_id=shop.site, sku_id=shop.sku.id, quantity=1, contact="raw@example.com")
    mark_paid(order.order_no, channel="demo", trade_no="T-RAW", amount_fen=800)

    cursor = database.execute_sql("SELECT * FROM card_key")
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    assert len(rows) == len(PLAINTEXTS)
    assert {"sealed", "digest", "batch", "status"} <= set(columns)

    needles = []
    for plain in PLAINTEXTS:
        raw = plain.encode("utf-8")
        # Any 8-character piece of a key, in text, UTF-8, UTF-16 and hex; and its unkeyed hashes.
        for i in range(0, max(1, len(plain) - 7)):
            piece = plain[i:i + 8]
            needles += [piece.encode("utf-8"), piece.encode("utf-16-le"), piece.encode("utf-8").hex().encode()]
        needles += [hashlib.sha256(raw).hexdigest().encode(), hashlib.md5(raw).hexdigest().encode()]

    checked = 0
    for row in rows:
        for column, value in zip(columns, row):
            if value is None:
                continue
            if isinstance(value, (bytes, bytearray, memoryview)):
                blob = bytes(value)
            else:
                blob = str(value).encode("utf-8")
            for needle in needles:
                assert needle not in blob, f"card_key.{column} holds a readable piece of a key"
                assert needle not in blob.hex().encode()
            checked += 1
    assert checked >= len(PLAINTEXTS) * 4

    # ... while the application still reads them all back.
    assert sorted(_codes(shop.sku, shop.cipher)) == sorted(PLAINTEXTS)
