"""``kamengsite backup`` / ``restore`` and scheduled backups (kamengsite/backup.py), on every backend.

The heart of it: a backup taken while another thread keeps placing and paying orders and
importing keys, restored into a fresh database, holds exactly one moment of the shop — every
order with its payment and ledger transaction, every key's sealed bytes and status as at that
moment, a balanced ledger — and the site folders come back byte for byte.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import BACKENDS, create_database, make_host, make_instance
from kamengsite import backup, ledger
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import backend_name, database, init_database, release_connections
from kamengsite.errors import ConfigError
from kamengsite.instance import Instance
from kamengsite.ledger import LedgerEntry, LedgerTxn
from kamengsite.models import Site
from kamengsite.orders import Order, OutOfStock, Payment, create_order, mark_paid
from kamengsite.tenancy import all_sites

CHANNEL = "alipay"
ASSET = bytes(range(256)) * 40  # stands for an uploaded image: the bytes must come back unchanged


# -- a shop with a writer ---------------------------------------------------------------------


def _shop(instance):
    """The instance's database bound, its main site with an uploaded asset, a card product with keys."""
    host = make_host(instance)
    init_database(instance.database_url)
    site = Site.get(Site.slug == instance.main_site)
    assets = instance.sites_dir / instance.main_site / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "0123456789abcdef.png").write_bytes(ASSET)
    (assets / ".0123456789abcdef.png.123.456.tmp").write_bytes(b"half an upload")  # never in a backup
    cipher = CardKeyCipher.from_instance(instance)
    create_product(site.id, "Members' card", 2000, members_only=True, low_stock_alerted=True)  # booleans travel
    product = create_product(site.id, "Game card", 1000)
    sku = Sku.get(Sku.product == product.id)
    shop = SimpleNamespace(instance=instance, host=host, site=site.id, sku=sku.id, cipher=cipher, batches=0)
    _import(shop, 30)
    return shop


def _import(shop, n):
    shop.batches += 1
    codes = [f"K{shop.batches:03d}-{i:04d}-{random.getrandbits(48):012x}" for i in range(n)]
    assert import_keys(shop.sku, codes, shop.cipher).imported == n


def _place_and_pay(shop, number):
    """One buyer: an order for 1-2 keys, then its payment; a few stay unpaid (reserved keys)."""
    try:
        order = create_order(site_id=shop.site, sku_id=shop.sku, quantity=1 + number % 2,
                             contact=f"buyer{number}@example.com", channel=CHANNEL)
    except OutOfStock:
        _import(shop, 20)
        return
    if number % 7 != 3:
        mark_paid(order.order_no, channel=CHANNEL, trade_no=f"T{number}", amount_fen=order.amount_fen)


class Writer(threading.Thread):
    """Keeps placing and paying orders (and importing keys) until stopped."""

    def __init__(self, shop):
        super().__init__(daemon=True)
        self.shop, self.stop, self.count, self.error = shop, threading.Event(), 0, None

    def run(self):
        try:
            while not self.stop.is_set():
                _place_and_pay(self.shop, self.count)
                self.count += 1
                if self.count % 15 == 0:
                    _import(self.shop, 10)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            database.close()

    def wait_for(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while self.count < n and self.error is None:
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)
        assert self.error is None, self.error


def _order_count():
    with all_sites():
        count = Order.select().count()
    database.close()
    return count


# -- reading a database's state ---------------------------------------------------------------


def _state():
    """Orders, payments, card keys and the ledger of the bound database, as comparable values."""
    with all_sites():
        orders = {o.id: (o.order_no, o.status, o.sku_id, o.quantity, o.amount_fen, o.contact, o.created_at)
                  for o in Order.select()}
    payments = {p.id: (p.order_id, p.channel, p.trade_no, p.amount_fen, p.state) for p in Payment.select()}
    keys = {k.id: (k.sku_id, bytes(k.sealed), k.digest, k.status, k.order_id) for k in CardKey.select()}
    with all_sites():
        products = {p.id: (p.name, p.members_only, p.loop_key, p.low_stock_alerted, p.status)
                    for p in Product.select()}
    txns = {t.id: (t.kind, t.reference) for t in LedgerTxn.select()}
    entries = {e.id: (e.txn_id, e.account_id, e.amount_fen) for e in LedgerEntry.select()}
    return SimpleNamespace(orders=orders, payments=payments, keys=keys, txns=txns, entries=entries,
                           products=products, ledger_problems=ledger.check())


