"""A double-entry ledger in integer fen: accounts, transactions and their signed entries.

* Every transaction has at least two entries and its entries sum to zero.
* A balance is never stored: it is the sum of the account's entries.
* Accounts of the kinds in ``NO_NEGATIVE`` (a site's available balance, a member's
  wallet) never go below zero: ``post`` locks each such account it debits
  (``SELECT … FOR UPDATE`` on PostgreSQL/MariaDB; SQLite's write transactions are
  IMMEDIATE, so writers are already serialised) and re-reads its balance before writing.
* Posting is idempotent by (kind, reference): the same reference posted again returns
  the existing transaction and writes nothing. A transaction is reversed at most once
  (``ledger_txn.reverses`` is unique).
* ``split`` divides an amount by integer weights with largest-remainder rounding, so
  the parts always add up to the amount.

Ledger rows are platform-wide (not tenant rows): read and write them from operator
code, jobs and payment handling, never from a site's request scope on its own.
"""

from __future__ import annotations

import peewee

from .db import database, is_sqlite, retry_transient
from .models import BaseModel, Site, utcnow

ACCOUNT_KINDS = ("platform_revenue", "site_available", "site_frozen", "member_wallet", "channel_clearing", "fees")
#: Kinds whose balance must never go below zero.
NO_NEGATIVE = frozenset({"site_available", "member_wallet"})
#: Kinds that belong to a site / to a member (the owner must be given).
NEEDS_SITE = frozenset({"site_available", "site_frozen"})
NEEDS_MEMBER = frozenset({"member_wallet"})
TXN_KINDS = ("payment", "refund", "release", "withdrawal", "adjustment")
CURRENCY = "CNY"
REFERENCE_MAX = 128
#: Amounts must fit a signed 64-bit column.
MAX_FEN = 2**63 - 1


class LedgerAccount(BaseModel):
    code = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=24)
    site = peewee.ForeignKeyField(Site, null=True, on_delete="RESTRICT")
    member_id = peewee.IntegerField(null=True)
    currency = peewee.CharField(max_length=3, default=CURRENCY)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ledger_account"

    def __str__(self):
        owner = "".join(f" {k}={v}" for k, v in (("site", self.site_id), ("member", self.member_id)) if v is not None)
        return f"{self.kind}#{self.id}{owner}"


class LedgerTxn(BaseModel):
    kind = peewee.CharField(max_length=16)
    reference = peewee.CharField(max_length=REFERENCE_MAX)
    reverses = peewee.ForeignKeyField("self", null=True, unique=True, backref="reversals", on_delete="RESTRICT")
    memo = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ledger_txn"


class LedgerEntry(BaseModel):
    txn = peewee.ForeignKeyField(LedgerTxn, backref="entries", on_delete="RESTRICT")
    account = peewee.ForeignKeyField(LedgerAccount, backref="entries", on_delete="RESTRICT")
    amount_fen = peewee.BigIntegerField()
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ledger_entry"


class InsufficientFunds(ValueError):
    """The transaction would take an account that must not go negative below zero; nothing was written."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value, label: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, peewee.Model):
        value = value.id
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{label} must be a positive id, got {value!r}")
    return value


# -- accounts --------------------------------------------------------------------


def account(kind: str, site=None, member=None) -> LedgerAccount:
    """The account of ``kind`` for (site, member), created on first use.

    Race-safe: two callers creating the same account meet at the unique ``code``
    and both get the one row.
    """
    if kind not in ACCOUNT_KINDS:
        raise ValueError(f"unknown account kind {kind!r} (one of {', '.join(ACCOUNT_KINDS)})")
    site_id, member_id = _id(site, "site"), _id(member, "member")
    if kind in NEEDS_SITE and site_id is None:
        raise ValueError(f"a {kind} account needs a site")
    if kind in NEEDS_MEMBER and member_id is None:
        raise ValueError(f"a {kind} account needs a member")
    code = f"{kind}:{site_id or ''}:{member_id or ''}"
    found = LedgerAccount.get_or_none(LedgerAccount.code == code)
    if found is not None:
        return found
    try:
        with database.atomic():
            return LedgerAccount.create(code=code, kind=kind, site=site_id, member_id=member_id)
    except peewee.IntegrityError:
        found = LedgerAccount.get_or_none(LedgerAccount.code == code)
        if found is None:  # not the code clash: e.g. the site does not exist
            raise
        return found


def balance(acct) -> int:
    """The account's balance: the sum of its entries, in fen."""
    account_id = _id(acct, "account")
    total = (LedgerEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(LedgerEntry.amount_fen), 0))
             .where(LedgerEntry.account == account_id).scalar())
    return int(total or 0)


