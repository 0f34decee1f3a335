import peewee
import pytest

from kamengsite import migrations
from kamengsite.db import database, make_database
from kamengsite.models import Site, SiteDomain


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


def test_every_migration_reverts_and_reapplies(backend_url):
    db = make_database(backend_url)
    applied = migrations.upgrade(db)
    with db.connection_context():
        runner = migrations.runner(db)
        reverted = runner.down(target=applied[0])
        assert reverted == applied[::-1]
        assert _tables(db) <= {"schema_migration"}
        assert runner.up() == applied
    assert migrations.pending(db) == []
    db.close()


def test_site_index_constraints(backend_url):
    """The migrated schema enforces what the registry relies on, on every backend."""
    db = make_database(backend_url)
    migrations.upgrade(db)
    database.initialize(db)
    try:
        with db.connection_context():
            main = Site.create(slug="main")
            shop = Site.create(slug="shop1", parent=main)
            SiteDomain.create(domain="shop1.example.com", site=shop)
            with pytest.raises(peewee.IntegrityError):
                with db.atomic():
                    SiteDomain.create(domain="shop1.example.com", site=main)  # one site per domain
            with pytest.raises(peewee.IntegrityError):
                with db.atomic():
                    Site.create(slug="shop1")
            with pytest.raises(peewee.IntegrityError):
                with db.atomic():
                    main.delete_instance()  # a parent with children cannot go
            shop.delete_instance()
            assert SiteDomain.select().count() == 0  # its domains went with it
    finally:
        db.close()
        if hasattr(db, "close_all"):
            db.close_all()