def _state_of(url):
    init_database(url)
    try:
        return _state()
    finally:
        release_connections()


def _assert_consistent(state):
    """One moment of a shop: nothing half-written, whichever moment it was."""
    assert state.ledger_problems == []
    paid_refs = {ref for kind, ref in state.txns.values() if kind == "payment"}
    payments_of = {}
    for order_id, *_rest in state.payments.values():
        payments_of[order_id] = payments_of.get(order_id, 0) + 1
    keys_of = {}
    for _sku, _sealed, _digest, status, order_id in state.keys.values():
        if order_id is not None:
            keys_of.setdefault(order_id, []).append(status)
    for order_id, (order_no, status, _sku, quantity, _amount, _contact, _at) in state.orders.items():
        if status == "delivered":
            assert payments_of.get(order_id) == 1, order_no
            assert order_no in paid_refs, f"{order_no} has no ledger transaction"
            assert keys_of.get(order_id) == ["sold"] * quantity, order_no
        else:
            assert status == "created", (order_no, status)
            assert order_id not in payments_of and order_no not in paid_refs, order_no
            assert keys_of.get(order_id) == ["reserved"] * quantity, order_no
    for _sku, _sealed, _digest, status, order_id in state.keys.values():
        assert (status == "available") == (order_id is None)  # no key both sold and available
    digests = [k[2] for k in state.keys.values()]
    assert len(digests) == len(set(digests))


def _assert_a_moment_of(restored, source):
    """``restored`` is an earlier moment of ``source``: a prefix of its orders, the same bytes."""
    assert restored.orders, "the snapshot holds no orders"
    last = max(restored.orders)
    assert set(restored.orders) == {i for i in source.orders if i <= last}  # one writer: ids in commit order
    for order_id, order in restored.orders.items():
        assert order[0] == source.orders[order_id][0] and order[2:] == source.orders[order_id][2:]
        if order[1] == "delivered":
            assert source.orders[order_id][1] == "delivered"
    for key_id, key in restored.keys.items():
        assert key[:3] == source.keys[key_id][:3]  # sku, sealed bytes, digest
        if key[3] == "sold":
            assert source.keys[key_id][3:] == key[3:]
    for txn_id, txn in restored.txns.items():
        assert source.txns[txn_id] == txn
    for entry_id, entry in restored.entries.items():
        assert source.entries[entry_id] == entry
    for payment_id, payment in restored.payments.items():
        assert source.payments[payment_id] == payment


def _assert_sites_back(source_instance, restored_path):
    compared = 0
    for path in (source_instance.sites_dir / source_instance.main_site).rglob("*"):
        relative = path.relative_to(source_instance.sites_dir)
        if path.name.endswith(".tmp"):
            assert not (restored_path / "sites" / relative).exists()
        elif path.is_file():
            assert (restored_path / "sites" / relative).read_bytes() == path.read_bytes(), relative
            compared += 1
    assert compared >= 3  # site.toml, a layout file, the asset


# -- the matrix: backup during writes, restore, compare ----------------------------------------


@pytest.fixture
def shop(db_instance):
    shop = _shop(db_instance)
    yield shop
    shop.host.close()
    release_connections()


SERVERS = [b for b in ("postgresql", "mysql") if b in BACKENDS]


@pytest.fixture
def server_shop(request, tmp_path):
    """The shop on a server backend (``request.param``): what only a logical dump has to prove."""
    url, drop = create_database(request.param, tmp_path)
    shop = _shop(make_instance(tmp_path / "instance", url))
    yield shop
    shop.host.close()
    release_connections()
    drop()


@pytest.fixture
def fresh_url(backend_url, tmp_path):
    """Another empty database on the same backend as ``backend_url``."""
    url, drop = create_database(backend_name(backend_url), tmp_path)
    yield url
    release_connections()
    drop()


