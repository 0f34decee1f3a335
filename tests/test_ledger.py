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


# -- the invariants under random sequences --------------------------------------------

AMOUNTS = st.integers(1, 5000)
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 1), AMOUNTS, st.lists(st.integers(0, 100), min_size=3, max_size=3)),
    st.tuples(st.just("withdraw"), st.integers(0, 1), AMOUNTS),
    st.tuples(st.just("topup"), st.integers(1, 3), AMOUNTS),
    st.tuples(st.just("spend"), st.integers(1, 3), st.integers(0, 1), AMOUNTS),
    st.tuples(st.just("reverse"), st.integers(0, 30)),
    st.tuples(st.just("repost"), st.integers(0, 30)),
), max_size=25)


def _reset_ledger():
    LedgerTxn.update(reverses=None).execute()
    LedgerEntry.delete().execute()
    LedgerTxn.delete().execute()
    ledger.LedgerAccount.delete().execute()
    ledger.forget_accounts()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_invariants_hold_under_random_sequences(bound, operations):
    _reset_ledger()
    sites = bound
    expected: dict[int, int] = {}
    posted: list[tuple[LedgerTxn, list]] = []  # (txn, entries) in posting order
    reversed_ids: set[int] = set()
    counter = 0

    def apply(entries):
        for acct, amount in entries:
            expected[acct.id] = expected.get(acct.id, 0) + amount

    def would_go_negative(entries):
        delta: dict = {}
        for acct, amount in entries:
            delta[acct] = delta.get(acct, 0) + amount
        return any(acct.kind in ledger.NO_NEGATIVE and expected.get(acct.id, 0) + d < 0 for acct, d in delta.items())

    def attempt(kind, entries):
        nonlocal counter
        counter += 1
        reference = f"{kind}-{counter}"
        if would_go_negative(entries):
            with pytest.raises(InsufficientFunds):
                post(kind, reference, entries)
            return
        txn = post(kind, reference, entries)
        apply(entries)
        posted.append((txn, entries))

    clearing = account("channel_clearing", channel="epay")
    for op in operations:
        name = op[0]
        if name == "pay":
            _, site, amount, weights = op
            if not any(weights):
                weights = [1, 1, 1]
            parts = split(amount, weights)
            assert sum(parts) == amount
            credit = [account("platform_revenue"), account("site_available", site=sites[site]), account("fees", channel="epay")]
            entries = [(clearing, -amount)] + [(a, p) for a, p in zip(credit, parts) if p]
            attempt("payment", entries)
        elif name == "withdraw":
            _, site, amount = op
            attempt("withdrawal", [(account("site_available", site=sites[site]), -amount), (clearing, amount)])
        elif name == "topup":
            _, member, amount = op
            attempt("payment", [(clearing, -amount), (account("member_wallet", member=member), amount)])
        elif name == "spend":
            _, member, site, amount = op
            attempt("payment", [(account("member_wallet", member=member), -amount),
                                (account("site_available", site=sites[site]), amount)])
        elif name == "reverse" and posted:
            original, entries = posted[op[1] % len(posted)]
            negated = [(a, -x) for a, x in entries]
            counter += 1
            if original.id in reversed_ids:
                with pytest.raises(ValueError):
                    reverse("refund", f"refund-{counter}", original)
            elif would_go_negative(negated):
                with pytest.raises(InsufficientFunds):
                    reverse("refund", f"refund-{counter}", original)
            else:
                txn = reverse("refund", f"refund-{counter}", original)
                assert txn.reverses_id == original.id
                reversed_ids.add(original.id)
                apply(negated)
                posted.append((txn, negated))
        elif name == "repost" and posted:
            original, entries = posted[op[1] % len(posted)]
            count = LedgerEntry.select().count()
            assert post(original.kind, original.reference, entries).id == original.id
            assert LedgerEntry.select().count() == count  # nothing written

    # Every transaction sums to zero and has at least two entries; balances are the sums of entries.
    assert ledger.check() == []
    sums: dict[int, int] = {}
    per_txn: dict[int, list] = {}
    for entry in LedgerEntry.select():
        sums[entry.account_id] = sums.get(entry.account_id, 0) + entry.amount_fen
        per_txn.setdefault(entry.txn_id, []).append(entry.amount_fen)
    assert LedgerTxn.select().count() == len(per_txn) == len(posted)
    assert all(sum(amounts) == 0 and len(amounts) >= 2 for amounts in per_txn.values())
    for acct, amount in ledger.balances():
        assert amount == sums.get(acct.id, 0) == expected.get(acct.id, 0) == balance(acct)
        if acct.kind in ledger.NO_NEGATIVE:
            assert amount >= 0


# -- the command line --------------------------------------------------------------------


def _ledger_cli(instance, *args):
    return CliRunner().invoke(main, ["--instance", str(instance.path), "ledger", *args])


def test_cli_check_and_balances(instance):
    init_database(instance.database_url)
    shop = Site.create(slug="shop1").id
    payment = _pay("order-1", shop, 1001)
    database.close()

    result = _ledger_cli(instance, "check")
    assert result.exit_code == 0, result.output
    assert "ledger balances" in result.stdout

    result = _ledger_cli(instance, "balances")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("platform_revenue" in line and "701" in line and "7.01" in line for line in lines)
    assert any("site_available" in line and "shop1" in line and "200" in line for line in lines)
    assert any("channel_clearing" in line and "epay" in line and "-1001" in line and "-10.01" in line for line in lines)

    # Corrupt one entry behind the ledger's back: the check names the transaction and fails.
    init_database(instance.database_url)
    entry = LedgerEntry.select().where(LedgerEntry.txn == payment.id).order_by(LedgerEntry.id).first()
    database.execute_sql("UPDATE ledger_entry SET amount_fen = amount_fen + 1 WHERE id = ?", (entry.id,))
    database.close()
    result = _ledger_cli(instance, "check")
    assert result.exit_code == 1, result.output
    assert f"transaction {payment.id} (payment order-1): entries sum to 1 fen" in result.stdout
    assert "ledger check failed" in result.stderr
    release_connections()


def test_cli_check_reports_negative_balance_and_lonely_entry(instance):
    init_database(instance.database_url)
    shop = Site.create(slug="shop1").id
    _pay("order-1", shop, 1000)
    available = account("site_available", site=shop)
    lonely = LedgerTxn.create(kind="adjustment", reference="by-hand")
    database.execute_sql("INSERT INTO ledger_entry (txn_id, account_id, amount_fen, created_at) VALUES (?, ?, ?, ?)",
                         (lonely.id, available.id, -500, "2024-01-01 00:00:00"))
    database.close()
    result = _ledger_cli(instance, "check")
    assert result.exit_code == 1, result.output
    assert "1 entry, needs at least 2" in result.stdout
    assert f"account {available}: balance -300 fen is below zero" in result.stdout
    assert "all entries sum to -500 fen" in result.stdout
    release_connections()


def test_cli_check_on_an_empty_ledger(instance):
    result = _ledger_cli(instance, "check")
    assert result.exit_code == 0, result.output
    assert "ledger balances: 0 transaction(s)" in result.stdout
    result = _ledger_cli(instance, "balances")
    assert result.exit_code == 0 and "no ledger accounts" in result.stdout
    release_connections()
