"""Site members: the buyers with accounts, and their wallet.

Every site — the main site and each sub-site — has its own members: a ``Member`` is a
tenant row, and an email is unique per site, so one person may hold unrelated accounts
on two shops and neither shop ever sees the other's. Passwords are scrypt hashes made
by ``accounts.hash_password``; ``session_version`` is copied into the login session and
bumped to void every session of the member (log-out, disabling).

The wallet is the ledger account ``member_wallet`` of (site, member): its balance is the
sum of its entries, in integer fen, and the ledger never lets it go below zero. An
operator credits or debits it with an ``adjustment`` against ``platform_revenue``; the
balance channel (``plugins/kamengsite-balance``) spends it on orders (``wallet_pay``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import peewee

from . import accounts, ledger
from .db import database
from .errors import KamengsiteError
from .i18n import _, _l
from .models import utcnow
from .tenancy import TenantModel, acting_for

STATUSES = ("active", "disabled")
EMAIL_MAX = 254
DISPLAY_NAME_MAX = 32
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PASSWORD_RULE = _l("The password must be %(min)s to %(max)s characters, with no spaces at either end",
                   min=accounts.MIN_PASSWORD, max=accounts.MAX_PASSWORD)
NICKNAME_TOO_LONG = _l("The nickname can be at most %(max)s characters", max=DISPLAY_NAME_MAX)
WALLET = "member_wallet"
FROZEN_COMMISSIONS = "member_frozen"  # commissions waiting for their freeze period (not spendable)


class MemberError(KamengsiteError):
    """A member cannot be registered or changed as asked; ``field`` names the form field at fault."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


class Member(TenantModel):
    email = peewee.CharField(max_length=EMAIL_MAX)
    display_name = peewee.CharField(max_length=DISPLAY_NAME_MAX, default="")
    password_hash = peewee.CharField(max_length=255)
    status = peewee.CharField(max_length=16, default="active")
    session_version = peewee.IntegerField(default=1)
    created_at = peewee.DateTimeField(default=utcnow)
    last_login_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "member"
        indexes = ((("site", "email"), True),)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def __repr__(self):  # never the hash
        return f"<Member {self.id} {self.email!r} site={self.site_id} {self.status}>"


# -- registering and signing in ----------------------------------------------------


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def check_email(email: str) -> str:
    address = normalize_email(email)
    if len(address) > EMAIL_MAX or not EMAIL_RE.match(address):
        raise MemberError(_("Please enter a valid email address"), field="email")
    return address


def check_password(password: str):
    """The console's password rules (``accounts.check_password_strength``), said in the visitor's language."""
    try:
        accounts.check_password_strength(password or "")
    except accounts.AccountError:
        raise MemberError(str(PASSWORD_RULE), field="password") from None


def find_member(site_id: int, email: str) -> Member | None:
    with acting_for(site_id):
        return Member.get_or_none(Member.email == normalize_email(email))


def get_member(site_id: int, member_id: int) -> Member | None:
    """The member ``member_id`` of this site; None for a member of any other site."""
    with acting_for(site_id):
        return Member.get_or_none(Member.id == member_id)


def register(site_id: int, email: str, password: str, display_name: str = "") -> Member:
    """A new active member of the site, or MemberError (bad email, weak password, email taken)."""
    address = check_email(email)
    check_password(password)
    name = (display_name or "").strip()
    if len(name) > DISPLAY_NAME_MAX:
        raise MemberError(str(NICKNAME_TOO_LONG), field="display_name")
    name = name or address.split("@", 1)[0][:DISPLAY_NAME_MAX]
    taken = MemberError(_("This email address is already registered: please sign in"), field="email")
    with acting_for(site_id):
        if Member.select().where(Member.email == address).exists():
            raise taken
        try:
            with database.atomic():
                return Member.create(site=site_id, email=address, display_name=name,
                                     password_hash=accounts.hash_password(password))
        except peewee.IntegrityError:  # registered concurrently
            raise taken from None


def authenticate(site_id: int, email: str, password: str) -> Member | None:
    """The active member if ``password`` is right for ``email`` on this site, else None (same cost either way)."""
    member = find_member(site_id, email) if len(email or "") <= EMAIL_MAX else None
    if member is None:
        accounts.verify_password(password or "", accounts._dummy_hash())
        return None
    if not accounts.verify_password(password or "", member.password_hash) or not member.active:
        return None
    with acting_for(site_id):
        Member.update(last_login_at=utcnow()).where(Member.id == member.id).execute()
    return member


def end_sessions(site_id: int, member_id: int):
    """Void every session of the member (log-out; a session cookie cannot be revoked otherwise)."""
    with acting_for(site_id):
        Member.update(session_version=Member.session_version + 1).where(Member.id == member_id).execute()