def test_backup_during_writes_restores_one_consistent_moment(shop, fresh_url, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "BATCH", 7)  # many small batches: the dump takes long enough to race the writer
    writer = Writer(shop)
    writer.start()
    try:
        writer.wait_for(10)
        before = _order_count()
        result = backup.make_backup(shop.instance, with_secrets=True)
        after = _order_count()
        writer.wait_for(writer.count + 10)  # the shop kept selling after the snapshot too
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    source = _state_of(shop.instance.database_url)
    assert result.path.stat().st_mode & 0o777 == 0o600

    restored_path = tmp_path / "restored"
    out = cli("restore", result.path, "--database-url", fresh_url, instance_path=restored_path)
    assert out.exit_code == 0, out.output
    assert "checksums verified" in out.output and "restore complete" in out.output
    restored = _state_of(fresh_url)

    _assert_consistent(restored)
    _assert_a_moment_of(restored, source)
    assert before <= len(restored.orders) <= after  # the moment lies within the backup's run
    assert len(restored.orders) < len(source.orders)
    assert {t: info["rows"] for t, info in result.manifest["database"]["tables"].items()}["shop_order"] \
        == len(restored.orders)
    _assert_sites_back(shop.instance, restored_path)
    # The secrets came with the archive: the restored instance opens the restored keys.
    instance = Instance.load(restored_path)
    assert instance.database_url == fresh_url
    cipher = CardKeyCipher.from_instance(instance)
    sold = [k for k in restored.keys.values() if k[3] == "sold"]
    assert sold and all(cipher.open(k[1], k[0]).startswith("K") for k in sold)
    assert "WARNING" not in out.output


@pytest.mark.parametrize("server_shop", SERVERS, indirect=True)
def test_a_write_between_two_tables_of_the_dump_is_not_in_it(server_shop, tmp_path, monkeypatch):
    """The server dump reads every table in one snapshot: an order paid between reading card_key
    and reading shop_order is in none of them (a dump table by table would hold it half). SQLite's
    backup API copies the database in one step: it has no "between tables"."""
    shop = server_shop
    for n in range(5):
        _place_and_pay(shop, n)
    paid_before = Payment.select().count()
    dump_table = backup._dump_table
    injected = []

    def dump_then_write(db, table, out):
        result = dump_table(db, table, out)
        if table == "card_key" and not injected:
            thread = threading.Thread(target=lambda: (_place_and_pay(shop, 100), database.close()))
            thread.start()
            thread.join()
            with all_sites():
                injected.append(Order.select().order_by(Order.id.desc()).get().order_no)
        return result

    monkeypatch.setattr(backup, "_dump_table", dump_then_write)
    result = backup.make_backup(shop.instance)
    assert injected
    archive = backup.open_archive(result.path, tmp_path / "unpacked")
    columns = archive.tables["shop_order"]["columns"]
    numbers = [row[columns.index("order_no")] for row in archive.rows("shop_order", columns)]
    assert len(numbers) == 5 and injected[0] not in numbers
    payments = list(archive.rows("payment", archive.tables["payment"]["columns"]))
    assert len(payments) == paid_before == Payment.select().count() - 1  # the injected payment is not in it

    fresh_url, drop = create_database(backend_name(shop.instance.database_url), tmp_path)
    try:
        backup.restore(Instance.create(tmp_path / "target", database_url=fresh_url), archive)
        _assert_consistent(_state_of(fresh_url))
    finally:
        release_connections()
        drop()


def test_restore_refuses_a_database_that_is_not_empty(shop, cli, tmp_path):
    _place_and_pay(shop, 1)
    result = backup.make_backup(shop.instance)
    before = _state_of(shop.instance.database_url)
    out = cli("restore", result.path, instance_path=shop.instance.path)
    assert out.exit_code == 1
    assert "already holds site folders" in out.output
    # Without site folders in the way, the database itself is refused.
    other = Instance.create(tmp_path / "other", database_url=shop.instance.database_url)
    out = cli("restore", result.path, instance_path=other.path)
    assert out.exit_code == 1 and "is not empty" in out.output and "--yes" in out.output
    assert _state_of(shop.instance.database_url) == before


