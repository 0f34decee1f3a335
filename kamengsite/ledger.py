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

import weakref

import peewee

from .db import Statement, arg, database, is_sqlite, retry_transient
from .models import BaseModel, Site, utcnow

#: Sign convention: an entry is positive when it credits its account's holder (money the
#: platform owes a site or member, revenue, fees the gateway kept) and negative for money
#: held (``channel_clearing``: what a gateway collected for us, net of its ``fees``).
#: ``member_frozen`` holds a member's distribution commissions until their freeze period is over
#: (``settlement.release_commissions`` moves them to ``member_wallet``).
ACCOUNT_KINDS = ("platform_revenue", "site_available", "site_frozen", "site_payout", "prepaid_hold", "member_wallet",
                 "member_frozen", "channel_clearing", "fees", "refund_payable")
#: Kinds whose balance must never go below zero.
NO_NEGATIVE = frozenset({"site_available", "site_frozen", "site_payout", "prepaid_hold", "member_wallet",
                         "member_frozen", "refund_payable"})
#: Kinds that belong to a site / to a member / to a payment channel (the owner must be given).
NEEDS_SITE = frozenset({"site_available", "site_frozen", "site_payout", "prepaid_hold", "member_frozen"})
NEEDS_MEMBER = frozenset({"member_wallet", "member_frozen"})
NEEDS_CHANNEL = frozenset({"channel_clearing", "fees"})
TXN_KINDS = ("payment", "refund", "release", "withdrawal", "adjustment", "wallet_pay", "wallet_topup", "prepay")
CURRENCY = "CNY"
REFERENCE_MAX = 128
#: Amounts must fit a signed 64-bit column.
MAX_FEN = 2**63 - 1


class LedgerAccount(BaseModel):
    code = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=24)
    site = peewee.ForeignKeyField(Site, null=True, on_delete="RESTRICT")
    member_id = peewee.IntegerField(null=True)
    channel = peewee.CharField(max_length=32, default="")
    currency = peewee.CharField(max_length=3, default=CURRENCY)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ledger_account"

    def __str__(self):
        owner = "".join(f" {k}={v}" for k, v in (("site", self.site_id), ("member", self.member_id),
                                                  ("channel", self.channel or None)) if v is not None)
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


def account(kind: str, site=None, member=None, channel: str = "") -> LedgerAccount:
    """The account of ``kind`` for (site, member, channel), created on first use.

    ``channel`` names a payment channel (``"epay"``, ``"balance"``, ``"payout"``) for the
    ``channel_clearing`` and ``fees`` kinds.

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
    if kind in NEEDS_CHANNEL and not channel:
        raise ValueError(f"a {kind} account needs a channel")
    if channel and (not isinstance(channel, str) or len(channel) > 32 or ":" in channel):
        raise ValueError(f"channel must be a name of 1 to 32 characters, got {channel!r}")
    code = f"{kind}:{site_id or ''}:{member_id or ''}" + (f":{channel}" if channel else "")
    known = _known_accounts()
    found = known.get(code)
    if found is not None:
        return found
    found = LedgerAccount.get_or_none(LedgerAccount.code == code)
    if found is not None:
        if not database.in_transaction():  # committed for sure: a rollback cannot take it away
            known[code] = found
            _known_kinds()[found.id] = found.kind
        return found
    try:
        with database.atomic():
            return LedgerAccount.create(code=code, kind=kind, site=site_id, member_id=member_id, channel=channel)
    except peewee.IntegrityError:
        found = LedgerAccount.get_or_none(LedgerAccount.code == code)
        if found is None:  # not the code clash: e.g. the site does not exist
            raise
        return found


_account_cache: "weakref.WeakKeyDictionary[peewee.Database, dict]" = weakref.WeakKeyDictionary()


def _cache() -> tuple[dict, dict]:
    db = database.obj
    entry = _account_cache.get(db)
    if entry is None:
        entry = _account_cache[db] = ({}, {})
    return entry


def _known_accounts() -> dict:
    """Accounts already read from this database, by code: an account never changes once created,
    so the payment path need not look its accounts up again (per database object). Filled only
    outside transactions: a row read inside one could still be rolled back."""
    return _cache()[0]


def _known_kinds() -> dict:
    return _cache()[1]


def forget_accounts():
    """Drop the account cache (for tests that delete ledger rows)."""
    _account_cache.pop(database.obj, None)


# The payment path's queries, compiled once per database (see db.Statement).
_BALANCE = Statement(lambda: LedgerEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(LedgerEntry.amount_fen), 0))
                     .where(LedgerEntry.account == arg("account")))
_TXN_FIELDS = (LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference, LedgerTxn.reverses, LedgerTxn.memo,
               LedgerTxn.created_at)
_FIND = Statement(lambda: LedgerTxn.select(*_TXN_FIELDS).where(
    (LedgerTxn.kind == arg("kind")) & (LedgerTxn.reference == arg("reference"))))
_INSERT_TXN = Statement(lambda: LedgerTxn.insert({f: arg(f.name) for f in _TXN_FIELDS[1:]}))
_INSERT_ENTRIES: dict[int, Statement] = {}


def _insert_entries(count: int) -> Statement:
    """One multi-row INSERT of ``count`` entries (a statement per count, compiled once)."""
    statement = _INSERT_ENTRIES.get(count)
    if statement is None:
        statement = _INSERT_ENTRIES[count] = Statement(lambda: LedgerEntry.insert_many(
            [{LedgerEntry.txn: arg("txn"), LedgerEntry.account: arg(f"a{i}"), LedgerEntry.amount_fen: arg(f"x{i}"),
              LedgerEntry.created_at: arg("now")} for i in range(count)]))
    return statement


def balance(acct) -> int:
    """The account's balance: the sum of its entries, in fen."""
    return int(_BALANCE.first(account=_id(acct, "account"))[0] or 0)


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
    row = _FIND.first(kind=kind, reference=reference)
    if row is None:
        return None
    txn = LedgerTxn(**{f.name: f.python_value(v) for f, v in zip(_TXN_FIELDS, row)})
    txn._dirty.clear()  # as loaded, like LedgerTxn.get()
    return txn


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

    def write() -> LedgerTxn:
        with database.atomic():  # IMMEDIATE on SQLite: writers queue at BEGIN
            return _write(kind, reference, rows, memo, _reverses)

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


