"""Concurrency proofs on every backend of the matrix (SQLite, PostgreSQL, MariaDB).

* 200 buyers race for 100 card keys — from a thread pool, and from OS processes
  started with the 'spawn' method, each binding its own connection through
  ``init_database`` — and exactly 100 orders are created, paid and delivered
  with 100 distinct keys; the other 100 buyers get ``OutOfStock`` and nothing else.
* 50 identical payment notifications for one order write one payment and deliver once.
* Two concurrent expiry sweeps release each reservation once; expiry racing
  payment never loses a key or a payment.
* Concurrent overlapping imports into one SKU never store a code twice.
* Random delivery order and loop keys under contention.
"""

from __future__ import annotations

import collections
import datetime
import multiprocessing
import queue as queue_module
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from kamengsite import cardkeys
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import backend_name, database, init_database, release_connections
from kamengsite.models import Site, utcnow
from kamengsite.orders import (InvalidOrder, Order, OutOfStock, Payment, create_order, delivered_keys, expire_due,
                               mark_paid)
from kamengsite.tenancy import all_sites

KEYS = 100
BUYERS = 200
THREADS = 24  # below the pool's 32 connections, with room for the test's own
PROCESSES = 2
THREADS_PER_PROCESS = 12
CHANNEL = "alipay"


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def shop(db_instance):
    """The matrix database bound, one selling site, and the instance's card-key cipher."""
    url = db_instance.database_url
    init_database(url)
    site = Site.create(slug="shop")
    yield SimpleNamespace(url=url, backend=backend_name(url), site=site.id,
                          cipher=CardKeyCipher.from_instance(db_instance))
    release_connections()


def _card_sku(shop, n_keys, prefix, **product_fields) -> tuple[Sku, list[str]]:
    product = create_product(shop.site, f"{prefix} card", 1000, **product_fields)
    sku = Sku.get(Sku.product == product.id)
    codes = [f"{prefix}-{i:04d}-{random.getrandbits(40):010x}" for i in range(n_keys)]
    if n_keys:
        report = import_keys(sku, codes, shop.cipher)
        assert report.imported == n_keys
    return Sku.get_by_id(sku.id), codes


def _buy(site_id, sku_id, index, tag):
    """One buyer: create an order for one unit, then pay it with its own trade no."""
    try:
        try:
            order = create_order(site_id=site_id, sku_id=sku_id, quantity=1, contact=f"b{index}@example.com",
                                 channel=CHANNEL)
        except OutOfStock:
            return ("out_of_stock", None, None)
        result = mark_paid(order.order_no, channel=CHANNEL, trade_no=f"{tag}-{index}", amount_fen=order.amount_fen)
        return ("ok", order.order_no, result.status)
    except Exception as exc:  # noqa: BLE001 - any other exception is what the test looks for
        return ("error", f"{type(exc).__name__}: {exc}", None)
    finally:
        database.close()  # hand the connection back to the pool (and its lock state with it)


def _run_threads(fn, args_list, workers=THREADS):
    """Run ``fn(*args)`` for every args on a pool, all released at once by a gate."""
    gate = threading.Event()

    def gated(args):
        gate.wait()
        return fn(*args)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(gated, args) for args in args_list]
        gate.set()
        return [f.result() for f in futures]


def _process_buyers(number, url, site_id, sku_id, indices, tag, barrier, results):
    """Entry point of a spawned buyer process: its own connection, its own thread pool."""
    out = []
    try:
        init_database(url)
        barrier.wait(timeout=60)
        out = _run_threads(_buy, [(site_id, sku_id, i, tag) for i in indices], workers=THREADS_PER_PROCESS)
    except Exception as exc:  # noqa: BLE001
        out = [("error", f"process failed: {type(exc).__name__}: {exc}", None)]
    finally:
        release_connections()
    results.put((number, out))


