"""Backups of a whole instance, taken while it serves, and restoring them (``kamengsite backup`` / ``restore``).

An archive is one ``.tar.gz`` (mode 0600) holding:

* ``database/`` — a consistent snapshot of the database. SQLite: ``kamengsite.sqlite3``, a copy made
  with SQLite's online backup API (one read transaction of the WAL database, writers never wait).
  PostgreSQL and MariaDB: ``<table>.jsonl``, every table dumped inside ONE snapshot transaction
  (PostgreSQL ``REPEATABLE READ READ ONLY``; MariaDB ``START TRANSACTION WITH CONSISTENT SNAPSHOT``),
  batched by primary key so a table of millions of card keys never sits in memory at once.
* ``sites/<slug>/…`` — every live site folder (``site.toml``, layouts, uploaded assets).
* ``config/config.toml`` — the instance settings, without the secrets unless ``--with-secrets``.
* ``manifest.json`` (the last member) — when, which kamengsite and backend, the schema's migrations,
  the row count of every table and the SHA-256 of every other member.

``restore`` checks every checksum before it touches anything, migrates an empty database (any
backend) to the archive's schema version, loads the rows in foreign-key order, moves the
sequences / auto-increment counters past the loaded ids, applies this kamengsite's newer
migrations, and puts the site folders back. ``backup_when_due`` (a periodic job) makes one every
``backup_every_hours`` and keeps the newest ``backup_keep``. docs/backup.md is the operator's guide.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .db import backend_name, make_database
from .errors import KamengsiteError
from .hookspecs import hookimpl

log = logging.getLogger(__name__)

FORMAT = 1
BACKUPS_DIR = "backups"  # in the instance folder
NAME_PREFIX = "kamengsite-"
NAME_RE = re.compile(r"^kamengsite-(\d{8}-\d{6})(?:-\d+)?\.tar\.gz$")
STAMP_FORMAT = "%Y%m%d-%H%M%S"
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/kamengsite.sqlite3"
CONFIG_MEMBER = "config/config.toml"
BATCH = 5000  # rows per query when dumping and per insert batch when loading
#: Settings that are secrets (or point at a server holding them): left out unless --with-secrets.
SECRET_SETTINGS = ("secret_key", "card_key_keys", "database_url", "smtp_url", "redis_url", "payments")
#: Tables whose rows the migrations write themselves (the history; catalog_epoch's counter row).
MIGRATION_TABLES = ("schema_migration",)
SEEDED_TABLES = ("catalog_epoch",)
#: Tables whose row counts the restore names (the rest are summed up).
HEADLINE_TABLES = (("site", "sites"), ("shop_order", "orders"), ("payment", "payments"), ("card_key", "card keys"),
                   ("ledger_entry", "ledger entries"), ("member", "members"))
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CHUNK = 1024 * 1024


class BackupError(KamengsiteError):
    """A backup or restore that cannot go on; the message says why and what to do."""


# -- archive names and the backups folder -----------------------------------------------------


def backups_dir(instance) -> Path:
    return Path(instance.path) / BACKUPS_DIR


def archive_name(now: datetime.datetime) -> str:
    return f"{NAME_PREFIX}{now.strftime(STAMP_FORMAT)}.tar.gz"


def archive_time(path: Path) -> datetime.datetime | None:
    """The UTC time an archive's name records, or None for files that are not our archives."""
    match = NAME_RE.match(Path(path).name)
    if match is None:
        return None
    return datetime.datetime.strptime(match.group(1), STAMP_FORMAT)


def list_archives(folder: Path) -> list[Path]:
    """The archives in ``folder``, oldest first (by the time in their names)."""
    if not Path(folder).is_dir():
        return []
    found = [p for p in Path(folder).iterdir() if p.is_file() and archive_time(p) is not None]
    return sorted(found, key=lambda p: (archive_time(p), p.name))


def _free_path(folder: Path, now: datetime.datetime) -> Path:
    """``kamengsite-<stamp>.tar.gz``, or ``…-2.tar.gz`` when two backups fall in one second."""
    path = folder / archive_name(now)
    number = 1
    while path.exists():
        number += 1
        path = folder / f"{NAME_PREFIX}{now.strftime(STAMP_FORMAT)}-{number}.tar.gz"
    return path


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kamengsite")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def secret_fingerprint(secret: str) -> str:
    """A short, one-way tag of the instance secret: tells whether two instances share it, reveals nothing."""
    return hashlib.sha256(b"kamengsite-backup-secret-id:" + secret.encode()).hexdigest()[:16]