def set_status(site_id: int, member_id: int, status: str):
    """Enable or disable a member; disabling also signs them out everywhere."""
    if status not in STATUSES:
        raise MemberError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    with acting_for(site_id):
        changed = Member.update(status=status, session_version=Member.session_version + 1).where(
            Member.id == member_id).execute()
    if not changed:
        raise MemberError(f"no member {member_id} on site {site_id}")


# -- the wallet ----------------------------------------------------------------------


@dataclass(frozen=True)
class WalletEntry:
    """One line of a member's wallet statement."""

    amount_fen: int  # + money in, - money out
    balance_after_fen: int
    kind: str  # the ledger transaction's kind: adjustment, wallet_pay, refund, ...
    reference: str
    memo: str
    created_at: object


def _member_of(site_id: int, member_id) -> Member:
    """The member, refusing a member of another site: a wallet is only ever reached through its own site."""
    member = get_member(site_id, member_id) if isinstance(member_id, int) else None
    if member is None:
        raise MemberError(f"no member {member_id!r} on site {site_id}")
    return member


def wallet_account(site_id: int, member_id: int) -> ledger.LedgerAccount:
    """The member's wallet ledger account (created on first use)."""
    return ledger.account(WALLET, site=site_id, member=member_id)


def _existing_wallet(site_id: int, member_id: int) -> ledger.LedgerAccount | None:
    # Reading must not create the account: a page view writes nothing.
    LedgerAccount = ledger.LedgerAccount
    return LedgerAccount.get_or_none((LedgerAccount.kind == WALLET) & (LedgerAccount.site == site_id)
                                     & (LedgerAccount.member_id == member_id))


def wallet_balance(site_id: int, member_id: int) -> int:
    """The member's wallet balance in fen (0 before anything was posted)."""
    _member_of(site_id, member_id)
    wallet = _existing_wallet(site_id, member_id)
    return ledger.balance(wallet) if wallet is not None else 0


def frozen_commissions(site_id: int, member_id: int) -> int:
    """The member's distribution commissions still in their freeze period (``member_frozen``), in fen.

    Not spendable yet: released to the wallet when the freeze period is over (see settlement).
    """
    _member_of(site_id, member_id)
    LedgerAccount = ledger.LedgerAccount
    frozen = LedgerAccount.get_or_none((LedgerAccount.kind == FROZEN_COMMISSIONS) & (LedgerAccount.site == site_id)
                                       & (LedgerAccount.member_id == member_id))
    return ledger.balance(frozen) if frozen is not None else 0


def wallet_history(site_id: int, member_id: int, limit: int = 50) -> list[WalletEntry]:
    """The wallet's latest entries, newest first, each with the balance it left."""
    _member_of(site_id, member_id)
    wallet = _existing_wallet(site_id, member_id)
    if wallet is None:
        return []
    Entry, Txn = ledger.LedgerEntry, ledger.LedgerTxn
    rows = list(Entry.select(Entry.amount_fen, Txn.kind, Txn.reference, Txn.memo, Entry.created_at)
                .join(Txn).where(Entry.account == wallet.id).order_by(Entry.id.desc()).limit(limit).tuples())
    after = ledger.balance(wallet)
    history = []
    for amount, kind, reference, memo, created_at in rows:
        history.append(WalletEntry(int(amount), after, kind, reference, memo, created_at))
        after -= int(amount)
    return history


def _check_amount(amount_fen):
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise ValueError(f"amount must be a positive whole number of fen, got {amount_fen!r}")


def credit_wallet(site_id: int, member_id: int, amount_fen: int, reference: str, memo: str = "") -> ledger.LedgerTxn:
    """An operator's adjustment: ``amount_fen`` into the wallet, out of platform revenue.

    Idempotent by ``reference`` (the same reference again returns the first transaction).
    """
    _check_amount(amount_fen)
    _member_of(site_id, member_id)
    wallet = wallet_account(site_id, member_id)
    entries = [(wallet, amount_fen), (ledger.account("platform_revenue"), -amount_fen)]
    return _adjust(wallet, amount_fen, reference, entries, memo)


def debit_wallet(site_id: int, member_id: int, amount_fen: int, reference: str, memo: str = "") -> ledger.LedgerTxn:
    """An operator's adjustment the other way; ``ledger.InsufficientFunds`` (nothing written) when short."""
    _check_amount(amount_fen)
    _member_of(site_id, member_id)
    wallet = wallet_account(site_id, member_id)
    entries = [(wallet, -amount_fen), (ledger.account("platform_revenue"), amount_fen)]
    return _adjust(wallet, -amount_fen, reference, entries, memo)


def _adjust(wallet, delta: int, reference: str, entries, memo: str) -> ledger.LedgerTxn:
    txn = ledger.post("adjustment", reference, entries, memo)
    # References are unique across all adjustments: one reused for another wallet must not pass as done.
    Entry = ledger.LedgerEntry
    mine = Entry.get_or_none((Entry.txn == txn.id) & (Entry.account == wallet.id))
    if mine is None or mine.amount_fen != delta:
        raise MemberError(f"reference {reference!r} was already used for another adjustment")
    return txn