def _assert_sold_exactly_once(shop, sku, codes, results):
    outcomes = collections.Counter(r[0] for r in results)
    errors = [r[1] for r in results if r[0] == "error"]
    assert errors == [], errors[:5]
    assert outcomes == {"ok": KEYS, "out_of_stock": BUYERS - KEYS}
    assert {r[2] for r in results if r[0] == "ok"} == {"delivered"}

    with all_sites():
        orders = list(Order.select().where(Order.sku == sku.id))
        assert len(orders) == KEYS  # refused buyers left no order behind
        assert {o.order_no for o in orders} == {r[1] for r in results if r[0] == "ok"}
        assert {o.status for o in orders} == {"delivered"}
        payments = list(Payment.select().where(Payment.order.in_([o.id for o in orders])))
        assert len(payments) == KEYS
        assert {p.state for p in payments} == {"applied"}
        assert sorted(p.order_id for p in payments) == sorted(o.id for o in orders)

        keys = list(CardKey.select().where(CardKey.sku == sku.id))
        assert len(keys) == KEYS
        assert collections.Counter(k.status for k in keys) == {"sold": KEYS}
        per_order = collections.Counter(k.order_id for k in keys)
        assert len(per_order) == KEYS and set(per_order.values()) == {1}
        assert set(per_order) == {o.id for o in orders}

        delivered = [code for o in orders for code in delivered_keys(o, shop.cipher)]
        assert len(delivered) == KEYS
        assert sorted(delivered) == sorted(codes)  # every key once, none twice

    after = Sku.get_by_id(sku.id)
    assert after.stock == 0
    assert after.sold == KEYS


# -- 200 buyers, 100 keys ----------------------------------------------------------


@pytest.mark.slow
def test_200_threaded_buyers_for_100_keys(shop):
    sku, codes = _card_sku(shop, KEYS, "THR")
    results = _run_threads(_buy, [(shop.site, sku.id, i, "thr") for i in range(BUYERS)])
    _assert_sold_exactly_once(shop, sku, codes, results)


@pytest.mark.slow
def test_200_buyers_from_spawned_processes_for_100_keys(shop):
    sku, codes = _card_sku(shop, KEYS, "PRC")
    release_connections()  # the children open their own connections; ours is not shared across fork/spawn
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results_queue = ctx.Queue()
    share = BUYERS // PROCESSES
    procs = [ctx.Process(target=_process_buyers,
                         args=(p, shop.url, shop.site, sku.id, range(p * share, (p + 1) * share), f"prc{p}",
                               barrier, results_queue))
             for p in range(PROCESSES)]
    for proc in procs:
        proc.start()
    reports = {}
    try:
        for _ in procs:
            number, out = results_queue.get(timeout=120)
            reports[number] = out
    except queue_module.Empty:
        pytest.fail("a buyer process did not report within 120 s")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    assert sorted(reports) == list(range(PROCESSES))
    assert [len(out) for _, out in sorted(reports.items())] == [share] * PROCESSES
    results = [r for out in reports.values() for r in out]
    _assert_sold_exactly_once(shop, sku, codes, results)


# -- one order, 50 identical notifications ----------------------------------------------


@pytest.mark.slow
def test_50_identical_payment_notifications_write_one_payment_and_deliver_once(shop):
    sku, codes = _card_sku(shop, 5, "DUP")
    order = create_order(site_id=shop.site, sku_id=sku.id, quantity=2, contact="dup@example.com", channel=CHANNEL)

    def notify():
        try:
            return mark_paid(order.order_no, channel=CHANNEL, trade_no="T-SAME", amount_fen=order.amount_fen)
        finally:
            database.close()

    results = _run_threads(notify, [()] * 50, workers=25)

    assert len(results) == 50
    assert sum(not r.duplicate for r in results) == 1
    assert sum(r.duplicate for r in results) == 49
    assert {r.status for r in results} == {"delivered"}
    assert not any(r.refund_due for r in results)
    assert {r.order_no for r in results} == {order.order_no}

    with all_sites():
        payments = list(Payment.select().where(Payment.trade_no == "T-SAME"))
        assert [(p.order_id, p.state, p.amount_fen) for p in payments] == [(order.id, "applied", 2000)]
        assert Order.get_by_id(order.id).status == "delivered"
        sold = list(CardKey.select().where(CardKey.status == "sold"))
        assert len(sold) == 2 and {k.order_id for k in sold} == {order.id}
        assert CardKey.select().where(CardKey.status == "available").count() == 3
        assert delivered_keys(Order.get_by_id(order.id), shop.cipher) == codes[:2]
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (3, 2)


