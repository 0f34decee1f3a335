from kamengsite import migrations
from kamengsite.db import make_database


def _tables(db):
    return set(db.get_tables())


def test_upgrade_creates_schema_and_is_idempotent(backend_url):
    db = make_database(backend_url)
    applied = migrations.upgrade(db)
    assert applied[0] == "0001_sites"
    assert {"site", "site_domain", "schema_migration"} <= _tables(db)
    assert migrations.upgrade(db) == []
    assert migrations.pending(db) == []
    db.close()


def test_pending_lists_unapplied_migrations(backend_url):
    db = make_database(backend_url)
    names = migrations.pending(db)
    assert names and names == sorted(names)
    migrations.upgrade(db)
    assert migrations.pending(db) == []
    db.close()
