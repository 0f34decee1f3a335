"""Shared fixtures: an instance folder, its host, clients by host name, and the database matrix.

Tests that take ``backend_url`` run once per database in KAMENGSITE_TEST_BACKENDS
(default: sqlite, postgresql, mysql). A server that is not reachable skips the
test on a laptop and fails it under CI=true.

Besides the instance/host fixtures there are helpers for what an operator does
by hand (``site_files``: edit a site's ``site.toml`` in place of the registry),
for test-only plugins (``register_plugin``) and for the command line (``cli``).
"""

from __future__ import annotations

import os
import tomllib
import uuid
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from kamengsite.config import SITE_FILE
from kamengsite.db import backend_name, make_database, release_connections
from kamengsite.hookspecs import hookimpl
from kamengsite.host import Host
from kamengsite.instance import PROJECT_ROOT, Instance
from kamengsite.migrations import upgrade
from kamengsite.testing import SiteClient  # noqa: F401 - re-exported for tests and plugins

SERVERS = {
    "postgresql": os.environ.get("KAMENGSITE_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("KAMENGSITE_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
}
BACKENDS = [b.strip() for b in os.environ.get("KAMENGSITE_TEST_BACKENDS", "sqlite,postgresql,mysql").split(",") if b.strip()]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: What the checkout ships: themes and the site templates new sites are copied from.
THEMES_DIR = PROJECT_ROOT / "themes"
TEMPLATES_DIR = PROJECT_ROOT / "sites"
#: Settings the instance reads from the environment; a developer's shell must not leak into the tests.
INSTANCE_ENV = ("DATABASE_URL", "KAMENGSITE_SECRET_KEY", "KAMENGSITE_PRODUCTION", "KAMENGSITE_INSTANCE")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    for name in INSTANCE_ENV:
        monkeypatch.delenv(name, raising=False)
    from kamengsite import ratelimit

    ratelimit.reset()  # counters are per process; every test starts with a full allowance


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
    release_connections()  # the server refuses to drop a database with open connections
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


@pytest.fixture
def client_for(host):
    """``client_for("shop1.localhost")`` → a client bound to that host name."""
    return lambda host_name: SiteClient(host, host_name)


@pytest.fixture
def host_factory(tmp_path):
    """``host_factory(app_cache_size=2, base_domain="example.com")`` → a host on a fresh SQLite instance."""
    hosts = []

    def factory(name="custom", **settings):
        instance = make_instance(tmp_path / name, f"sqlite:///{tmp_path / f'{name}.db'}", **settings)
        h = make_host(instance)
        hosts.append(h)
        return h

    yield factory
    for h in hosts:
        h.close()


class SiteFiles:
    """Edits a site folder the way an operator does: by hand, behind the registry's back.

    Writes go to a temporary file renamed over ``site.toml`` (as editors and
    deploy tools do), so the folder's version changes even within one clock tick.
    """

    def __init__(self, root):
        self.root = Path(root)

    def path(self, slug) -> Path:
        return self.root / slug / SITE_FILE

    def read(self, slug) -> dict:
        with open(self.path(slug), "rb") as fh:
            return tomllib.load(fh)

    def write_text(self, slug, content: str):
        target = self.path(slug)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{SITE_FILE}.test-tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, target)

    def write(self, slug, values: dict):
        self.write_text(slug, tomli_w.dumps(values))

    def edit(self, slug, **changes):
        values = self.read(slug)
        values.update(changes)
        self.write(slug, values)


@pytest.fixture
def site_files(host):
    return SiteFiles(host.registry.root)


class _TestPlugin:
    def __init__(self, prepare):
        self._prepare = prepare

    @hookimpl
    def prepare_site_app(self, app, site):
        self._prepare(app, site)


@pytest.fixture
def register_plugin():
    """``register_plugin(host, prepare, name=..., core=True)``: a test-only plugin calling ``prepare(app, site)``.

    Register it before the first request: site apps are built once per folder version.
    With ``core=False`` it only runs on sites that list ``name`` in their ``plugins``.
    """

    def register(h, prepare, *, name, core=True):
        h.plugins.register(_TestPlugin(prepare), name=name)
        if core:
            h.plugins.core.add(name)

    return register


class Cli:
    """Runs ``kamengsite --instance <folder> ...`` in-process."""

    def __init__(self, instance_path):
        self.instance_path = Path(instance_path)
        self.runner = CliRunner()

    def __call__(self, *args, instance_path=None, env=None):
        from kamengsite.cli import main

        path = self.instance_path if instance_path is None else instance_path
        return self.runner.invoke(main, ["--instance", str(path), *map(str, args)], env=env)


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path / "cli-instance")
