"""Card keys (卡密): sealed at rest, imported in bulk with duplicate detection, delivered once.

Each key row belongs to a SKU. ``status`` moves available → reserved (held by
an unpaid order) → sold, or back to available when the reservation expires.
Duplicates are found by a keyed digest with a unique (sku, digest) index, so
neither a batch nor a concurrent import can put the same code in stock twice.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import peewee

from .catalog import Sku
from .crypto import CardKeyCipher, normalize_secret
from .db import database, is_sqlite, retry_transient
from .models import BaseModel, utcnow

MAX_KEY_LENGTH = 1024
# C0 and C1 controls and line/paragraph separators; a tab between card number and password is fine.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
CHUNK = 2000
# SQLite: each transaction rewrites every page of the (random) digest index it touched, so 2,000-row
# transactions write ~4 GB for a million keys; 50,000 rows cut that ~10x for a write lock of ~1 s per batch.
SQLITE_CHUNK = 50_000
SQLITE_IMPORT_CACHE_KB = -262144  # PRAGMA cache_size during an import: up to 256 MB, given back after


class CardKey(BaseModel):
    sku = peewee.ForeignKeyField(Sku, backref="keys", on_delete="CASCADE")
    sealed = peewee.BlobField()
    digest = peewee.CharField(max_length=64)
    status = peewee.CharField(max_length=12, default="available")  # available | reserved | sold | void
    order = peewee.DeferredForeignKey("Order", null=True, on_delete="SET NULL", backref="card_keys")
    batch = peewee.CharField(max_length=32, default="")
    created_at = peewee.DateTimeField(default=utcnow)
    sold_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "card_key"

    def __repr__(self):  # never let a key's contents reach a log through repr
        return f"<CardKey {self.id} sku={self.sku_id} {self.status}>"


@dataclass
class ImportReport:
    imported: int = 0
    duplicates_in_batch: int = 0
    duplicates_in_stock: int = 0
    invalid: list = field(default_factory=list)  # (line number, reason)
    batch: str = ""

    @property
    def duplicates(self) -> int:
        return self.duplicates_in_batch + self.duplicates_in_stock

    def as_dict(self) -> dict:
        return {"imported": self.imported, "duplicates_in_batch": self.duplicates_in_batch,
                "duplicates_in_stock": self.duplicates_in_stock, "invalid": len(self.invalid),
                "invalid_lines": self.invalid[:100], "batch": self.batch}


def check_key_line(line: str) -> str | None:
    """Why ``line`` cannot be a card key, or None if it can."""
    if len(line) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    if _CONTROL.search(line):
        return "contains control characters"
    return None


def import_keys(sku: Sku | int, lines, cipher: CardKeyCipher) -> ImportReport:
    """Seal and store one card key per non-empty line; skip duplicates and report invalid lines.

    ``lines`` is any iterable of lines, or one whole text (split on line breaks).
    """
    sku_id = sku.id if isinstance(sku, Sku) else int(sku)
    if isinstance(lines, str):  # iterating a str would import every character as a key
        lines = lines.splitlines()
    with _bulk_cache():
        return _import(sku_id, lines, cipher)


def _import(sku_id: int, lines, cipher: CardKeyCipher) -> ImportReport:
    report = ImportReport(batch=uuid.uuid4().hex)
    seen: set[str] = set()
    pending: list[tuple] = []
    chunk = SQLITE_CHUNK if is_sqlite() else CHUNK
    for number, raw in enumerate(lines, start=1):
        secret = normalize_secret(raw)
        if not secret:
            continue
        problem = check_key_line(secret)
        if problem:
            report.invalid.append((number, problem))
            continue
        digest = cipher.digest(secret)
        if digest in seen:
            report.duplicates_in_batch += 1
            continue
        seen.add(digest)
        pending.append((sku_id, cipher.seal(secret, sku_id), digest, report.batch))
        if len(pending) >= chunk:
            _store(sku_id, pending, report)
            pending = []
    if pending:
        _store(sku_id, pending, report)
    return report


def _store(sku_id: int, rows: list[tuple], report: ImportReport):
    fields = [CardKey.sku, CardKey.sealed, CardKey.digest, CardKey.batch]

    def store() -> int:
        with database.atomic():
            # Lock the SKU row first, as buying does: imports into one SKU then queue instead of
            # deadlocking on each other's unique (sku, digest) entries, and rows keep line order (FIFO).
            _lock_sku(sku_id)
            if is_sqlite():
                inserted = _insert_sqlite(rows, fields)
            else:
                inserted = CardKey.insert_many(rows, fields=fields).on_conflict_ignore().as_rowcount().execute()
            if inserted:
                Sku.update(stock=Sku.stock + inserted).where(Sku.id == sku_id).execute()
        return inserted

    # A whole chunk transaction is safe to run again after a lock conflict (e.g. MariaDB gap locks).
    inserted = retry_transient(store)
    report.imported += inserted
    report.duplicates_in_stock += len(rows) - inserted


@contextmanager
def _bulk_cache():
    """On SQLite, a bigger page cache while importing: the digest index of a large SKU stays in memory."""
    if not is_sqlite():
        yield
        return
    previous = database.execute_sql("PRAGMA cache_size").fetchone()[0]
    database.execute_sql(f"PRAGMA cache_size = {SQLITE_IMPORT_CACHE_KB}")
    try:
        yield
    finally:
        database.execute_sql(f"PRAGMA cache_size = {int(previous)}")


def _lock_sku(sku_id: int):
    if not is_sqlite():  # SQLite's IMMEDIATE transaction already excludes other writers
        list(Sku.select(Sku.id).where(Sku.id == sku_id).for_update().tuples())


def _insert_sqlite(rows: list[tuple], fields) -> int:
    """``insert_many(rows).on_conflict_ignore()`` as one prepared statement run by ``executemany``.

    Same SQL and column defaults as peewee's (generated from a one-row insert), without
    peewee building a 6-parameter node per value: the import is several times faster.
    """
    one = CardKey.insert_many(rows[:1], fields=fields).on_conflict_ignore()
    sql, params = database.get_sql_context().sql(one).query()
    # status, created_at: the same for every row, so adapted (datetime -> text) once, not per row.
    defaults = tuple(_adapt(value) for value in params[len(fields):])
    cursor = database.cursor()
    cursor.executemany(sql, [row + defaults for row in rows])
    return cursor.rowcount


def _adapt(value):
    """What sqlite3 would store for ``value`` (its registered adapter), computed once."""
    adapter = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
    return adapter(value) if adapter else value
