"""`kamengsite keys import | recount | rotate`: reports, stock, streaming, encryption at rest."""

from __future__ import annotations

import base64
import os
import tomllib

import pytest
import tomli_w
from click.testing import CliRunner

from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.cli import main
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import init_database, release_connections
from kamengsite.instance import Instance
from kamengsite.keys_cli import KeyFile
from kamengsite.models import Site
from kamengsite.orders import create_order


@pytest.fixture
def shop(instance):
    init_database(instance.database_url)
    site = Site.create(slug="main")
    product = create_product(site.id, "Game card", 1000, kind="card")
    yield {"instance": instance, "site": site.id, "product": product,
           "sku": Sku.get(Sku.product == product.id), "cipher": CardKeyCipher.from_instance(instance)}
    release_connections()


@pytest.fixture
def run(instance):
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(main, ["--instance", str(instance.path), *map(str, args)])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def stored_keys(sku_id, cipher):
    return [cipher.open(k.sealed, k.sku_id) for k in CardKey.select().where(CardKey.sku == sku_id).order_by(CardKey.id)]


# -- import ----------------------------------------------------------------------------


def test_import_txt_reports_duplicates_and_invalid_lines(shop, run, tmp_path):
    import_keys(shop["sku"], ["OLD-1", "OLD-2"], shop["cipher"])  # already in stock
    lines = [
        b"AAA-1",
        b"BBB-2\r",          # Windows line ending
        b"",                  # blank: skipped, not counted
        b"bad\x01key",        # line 4: control character
        b"AAA-1",             # repeated in the file
        b"OLD-2",             # already in stock
        b"\xff\xfe broken",   # line 7: not UTF-8
        b"  CCC-3  ",
        b"X" * 1100,          # line 9: too long
        b"DDD-4",
    ]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes(b"\n".join(lines) + b"\n")

    result = run("keys", "import", shop["product"].id, keys_file)

    assert result.exit_code == 0, result.output
    out = result.output
    assert f"imported 4 keys into product {shop['product'].id} (Game card)" in out
    assert "duplicates skipped: 2 (1 repeated in the file, 1 already in stock)" in out
    assert "invalid lines: 3" in out
    assert "line 4: contains control characters" in out
    assert "line 7: not valid UTF-8" in out
    assert "line 9: longer than 1024 characters" in out
    assert f"stock of SKU {shop['sku'].id} is now 6" in out
    assert stored_keys(shop["sku"].id, shop["cipher"]) == ["OLD-1", "OLD-2", "AAA-1", "BBB-2", "CCC-3", "DDD-4"]
    assert Sku.get_by_id(shop["sku"].id).stock == 6
    for row in CardKey.select():  # sealed at rest: no plaintext in the row
        assert b"AAA-1" not in bytes(row.sealed) and "AAA-1" not in row.digest


def test_import_csv_takes_the_first_column(shop, run, tmp_path):
    keys_file = tmp_path / "keys.csv"
    keys_file.write_bytes("\ufeffcard,password\n"
                          "KM-1,pw1\n"
                          '"KM,2",pw2\n'
                          "KM-3\n"
                          ",only a password\n"
                          "KM-1,again\n".encode("utf-8"))

    result = run("keys", "import", shop["product"].id, keys_file, "--skip-header")

    assert result.exit_code == 0, result.output
    assert "imported 3 keys" in result.output
    assert "duplicates skipped: 1 (1 repeated in the file, 0 already in stock)" in result.output
    assert stored_keys(shop["sku"].id, shop["cipher"]) == ["KM-1", "KM,2", "KM-3"]


def test_import_csv_without_header_flag_keeps_the_first_line(shop, run, tmp_path):
    keys_file = tmp_path / "keys.csv"
    keys_file.write_text("\ufeffKM-1,x\nKM-2,y\n", encoding="utf-8")
    result = run("keys", "import", shop["product"].id, keys_file)
    assert result.exit_code == 0, result.output
    assert stored_keys(shop["sku"].id, shop["cipher"]) == ["KM-1", "KM-2"]  # the BOM is not part of the key


