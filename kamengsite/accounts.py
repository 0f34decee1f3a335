"""Console accounts: who may sign in to a site's operator console.

An ``Account`` belongs to one site (``TenantModel``); usernames are unique per
site. Passwords are stored as scrypt hashes with a random salt, in a
self-describing string (``scrypt$n$r$p$salt$hash``) so the parameters can be
raised later without invalidating stored hashes. ``session_version`` is copied
into the login session; bumping it (new password, log-out) voids every session
of the account, since the session cookie itself cannot be revoked.

Each console login is also a ``console_session`` row (``account_security``): the rows can be
listed and ended one by one; ``end_sessions`` and a new password end them all. Two-step login
(TOTP), recovery codes and login throttling live in ``account_security`` too.

Only the ``operator`` role exists for now; staff roles come with the full admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import peewee

from .errors import KamengsiteError
from .models import utcnow
from .tenancy import TenantModel, acting_for

ROLES = ("operator", "staff")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 256  # scrypt hashes any length; a cap stops megabyte "passwords" from costing CPU

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
SCHEME = "scrypt"


class AccountError(KamengsiteError):
    """An account cannot be created or changed as asked (bad username, weak password, duplicate)."""


class Account(TenantModel):
    username = peewee.CharField(max_length=32)
    password_hash = peewee.CharField(max_length=255)
    role = peewee.CharField(max_length=16, default="operator")
    #: A staff account's areas of the console, comma-separated (``permissions.AREAS``); unused for operators.
    permissions = peewee.TextField(default="")
    #: Where a password-reset link is sent; empty: the account cannot reset by mail.
    email = peewee.CharField(max_length=254, default="")
    session_version = peewee.IntegerField(default=1)
    created_at = peewee.DateTimeField(default=utcnow)
    last_login_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "account"
        indexes = ((("site", "username"), True),)

    def __repr__(self):  # never the hash
        return f"<Account {self.id} {self.username!r} site={self.site_id} {self.role}>"


# -- passwords ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=256 * r * n + 1024 * 1024)


def hash_password(password: str) -> str:
    """``scrypt$16384$8$1$<salt>$<hash>`` (base64), with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; constant-time compare, False for any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except (ValueError, AttributeError):
        return False
    if not digest or n > 2**20 or r > 32 or p > 16:  # a tampered row must not make us burn memory
        return False
    if len(password) > MAX_PASSWORD:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


#: Verified against when the username does not exist, so both failures take the same time.
_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def generate_password() -> str:
    """A strong random password (about 120 bits), easy to copy: no quotes or spaces."""
    return secrets.token_urlsafe(15) + "-" + secrets.token_urlsafe(5)


def check_password_strength(password: str):
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password too long: at most {MAX_PASSWORD} characters")
    if password != password.strip():
        raise AccountError("password must not start or end with whitespace")


def normalize_username(username: str) -> str:
    return (username or "").strip().lower()


def check_username(username: str) -> str:
    name = normalize_username(username)
    if not USERNAME_RE.match(name):
        raise AccountError(f"invalid username {username!r}: 2-32 characters of a-z, 0-9, '_', '.', '-', "
                           f"starting with a letter or digit")
    return name


# -- accounts ----------------------------------------------------------------------


def find_account(site_id: int, username: str) -> Account | None:
    with acting_for(site_id):
        return Account.get_or_none(Account.username == normalize_username(username))


def create_account(site_id: int, username: str, password: str, *, role: str = "operator") -> Account:
    name = check_username(username)
    check_password_strength(password)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    with acting_for(site_id):
        if Account.select().where(Account.username == name).exists():
            raise AccountError(f"account {name!r} already exists")
        try:
            with Account._meta.database.atomic():
                return Account.create(site=site_id, username=name, password_hash=hash_password(password), role=role)
        except peewee.IntegrityError:  # created concurrently
            raise AccountError(f"account {name!r} already exists") from None


def set_password(site_id: int, username: str, password: str) -> Account:
    """New password; every session of the account is signed out."""
    check_password_strength(password)
    account = find_account(site_id, username)
    if account is None:
        raise AccountError(f"no account {normalize_username(username)!r}")
    with acting_for(site_id):
        Account.update(password_hash=hash_password(password),
                       session_version=Account.session_version + 1).where(Account.id == account.id).execute()
    _end_session_rows(site_id, account.id)
    with acting_for(site_id):
        return Account.get_by_id(account.id)


def authenticate(site_id: int, username: str, password: str) -> Account | None:
    """The account if ``password`` is right for ``username`` on the site, else None (same cost either way)."""
    account = find_account(site_id, username) if len(username or "") <= 64 else None
    if account is None:
        verify_password(password or "", _dummy_hash())
        return None
    if not verify_password(password or "", account.password_hash):
        return None
    with acting_for(site_id):
        Account.update(last_login_at=utcnow()).where(Account.id == account.id).execute()
    return account


def end_sessions(site_id: int, account_id: int):
    """Void every session of the account ("sign out everywhere"): the version in every cookie and every session row."""
    with acting_for(site_id):
        Account.update(session_version=Account.session_version + 1).where(Account.id == account_id).execute()
    _end_session_rows(site_id, account_id)


def _end_session_rows(site_id: int, account_id: int):
    from .account_security import end_all_sessions  # it builds on this module

    end_all_sessions(site_id, account_id)