# -- expiry ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_concurrent_expiry_sweeps_release_each_order_once(shop):
    sku, _ = _card_sku(shop, 30, "EXP")
    orders = [create_order(site_id=shop.site, sku_id=sku.id, quantity=2, contact=f"e{i}@example.com")
              for i in range(12)]
    assert Sku.get_by_id(sku.id).stock == 6
    later = utcnow() + datetime.timedelta(hours=1)

    def sweep():
        try:
            return expire_due(now=later)
        finally:
            database.close()

    counts = _run_threads(sweep, [()] * 4, workers=4)

    assert sum(counts) == len(orders)  # each order expired by exactly one sweep
    with all_sites():
        assert {o.status for o in Order.select()} == {"expired"}
        assert CardKey.select().where(CardKey.status == "available").count() == 30
        assert CardKey.select().where(CardKey.order.is_null(False)).count() == 0
    assert Sku.get_by_id(sku.id).stock == 30  # restored once, not once per sweep
    assert expire_due(now=later) == 0


@pytest.mark.slow
def test_expiry_racing_payment_never_loses_a_key_or_a_payment(shop):
    sku, _ = _card_sku(shop, 40, "RACE")
    orders = [create_order(site_id=shop.site, sku_id=sku.id, quantity=1, contact=f"r{i}@example.com",
                           channel=CHANNEL) for i in range(20)]
    later = utcnow() + datetime.timedelta(hours=1)

    def pay(order):
        try:
            return mark_paid(order.order_no, channel=CHANNEL, trade_no=f"R-{order.order_no}",
                             amount_fen=order.amount_fen)
        finally:
            database.close()

    def sweep():
        try:
            return expire_due(now=later)
        finally:
            database.close()

    tasks = [(pay, o) for o in orders] + [(sweep,)] * 3
    random.shuffle(tasks)
    results = _run_threads(lambda fn, *args: fn(*args), tasks, workers=12)

    payments = [r for r in results if not isinstance(r, int)]
    assert {r.status for r in payments} == {"delivered"}  # stock allowed every late payment to re-reserve
    assert not any(r.refund_due or r.duplicate for r in payments)
    with all_sites():
        assert {o.status for o in Order.select()} == {"delivered"}
        assert Payment.select().where(Payment.state == "applied").count() == 20
        sold = list(CardKey.select().where(CardKey.status == "sold"))
        assert len(sold) == 20 and len({k.order_id for k in sold}) == 20
        assert CardKey.select().where(CardKey.status == "reserved").count() == 0
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (20, 20)


# -- imports -----------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_overlapping_imports_never_store_a_code_twice(shop, monkeypatch):
    monkeypatch.setattr(cardkeys, "CHUNK", 25)  # many small transactions interleave
    monkeypatch.setattr(cardkeys, "SQLITE_CHUNK", 25, raising=False)
    product = create_product(shop.site, "import race", 100)
    sku = Sku.get(Sku.product == product.id)
    batches = []
    for b in range(6):
        codes = [f"IMP-{n:05d}" for n in range(b * 40, b * 40 + 120)]
        random.Random(b).shuffle(codes)
        batches.append(codes)
    universe = {c for batch in batches for c in batch}

    def run(batch):
        try:
            return import_keys(sku.id, batch, shop.cipher)
        finally:
            database.close()

    reports = _run_threads(run, [(b,) for b in batches], workers=6)

    assert sum(r.imported for r in reports) == len(universe)
    assert all(r.imported + r.duplicates_in_stock == 120 and r.duplicates_in_batch == 0 for r in reports)
    keys = list(CardKey.select().where(CardKey.sku == sku.id))
    assert len(keys) == len(universe)
    assert len({k.digest for k in keys}) == len(keys)
    assert sorted(shop.cipher.open(k.sealed, sku.id) for k in keys) == sorted(universe)
    available = CardKey.select().where((CardKey.sku == sku.id) & (CardKey.status == "available")).count()
    assert Sku.get_by_id(sku.id).stock == available == len(universe)


