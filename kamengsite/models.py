"""Platform-wide tables. Tenant-owned tables derive from ``tenancy.TenantModel``.

Money columns are integer fen (``*_fen``); there is no float or decimal money
column anywhere in the schema.
"""

from __future__ import annotations

import datetime

import peewee

from .db import database


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Site(BaseModel):
    """The index row of a site folder: tenant rows point here, domains resolve here."""

    slug = peewee.CharField(max_length=32, unique=True)
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="RESTRICT")
    status = peewee.CharField(max_length=16, default="active")  # active | disabled
    created_at = peewee.DateTimeField(default=utcnow)
    # The economy (see levels.py, pricing.py): mirrored from site.toml, except the term's end.
    level = peewee.CharField(max_length=32, default="")
    settlement = peewee.CharField(max_length=16, default="platform")  # platform | direct
    expires_at = peewee.DateTimeField(null=True)


class SiteDomain(BaseModel):
    """A domain bound to one site; unique across the platform."""

    domain = peewee.CharField(max_length=253, unique=True)
    site = peewee.ForeignKeyField(Site, backref="domain_rows", on_delete="CASCADE")
