"""Console account security: TOTP two-step login with recovery codes, login throttling, sessions.

* **TOTP** (RFC 6238, ``pyotp``): the secret is sealed with AES-256-GCM under a key derived from the
  instance secret and bound to the account id (``TotpCipher``), never stored in plaintext. A code is
  accepted for the step before, at or after now; the step used is stored and a code of that step or
  an earlier one is refused (no replay), with a conditional update so two requests cannot both win.
* **Recovery codes**: ten one-time codes, shown once, stored as keyed digests; using one is a
  conditional update on ``used_at IS NULL``.
* **Throttling**: failed logins are counted in ``login_failure`` per (site, subject), the subject
  being the typed username (whether or not it exists, so a lock never tells that it does) and the
  client's IP. From ``ACCOUNT_THRESHOLD`` failures the subject waits 1, 2, 4 … minutes (at most an
  hour); a success clears the username's counter. Counting is an ``UPDATE … SET failures = failures + 1``
  in a transaction, so concurrent failures from several processes are all counted.
* **Sessions**: each console login is a ``console_session`` row; the cookie carries a random token
  and the row holds its SHA-256 (a database leak gives no usable cookie). A request whose row is gone
  is signed out (``check_console_session``, run before every request by ``admin_account``).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

import peewee
import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .accounts import Account, _dummy_hash, find_account, normalize_username, verify_password
from .errors import KamengsiteError
from .i18n import _, _n
from .models import BaseModel, utcnow
from .tenancy import TenantModel, acting_for

TOTP_INTERVAL = 30
TOTP_DIGITS = 6
RECOVERY_CODES = 10
ACCOUNT_THRESHOLD = 5  # failures of one username before it waits
IP_THRESHOLD = 20  # failures from one address (any usernames) before it waits
FIRST_WAIT_MINUTES = 1
MAX_WAIT_MINUTES = 60
FORGET_FAILURES_AFTER = datetime.timedelta(hours=24)  # an old failure streak starts over
LAST_SEEN_EVERY = 60  # seconds: a session's last_seen_at is written at most this often
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper


class SecurityError(KamengsiteError):
    """A security change cannot be made as asked (wrong code, nothing to disable)."""


# -- tables ------------------------------------------------------------------------------------


class AccountTotp(TenantModel):
    """The TOTP state of an account; ``enabled_at`` is None while the set-up awaits its first code."""

    account = peewee.ForeignKeyField(Account, on_delete="CASCADE", unique=True)
    secret = peewee.BlobField()  # sealed by TotpCipher
    enabled_at = peewee.DateTimeField(null=True)
    last_step = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "account_totp"


class RecoveryCode(TenantModel):
    account = peewee.ForeignKeyField(Account, on_delete="CASCADE", index=True)
    digest = peewee.CharField(max_length=64)
    used_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "account_recovery_code"


class LoginFailure(TenantModel):
    subject = peewee.CharField(max_length=80)  # "u:<username>" or "ip:<address>"
    failures = peewee.IntegerField(default=0)
    locked_until = peewee.DateTimeField(null=True)
    last_failed_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "login_failure"
        indexes = ((("site", "subject"), True),)


class ConsoleSession(TenantModel):
    id = peewee.CharField(max_length=64, primary_key=True)  # SHA-256 of the cookie's token
    account = peewee.ForeignKeyField(Account, on_delete="CASCADE", index=True)
    created_at = peewee.DateTimeField(default=utcnow)
    last_seen_at = peewee.DateTimeField(default=utcnow)
    ip = peewee.CharField(max_length=64, default="")
    user_agent = peewee.CharField(max_length=255, default="")

    class Meta:
        table_name = "console_session"


TABLES = (AccountTotp, RecoveryCode, LoginFailure, ConsoleSession)


def _db():
    return BaseModel._meta.database


# -- sealing TOTP secrets --------------------------------------------------------------------------


class TotpCipher:
    """AES-256-GCM with a key derived from the instance secret; a sealed secret opens for its account only."""

    def __init__(self, instance_secret: str):
        key = hmac.new(instance_secret.encode(), b"kamengsite-totp-secret", hashlib.sha256).digest()
        self._aead = AESGCM(key)
        self.digest_key = hmac.new(instance_secret.encode(), b"kamengsite-recovery-code", hashlib.sha256).digest()

    @classmethod
    def from_instance(cls, instance) -> "TotpCipher":
        return cls(instance.secret_key)

    def seal(self, secret: str, account_id: int) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret.encode("ascii"), b"account:%d" % account_id)

    def open(self, sealed: bytes, account_id: int) -> str:
        sealed = bytes(sealed)
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], b"account:%d" % account_id).decode("ascii")
        except (InvalidTag, ValueError):
            raise SecurityError("TOTP secret failed authentication (tampered or moved)") from None


# -- TOTP ------------------------------------------------------------------------------------------


def _step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // TOTP_INTERVAL)


def _clean_code(code: str) -> str:
    return "".join((code or "").split()).replace("-", "").lower()


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step (now ±1) whose code is ``code``, or None."""
    code = _clean_code(code)
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
    current = _step(now)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.at(step * TOTP_INTERVAL), code):
            return step
    return None