def lock(accounts) -> None:
    """Lock accounts (id order) for the rest of the caller's transaction, so balances read next
    include every commit and stay true until it ends (SQLite: the IMMEDIATE transaction does)."""
    ids = sorted({_id(a, "account") for a in accounts})
    if ids and not is_sqlite():
        list(LedgerAccount.select(LedgerAccount.id).where(LedgerAccount.id.in_(ids))
             .order_by(LedgerAccount.id).for_update())


def post_in_transaction(kind: str, reference: str, entries, memo: str = "", *, new: bool = False) -> LedgerTxn:
    """``post`` for a caller that already holds a transaction (e.g. ``orders.mark_paid``): the
    caller's transaction makes it atomic with the caller's writes. Raises on a duplicate
    reference (IntegrityError) or a short account (InsufficientFunds); the caller rolls back.
    ``new=True``: the caller knows the reference was never posted (skips the lookup)."""
    rows = _validate(kind, reference, entries)
    existing = None if new else find(kind, reference)
    if existing is not None:
        return existing
    return _write(kind, reference, rows, memo, None)


def _write(kind: str, reference: str, rows: list[tuple[int, int]], memo: str, reverses: int | None) -> LedgerTxn:
    """Insert one validated transaction; the caller holds the database transaction."""
    delta: dict[int, int] = {}
    for account_id, amount in rows:
        delta[account_id] = delta.get(account_id, 0) + amount
    kinds = _kinds(list(delta))
    missing = set(delta) - set(kinds)
    if missing:
        raise ValueError(f"unknown ledger account(s): {sorted(missing)}")
    guarded = sorted(i for i, d in delta.items() if d < 0 and kinds[i] in NO_NEGATIVE)
    lock(guarded)  # id order: no lock-order deadlocks
    for account_id in guarded:
        after = balance(account_id) + delta[account_id]
        if after < 0:
            raise InsufficientFunds(f"{LedgerAccount.get_by_id(account_id)} would fall to {after} fen")
    now = utcnow()
    values = dict(kind=kind, reference=reference, reverses=reverses, memo=memo, created_at=now)
    txn = LedgerTxn(id=_INSERT_TXN.insert(**values), **values)
    txn._dirty.clear()
    values = {"txn": txn.id, "now": now}
    for i, (account_id, amount) in enumerate(rows):
        values[f"a{i}"], values[f"x{i}"] = account_id, amount
    _insert_entries(len(rows)).execute(**values)
    return txn


def _kinds(account_ids: list[int]) -> dict[int, str]:
    """{account id: kind}; kinds never change, so those seen before come from memory."""
    known = _known_kinds()
    missing = [i for i in account_ids if i not in known]
    if missing:
        found = dict(LedgerAccount.select(LedgerAccount.id, LedgerAccount.kind)
                     .where(LedgerAccount.id.in_(missing)).tuples())
        if not database.in_transaction():
            known.update(found)
        return {**{i: known[i] for i in account_ids if i in known}, **found}
    return {i: known[i] for i in account_ids}


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
