"""The double-entry ledger (kamengsite/ledger.py) and `kamengsite ledger check|balances`."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kamengsite import ledger
from kamengsite.cli import main
from kamengsite.db import database, init_database, release_connections
from kamengsite.ledger import InsufficientFunds, LedgerEntry, LedgerTxn, account, balance, post, reverse, split
from kamengsite.models import Site


@pytest.fixture
def bound(instance):
    """The SQLite instance's database bound, with two sites."""
    init_database(instance.database_url)
    shops = [Site.create(slug="shop1").id, Site.create(slug="shop2").id]
    yield shops
    release_connections()


def _pay(reference, site_id, amount, weights=(70, 20, 10)):
    """A buyer's payment through the channel: split between the platform, the site and fees."""
    revenue, available, fees = split(amount, weights)
    clearing = account("channel_clearing", channel="epay")
    entries = [(clearing, -amount), (account("platform_revenue"), revenue),
               (account("site_available", site=site_id), available), (account("fees", channel="epay"), fees)]
    return post("payment", reference, [(a, x) for a, x in entries if x])


# -- split -------------------------------------------------------------------------


def test_split_hand_computed():
    assert split(1000, [70, 20, 10]) == [700, 200, 100]
    assert split(1001, [70, 20, 10]) == [701, 200, 100]  # the extra fen goes to the largest remainder (.7)
    assert split(1009, [70, 20, 10]) == [706, 202, 101]  # 706.3 / 201.8 / 100.9: .9 then .8 get the 2 fen
    assert split(1, [70, 20, 10]) == [1, 0, 0]
    assert split(100, [1, 1, 1]) == [34, 33, 33]  # ties go to the earlier weight
    assert split(-1001, [70, 20, 10]) == [-701, -200, -100]
    assert split(0, [1, 2]) == [0, 0]
    assert split(7, [0, 1]) == [0, 7]


@pytest.mark.parametrize("amount, weights", [(10.0, [1, 1]), (True, [1]), (10, []), (10, [0, 0]), (10, [1, -1]),
                                             (10, [0.5, 0.5])])
def test_split_refuses_non_integers_and_bad_weights(amount, weights):
    with pytest.raises(ValueError):
        split(amount, weights)


@given(st.integers(-10**12, 10**12), st.lists(st.integers(0, 10**6), min_size=1, max_size=8).filter(any))
@settings(max_examples=300, deadline=None)
def test_split_parts_always_add_up(amount, weights):
    parts = split(amount, weights)
    assert sum(parts) == amount
    assert len(parts) == len(weights)
    total = sum(weights)
    for part, weight in zip(parts, weights):
        exact_floor = abs(amount) * weight // total
        assert abs(part) - exact_floor in (0, 1)  # never more than one fen from the exact share
    assert split(amount, weights) == parts  # deterministic


# -- posting -----------------------------------------------------------------------


def test_payment_split_and_balances(bound):
    shop = bound[0]
    _pay("order-1", shop, 1000)
    _pay("order-2", shop, 1001)
    assert balance(account("platform_revenue")) == 700 + 701
    assert balance(account("site_available", site=shop)) == 200 + 200
    assert balance(account("fees", channel="epay")) == 100 + 100
    assert balance(account("channel_clearing", channel="epay")) == -2001
    assert ledger.check() == []
    assert sum(amount for _, amount in ledger.balances()) == 0


def test_account_is_get_or_create_and_validated(bound):
    a = account("site_available", site=bound[0])
    assert account("site_available", site=bound[0]).id == a.id
    assert account("site_available", site=bound[1]).id != a.id
    assert account("platform_revenue").id == account("platform_revenue").id  # unique though site/member are NULL
    assert account("member_wallet", site=bound[0], member=7).id != account("member_wallet", member=7).id
    for kind, kwargs in (("bogus", {}), ("site_available", {}), ("member_wallet", {"site": bound[0]})):
        with pytest.raises(ValueError):
            account(kind, **kwargs)


def test_concurrent_account_creation_makes_one_row(bound):
    def create(_):
        with database.connection_context():
            return account("site_frozen", site=bound[1]).id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(create, range(16)))
    assert len(ids) == 1
    assert ledger.LedgerAccount.select().where(ledger.LedgerAccount.kind == "site_frozen").count() == 1


def test_posting_is_idempotent_by_kind_and_reference(bound):
    first = _pay("order-9", bound[0], 500)
    again = _pay("order-9", bound[0], 500)
    assert again.id == first.id
    assert LedgerTxn.select().count() == 1
    assert balance(account("site_available", site=bound[0])) == 100
    # Another kind with the same reference is another transaction.
    available, clearing = account("site_available", site=bound[0]), account("channel_clearing", channel="epay")
    post("withdrawal", "order-9", [(available, -100), (clearing, 100)])
    assert LedgerTxn.select().count() == 2


@pytest.mark.parametrize("entries", [
    [("a", 100), ("b", -99)],            # does not sum to zero
    [("a", 0), ("b", 0)],                # zero entries
    [("a", 100)],                        # one entry
    [("a", 100.0), ("b", -100.0)],       # floats are not fen
    [("a", True), ("b", -1)],            # nor are booleans
])
def test_unbalanced_or_malformed_posts_are_refused(bound, entries):
    accounts = {"a": account("platform_revenue"), "b": account("fees", channel="epay")}
    with pytest.raises(ValueError):
        post("adjustment", "x-1", [(accounts[k], amount) for k, amount in entries])
    assert LedgerTxn.select().count() == 0 and LedgerEntry.select().count() == 0