def totp_state(site_id: int, account_id: int) -> AccountTotp | None:
    with acting_for(site_id):
        return AccountTotp.get_or_none(AccountTotp.account == account_id)


def two_factor_enabled(site_id: int, account_id: int) -> bool:
    state = totp_state(site_id, account_id)
    return state is not None and state.enabled_at is not None


def begin_setup(site_id: int, account: Account, cipher: TotpCipher) -> str:
    """A new secret awaiting confirmation (replacing an unconfirmed one); refuses while 2FA is on."""
    if two_factor_enabled(site_id, account.id):
        raise SecurityError(_("Two-step verification is already on"))
    secret = pyotp.random_base32()
    with acting_for(site_id), _db().atomic():
        AccountTotp.delete().where(AccountTotp.account == account.id).execute()
        AccountTotp.create(site=site_id, account=account.id, secret=cipher.seal(secret, account.id))
    return secret


def pending_secret(site_id: int, account_id: int, cipher: TotpCipher) -> str | None:
    state = totp_state(site_id, account_id)
    if state is None or state.enabled_at is not None:
        return None
    return cipher.open(state.secret, account_id)


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(
        name=username, issuer_name=issuer)


def confirm_setup(site_id: int, account_id: int, code: str, cipher: TotpCipher, now: float | None = None) -> list[str]:
    """Turn 2FA on if ``code`` matches the pending secret; return the new recovery codes (shown once)."""
    secret = pending_secret(site_id, account_id, cipher)
    if secret is None:
        raise SecurityError(_("Start setting up two-step verification first"))
    step = matching_step(secret, code, now)
    if step is None:
        raise SecurityError(_("Wrong code: check the time on your phone and try again"))
    with acting_for(site_id), _db().atomic():
        done = AccountTotp.update(enabled_at=utcnow(), last_step=step).where(
            (AccountTotp.account == account_id) & AccountTotp.enabled_at.is_null()).execute()
        if not done:
            raise SecurityError(_("Two-step verification is already on"))
        return _new_recovery_codes(site_id, account_id, cipher)


def use_totp(site_id: int, account_id: int, code: str, cipher: TotpCipher, now: float | None = None) -> bool:
    """Whether ``code`` is a valid, not yet used TOTP code of the account (and mark its step used)."""
    state = totp_state(site_id, account_id)
    if state is None or state.enabled_at is None:
        return False
    step = matching_step(cipher.open(state.secret, account_id), code, now)
    if step is None:
        return False
    with acting_for(site_id):  # the step only moves forward: a replay (or a race) finds it already there
        return AccountTotp.update(last_step=step).where(
            (AccountTotp.account == account_id) & (AccountTotp.last_step < step)).execute() == 1


# -- recovery codes --------------------------------------------------------------------------------


def _recovery_digest(code: str, cipher: TotpCipher) -> str:
    return hmac.new(cipher.digest_key, _clean_code(code).encode(), hashlib.sha256).hexdigest()


def _new_recovery_codes(site_id: int, account_id: int, cipher: TotpCipher) -> list[str]:
    codes = []
    for _count in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _pos in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    with acting_for(site_id), _db().atomic():
        RecoveryCode.delete().where(RecoveryCode.account == account_id).execute()
        RecoveryCode.insert_many([{"site": site_id, "account": account_id, "digest": _recovery_digest(c, cipher)}
                                  for c in codes]).execute()
    return codes


def regenerate_recovery_codes(site_id: int, account_id: int, cipher: TotpCipher) -> list[str]:
    if not two_factor_enabled(site_id, account_id):
        raise SecurityError(_("Two-step verification is not on"))
    return _new_recovery_codes(site_id, account_id, cipher)


