"""App keys: issued to a member of a site, revoked by the member or the shop; the secret is derived.

A key's secret is HMAC-SHA256(instance secret, app key + salt): the database holds the app key
and the salt, never the secret, so a copy of the database signs nothing. The secret is shown
once, when the key is issued; losing it means issuing a new key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..errors import KamengsiteError
from ..models import utcnow
from ..tenancy import acting_for, all_sites
from .models import ApiKey

APP_KEY_PREFIX = "ks_"
MAX_KEYS_PER_MEMBER = 5


class ApiKeyError(KamengsiteError):
    code = "api_key_error"


def secret_for(key: ApiKey, instance_secret: str) -> str:
    message = f"kamengsite-api-secret:{key.app_key}:{key.salt}".encode()
    return hmac.new(instance_secret.encode(), message, hashlib.sha256).hexdigest()


def issue_key(site_id: int, member_id: int, instance_secret: str, *, label: str = "",
              callback_url: str = "") -> tuple[ApiKey, str]:
    """A new active key of this member and its secret (shown to them once)."""
    with acting_for(site_id):
        active = ApiKey.select().where((ApiKey.member_id == member_id) & (ApiKey.status == "active")).count()
        if active >= MAX_KEYS_PER_MEMBER:
            raise ApiKeyError(f"at most {MAX_KEYS_PER_MEMBER} active keys per member: revoke one first")
        key = ApiKey.create(site=site_id, member_id=member_id, app_key=APP_KEY_PREFIX + secrets.token_hex(12),
                            salt=secrets.token_hex(16), label=(label or "").strip()[:60],
                            callback_url=(callback_url or "").strip()[:500])
    return key, secret_for(key, instance_secret)


def find_active(app_key: str) -> ApiKey | None:
    """The active key with this app key, on whichever site (the caller checks the site)."""
    if not isinstance(app_key, str) or not app_key.startswith(APP_KEY_PREFIX) or len(app_key) > 32:
        return None
    with all_sites():
        return ApiKey.get_or_none((ApiKey.app_key == app_key) & (ApiKey.status == "active"))


def keys_of(site_id: int, member_id: int | None = None) -> list[ApiKey]:
    with acting_for(site_id):
        query = ApiKey.select().order_by(ApiKey.id.desc())
        if member_id is not None:
            query = query.where(ApiKey.member_id == member_id)
        return list(query)


def revoke(site_id: int, key_id: int, member_id: int | None = None) -> bool:
    """Revoke a key of this site (of this member, if given); False if there is no such active key."""
    with acting_for(site_id):
        query = ApiKey.update(status="revoked").where((ApiKey.id == key_id) & (ApiKey.status == "active"))
        if member_id is not None:
            query = query.where(ApiKey.member_id == member_id)
        return query.execute() == 1


def touch(key: ApiKey):
    """Remember when the key was last used (shown beside it); at most once a minute per key."""
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        with all_sites():
            ApiKey.update(last_used_at=now).where(ApiKey.id == key.id).execute()