def test_unknown_kind_or_bad_reference_is_refused(bound):
    entries = [(account("platform_revenue"), 1), (account("fees", channel="epay"), -1)]
    for kind, reference in (("gift", "r"), ("adjustment", ""), ("adjustment", "x" * 129), ("adjustment", None)):
        with pytest.raises(ValueError):
            post(kind, reference, entries)
    assert LedgerTxn.select().count() == 0


def test_no_negative_available_or_wallet(bound):
    shop = bound[0]
    _pay("order-1", shop, 1000)  # site_available = 200
    available, clearing = account("site_available", site=shop), account("channel_clearing", channel="epay")
    with pytest.raises(InsufficientFunds):
        post("withdrawal", "w-1", [(available, -201), (clearing, 201)])
    assert post("withdrawal", "w-2", [(available, -200), (clearing, 200)])
    assert balance(available) == 0
    wallet = account("member_wallet", member=3)
    with pytest.raises(InsufficientFunds):
        post("payment", "wallet-1", [(wallet, -1), (account("site_available", site=shop), 1)])
    # Accounts that may go negative (the channel's clearing account) are not limited.
    assert balance(clearing) == -800
    assert LedgerTxn.select().count() == 2
    assert ledger.check() == []


def test_reverse_posts_negated_entries_once(bound):
    shop = bound[0]
    payment = _pay("order-1", shop, 1001)
    refund = reverse("refund", "order-1", payment)
    assert refund.reverses_id == payment.id
    assert sorted(e.amount_fen for e in refund.entries) == [-701, -200, -100, 1001]
    assert reverse("refund", "order-1", payment).id == refund.id  # same reference: the same reversal
    with pytest.raises(ValueError):
        reverse("refund", "order-1-again", payment)  # another reference: it is already reversed
    for acct, amount in ledger.balances():
        assert amount == 0, acct
    assert LedgerTxn.select().count() == 2
    assert ledger.check() == []


def test_reverse_refused_when_the_site_already_withdrew(bound):
    shop = bound[0]
    payment = _pay("order-1", shop, 1000)
    available = account("site_available", site=shop)
    post("withdrawal", "w-1", [(available, -150), (account("channel_clearing", channel="epay"), 150)])
    with pytest.raises(InsufficientFunds):
        reverse("refund", "order-1", payment)
    assert LedgerTxn.get_or_none(LedgerTxn.reverses == payment.id) is None
    assert balance(available) == 50


# -- concurrency on every backend ---------------------------------------------------


@pytest.fixture
def matrix(db_instance):
    init_database(db_instance.database_url)
    site = Site.create(slug="shop")
    yield site.id
    release_connections()


def test_concurrent_withdrawals_never_overdraw_nor_double_post(matrix):
    site = matrix
    available, clearing = account("site_available", site=site), account("channel_clearing", channel="epay")
    post("payment", "funding", [(clearing, -1000), (available, 1000)])
    attempts = [f"w-{i % 15}" for i in range(45)]  # 15 references, each tried three times: 10 fit the balance
    go = threading.Event()

    def withdraw(reference):
        go.wait(timeout=10)  # every thread starts together
        try:
            with database.connection_context():
                txn = post("withdrawal", reference, [(available.id, -100), (clearing.id, 100)])
                return ("ok", reference, txn.id)
        except InsufficientFunds:
            return ("insufficient", reference, None)
        except Exception as exc:  # noqa: BLE001 - any other outcome is what the test looks for
            return ("error", reference, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(withdraw, reference) for reference in attempts]
        go.set()
        results = [f.result() for f in futures]
    assert [r for r in results if r[0] == "error"] == []
    by_reference: dict[str, set] = {}
    for outcome, reference, txn_id in results:
        if outcome == "ok":
            by_reference.setdefault(reference, set()).add(txn_id)
    assert all(len(ids) == 1 for ids in by_reference.values())  # a reference is posted once
    withdrawals = LedgerTxn.select().where(LedgerTxn.kind == "withdrawal")
    assert withdrawals.count() == len(by_reference) == 10
    assert {t.reference for t in withdrawals} == set(by_reference)
    assert balance(available) == 0
    assert balance(clearing) == 0
    assert ledger.check() == []


def test_two_debits_racing_for_one_balance_never_both_pass(matrix):
    """Round after round, two threads each spend a wallet's whole balance at once: one wins.

    Caught MariaDB's REPEATABLE READ (the balance read after the lock saw the snapshot from
    before it); the database now runs READ COMMITTED, as PostgreSQL does.
    """
    wallet, revenue = account("member_wallet", site=matrix, member=1), account("platform_revenue")
    for round_no in range(12):
        post("adjustment", f"fund-{round_no}", [(wallet, 100), (revenue, -100)])
        gate, outcomes = threading.Barrier(2), []

        def spend(i):
            with database.connection_context():
                gate.wait(timeout=10)
                try:
                    post("adjustment", f"spend-{round_no}-{i}", [(wallet.id, -100), (revenue.id, 100)])
                    outcomes.append("ok")
                except InsufficientFunds:
                    outcomes.append("short")

        threads = [threading.Thread(target=spend, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(outcomes) == ["ok", "short"], (round_no, outcomes)
        assert balance(wallet) == 0