def use_recovery_code(site_id: int, account_id: int, code: str, cipher: TotpCipher) -> bool:
    """Whether ``code`` is an unused recovery code of the account; it is used up either way it matched."""
    cleaned = _clean_code(code)
    if len(cleaned) != 10:
        return False
    with acting_for(site_id):
        return RecoveryCode.update(used_at=utcnow()).where(
            (RecoveryCode.account == account_id) & (RecoveryCode.digest == _recovery_digest(cleaned, cipher))
            & RecoveryCode.used_at.is_null()).execute() == 1


def recovery_codes_left(site_id: int, account_id: int) -> int:
    with acting_for(site_id):
        return RecoveryCode.select().where((RecoveryCode.account == account_id)
                                           & RecoveryCode.used_at.is_null()).count()


def use_second_factor(site_id: int, account_id: int, code: str, cipher: TotpCipher) -> bool:
    """A TOTP code (6 digits) or a recovery code."""
    if len(_clean_code(code)) == TOTP_DIGITS:
        return use_totp(site_id, account_id, code, cipher)
    return use_recovery_code(site_id, account_id, code, cipher)


def disable(site_id: int, account_id: int, code: str, cipher: TotpCipher):
    """Turn 2FA off; needs a current code (or a recovery code)."""
    if not two_factor_enabled(site_id, account_id):
        raise SecurityError(_("Two-step verification is not on"))
    if not use_second_factor(site_id, account_id, code, cipher):
        raise SecurityError(_("The code is wrong or has already been used"))
    reset_two_factor(site_id, account_id)


def reset_two_factor(site_id: int, account_id: int):
    """Remove the account's TOTP secret and recovery codes (the operator's escape hatch too)."""
    with acting_for(site_id), _db().atomic():
        AccountTotp.delete().where(AccountTotp.account == account_id).execute()
        RecoveryCode.delete().where(RecoveryCode.account == account_id).execute()


# -- throttling ------------------------------------------------------------------------------------


def _naive_utc(moment):
    return moment.replace(tzinfo=None) if moment is not None and moment.tzinfo else moment


def wait_minutes(failures: int, threshold: int) -> int:
    """0 below the threshold, then 1, 2, 4 … minutes, at most an hour."""
    if failures < threshold:
        return 0
    return min(MAX_WAIT_MINUTES, FIRST_WAIT_MINUTES * 2 ** min(failures - threshold, 10))


def _subjects(username: str, ip: str | None) -> list[tuple[str, int]]:
    subjects = [("u:" + normalize_username(username)[:64], ACCOUNT_THRESHOLD)]
    if ip:
        subjects.append(("ip:" + ip[:64], IP_THRESHOLD))
    return subjects


def locked_until(site_id: int, username: str, ip: str | None, now=None) -> datetime.datetime | None:
    """When the username or the address may try again, if either has to wait now."""
    now = _naive_utc(now or utcnow())
    names = [subject for subject, _threshold in _subjects(username, ip)]
    with acting_for(site_id):
        rows = LoginFailure.select().where(LoginFailure.subject.in_(names) & LoginFailure.locked_until.is_null(False))
        ends = [_naive_utc(row.locked_until) for row in rows]
    ends = [end for end in ends if end > now]
    return max(ends) if ends else None


def record_failure(site_id: int, username: str, ip: str | None, now=None):
    """Count a failed password or code against the username and the address; lock from the threshold on."""
    now = _naive_utc(now or utcnow())
    for subject, threshold in _subjects(username, ip):
        _count_failure(site_id, subject, threshold, now)


def _count_failure(site_id: int, subject: str, threshold: int, now: datetime.datetime):
    with acting_for(site_id):
        if not LoginFailure.select().where(LoginFailure.subject == subject).exists():
            try:
                with _db().atomic():
                    LoginFailure.create(site=site_id, subject=subject, failures=0)
            except peewee.IntegrityError:  # another process created it first
                pass
        with _db().atomic():
            stale = now - FORGET_FAILURES_AFTER
            # The increment locks the row until commit, so the read below sees this failure's count.
            LoginFailure.update(failures=peewee.Case(None, [(LoginFailure.last_failed_at < stale, 1)],
                                                     LoginFailure.failures + 1),
                                last_failed_at=now).where(LoginFailure.subject == subject).execute()
            failures = LoginFailure.select(LoginFailure.failures).where(LoginFailure.subject == subject).scalar()
            minutes = wait_minutes(failures or 0, threshold)
            if minutes:
                LoginFailure.update(locked_until=now + datetime.timedelta(minutes=minutes)).where(
                    LoginFailure.subject == subject).execute()