def test_key_file_is_streamed_not_read_whole(tmp_path):
    path = tmp_path / "keys.txt"
    with open(path, "w") as writer:
        writer.write("FIRST\n")
        writer.flush()
        lines = iter(KeyFile(path))
        assert next(lines) == "FIRST\n"
        # Written after reading began: a reader that had loaded the file at the start would never see it.
        writer.write("SECOND\n")
        writer.flush()
        assert next(lines) == "SECOND\n"
    assert list(lines) == []


def test_import_needs_a_sku_when_the_product_has_several(shop, run, tmp_path):
    product = create_product(shop["site"], "Two plans", 100, skus=[("month", 100), ("year", 1000)])
    month, year = Sku.select().where(Sku.product == product.id).order_by(Sku.sort)
    keys_file = tmp_path / "k.txt"
    keys_file.write_text("Y-1\nY-2\n")

    refused = run("keys", "import", product.id, keys_file)
    assert refused.exit_code == 1
    assert f"has 2 SKUs: choose one with --sku (SKUs: {month.id} (month), {year.id} (year))" in refused.output
    assert CardKey.select().count() == 0

    other = run("keys", "import", product.id, keys_file, "--sku", shop["sku"].id)
    assert other.exit_code == 1 and f"SKU {shop['sku'].id} is not a SKU of product {product.id}" in other.output

    done = run("keys", "import", product.id, keys_file, "--sku", year.id)
    assert done.exit_code == 0, done.output
    assert (Sku.get_by_id(year.id).stock, Sku.get_by_id(month.id).stock) == (2, 0)


@pytest.mark.parametrize("kind, fields, message", [
    ("topup", {}, "is a topup product"),
    ("card", {"loop_key": True}, "sells one looping key"),
])
def test_import_refuses_products_without_key_rows(shop, run, tmp_path, kind, fields, message):
    product = create_product(shop["site"], "Other", 100, kind=kind, **fields)
    keys_file = tmp_path / "k.txt"
    keys_file.write_text("K-1\n")
    result = run("keys", "import", product.id, keys_file)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output
    assert CardKey.select().count() == 0


def test_import_unknown_product(shop, run, tmp_path):
    keys_file = tmp_path / "k.txt"
    keys_file.write_text("K-1\n")
    result = run("keys", "import", 999, keys_file)
    assert result.exit_code == 1 and "product 999 not found" in result.output


def test_import_lists_at_most_100_invalid_lines(shop, run, tmp_path):
    keys_file = tmp_path / "k.txt"
    keys_file.write_bytes(b"\n".join([b"bad\x02"] * 105 + [b"GOOD"]) + b"\n")
    result = run("keys", "import", shop["product"].id, keys_file)
    assert result.exit_code == 0
    assert "invalid lines: 105" in result.output
    assert "line 100: contains control characters" in result.output
    assert "line 101:" not in result.output and "… and 5 more" in result.output
    assert "imported 1 keys" in result.output


# -- recount ---------------------------------------------------------------------------


def test_recount_fixes_stock_from_available_keys(shop, run):
    import_keys(shop["sku"], [f"K-{i}" for i in range(10)], shop["cipher"])
    create_order(site_id=shop["site"], sku_id=shop["sku"].id, quantity=2, contact="a@example.com")  # reserves 2
    Sku.update(stock=99).where(Sku.id == shop["sku"].id).execute()  # drifted
    topup = create_product(shop["site"], "Top-up", 100, kind="topup")
    Sku.update(stock=5).where(Sku.product == topup.id).execute()  # a plain counter: not recounted

    result = run("keys", "recount")

    assert result.exit_code == 0, result.output
    assert f"SKU {shop['sku'].id} of product {shop['product'].id} (Game card): stock 99 -> 8" in result.output
    assert "checked 1 SKUs, fixed 1" in result.output
    assert Sku.get_by_id(shop["sku"].id).stock == 8
    assert Sku.get(Sku.product == topup.id).stock == 5

    again = run("keys", "recount")
    assert "checked 1 SKUs, fixed 0" in again.output and "->" not in again.output


