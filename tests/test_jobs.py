"""Background jobs: lazy huey per instance (SQLite or Redis), the expiry sweep, the worker command."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from huey import RedisHuey, SqliteHuey

from kamengsite import jobs
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.cli import main
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, init_database
from kamengsite.instance import PROJECT_ROOT, Instance
from kamengsite.models import Site
from kamengsite.orders import Order, create_order
from kamengsite.tenancy import all_sites

REDIS_URL = os.environ.get("KAMENGSITE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PAST = datetime.timedelta(seconds=-5)


@pytest.fixture(autouse=True)
def _no_queue_environment(monkeypatch):
    for name in ("REDIS_URL", "KAMENGSITE_JOBS_IMMEDIATE"):
        monkeypatch.delenv(name, raising=False)


def _close_database():
    if database.obj is not None and not database.is_closed():
        database.close()


@pytest.fixture
def shop(instance):
    init_database(instance.database_url)
    site = Site.create(slug="main")
    product = create_product(site.id, "Card", 500, kind="card", max_qty=0)
    sku = Sku.get(Sku.product == product.id)
    import_keys(sku, [f"J-{i}" for i in range(20)], CardKeyCipher.from_instance(instance))
    yield {"instance": instance, "site": site.id, "sku": sku}
    _close_database()


def due_orders(shop, n, quantity=1):
    return [create_order(site_id=shop["site"], sku_id=shop["sku"].id, quantity=quantity,
                         contact="a@example.com", ttl=PAST) for _ in range(n)]


def statuses(orders):
    with all_sites():
        return [Order.get_by_id(o.id).status for o in orders]


def stock(shop):
    return Sku.get_by_id(shop["sku"].id).stock


# -- building the queue ------------------------------------------------------------------


def test_the_queue_is_built_lazily_in_the_instance_folder(instance):
    queue_file = instance.path / jobs.QUEUE_FILE
    assert not queue_file.exists()  # importing kamengsite.jobs / mail created nothing
    assert not jobs.make_jobs(instance, immediate=True).huey.storage.__class__.__name__.startswith("Sqlite")
    assert not queue_file.exists()  # immediate mode (tests) keeps its queue in memory

    built = jobs.jobs_for(instance)
    assert isinstance(built.huey, SqliteHuey) and not built.huey.immediate
    built.expire_orders()  # enqueue
    assert queue_file.exists() and built.huey.pending_count() == 1
    assert jobs.jobs_for(instance) is built  # one per instance and process


def test_importing_the_modules_creates_no_file(tmp_path):
    code = "import kamengsite.jobs, kamengsite.mail, kamengsite.alerts, kamengsite.keys_cli, kamengsite.cli"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                   env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert list(tmp_path.iterdir()) == []


def test_redis_url_from_environment_or_config_selects_redis(instance, monkeypatch):
    instance.redis_url = "redis://127.0.0.1:6399/3"
    from_config = jobs.make_jobs(instance)
    assert isinstance(from_config.huey, RedisHuey)
    assert from_config.huey.storage.conn.connection_pool.connection_kwargs["port"] == 6399
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6398/2")
    from_env = jobs.make_jobs(instance)
    assert from_env.huey.storage.conn.connection_pool.connection_kwargs["port"] == 6398
    assert not (instance.path / jobs.QUEUE_FILE).exists()


def test_jobs_round_trip_through_redis(shop, monkeypatch):
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"redis at {REDIS_URL} is not reachable: {exc}")
        pytest.skip(f"redis at {REDIS_URL} is not reachable: {exc}")
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    queue = jobs.make_jobs(shop["instance"], name=f"kamengsite-test-{uuid.uuid4().hex[:8]}")
    try:
        orders = due_orders(shop, 2)
        queue.expire_orders()
        assert queue.huey.pending_count() == 1 and statuses(orders) == ["created", "created"]
        task = queue.huey.dequeue()  # as a worker on another machine would
        assert queue.huey.execute(task) == 2
        assert statuses(orders) == ["expired", "expired"]
    finally:
        queue.huey.storage.flush_all()


# -- the expiry sweep ----------------------------------------------------------------------


def test_expiry_runs_every_minute():
    queue = jobs.make_jobs(Instance(path="/nonexistent", secret_key="x"), immediate=True)
    periodic = queue.huey._registry._periodic_tasks
    assert [t.__name__ for t in periodic][:2] == ["expire_orders", "release_margins"]
    start = datetime.datetime(2026, 1, 1, 0, 0)
    minutes = [start + datetime.timedelta(minutes=m) for m in range(0, 24 * 60, 7)]
    assert sum(periodic[1]().validate_datetime(m) for m in minutes) == sum(m.minute % 15 == 0 for m in minutes)
    task = periodic[0]()
    assert all(task.validate_datetime(m) for m in minutes)


def test_expiry_job_expires_due_orders_and_releases_stock(shop):
    due = due_orders(shop, 3, quantity=2)
    live = create_order(site_id=shop["site"], sku_id=shop["sku"].id, quantity=1, contact="b@example.com")
    assert stock(shop) == 13

    queue = jobs.make_jobs(shop["instance"], immediate=True)
    assert queue.expire_orders.call_local() == 3

    assert statuses(due) == ["expired"] * 3 and statuses([live]) == ["created"]
    assert stock(shop) == 19
    assert CardKey.select().where(CardKey.status == "reserved").count() == 1
    assert queue.expire_orders.call_local() == 0  # nothing left; safe to run again


def test_expiry_job_sweeps_more_than_one_batch(shop, monkeypatch):
    monkeypatch.setattr(jobs, "EXPIRE_BATCH", 2)
    due = due_orders(shop, 5)
    assert jobs.make_jobs(shop["instance"], immediate=True).expire_orders.call_local() == 5
    assert statuses(due) == ["expired"] * 5


def test_sqlite_queue_round_trip(shop):
    queue = jobs.make_jobs(shop["instance"])
    orders = due_orders(shop, 1)
    queue.expire_orders()
    assert statuses(orders) == ["created"]
    consumer_side = jobs.make_jobs(shop["instance"])  # another process builds the same tasks by name
    task = consumer_side.huey.dequeue()
    assert task is not None and consumer_side.huey.execute(task) == 1
    assert statuses(orders) == ["expired"]


# -- the worker command ----------------------------------------------------------------------


def test_worker_command_consumes_the_queue(shop):
    instance = shop["instance"]
    orders = due_orders(shop, 2)
    _close_database()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "KAMENGSITE_INSTANCE": str(instance.path)}
    env.pop("REDIS_URL", None)
    worker = subprocess.Popen([sys.executable, "-m", "kamengsite", "worker", "--workers", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        jobs.make_jobs(instance).expire_orders()  # enqueued by "the web process"
        deadline = time.monotonic() + 30
        while statuses(orders) != ["expired", "expired"] and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.2)
        assert statuses(orders) == ["expired", "expired"]
    finally:
        worker.send_signal(signal.SIGINT)  # graceful stop
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    assert worker.returncode == 0, output
    assert "kamengsite worker: 1 thread worker(s)" in output and "jobs.db" in output


def test_worker_refuses_an_unmigrated_database(tmp_path):
    instance = Instance.create(tmp_path / "fresh", database_url=f"sqlite:///{tmp_path / 'fresh.db'}")
    result = CliRunner().invoke(main, ["--instance", str(instance.path), "worker"])
    assert result.exit_code == 1 and "database needs migrations" in result.output
    assert not (Path(instance.path) / jobs.QUEUE_FILE).exists()
    _close_database()


def test_redacted_queue_url():
    assert jobs._redact("redis://user:secret@10.0.0.1:6379/0") == "redis://user:***@10.0.0.1:6379/0"
    assert jobs._redact("/srv/instance/jobs.db") == "/srv/instance/jobs.db"