def balances() -> list[tuple[LedgerAccount, int]]:
    """Every account with its derived balance, in id order."""
    sums = dict(LedgerEntry.select(LedgerEntry.account, peewee.fn.SUM(LedgerEntry.amount_fen))
                .group_by(LedgerEntry.account).tuples())
    return [(acct, int(sums.get(acct.id) or 0)) for acct in LedgerAccount.select().order_by(LedgerAccount.id)]


# -- splitting -------------------------------------------------------------------


def split(amount_fen: int, weights) -> list[int]:
    """``amount_fen`` divided by integer ``weights``; the parts always add up to the amount.

    Largest-remainder rounding: each part gets the floor of its share, and the fen
    left over go one each to the largest remainders (ties to the earlier weight).
    A negative amount is split as its absolute value and negated.
    """
    if not _is_int(amount_fen):
        raise ValueError(f"amount must be whole fen, got {amount_fen!r}")
    weights = list(weights)
    if not weights or not all(_is_int(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be non-negative integers, got {weights!r}")
    total = sum(weights)
    if total <= 0:
        raise ValueError("weights must not all be zero")
    sign, amount = (-1, -amount_fen) if amount_fen < 0 else (1, amount_fen)
    parts = [amount * w // total for w in weights]
    left = amount - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
    for i in by_remainder[:left]:  # left < len(weights): each remainder is < total
        parts[i] += 1
    return [sign * p for p in parts]


# -- posting ---------------------------------------------------------------------


def _validate(kind: str, reference: str, entries) -> list[tuple[int, int]]:
    if kind not in TXN_KINDS:
        raise ValueError(f"unknown transaction kind {kind!r} (one of {', '.join(TXN_KINDS)})")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > REFERENCE_MAX:
        raise ValueError(f"reference must be 1 to {REFERENCE_MAX} characters")
    rows = []
    for item in entries:
        try:
            acct, amount = item
        except (TypeError, ValueError):
            raise ValueError(f"an entry is (account, amount_fen), got {item!r}") from None
        if not _is_int(amount):
            raise ValueError(f"amounts must be whole fen (int), got {amount!r}")
        if amount == 0 or abs(amount) > MAX_FEN:
            raise ValueError(f"entry amount {amount} is zero or out of range")
        rows.append((_id(acct, "account"), amount))
    if len(rows) < 2:
        raise ValueError("a transaction needs at least two entries")
    total = sum(amount for _, amount in rows)
    if total != 0:
        raise ValueError(f"entries sum to {total} fen, not zero")
    return rows


def find(kind: str, reference: str) -> LedgerTxn | None:
    return LedgerTxn.get_or_none((LedgerTxn.kind == kind) & (LedgerTxn.reference == reference))


def post(kind: str, reference: str, entries, memo: str = "", *, _reverses: int | None = None) -> LedgerTxn:
    """Write one balanced transaction, or return the one already posted as (kind, reference).

    Raises ValueError (nothing written) unless the amounts are ints summing to zero over
    at least two entries, and ``InsufficientFunds`` when an account of a ``NO_NEGATIVE``
    kind would end below zero. The same reference posted again returns the existing
    transaction as it is, whatever entries the second call carried.
    """
    rows = _validate(kind, reference, entries)
    existing = find(kind, reference)
    if existing is not None:
        return existing

    delta: dict[int, int] = {}
    for account_id, amount in rows:
        delta[account_id] = delta.get(account_id, 0) + amount
    accounts = {a.id: a for a in LedgerAccount.select().where(LedgerAccount.id.in_(list(delta)))}
    missing = set(delta) - set(accounts)
    if missing:
        raise ValueError(f"unknown ledger account(s): {sorted(missing)}")
    guarded = sorted(i for i, d in delta.items() if d < 0 and accounts[i].kind in NO_NEGATIVE)

    def write() -> LedgerTxn:
        with database.atomic():  # IMMEDIATE on SQLite: writers queue at BEGIN
            if guarded and not is_sqlite():
                # Lock in id order (no lock-order deadlocks), then read balances that include every commit.
                list(LedgerAccount.select(LedgerAccount.id).where(LedgerAccount.id.in_(guarded))
                     .order_by(LedgerAccount.id).for_update())
            for account_id in guarded:
                after = balance(account_id) + delta[account_id]
                if after < 0:
                    raise InsufficientFunds(f"{accounts[account_id]} would fall to {after} fen")
            now = utcnow()
            txn = LedgerTxn.create(kind=kind, reference=reference, memo=memo, reverses=_reverses, created_at=now)
            LedgerEntry.insert_many([{"txn": txn.id, "account": a, "amount_fen": amt, "created_at": now}
                                     for a, amt in rows]).execute()
            return txn

    try:
        return retry_transient(write)
    except (peewee.IntegrityError, InsufficientFunds):
        # Someone else posted this reference first (the unique key, or their debit emptied the account).
        existing = find(kind, reference)
        if existing is not None:
            return existing
        if _reverses is not None and LedgerTxn.get_or_none(LedgerTxn.reverses == _reverses) is not None:
            raise ValueError(f"transaction {_reverses} is already reversed") from None
        raise


def reverse(kind: str, reference: str, original_txn) -> LedgerTxn:
    """Post the negated entries of ``original_txn`` as (kind, reference): once per original.

    The same (kind, reference) again returns the reversal; another reference for an
    original that is already reversed raises ValueError.
    """
    original_id = _id(original_txn, "transaction")
    existing = find(kind, reference) if isinstance(reference, str) else None
    if existing is not None:
        return existing
    original = LedgerTxn.get_or_none(LedgerTxn.id == original_id)
    if original is None:
        raise ValueError(f"unknown transaction {original_id}")
    done = LedgerTxn.get_or_none(LedgerTxn.reverses == original_id)
    if done is not None:
        raise ValueError(f"transaction {original_id} is already reversed by {done.kind} {done.reference!r}")
    entries = [(e.account_id, -e.amount_fen) for e in original.entries.order_by(LedgerEntry.id)]
    return post(kind, reference, entries, memo=f"reverses {original.kind} {original.reference}",
                _reverses=original_id)


# -- checking --------------------------------------------------------------------


def check() -> list[str]:
    """Every broken invariant, one human-readable line each (empty: the ledger balances)."""
    problems: list[str] = []
    entry_sum = peewee.fn.SUM(LedgerEntry.amount_fen)
    for txn_id, kind, reference, total in (
            LedgerTxn.select(LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference, entry_sum)
            .join(LedgerEntry).group_by(LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference)
            .having(entry_sum != 0).order_by(LedgerTxn.id).tuples()):
        problems.append(f"transaction {txn_id} ({kind} {reference}): entries sum to {int(total)} fen, not zero")
    count = peewee.fn.COUNT(LedgerEntry.id)
    for txn_id, kind, reference, n in (
            LedgerTxn.select(LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference, count)
            .join(LedgerEntry, peewee.JOIN.LEFT_OUTER).group_by(LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference)
            .having(count < 2).order_by(LedgerTxn.id).tuples()):
        problems.append(f"transaction {txn_id} ({kind} {reference}): {n} entr{'y' if n == 1 else 'ies'}, needs at least 2")
    for acct, amount in balances():
        if acct.kind in NO_NEGATIVE and amount < 0:
            problems.append(f"account {acct}: balance {amount} fen is below zero")
        if acct.currency != CURRENCY:
            problems.append(f"account {acct}: currency {acct.currency!r} is not {CURRENCY}")
    total = int(LedgerEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(LedgerEntry.amount_fen), 0)).scalar() or 0)
    if total != 0:
        problems.append(f"all entries sum to {total} fen, not zero")
    return problems