def test_tampered_archive_is_refused_before_anything_is_written(shop, fresh_url, cli, tmp_path):
    result = backup.make_backup(shop.instance, with_secrets=True)
    tampered = tmp_path / "kamengsite-20200101-000000.tar.gz"
    _rewrite(result.path, tampered,
             lambda name, data: data.replace(b"main", b"evil", 1) if name.endswith("site.toml") else data)
    target = tmp_path / "restored"
    out = cli("restore", tampered, "--database-url", fresh_url, instance_path=target)
    assert out.exit_code == 1
    assert "failed its checksums" in out.output and "site.toml" in out.output
    assert not (target / "config.toml").exists() and not (target / "sites").exists()
    with backup._connected(fresh_url) as db:
        assert db.get_tables() == []


# -- cross-backend ----------------------------------------------------------------------------


def _restore_elsewhere(archive_path, source, target_backend, shop, tmp_path, cli):
    """Restore into a fresh ``target_backend`` database: the same shop, and it sells on."""
    url, drop = create_database(target_backend, tmp_path)
    try:
        out = cli("restore", archive_path, "--database-url", url, instance_path=tmp_path / "restored")
        assert out.exit_code == 0, out.output
        restored = _state_of(url)
        _assert_consistent(restored)
        assert _same_orders(restored.orders, source.orders, coarse_times=target_backend == "mysql")
        assert restored.keys == source.keys and restored.products == source.products
        assert restored.txns == source.txns and restored.entries == source.entries
        assert restored.payments == source.payments
        # The id counters moved past the loaded rows: the restored shop sells on.
        init_database(url)
        order = create_order(site_id=shop.site, sku_id=shop.sku, quantity=1, contact="new@example.com",
                             channel=CHANNEL)
        assert order.id > max(source.orders)
        assert mark_paid(order.order_no, channel=CHANNEL, trade_no="after-restore",
                         amount_fen=order.amount_fen).status == "delivered"
        assert ledger.check() == []
    finally:
        release_connections()
        drop()


def _sell_and_back_up(shop, tmp_path, cli):
    for n in range(12):
        _place_and_pay(shop, n)
    source = _state()
    out = cli("backup", "--with-secrets", "--to", tmp_path / "out", instance_path=shop.instance.path)
    assert out.exit_code == 0, out.output
    return backup.list_archives(tmp_path / "out")[-1], source


@pytest.mark.parametrize("target_backend", ["postgresql", "mysql"])
def test_sqlite_backup_restores_into_another_backend(instance, tmp_path, target_backend, cli):
    shop = _shop(instance)
    try:
        archive_path, source = _sell_and_back_up(shop, tmp_path, cli)
    finally:
        shop.host.close()
        release_connections()
    _restore_elsewhere(archive_path, source, target_backend, shop, tmp_path, cli)


@pytest.mark.parametrize("server_shop, target_backend",
                         [(source, target) for source in SERVERS for target in ("sqlite", "postgresql", "mysql")
                          if target != source], indirect=["server_shop"])
def test_server_backup_restores_into_another_backend(server_shop, tmp_path, target_backend, cli):
    shop = server_shop
    archive_path, source = _sell_and_back_up(shop, tmp_path, cli)
    release_connections()
    _restore_elsewhere(archive_path, source, target_backend, shop, tmp_path, cli)


def _same_orders(restored, source, coarse_times=False) -> bool:
    """Equal orders; MariaDB's DATETIME keeps whole seconds, as it does for the app's own writes."""
    if not coarse_times:
        return restored == source
    assert set(restored) == set(source)
    for order_id, order in restored.items():
        assert order[:-1] == source[order_id][:-1]
        assert abs((order[-1] - source[order_id][-1]).total_seconds()) < 1
    return True


# -- secrets, retention, schedule, settings ---------------------------------------------------


