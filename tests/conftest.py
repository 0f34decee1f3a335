"""Shared fixtures: an instance folder, its host, clients by host name, and the database matrix.

Tests that take ``backend_url`` run once per database in KAMENGSITE_TEST_BACKENDS
(default: sqlite, postgresql, mysql). A server that is not reachable skips the
test on a laptop and fails it under CI=true.
"""

from __future__ import annotations

import os
import uuid

import pytest
from werkzeug.test import Client

from kamengsite.db import backend_name, make_database
from kamengsite.host import Host
from kamengsite.instance import Instance
from kamengsite.migrations import upgrade

SERVERS = {
    "postgresql": os.environ.get("KAMENGSITE_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("KAMENGSITE_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
}
BACKENDS = [b.strip() for b in os.environ.get("KAMENGSITE_TEST_BACKENDS", "sqlite,postgresql,mysql").split(",") if b.strip()]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(reason)


def _server_connection(backend):
    """A raw connection to the server's maintenance database, or skip/fail."""
    url = SERVERS[backend]
    db = make_database(url.replace("postgresql://", "postgresql://", 1))
    try:
        db.connect()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        _unavailable(f"{backend} at {url} is not reachable: {exc}")
    return db


def create_database(backend, tmp_path) -> tuple[str, callable]:
    """A fresh, empty database on ``backend``; returns (url, drop)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'test-{uuid.uuid4().hex[:8]}.db'}", lambda: None
    name = f"ks_test_{uuid.uuid4().hex[:12]}"
    admin = _server_connection(backend)
    admin.execute_sql(f"CREATE DATABASE {name}")
    admin.close()
    base = SERVERS[backend].rsplit("/", 1)[0]

    def drop():
        admin = _server_connection(backend)
        if backend == "postgresql":
            admin.execute_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            admin.execute_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.close()

    return f"{base}/{name}", drop


@pytest.fixture(params=BACKENDS)
def backend_url(request, tmp_path):
    """URL of a fresh empty database, once per backend of the matrix."""
    url, drop = create_database(request.param, tmp_path)
    yield url
    from kamengsite.db import database

    if database.obj is not None and not database.is_closed():
        database.close()
        if hasattr(database.obj, "close_all"):
            database.obj.close_all()
    drop()


@pytest.fixture
def backend(backend_url):
    return backend_name(backend_url)


def make_instance(path, database_url, **settings) -> Instance:
    instance = Instance.create(path, database_url=database_url, **settings)
    db = make_database(instance.database_url)
    upgrade(db)
    db.close()
    return instance


def make_host(instance) -> Host:
    host = Host(instance)
    if instance.main_site not in host.registry.slugs():
        host.registry.create(instance.main_site, template="main")
    return host


@pytest.fixture
def instance(tmp_path):
    """A migrated SQLite instance in a temporary folder."""
    return make_instance(tmp_path / "instance", f"sqlite:///{tmp_path / 'instance.db'}")


@pytest.fixture
def db_instance(tmp_path, backend_url):
    """A migrated instance on each backend of the matrix."""
    return make_instance(tmp_path / "instance", backend_url)


@pytest.fixture
def host(instance):
    """The host of ``instance``, with its main site created."""
    h = make_host(instance)
    yield h
    h.close()


@pytest.fixture
def db_host(db_instance):
    h = make_host(db_instance)
    yield h
    h.close()


class SiteClient(Client):
    """A test client that sends every request to one host name."""

    def __init__(self, app, host_name):
        super().__init__(app)
        self.host_name = host_name

    def open(self, *args, **kwargs):
        headers = kwargs.pop("headers", None) or {}
        headers = dict(headers)
        headers.setdefault("Host", self.host_name)
        kwargs["headers"] = headers
        return super().open(*args, **kwargs)


@pytest.fixture
def client_for(host):
    """``client_for("shop1.localhost")`` → a client bound to that host name."""
    return lambda host_name: SiteClient(host, host_name)
