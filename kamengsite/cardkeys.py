"""Card keys (卡密): sealed at rest, imported in bulk with duplicate detection, delivered once.

Each key row belongs to a SKU. ``status`` moves available → reserved (held by
an unpaid order) → sold, or back to available when the reservation expires.
Duplicates are found by a keyed digest with a unique (sku, digest) index, so
neither a batch nor a concurrent import can put the same code in stock twice.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import peewee

from .catalog import Sku
from .crypto import CardKeyCipher, normalize_secret
from .db import database
from .models import BaseModel, utcnow

MAX_KEY_LENGTH = 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CHUNK = 2000


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
    """Seal and store one card key per non-empty line; skip duplicates and report invalid lines."""
    sku_id = sku.id if isinstance(sku, Sku) else int(sku)
    report = ImportReport(batch=uuid.uuid4().hex)
    seen: set[str] = set()
    pending: list[tuple] = []
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
        if len(pending) >= CHUNK:
            _store(sku_id, pending, report)
            pending = []
    if pending:
        _store(sku_id, pending, report)
    return report


def _store(sku_id: int, rows: list[tuple], report: ImportReport):
    fields = [CardKey.sku, CardKey.sealed, CardKey.digest, CardKey.batch]
    with database.atomic():
        inserted = CardKey.insert_many(rows, fields=fields).on_conflict_ignore().as_rowcount().execute()
        if inserted:
            Sku.update(stock=Sku.stock + inserted).where(Sku.id == sku_id).execute()
    report.imported += inserted
    report.duplicates_in_stock += len(rows) - inserted
