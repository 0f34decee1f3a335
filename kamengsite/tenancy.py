"""Site scoping for tenant-owned rows.

Every query on a ``TenantModel`` runs inside a scope: ``site_scope(site_id)``
(set by each site app for its requests) adds ``WHERE site_id = …`` to every
select, update and delete, and stamps inserts with the site. Without a scope a
tenant query raises ``CrossTenantError`` — a cross-site read has to be asked for
by name with ``all_sites()`` (operator tools, jobs, migrations).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import peewee

from .models import BaseModel, Site

_ALL = object()
_scope: contextvars.ContextVar = contextvars.ContextVar("kamengsite_site_scope", default=None)


class CrossTenantError(RuntimeError):
    """A tenant query ran outside a site scope, or wrote into another site."""


@contextmanager
def site_scope(site_id: int):
    """Run the block as site ``site_id``: tenant queries see and write only its rows."""
    if isinstance(site_id, Site):
        site_id = site_id.id
    if not isinstance(site_id, int) or isinstance(site_id, bool):
        raise TypeError(f"site_scope needs a site id, got {site_id!r}")
    token = _scope.set(site_id)
    try:
        yield site_id
    finally:
        _scope.reset(token)


@contextmanager
def all_sites():
    """Run the block unscoped: for the operator, background jobs and migrations only."""
    token = _scope.set(_ALL)
    try:
        yield
    finally:
        _scope.reset(token)


def current_site_id() -> int | None:
    """The scoped site id, None inside ``all_sites()``; raises outside any scope."""
    scope = _scope.get()
    if scope is None:
        raise CrossTenantError("no site scope is active: wrap the code in site_scope(site_id) or all_sites()")
    return None if scope is _ALL else scope


class TenantModel(BaseModel):
    """A row owned by one site. Its queries are confined to the current site scope."""

    site = peewee.ForeignKeyField(Site, on_delete="CASCADE", index=True)

    @classmethod
    def _confine(cls, query):
        site_id = current_site_id()
        return query if site_id is None else query.where(cls.site == site_id)

    @classmethod
    def select(cls, *fields):
        return cls._confine(super().select(*fields))

    @classmethod
    def update(cls, __data=None, **update):
        site_id = current_site_id()
        if site_id is not None:  # `update(site=other)` would move this site's rows into another site
            data = dict(__data or {}, **update)
            for key in ("site", "site_id", cls.site):
                if key in data:
                    cls._check_site(data[key], site_id)
        return cls._confine(super().update(__data, **update))

    @classmethod
    def delete(cls):
        return cls._confine(super().delete())

    @classmethod
    def insert(cls, __data=None, **insert):
        data = dict(__data or {}, **insert)
        cls._stamp(data)
        return super().insert(data)

    @classmethod
    def insert_many(cls, rows, fields=None):
        site_id = current_site_id()
        if site_id is None:
            return super().insert_many(rows, fields)
        if fields is not None:
            fields = list(fields)
            rows = [tuple(row) for row in rows]  # a generator would be used up by the check below
            # The site column may be named "site", "site_id" or given as the field itself.
            at = next((i for i, f in enumerate(fields)
                       if cls._meta.combined.get(f if isinstance(f, str) else getattr(f, "name", None)) is cls.site), None)
            if at is None:
                fields.append(cls.site)
                rows = [row + (site_id,) for row in rows]
            else:
                for row in rows:
                    cls._check_site(row[at], site_id)
            return super().insert_many(rows, fields)
        stamped = []
        for row in rows:
            row = dict(row)
            cls._stamp(row)
            stamped.append(row)
        return super().insert_many(stamped)

    @classmethod
    def insert_from(cls, query, fields):
        if current_site_id() is not None:
            raise CrossTenantError("insert_from() cannot be confined to one site: run it inside all_sites()")
        return super().insert_from(query, fields)

    @classmethod
    def _stamp(cls, data: dict):
        site_id = current_site_id()
        if site_id is None:
            return
        key = next((k for k in ("site", "site_id", cls.site) if k in data), None)
        if key is None:
            data["site"] = site_id
        else:
            cls._check_site(data[key], site_id)

    @staticmethod
    def _check_site(value, site_id):
        value = value.id if isinstance(value, Site) else value
        if value != site_id:
            raise CrossTenantError(f"refused to write a row of site {value} from inside site {site_id}'s scope")

    def save(self, *args, **kwargs):
        site_id = current_site_id()
        if site_id is not None:
            if self.site_id is None:
                self.site_id = site_id
            self._check_site(self.site_id, site_id)
        return super().save(*args, **kwargs)


@contextmanager
def acting_for(site_id: int):
    """Scope the block to ``site_id`` unless already inside it; refuse from inside another site."""
    scope = _scope.get()
    if scope is not None and scope is not _ALL and scope != site_id:
        raise CrossTenantError(f"site {scope} tried to act for site {site_id}")
    with site_scope(site_id):
        yield site_id