def _members(path):
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_secrets_stay_out_unless_asked(host, instance, cli, tmp_path):
    plain = backup.make_backup(instance)
    config = _members(plain.path)[backup.CONFIG_MEMBER].decode()
    assert "base_domain" in config
    assert instance.secret_key not in config and "card_key_keys" not in config and "database_url" not in config
    with_secrets = backup.make_backup(instance, with_secrets=True)
    assert instance.secret_key in _members(with_secrets.path)[backup.CONFIG_MEMBER].decode()
    manifest = json.loads(_members(plain.path)[backup.MANIFEST])
    assert manifest["with_secrets"] is False and manifest["sites"] == ["main"]
    assert set(manifest["files"]) == set(_members(plain.path)) - {backup.MANIFEST}
    # A new server cannot be made from an archive without secrets: the card keys would be unreadable.
    out = cli("restore", plain.path, instance_path=tmp_path / "new-server")
    assert out.exit_code == 1 and "carries no secrets" in out.output


def test_restore_with_other_secrets_warns(host, instance, tmp_path, cli):
    init_database(instance.database_url)
    product = create_product(Site.get(Site.slug == "main").id, "Card", 500)
    import_keys(Sku.get(Sku.product == product.id), ["ONE-KEY-1"], CardKeyCipher.from_instance(instance))
    result = backup.make_backup(instance)
    release_connections()
    other = Instance.create(tmp_path / "other", database_url=f"sqlite:///{tmp_path / 'other.db'}")
    out = cli("restore", result.path, instance_path=other.path)
    assert out.exit_code == 0, out.output
    assert "secret_key is not the one" in out.output and "card_key_keys lack 1 key" in out.output


def test_retention_keeps_the_newest(host, instance):
    import datetime

    instance.backup_keep = 3
    instance.backup_every_hours = 24
    start = datetime.datetime(2026, 1, 1, 3, 0, 0)
    made = []
    for day in range(5):
        now = start + datetime.timedelta(days=day)
        made.append(backup.scheduled_backup(instance, now=now).path)
        assert backup.scheduled_backup(instance, now=now + datetime.timedelta(hours=23)) is None  # not due yet
    assert backup.list_archives(backup.backups_dir(instance)) == made[-3:]
    assert all(not p.exists() for p in made[:2])
    instance.backup_every_hours = 0
    assert backup.scheduled_backup(instance, now=start + datetime.timedelta(days=30)) is None


def test_the_periodic_job_backs_up_when_due(host, instance):
    from kamengsite.jobs import make_jobs

    jobs = make_jobs(instance, immediate=True)
    task = next(t for t in jobs.huey._registry._periodic_tasks if t.__name__ == "backup_when_due")
    task().execute()
    archives = backup.list_archives(backup.backups_dir(instance))
    assert len(archives) == 1 and archives[0].stat().st_mode & 0o777 == 0o600
    task().execute()  # not due again for backup_every_hours
    assert backup.list_archives(backup.backups_dir(instance)) == archives


def test_backup_settings_are_checked(tmp_path):
    assert Instance.create(tmp_path / "a").backup_every_hours == 24
    with pytest.raises(ConfigError, match="backup_keep"):
        Instance.create(tmp_path / "b", backup_keep=0)
    with pytest.raises(ConfigError, match="backup_every_hours"):
        Instance.create(tmp_path / "c", backup_every_hours=-1)
    assert Instance.create(tmp_path / "d", backup_every_hours=0, backup_keep=30).backup_keep == 30


def test_cli_backup_to_a_folder(cli, tmp_path):
    assert cli("init").exit_code == 0
    out = cli("backup", "--to", tmp_path / "elsewhere")
    assert out.exit_code == 0, out.output
    assert "secrets are not in the archive" in out.output
    archives = backup.list_archives(tmp_path / "elsewhere")
    assert len(archives) == 1 and str(archives[0]) in out.output