# -- values in JSON lines -----------------------------------------------------------------


def encode_value(value):
    """A column value as JSON: bytes are tagged base64, dates and times ISO text (as SQLite stores them)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise BackupError(f"cannot store a {type(value).__name__} column value in a backup")


def decode_value(value):
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value


# -- reading a database: connections, tables, snapshots -------------------------------------


@contextlib.contextmanager
def _connected(url: str):
    """Its own connection to ``url`` (never the app's bound proxy: the site keeps serving meanwhile)."""
    db = make_database(url)
    try:
        db.connect()
    except Exception as exc:  # noqa: BLE001 - any driver error is "cannot reach the database"
        raise BackupError(f"cannot open the database: {' '.join(str(exc).split())}") from None
    try:
        yield db
    finally:
        if not db.is_closed():
            db.close()
        if hasattr(db, "close_all"):
            db.close_all()


def _tables(db) -> list[str]:
    return sorted(db.get_tables())


def _primary_key(db, table: str) -> str | None:
    keys = db.get_primary_keys(table)
    return keys[0] if len(keys) == 1 else None


def _columns(db, table: str) -> list[str]:
    return [c.name for c in db.get_columns(table)]


def _q(db, name: str) -> str:
    """A quoted identifier; names come from a database or an archive and are checked before use."""
    if not IDENTIFIER_RE.match(name):
        raise BackupError(f"{name!r} is not a table or column name kamengsite would use")
    return f"{db.quote[0]}{name}{db.quote[1]}"


def _dump_table(db, table: str, out) -> tuple[list[str], int]:
    """Write ``table`` as JSON lines to ``out`` in primary-key batches; (columns, rows)."""
    columns = _columns(db, table)
    pk = _primary_key(db, table)
    select = f"SELECT {', '.join(_q(db, c) for c in columns)} FROM {_q(db, table)}"
    rows = 0
    if pk is None:  # not in kamengsite's schema today; ordered by every column, still inside the snapshot
        order = ", ".join(_q(db, c) for c in columns)
        offset = 0
        while True:
            batch = db.execute_sql(f"{select} ORDER BY {order} LIMIT {BATCH} OFFSET {offset}").fetchall()
            rows += _write_rows(out, batch)
            offset += len(batch)
            if len(batch) < BATCH:
                return columns, rows
    pk_index = columns.index(pk)
    last = None
    while True:
        if last is None:
            batch = db.execute_sql(f"{select} ORDER BY {_q(db, pk)} LIMIT {BATCH}").fetchall()
        else:
            batch = db.execute_sql(f"{select} WHERE {_q(db, pk)} > {db.param} ORDER BY {_q(db, pk)} LIMIT {BATCH}",
                                   (last,)).fetchall()
        rows += _write_rows(out, batch)
        if len(batch) < BATCH:
            return columns, rows
        last = batch[-1][pk_index]


def _write_rows(out, batch) -> int:
    for row in batch:
        out.write(json.dumps([encode_value(v) for v in row], ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
    return len(batch)


def _begin_snapshot(db, backend: str):
    if backend == "postgresql":
        db.execute_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    else:
        # The app's sessions run READ COMMITTED; a consistent snapshot needs REPEATABLE READ.
        db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        db.execute_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")


def _dump_server(url: str, staging: Path) -> dict:
    """PostgreSQL / MariaDB: every table as JSON lines, all read in one snapshot transaction."""
    backend = backend_name(url)
    tables = {}
    with _connected(url) as db:
        _begin_snapshot(db, backend)
        try:
            for table in _tables(db):
                with open(staging / f"{table}.jsonl", "w", encoding="utf-8") as out:
                    columns, rows = _dump_table(db, table, out)
                tables[table] = {"rows": rows, "columns": columns, "primary_key": _primary_key(db, table)}
            migrations = _applied_migrations(db) if "schema_migration" in tables else []
        finally:
            db.execute_sql("COMMIT")
    return {"format": "jsonl", "tables": tables, "migrations": migrations}


def _applied_migrations(db) -> list[str]:
    return [name for (name,) in db.execute_sql('SELECT name FROM schema_migration ORDER BY name').fetchall()]


def sqlite_path(url: str) -> str:
    path = url.split("://", 1)[1]
    return path[1:] if path.startswith("/") else path


def _dump_sqlite(url: str, staging: Path) -> dict:
    """SQLite: the online backup API copies the database in one read transaction (a consistent snapshot)."""
    source_path = sqlite_path(url)
    if not source_path or not Path(source_path).is_file():
        raise BackupError(f"no SQLite database at {source_path or url}")
    target_path = staging / Path(SQLITE_MEMBER).name
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(target_path)
    try:
        source.backup(target)  # pages=-1: all at once, so no writer's commit can fall in between
        # A self-contained file: no -wal/-shm beside it when the restore opens it.
        target.execute("PRAGMA journal_mode=DELETE")
        tables = _sqlite_tables(target)
        migrations = [n for (n,) in target.execute("SELECT name FROM schema_migration ORDER BY name")] \
            if "schema_migration" in tables else []
    finally:
        target.close()
        source.close()
    return {"format": "sqlite", "tables": tables, "migrations": migrations}


def _sqlite_tables(conn) -> dict:
    tables = {}
    names = [n for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for name in names:
        info = conn.execute(f'PRAGMA table_info("{_checked(name)}")').fetchall()
        pks = [row[1] for row in info if row[5]]
        rows = conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
        tables[name] = {"rows": rows, "columns": [row[1] for row in info],
                        "primary_key": pks[0] if len(pks) == 1 else None}
    return tables


def _checked(name: str) -> str:
    if not IDENTIFIER_RE.match(name):
        raise BackupError(f"{name!r} is not a table or column name kamengsite would use")
    return name


def dump_database(url: str, staging: Path) -> dict:
    """Write the database's snapshot into ``staging``; the manifest's ``database`` part."""
    backend = backend_name(url)
    if backend == "sqlite":
        return _dump_sqlite(url, staging)
    if backend in ("postgresql", "mysql"):
        return _dump_server(url, staging)
    raise BackupError(f"cannot back up a {backend!r} database")


# -- writing an archive -----------------------------------------------------------------------


@dataclass
class BackupResult:
    path: Path
    manifest: dict

    def summary(self) -> str:
        tables = self.manifest["database"]["tables"]
        rows = sum(t["rows"] for t in tables.values())
        return (f"backup written to {self.path} ({self.path.stat().st_size} bytes): {self.manifest['backend']} "
                f"database, {len(tables)} tables, {rows} rows; {len(self.manifest['sites'])} site folders; "
                f"secrets {'INCLUDED' if self.manifest['with_secrets'] else 'not included'}")


class _ArchiveWriter:
    """A tar.gz written to a 0600 file, recording every member's SHA-256 for the manifest."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w:gz")
        self.sums: dict[str, str] = {}

    def add_bytes(self, name: str, data: bytes, mtime: float | None = None):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(mtime if mtime is not None else time.time())
        info.mode = 0o600
        self.tar.addfile(info, io.BytesIO(data))
        self.sums[name] = hashlib.sha256(data).hexdigest()

    def add_file(self, name: str, path: Path):
        """A big staged file, hashed as it is copied in (read once, never whole in memory)."""
        info = tarfile.TarInfo(name)
        info.size = path.stat().st_size
        info.mtime = int(path.stat().st_mtime)
        info.mode = 0o600
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            self.tar.addfile(info, _Hashing(fh, digest))
        self.sums[name] = digest.hexdigest()

    def close(self):
        self.tar.close()


class _Hashing:
    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def read(self, size=-1):
        data = self.fh.read(size)
        self.digest.update(data)
        return data


def _site_folders(instance) -> list[Path]:
    """Live site folders (hidden and ``_`` folders are half-built or set aside, never live)."""
    root = Path(instance.sites_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _add_site(writer: _ArchiveWriter, folder: Path) -> list[str]:
    """Every regular file of one site folder; symlinks are skipped (listed in the result)."""
    skipped = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.startswith(".") and filename.endswith(".tmp"):  # an atomic write in progress
                continue
            path = Path(dirpath) / filename
            relative = path.relative_to(folder.parent).as_posix()
            if path.is_symlink() or not path.is_file():
                skipped.append(relative)
                continue
            try:
                data = path.read_bytes()  # site files are small (assets at most 5 MB)
            except FileNotFoundError:  # removed while we walked: it is not part of the site any more
                continue
            writer.add_bytes(f"sites/{relative}", data)
    return skipped


def _config_bytes(instance, with_secrets: bool) -> bytes | None:
    config_file = Path(instance.path) / "config.toml"
    if not config_file.is_file():
        return None
    with open(config_file, "rb") as fh:
        values = tomllib.load(fh)
    if not with_secrets:
        values = {k: v for k, v in values.items() if k not in SECRET_SETTINGS}
    return tomli_w.dumps(values).encode()


def _card_key_ids(instance) -> list[str]:
    from .crypto import CardKeyCipher

    ids = []
    for encoded in instance.card_key_keys:  # the 4-byte id every sealed key starts with, one per key
        try:
            ids.append(CardKeyCipher([base64.b64decode(encoded, validate=True)], b"").active_key_id.hex())
        except (KamengsiteError, ValueError, TypeError):
            continue  # a broken entry is the config check's business, not the backup's
    return sorted(ids)


def make_backup(instance, *, to: Path | None = None, with_secrets: bool = False,
                now: datetime.datetime | None = None) -> BackupResult:
    """Write one archive of ``instance`` (database snapshot, site folders, config) and return it."""
    now = now or _utcnow()
    folder = Path(to) if to else backups_dir(instance)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = _free_path(folder, now)
    partial = folder / f".{target.name}.partial"
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=folder) as staging_dir:
        staging = Path(staging_dir)
        database = dump_database(instance.database_url, staging)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        try:
            with open(fd, "wb") as fh:
                writer = _ArchiveWriter(fh)
                for member in sorted(staging.iterdir()):
                    writer.add_file(f"database/{member.name}", member)
                sites, skipped = [], []
                for site in _site_folders(instance):
                    skipped += _add_site(writer, site)
                    sites.append(site.name)
                config = _config_bytes(instance, with_secrets)
                if config is not None:
                    writer.add_bytes(CONFIG_MEMBER, config)
                manifest = {
                    "format": FORMAT, "created_at": now.isoformat(timespec="seconds") + "Z",
                    "kamengsite_version": _version(), "backend": backend_name(instance.database_url),
                    "database": database, "migrations": database["migrations"], "sites": sites,
                    "skipped": skipped, "with_secrets": with_secrets,
                    "secret_id": secret_fingerprint(instance.secret_key), "card_key_ids": _card_key_ids(instance),
                    "files": dict(writer.sums),
                }
                writer.add_bytes(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
                writer.close()
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, target)
        finally:
            if partial.exists():
                partial.unlink()
    return BackupResult(target, manifest)


# -- retention and the schedule ---------------------------------------------------------------


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete the oldest archives in ``folder`` beyond the newest ``keep``; the deleted ones."""
    archives = list_archives(folder)
    doomed = archives[:max(0, len(archives) - max(keep, 1))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def backup_due(instance, now: datetime.datetime) -> bool:
    every = getattr(instance, "backup_every_hours", 24)
    if every <= 0:
        return False
    archives = list_archives(backups_dir(instance))
    return not archives or now - archive_time(archives[-1]) >= datetime.timedelta(hours=every)


@contextlib.contextmanager
def _exclusive(folder: Path):
    """One scheduled backup at a time across workers and processes (a non-blocking file lock)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def scheduled_backup(instance, now: datetime.datetime | None = None) -> BackupResult | None:
    """Make a backup when the newest one is ``backup_every_hours`` old, then keep ``backup_keep``."""
    now = now or _utcnow()
    if not backup_due(instance, now):
        return None
    folder = backups_dir(instance)
    with _exclusive(folder) as ours:
        if not ours or not backup_due(instance, now):  # another worker is at it, or just finished
            return None
        result = make_backup(instance, now=now)
        deleted = prune(folder, getattr(instance, "backup_keep", 7))
    log.info("%s; %d old backup(s) deleted", result.summary(), len(deleted))
    return result


# -- reading an archive -----------------------------------------------------------------------


@dataclass
class Archive:
    """An archive unpacked into a temporary folder, every checksum verified."""

    root: Path
    manifest: dict

    @property
    def tables(self) -> dict:
        return self.manifest["database"]["tables"]

    def rows(self, table: str, columns: list[str]):
        """Yield the rows of ``table`` (values in the order of ``columns``), streaming."""
        if self.manifest["database"]["format"] == "sqlite":
            yield from self._sqlite_rows(table, columns)
            return
        stored = self.tables[table]["columns"]
        index = [stored.index(c) for c in columns]
        with open(self.root / "database" / f"{_checked(table)}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                values = json.loads(line)
                yield tuple(decode_value(values[i]) for i in index)

    def _sqlite_rows(self, table: str, columns: list[str]):
        conn = sqlite3.connect(f"{(self.root / SQLITE_MEMBER).resolve().as_uri()}?mode=ro", uri=True)
        try:
            pk = self.tables[table]["primary_key"]
            order = f' ORDER BY "{_checked(pk)}"' if pk else ""
            cursor = conn.execute(f'SELECT {", ".join(chr(34) + _checked(c) + chr(34) for c in columns)} '
                                  f'FROM "{_checked(table)}"{order}')
            while True:
                batch = cursor.fetchmany(BATCH)
                if not batch:
                    return
                yield from batch
        finally:
            conn.close()

    def config(self) -> dict | None:
        path = self.root / CONFIG_MEMBER
        if not path.is_file():
            return None
        with open(path, "rb") as fh:
            return tomllib.load(fh)


def _member_allowed(name: str) -> bool:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return False
    return name in (MANIFEST, CONFIG_MEMBER) or (parts[0] in ("database", "sites") and len(parts) >= 2)


def open_archive(path: Path, into: Path) -> Archive:
    """Unpack ``path`` into ``into`` and check it against its manifest; raise BackupError if anything is off."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"no archive at {path}")
    sums = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not _member_allowed(member.name):
                    raise BackupError(f"{path}: unexpected member {member.name!r}: not a kamengsite backup")
                sums[member.name] = _extract(tar, member, into)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BackupError(f"{path} is not a readable backup archive: {exc}") from None
    if MANIFEST not in sums:
        raise BackupError(f"{path} has no {MANIFEST}: not a kamengsite backup")
    try:
        manifest = json.loads((into / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BackupError(f"{path}: {MANIFEST} is not valid JSON: {exc}") from None
    _check_sums(path, manifest, sums)
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: archive format {manifest.get('format')!r} is not {FORMAT}")
    return Archive(into, manifest)


def _extract(tar, member, into: Path) -> str:
    digest = hashlib.sha256()
    target = into / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_sums(path, manifest: dict, sums: dict):
    expected = manifest.get("files")
    if not isinstance(expected, dict):
        raise BackupError(f"{path}: the manifest lists no checksums")
    members = {name: digest for name, digest in sums.items() if name != MANIFEST}
    missing = sorted(set(expected) - set(members))
    extra = sorted(set(members) - set(expected))
    changed = sorted(n for n in set(expected) & set(members) if expected[n] != members[n])
    problems = ([f"{n}: checksum does not match" for n in changed] + [f"{n}: missing" for n in missing]
                + [f"{n}: not in the manifest" for n in extra])
    if problems:
        raise BackupError(f"{path} failed its checksums, nothing was restored: " + "; ".join(problems[:5])
                          + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


# -- restoring the database -------------------------------------------------------------------


@dataclass
class RestoreReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def say(self, line: str):
        self.lines.append(line)


def data_rows(db) -> dict[str, int]:
    """{table: rows} of every table holding rows beyond what the migrations write themselves."""
    found = {}
    for table in _tables(db):
        if table in MIGRATION_TABLES:
            continue
        count = db.execute_sql(f"SELECT COUNT(*) FROM {_q(db, table)}").fetchone()[0]
        seeded = 1 if table in SEEDED_TABLES else 0
        if count > seeded:
            found[table] = count
    return found


def _migration_plan(db, archive: Archive) -> str | None:
    """The migration to stop at (the archive's last), after checking this kamengsite knows them all."""
    from . import migrations

    wanted = archive.manifest["migrations"]
    known = {m.name for m in migrations.runner(db).migrations()}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise BackupError(f"the archive's schema has migrations this kamengsite does not know "
                          f"({', '.join(unknown)}): install the kamengsite version that made it "
                          f"({archive.manifest.get('kamengsite_version')}) or newer")
    applied = set(migrations.runner(db).applied()) if "schema_migration" in _tables(db) else set()
    ahead = sorted(applied - set(wanted))
    if ahead:
        raise BackupError(f"the target database is at a newer schema than the archive (it has {', '.join(ahead)}): "
                          f"restore into an empty database")
    return max(wanted) if wanted else None


def _load_order(db, tables: list[str]) -> list[str]:
    """``tables`` with every referenced table before the tables that reference it."""
    refs = {t: {fk.dest_table for fk in db.get_foreign_keys(t) if fk.dest_table != t and fk.dest_table in tables}
            for t in tables}
    ordered, placed = [], set()
    while len(ordered) < len(tables):
        ready = sorted(t for t in tables if t not in placed and refs[t] <= placed)
        if not ready:
            raise BackupError(f"foreign keys form a cycle among {sorted(set(tables) - placed)}")
        ordered += ready
        placed.update(ready)
    return ordered


def _bool_columns(db, table: str) -> set[str]:
    return {c.name for c in db.get_columns(table) if c.data_type.lower() == "boolean"}


def _insert_rows(db, table: str, columns: list[str], rows, backend: str) -> int:
    sql = (f"INSERT INTO {_q(db, table)} ({', '.join(_q(db, c) for c in columns)}) "
           f"VALUES ({', '.join([db.param] * len(columns))})")
    cursor = db.cursor()
    if backend == "postgresql":
        from psycopg2.extras import execute_values

        template_sql = sql.rsplit(" VALUES ", 1)[0] + " VALUES %s"
        execute_values(cursor, template_sql, rows, page_size=1000)
    else:
        cursor.executemany(sql, rows)
    return len(rows)


def _load_table(db, archive: Archive, table: str, backend: str) -> int:
    """Insert the archive's rows of ``table``; self-references to later rows are set afterwards."""
    target_columns = set(_columns(db, table))
    columns = [c for c in archive.tables[table]["columns"] if c in target_columns]
    dropped = [c for c in archive.tables[table]["columns"] if c not in target_columns]
    if dropped:
        raise BackupError(f"table {table}: the target has no column(s) {', '.join(dropped)}")
    pk = archive.tables[table]["primary_key"]
    booleans = _bool_columns(db, table)
    self_refs = [fk.column for fk in db.get_foreign_keys(table) if fk.dest_table == table and fk.column in columns]
    later, batch, total = [], [], 0
    for row in archive.rows(table, columns):
        values = dict(zip(columns, row))
        for column in booleans:
            if isinstance(values[column], int) and not isinstance(values[column], bool):
                values[column] = bool(values[column])
        for column in self_refs:  # a parent loaded after its child (ids out of order): link it later
            if pk and values[column] is not None and values[column] >= values[pk]:
                later.append((values[pk], column, values[column]))
                values[column] = None
        batch.append(tuple(values[c] for c in columns))
        if len(batch) >= BATCH:
            total += _insert_rows(db, table, columns, batch, backend)
            batch = []
    if batch:
        total += _insert_rows(db, table, columns, batch, backend)
    for key, column, value in later:
        db.execute_sql(f"UPDATE {_q(db, table)} SET {_q(db, column)} = {db.param} WHERE {_q(db, pk)} = {db.param}",
                       (value, key))
    return total


def _wipe(db, tables: list[str], backend: str):
    """Empty ``tables`` (the data of a non-empty target, or the migrations' seed rows)."""
    if backend == "mysql":
        db.execute_sql("SET FOREIGN_KEY_CHECKS = 0")  # InnoDB checks self-references row by row
    try:
        for table in reversed(tables):
            db.execute_sql(f"DELETE FROM {_q(db, table)}")
    finally:
        if backend == "mysql":
            db.execute_sql("SET FOREIGN_KEY_CHECKS = 1")


def _fix_sequences(db, tables: dict, backend: str):
    """Move id counters past the loaded ids, so the next insert does not collide."""
    for table, info in tables.items():
        pk = info["primary_key"]
        if not pk:
            continue
        if backend == "postgresql":
            sequence = db.execute_sql("SELECT pg_get_serial_sequence(%s, %s)", (table, pk)).fetchone()[0]
            if sequence:
                db.execute_sql(f"SELECT setval(%s, COALESCE((SELECT MAX({_q(db, pk)}) FROM {_q(db, table)}), 0) + 1, "
                               f"false)", (sequence,))
        elif backend == "mysql":
            top = db.execute_sql(f"SELECT MAX({_q(db, pk)}) FROM {_q(db, table)}").fetchone()[0]
            if isinstance(top, int):
                db.execute_sql(f"ALTER TABLE {_q(db, table)} AUTO_INCREMENT = {int(top) + 1}")


def restore_database(url: str, archive: Archive, *, replace: bool, report: RestoreReport) -> dict[str, int]:
    """Migrate the database at ``url`` to the archive's schema, load its rows, then migrate to this version."""
    from . import migrations

    backend = backend_name(url)
    with _connected(url) as db:
        existing = data_rows(db)
        if existing and not replace:
            listing = ", ".join(f"{t} ({n})" for t, n in sorted(existing.items())[:6])
            raise BackupError(f"the target database is not empty ({listing}{', …' if len(existing) > 6 else ''}): "
                              f"restore into an empty database, or pass --yes to replace its contents")
        target = _migration_plan(db, archive)
        applied = migrations.runner(db).up(target=target) if target else []
        report.say(f"database {backend}: migrated to the archive's schema ({target or 'empty'}; "
                   f"{len(applied)} migration(s) applied)")
        tables = [t for t in archive.tables if t not in MIGRATION_TABLES]
        present = set(_tables(db))
        missing = [t for t in tables if t not in present]
        if missing:
            raise BackupError(f"the schema has no table(s) {', '.join(missing)} that the archive holds")
        order = _load_order(db, tables)
        loaded = {}
        with db.atomic():
            _wipe(db, [t for t in _load_order(db, sorted(present - set(MIGRATION_TABLES)))], backend)
            for table in order:
                loaded[table] = _load_table(db, archive, table, backend)
        _check_counts(archive, loaded)
        _fix_sequences(db, {t: archive.tables[t] for t in order}, backend)
        report.say(f"loaded {sum(loaded.values())} rows into {len(order)} tables"
                   + (" (its previous contents were replaced)" if existing else ""))
        known = [(label, loaded[t]) for t, label in HEADLINE_TABLES if t in loaded]
        if known:
            report.say("  " + ", ".join(f"{label}: {n}" for label, n in known))
        newer = migrations.upgrade(db)
        if newer:
            report.say(f"then applied this kamengsite's newer migrations: {', '.join(newer)}")
    return loaded


def _check_counts(archive: Archive, loaded: dict[str, int]):
    wrong = [f"{t}: {n} of {archive.tables[t]['rows']}" for t, n in loaded.items() if n != archive.tables[t]["rows"]]
    if wrong:
        raise BackupError(f"rows loaded do not match the manifest's counts: {'; '.join(wrong)}")


# -- restoring the files ----------------------------------------------------------------------


def existing_sites(instance) -> list[str]:
    return [p.name for p in _site_folders(instance)]


def restore_sites(instance, archive: Archive, *, report: RestoreReport, now: datetime.datetime) -> list[str]:
    """Put the archive's site folders in place; folders already there are moved aside, not deleted."""
    root = Path(instance.sites_dir)
    root.mkdir(parents=True, exist_ok=True)
    present = _site_folders(instance)
    if present:
        aside = Path(instance.path) / f"sites.before-restore-{now.strftime(STAMP_FORMAT)}"
        aside.mkdir(parents=True, exist_ok=True)
        for folder in present:
            os.replace(folder, aside / folder.name)
        report.say(f"moved the {len(present)} site folder(s) that were there to {aside}")
    from .config import check_slug

    source = archive.root / "sites"
    restored = []
    for slug in archive.manifest["sites"]:
        check_slug(slug)  # a folder name from the archive: never a path
        staging = root / f".restore-{slug}"
        if staging.exists():
            shutil.rmtree(staging)
        if (source / slug).is_dir():
            shutil.copytree(source / slug, staging)
        else:
            staging.mkdir()
        os.replace(staging, root / slug)  # other processes never see half a folder
        restored.append(slug)
    report.say(f"restored {len(restored)} site folder(s) into {root}: {', '.join(restored) or '-'}")
    return restored


def _write_private(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def config_for_new_instance(archive: Archive, database_url: str | None) -> dict:
    """The archive's settings for an instance folder that has none yet (needs an archive with secrets)."""
    values = archive.config()
    if values is None or not archive.manifest.get("with_secrets"):
        raise BackupError("this instance folder has no config.toml and the archive carries no secrets: run "
                          "`kamengsite init`, copy secret_key and card_key_keys from where you keep them into "
                          "its config.toml, then `kamengsite restore FILE --yes`")
    # The old server's database is never the target by accident: a new one is named, or the default.
    values.pop("database_url", None)
    if database_url:
        values["database_url"] = database_url
    return values


def check_secrets(instance, archive: Archive, report: RestoreReport):
    """Warn when this instance's secrets are not the ones the archive's data was made with."""
    if archive.manifest.get("secret_id") and archive.manifest["secret_id"] != secret_fingerprint(instance.secret_key):
        report.warnings.append("this instance's secret_key is not the one the backup was made with: order-lookup "
                               "passwords, API keys and signed-in sessions of the old server will not work; put "
                               "the old secret_key into config.toml")
    have = set(_card_key_ids(instance))
    lacking = [k for k in archive.manifest.get("card_key_ids", []) if k not in have]
    sealed = archive.tables.get("card_key", {}).get("rows", 0)
    if lacking and sealed:
        report.warnings.append(f"this instance's card_key_keys lack {len(lacking)} key(s) the backup's card keys "
                               f"may be sealed with: the keys cannot be read until you add them to card_key_keys")


def restore(instance, archive: Archive, *, replace: bool = False, now: datetime.datetime | None = None,
            config_copy: bool = True) -> RestoreReport:
    """Restore ``archive`` into ``instance``: refuse first (non-empty targets without ``replace``), then write."""
    now = now or _utcnow()
    report = RestoreReport()
    sites_there = existing_sites(instance)
    if sites_there and not replace:
        raise BackupError(f"{instance.sites_dir} already holds site folders ({', '.join(sites_there[:5])}): "
                          f"pass --yes to move them aside and restore the archive's")
    restore_database(instance.database_url, archive, replace=replace, report=report)
    restore_sites(instance, archive, report=report, now=now)
    config = archive.config()
    if config is not None and config_copy:
        aside = Path(instance.path) / "config.from-backup.toml"
        _write_private(aside, tomli_w.dumps(config).encode())
        report.say(f"the archive's settings are in {aside} (config.toml was left as it is)")
    check_secrets(instance, archive, report)
    return report


# -- wiring: command line and schedule --------------------------------------------------------


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*/10"), name="backup_when_due")
    def backup_when_due():
        """Back the instance up when the newest backup is ``backup_every_hours`` old; keep ``backup_keep``."""
        result = scheduled_backup(instance)
        return str(result.path) if result else None


@hookimpl
def register_commands(cli):
    import click

    @cli.command("backup")
    @click.option("--to", "to", type=click.Path(file_okay=False), default=None,
                  help="Folder for the archive (default: <instance>/backups).")
    @click.option("--with-secrets", is_flag=True,
                  help="Also store secret_key, card_key_keys and the other secrets (keep the file safe).")
    @click.pass_context
    def backup_command(ctx, to, with_secrets):
        """Write one archive: a consistent database snapshot, every site folder and the settings."""
        try:
            result = make_backup(ctx.obj.instance(), to=Path(to) if to else None, with_secrets=with_secrets)
        except KamengsiteError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(result.summary())
        if not with_secrets:
            click.echo("secrets are not in the archive: keep secret_key and card_key_keys of config.toml "
                       "somewhere safe, the card keys cannot be read without them")

    @cli.command("restore")
    @click.argument("archive_path", metavar="FILE", type=click.Path(dir_okay=False))
    @click.option("--yes", is_flag=True, help="Replace a database or site folders that are not empty.")
    @click.option("--database-url", default=None,
                  help="Database for an instance folder created from the archive (default: DATABASE_URL or SQLite).")
    @click.pass_context
    def restore_command(ctx, archive_path, yes, database_url):
        """Restore FILE (made by `kamengsite backup`) into this instance's empty database and sites folder."""
        try:
            _run_restore(ctx.obj.instance_path, Path(archive_path), yes=yes, database_url=database_url)
        except KamengsiteError as exc:
            raise click.ClickException(str(exc)) from None


def _run_restore(instance_path: Path, archive_path: Path, *, yes: bool, database_url: str | None):
    import click

    from .instance import CONFIG_NAME, Instance

    instance_path = Path(instance_path)
    instance_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=instance_path) as unpacked:
        archive = open_archive(archive_path, Path(unpacked))
        manifest = archive.manifest
        click.echo(f"archive {archive_path}: made {manifest['created_at']} by kamengsite "
                   f"{manifest['kamengsite_version']} on {manifest['backend']}; checksums verified")
        created = not (instance_path / CONFIG_NAME).is_file()
        if created:
            values = config_for_new_instance(archive, database_url)
            _write_private(instance_path / CONFIG_NAME, tomli_w.dumps(values).encode())
            (instance_path / "sites").mkdir(exist_ok=True)
            click.echo(f"created {instance_path / CONFIG_NAME} from the archive's settings")
        instance = Instance.load(instance_path)
        report = restore(instance, archive, replace=yes, config_copy=not created)
    for line in report.lines:
        click.echo(line)
    for warning in report.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    click.echo("restore complete")