@pytest.mark.slow
def test_imports_racing_buyers_keep_stock_equal_to_available_keys(shop):
    sku, codes = _card_sku(shop, 20, "MIX")
    extra = [f"MIX-EXTRA-{n:04d}" for n in range(40)]

    def buy(i):
        try:
            return create_order(site_id=shop.site, sku_id=sku.id, quantity=1, contact=f"m{i}@example.com").id
        except OutOfStock:
            return None
        finally:
            database.close()

    def load(batch):
        try:
            return import_keys(sku.id, batch, shop.cipher)
        finally:
            database.close()

    tasks = [(buy, i) for i in range(50)] + [(load, extra[i::4]) for i in range(4)]
    random.shuffle(tasks)
    results = _run_threads(lambda fn, *args: fn(*args), tasks, workers=16)

    order_ids = [r for r in results if isinstance(r, int)]
    reserved = CardKey.select().where(CardKey.status == "reserved")
    assert reserved.count() == len(order_ids)
    assert sorted(k.order_id for k in reserved) == sorted(order_ids)
    available = CardKey.select().where(CardKey.status == "available").count()
    assert available + len(order_ids) == 60
    assert Sku.get_by_id(sku.id).stock == available


# -- per-buyer limit -----------------------------------------------------------------


@pytest.mark.slow
def test_per_buyer_limit_holds_under_concurrent_orders(shop):
    sku, _ = _card_sku(shop, 40, "LIM", per_buyer_limit=3)
    second = Sku.create(product=sku.product_id, name="other", price_fen=1000)
    import_keys(second, [f"LIM2-{n}" for n in range(20)], shop.cipher)

    def order(i):
        try:  # one member, two SKUs of the same product
            target = sku if i % 2 else second
            create_order(site_id=shop.site, sku_id=target.id, quantity=1, contact="m", member_id=5)
            return "ok"
        except InvalidOrder:
            return "limited"
        except Exception as exc:  # noqa: BLE001
            return f"error {type(exc).__name__}: {exc}"
        finally:
            database.close()

    results = _run_threads(order, [(i,) for i in range(48)], workers=16)
    assert collections.Counter(results) == {"ok": 3, "limited": 45}
    with all_sites():
        assert Order.select().where(Order.member_id == 5).count() == 3
    stocks = [Sku.get_by_id(s.id).stock for s in (sku, second)]
    assert sum(stocks) == 57  # 60 keys, 3 held; the refused orders gave theirs back


# -- delivery modes ----------------------------------------------------------------


@pytest.mark.slow
def test_random_delivery_under_contention_never_double_delivers(shop):
    sku, codes = _card_sku(shop, 40, "RND", delivery_order="random")
    results = _run_threads(_buy, [(shop.site, sku.id, i, "rnd") for i in range(60)], workers=16)

    assert [r for r in results if r[0] == "error"] == []
    assert collections.Counter(r[0] for r in results) == {"ok": 40, "out_of_stock": 20}
    with all_sites():
        orders = list(Order.select().where(Order.status == "delivered"))
        delivered = [c for o in orders for c in delivered_keys(o, shop.cipher)]
    assert sorted(delivered) == sorted(codes)
    assert Sku.get_by_id(sku.id).stock == 0


@pytest.mark.slow
def test_loop_key_is_sold_up_to_its_counter_under_contention(shop):
    sku, codes = _card_sku(shop, 1, "LOOP", loop_key=True)
    Sku.update(stock=15).where(Sku.id == sku.id).execute()
    results = _run_threads(_buy, [(shop.site, sku.id, i, "loop") for i in range(40)], workers=16)

    assert [r for r in results if r[0] == "error"] == []
    assert collections.Counter(r[0] for r in results) == {"ok": 15, "out_of_stock": 25}
    with all_sites():
        orders = list(Order.select().where(Order.status == "delivered"))
        assert len(orders) == 15
        assert all(delivered_keys(o, shop.cipher) == codes for o in orders)
    key = CardKey.get(CardKey.sku == sku.id)
    assert (key.status, key.order_id) == ("available", None)  # the one row is never consumed
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (0, 15)
