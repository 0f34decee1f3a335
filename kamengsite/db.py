"""The database: one peewee proxy, bound at start-up from ``DATABASE_URL``.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout; its write transactions begin IMMEDIATE so two writers queue at BEGIN
instead of deadlocking when a reader upgrades to a writer. PostgreSQL and
MariaDB use connection pools.
"""

from __future__ import annotations

from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect as connect_url

database = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 15000,
    "synchronous": "normal",
    "cache_size": -16000,
}

# Plain schemes are given pools: app processes are long-lived and threaded.
POOLED = {
    "postgresql": "postgresql+pool",
    "postgres": "postgresql+pool",
    "mysql": "mysql+pool",
    "mariadb": "mysql+pool",
}


def backend_name(url: str) -> str:
    """'sqlite', 'postgresql' or 'mysql' for a database URL."""
    scheme = urlparse(url).scheme.split("+")[0]
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)


def make_database(url: str) -> peewee.Database:
    """A peewee database for ``url``, configured for concurrent app processes."""
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme.startswith("sqlite"):
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        return peewee.SqliteDatabase(
            path or ":memory:",
            pragmas=SQLITE_PRAGMAS,
            timeout=15,
            lock_type="IMMEDIATE",
            check_same_thread=False,
        )
    if scheme in POOLED:
        url = POOLED[scheme] + url[len(scheme):]
    kwargs = {"max_connections": 32, "stale_timeout": 300}
    if backend_name(url) == "mysql":
        # READ COMMITTED, as PostgreSQL: code that locks a row and then reads (the ledger's balance
        # checks) must see every commit; InnoDB's default REPEATABLE READ would read the snapshot
        # taken at the transaction's first read and let two debits both pass.
        kwargs.update(charset="utf8mb4", init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return connect_url(url, **kwargs)


def init_database(url: str) -> peewee.Database:
    """Bind the module-level proxy to the database at ``url`` and return it."""
    db = make_database(url)
    database.initialize(db)
    return db


def is_sqlite(db=None) -> bool:
    db = db or database.obj
    return isinstance(db, peewee.SqliteDatabase)


_TRANSIENT = ("deadlock", "database is locked", "lock wait timeout", "could not serialize", "try restarting transaction")


def is_transient(exc: BaseException) -> bool:
    """A lock conflict the database resolved by failing one side: safe to run the transaction again."""
    return isinstance(exc, peewee.OperationalError) and any(s in str(exc).lower() for s in _TRANSIENT)


def retry_transient(fn, attempts: int = 8):
    """Run ``fn()`` again when it failed on a deadlock or lock timeout (whole transactions only)."""
    import random
    import time

    for attempt in range(attempts):
        try:
            return fn()
        except peewee.OperationalError as exc:
            if not is_transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))


class _Placeholder:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def arg(name: str) -> peewee.Value:
    """A named parameter inside a ``Statement``'s query."""
    return peewee.Value(_Placeholder(name), converter=False)


class Statement:
    """A hot query compiled to SQL once per database; each run binds fresh values.

    Building SQL is where peewee spends most of its time on the checkout path
    (more than SQLite spends running the statements). ``build(arg)`` returns a
    peewee query whose values are ``arg("name")`` placeholders; the SQL text is
    kept per bound database, and every run is still a parameterised query.
    """

    def __init__(self, build):
        self._build = build
        self._compiled: dict[int, tuple] = {}

    def _sql(self):
        db = database.obj
        entry = self._compiled.get(id(db))
        if entry is None or entry[0] is not db:
            sql, params = self._build().sql()
            # Each parameter is a placeholder's name, or a constant of the query kept as it is.
            slots = tuple((True, p.name) if isinstance(p, _Placeholder) else (False, p) for p in params)
            entry = self._compiled[id(db)] = (db, sql, slots)
        return entry[1], entry[2]

    def execute(self, **values):
        sql, slots = self._sql()
        return database.execute_sql(sql, [values[v] if named else v for named, v in slots])

    def rowcount(self, **values) -> int:
        return self.execute(**values).rowcount

    def first(self, **values):
        return self.execute(**values).fetchone()

    def all(self, **values) -> list:
        return self.execute(**values).fetchall()

    def insert(self, **values) -> int:
        """Run an INSERT and return the new row's id."""
        sql, _ = self._sql()
        cursor = self.execute(**values)
        if "RETURNING" in sql:
            return cursor.fetchone()[0]
        return cursor.lastrowid


def release_connections():
    """Close this thread's connection and, for pooled databases, every pooled one (tests, shutdown)."""
    if database.obj is None:
        return
    if not database.is_closed():
        database.close()
    if hasattr(database.obj, "close_all"):
        database.obj.close_all()