def test_restore_yes_replaces_a_shop_with_its_earlier_self(shop, cli):
    for n in range(6):
        _place_and_pay(shop, n)
    at_backup = _state_of(shop.instance.database_url)
    result = backup.make_backup(shop.instance)
    init_database(shop.instance.database_url)
    for n in range(6, 12):
        _place_and_pay(shop, n)
    site_toml = shop.instance.sites_dir / "main" / "site.toml"
    original = site_toml.read_bytes()
    site_toml.write_bytes(original.replace(b"main", b"changed", 1))
    release_connections()
    out = cli("restore", result.path, "--yes", instance_path=shop.instance.path)
    assert out.exit_code == 0, out.output
    assert "previous contents were replaced" in out.output and "sites.before-restore-" in out.output
    restored = _state_of(shop.instance.database_url)
    _assert_consistent(restored)
    coarse = backend_name(shop.instance.database_url) == "mysql"
    assert _same_orders(restored.orders, at_backup.orders, coarse_times=coarse)
    assert (restored.keys, restored.payments, restored.txns, restored.entries) == \
        (at_backup.keys, at_backup.payments, at_backup.txns, at_backup.entries)
    assert site_toml.read_bytes() == original
    moved = list(shop.instance.path.glob("sites.before-restore-*/main/site.toml"))
    assert len(moved) == 1 and b"changed" in moved[0].read_bytes()
    # The restored shop sells on: new ids do not collide with the restored ones.
    init_database(shop.instance.database_url)
    _place_and_pay(shop, 50)
    assert ledger.check() == []


def test_new_server_with_the_saved_secrets(host, instance, tmp_path, cli):
    import tomli_w

    init_database(instance.database_url)
    product = create_product(Site.get(Site.slug == "main").id, "Card", 500)
    sku = Sku.get(Sku.product == product.id)
    import_keys(sku, ["SAVED-SECRET-KEY-1"], CardKeyCipher.from_instance(instance))
    result = backup.make_backup(instance)  # no secrets in it
    release_connections()
    target = tmp_path / "new-server"
    target.mkdir()
    (target / "config.toml").write_text(tomli_w.dumps({
        "secret_key": instance.secret_key, "card_key_keys": instance.card_key_keys,
        "database_url": f"sqlite:///{tmp_path / 'new.db'}"}))
    out = cli("restore", result.path, instance_path=target)
    assert out.exit_code == 0, out.output
    assert "WARNING" not in out.output and "config.from-backup.toml" in out.output
    new = Instance.load(target)
    init_database(new.database_url)
    key = CardKey.get(CardKey.sku == sku.id)
    assert CardKeyCipher.from_instance(new).open(key.sealed, sku.id) == "SAVED-SECRET-KEY-1"
    release_connections()


def _rewrite(source, target, change):
    """Copy an archive member by member, ``change(name, data)`` returning the new bytes (None drops it)."""
    with tarfile.open(source, "r:gz") as tar_in, tarfile.open(target, "w:gz") as tar_out:
        for member in tar_in:
            data = change(member.name, tar_in.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                tar_out.addfile(member, io.BytesIO(data))


def test_archives_that_are_not_ours_are_refused(host, instance, tmp_path):
    result = backup.make_backup(instance)
    escaping = tmp_path / "escaping.tar.gz"
    with tarfile.open(escaping, "w:gz") as tar:
        info = tarfile.TarInfo("sites/../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(backup.BackupError, match="unexpected member"):
        backup.open_archive(escaping, tmp_path / "a")
    assert not (tmp_path / "evil.txt").exists()
    dropped = tmp_path / "dropped.tar.gz"
    _rewrite(result.path, dropped, lambda name, data: None if name.endswith("site.toml") else data)
    with pytest.raises(backup.BackupError, match="site.toml: missing"):
        backup.open_archive(dropped, tmp_path / "b")
    with pytest.raises(backup.BackupError, match="not a readable backup archive"):
        (tmp_path / "garbage.tar.gz").write_bytes(b"\x1f\x8b garbage")
        backup.open_archive(tmp_path / "garbage.tar.gz", tmp_path / "c")


def test_an_archive_from_a_newer_kamengsite_is_refused(host, instance, tmp_path):
    result = backup.make_backup(instance)

    def future(name, data):
        if name != backup.MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["migrations"].append("9999_from_the_future")
        return json.dumps(manifest).encode()

    newer = tmp_path / "newer.tar.gz"
    _rewrite(result.path, newer, future)
    archive = backup.open_archive(newer, tmp_path / "unpacked")
    url = f"sqlite:///{tmp_path / 'target.db'}"
    with pytest.raises(backup.BackupError, match="9999_from_the_future"):
        backup.restore_database(url, archive, replace=False, report=backup.RestoreReport())
    with backup._connected(url) as db:
        assert db.get_tables() == []  # refused before any migration ran