def clear_failures(site_id: int, username: str):
    with acting_for(site_id):
        LoginFailure.delete().where(LoginFailure.subject == "u:" + normalize_username(username)[:64]).execute()


def failure_count(site_id: int, username: str) -> int:
    with acting_for(site_id):
        return LoginFailure.select(LoginFailure.failures).where(
            LoginFailure.subject == "u:" + normalize_username(username)[:64]).scalar() or 0


@dataclass
class LoginCheck:
    account: Account | None = None
    wait_until: datetime.datetime | None = None  # set when refused for throttling

    @property
    def ok(self) -> bool:
        return self.account is not None


def check_password_login(site_id: int, username: str, password: str, ip: str | None) -> LoginCheck:
    """The first login step: throttling, then the password (same cost whether or not the user exists)."""
    wait = locked_until(site_id, username, ip)
    if wait is not None:
        return LoginCheck(wait_until=wait)
    account = find_account(site_id, username) if len(username or "") <= 64 else None
    good = verify_password(password or "", account.password_hash if account else _dummy_hash())
    if account is None or not good:
        record_failure(site_id, username, ip)
        return LoginCheck()
    return LoginCheck(account=account)


def finish_login(site_id: int, account: Account):
    """After every step succeeded: the username's failures are forgotten, the login time noted."""
    clear_failures(site_id, account.username)
    with acting_for(site_id):
        Account.update(last_login_at=utcnow()).where(Account.id == account.id).execute()


def wait_message(until: datetime.datetime) -> str:
    """'Too many failed sign-ins…' with the time (Beijing time, the console's audience) to try again."""
    beijing = until.replace(tzinfo=datetime.timezone.utc).astimezone(datetime.timezone(datetime.timedelta(hours=8)))
    minutes = max(1, -(-int((until - _naive_utc(utcnow())).total_seconds()) // 60))
    return _n("Too many failed sign-ins: try again at %(time)s Beijing time (in about %(num)d minute)",
              "Too many failed sign-ins: try again at %(time)s Beijing time (in about %(num)d minutes)",
              minutes, time=beijing.strftime("%H:%M"))


# -- sessions --------------------------------------------------------------------------------------


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(site_id: int, account_id: int, ip: str | None, user_agent: str | None) -> str:
    """A new console session row; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    with acting_for(site_id):
        ConsoleSession.create(id=_token_id(token), site=site_id, account=account_id, ip=(ip or "")[:64],
                              user_agent=(user_agent or "")[:255])
    return token


def session_alive(site_id: int, account_id: int, token: str | None, now=None) -> bool:
    """Whether the session of ``token`` still exists for the account; notes it was seen (once a minute)."""
    if not token or not isinstance(token, str):
        return False
    now = _naive_utc(now or utcnow())
    with acting_for(site_id):
        row = ConsoleSession.get_or_none((ConsoleSession.id == _token_id(token))
                                         & (ConsoleSession.account == account_id))
        if row is None:
            return False
        if (now - _naive_utc(row.last_seen_at)).total_seconds() >= LAST_SEEN_EVERY:
            ConsoleSession.update(last_seen_at=now).where(ConsoleSession.id == row.id).execute()
    return True


def list_sessions(site_id: int, account_id: int) -> list[ConsoleSession]:
    with acting_for(site_id):
        return list(ConsoleSession.select().where(ConsoleSession.account == account_id)
                    .order_by(ConsoleSession.last_seen_at.desc()))


def is_current(row: ConsoleSession, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(row.id, _token_id(token))


def end_session(site_id: int, account_id: int, session_id: str) -> bool:
    """End one session (by its row id) of the account; False if it is not one of theirs."""
    with acting_for(site_id):
        return ConsoleSession.delete().where((ConsoleSession.id == session_id)
                                             & (ConsoleSession.account == account_id)).execute() == 1


def end_token(site_id: int, token: str | None):
    if token and isinstance(token, str):
        with acting_for(site_id):
            ConsoleSession.delete().where(ConsoleSession.id == _token_id(token)).execute()


def end_other_sessions(site_id: int, account_id: int, keep_token: str | None) -> int:
    with acting_for(site_id):
        query = ConsoleSession.delete().where(ConsoleSession.account == account_id)
        if keep_token:
            query = query.where(ConsoleSession.id != _token_id(keep_token))
        return query.execute()


def end_all_sessions(site_id: int, account_id: int):
    end_other_sessions(site_id, account_id, None)