# -- rotate ----------------------------------------------------------------------------


def _set_card_key_keys(instance, keys):
    config = instance.path / "config.toml"
    values = tomllib.loads(config.read_text())
    values["card_key_keys"] = keys
    config.write_text(tomli_w.dumps(values))
    return Instance.load(instance.path)


def test_rotate_reseals_old_rows_in_batches(shop, run):
    old_key = shop["instance"].card_key_keys[0]
    codes = [f"R-{i}" for i in range(7)]
    import_keys(shop["sku"], codes, shop["cipher"])
    new_key = base64.b64encode(os.urandom(32)).decode()
    rotated = _set_card_key_keys(shop["instance"], [new_key, old_key])
    new_cipher = CardKeyCipher.from_instance(rotated)
    digests = list(CardKey.select(CardKey.id, CardKey.digest).order_by(CardKey.id).tuples())
    import_keys(shop["sku"], ["R-new"], new_cipher)  # already current

    result = run("keys", "rotate", "--batch-size", 3)

    assert result.exit_code == 0, result.output
    assert "scanned 8 keys, re-sealed 7, already current 1" in result.output
    assert all(not new_cipher.needs_reseal(bytes(k.sealed)) for k in CardKey.select())
    only_new = CardKeyCipher([base64.b64decode(new_key)], new_cipher._digest_key)
    assert stored_keys(shop["sku"].id, only_new) == codes + ["R-new"]  # the old key is no longer needed
    # Duplicate detection is unchanged: the digest depends on the instance secret, not on the sealing key.
    assert list(CardKey.select(CardKey.id, CardKey.digest).order_by(CardKey.id).limit(7).tuples()) == digests
    again = run("keys", "rotate")
    assert "re-sealed 0" in again.output


def test_rotate_reports_rows_it_cannot_open(shop, run):
    import_keys(shop["sku"], ["A-1", "A-2"], shop["cipher"])
    stranger = CardKeyCipher([os.urandom(32)], b"x" * 32)
    lost = CardKey.create(sku=shop["sku"].id, sealed=stranger.seal("LOST", shop["sku"].id), digest="d" * 64)
    rotated = _set_card_key_keys(shop["instance"],
                                 [base64.b64encode(os.urandom(32)).decode(), shop["instance"].card_key_keys[0]])

    result = run("keys", "rotate")

    assert result.exit_code == 1
    assert "scanned 3 keys, re-sealed 2" in result.output
    assert f"1 keys could not be opened and were left as they are (ids {lost.id})" in result.output
    assert "LOST" not in result.output and "A-1" not in result.output
    assert bytes(CardKey.get_by_id(lost.id).sealed) == bytes(lost.sealed)
    assert [CardKeyCipher.from_instance(rotated).open(k.sealed, k.sku_id)
            for k in CardKey.select().where(CardKey.id != lost.id).order_by(CardKey.id)] == ["A-1", "A-2"]


def test_commands_refuse_an_unmigrated_database(tmp_path):
    instance = Instance.create(tmp_path / "fresh", database_url=f"sqlite:///{tmp_path / 'fresh.db'}")
    result = CliRunner().invoke(main, ["--instance", str(instance.path), "keys", "recount"])
    assert result.exit_code == 1
    assert "database needs migrations" in result.output and "kamengsite db upgrade" in result.output
    release_connections()


def test_product_ids_must_be_numbers(run, tmp_path):
    keys_file = tmp_path / "k.txt"
    keys_file.write_text("K\n")
    result = run("keys", "import", "abc", keys_file)
    assert result.exit_code == 2 and "is not a valid integer" in result.output
