"""故障预警 (kamengsite/incidents.py): each check opens an incident at its threshold and not below,
the operator is told once (mail + signed webhook) however often the check runs, the incident clears
once on recovery and opens anew after; concurrent runs open one incident on every database; the
main site's dashboard shows them; plugins report through ``operational_checks``."""

from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kamengsite import incidents, jobs, mail
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, release_connections
from kamengsite.errors import ConfigError
from kamengsite.hookspecs import hookimpl
from kamengsite.incidents import Incident
from kamengsite.instance import Instance
from kamengsite.models import Site, utcnow
from kamengsite.notice_log import ACKNOWLEDGED, REJECTED, record_notice
from kamengsite.orders import Order, create_order, mark_paid
from kamengsite.tenancy import all_sites
from kamengsite.testing import SiteClient, at_once, sign_in_console

from mailhelpers import SmtpServer

PASSWORD = "correct horse battery staple"
MAIL_ENV = ("KAMENGSITE_SMTP_URL", "KAMENGSITE_MAIL_FROM", "KAMENGSITE_OPERATOR_EMAIL", "REDIS_URL")
Usage = collections.namedtuple("Usage", "total used free")
GB = 1024 ** 3


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    for name in MAIL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    monkeypatch.setenv("KAMENGSITE_API_ALLOW_LOOPBACK", "1")
    # A roomy disk unless a test says otherwise: the machine running the suite must not decide.
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 50 * GB, 50 * GB))
    monkeypatch.setattr(mail, "site_locale", lambda site_id, instance=None: "en")
    yield
    jobs.bind(None)


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every POST (headers, body) and answers ``status``."""

    def __init__(self):
        self.posts = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"

    def events(self):
        return [(json.loads(body)["event"], json.loads(body)["kind"], json.loads(body)["key"])
                for _headers, body in self.posts]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class World:
    """The main site with a card product, an SMTP server and a webhook receiver wired to the instance."""

    def __init__(self, host):
        self.host = host
        self.instance = host.instance
        self.main = Site.get(Site.slug == self.instance.main_site).id
        self.product = create_product(self.main, "Monthly card", 1000, max_qty=0)
        import_keys(self.product.skus[0], [f"K-{i:04d}" for i in range(60)], CardKeyCipher.from_instance(self.instance))
        self.smtp = SmtpServer().start()
        self.receiver = Receiver()
        self.instance.smtp_url = self.smtp.url
        self.instance.operator_email = "ops@example.com"
        self.instance.alert_webhook_url = self.receiver.url
        self.trade = 0

    def order(self, channel="epay", profile="main", created_at=None) -> Order:
        order = create_order(site_id=self.main, sku_id=self.product.skus[0].id, quantity=1,
                             contact="buyer@example.com", channel=channel, channel_profile=profile)
        if created_at is not None:
            with all_sites():
                Order.update(created_at=created_at).where(Order.id == order.id).execute()
        return order

    def pay(self, order, channel="epay", profile="main"):
        self.trade += 1
        mark_paid(order.order_no, channel=channel, trade_no=f"T{self.trade}", amount_fen=order.amount_fen,
                  channel_profile=profile)

    def subjects(self):
        return [message["Subject"] for _sender, _to, message in self.smtp.messages]

    def incidents(self, kind=None):
        query = Incident.select().order_by(Incident.id)
        if kind:
            query = query.where(Incident.kind == kind)
        return list(query)

    def close(self):
        self.smtp.stop()
        self.receiver.stop()


@pytest.fixture
def world(host):
    w = World(host)
    yield w
    w.close()


@pytest.fixture
def db_world(db_host):
    w = World(db_host)
    yield w
    w.close()
    release_connections()


def run(world, now=None, **options):
    return incidents.run_checks(world.instance, now=now, **options)


# -- payment channels that stop confirming --------------------------------------------------------------


def test_a_channel_profile_that_stops_confirming_opens_once_clears_once_and_opens_again(db_world):
    db_world.order()
    db_world.order()
    db_world.order(profile="other")
    assert run(db_world) == {"opened": [], "cleared": []}  # 2 orders: below the threshold of 3
    assert db_world.incidents() == []

    db_world.order()  # the 3rd order of epay/main in 30 minutes, none paid
    assert run(db_world)["opened"] == ["payment_stalled:epay/main"]
    for _ in range(3):
        assert run(db_world) == {"opened": [], "cleared": []}
    [incident] = db_world.incidents()
    assert (incident.kind, incident.key, incident.cleared_at) == ("payment_stalled", "epay/main", None)
    assert incident.notified_at is not None and "3 orders" in incident.detail
    assert db_world.subjects() == ["Alert: Payment channel not confirming (epay/main)"]
    assert db_world.receiver.events() == [("incident.opened", "payment_stalled", "epay/main")]

    db_world.pay(db_world.order())  # a payment of that channel profile arrives: it recovered
    assert run(db_world)["cleared"] == ["payment_stalled:epay/main"]
    assert run(db_world) == {"opened": [], "cleared": []}
    [incident] = db_world.incidents()
    assert incident.cleared_at is not None and incident.open_key is None
    assert db_world.subjects()[1:] == ["Cleared: Payment channel not confirming (epay/main)"]
    assert db_world.receiver.events()[1:] == [("incident.cleared", "payment_stalled", "epay/main")]

    later = utcnow() + datetime.timedelta(minutes=45)  # the payment is out of the window; 3 new unpaid orders
    for _ in range(3):
        db_world.order(created_at=later - datetime.timedelta(minutes=1))
    assert run(db_world, now=later)["opened"] == ["payment_stalled:epay/main"]
    assert len(db_world.incidents()) == 2 and len(db_world.subjects()) == 3 and len(db_world.receiver.posts) == 3


def test_orders_outside_the_window_or_without_a_channel_do_not_count(world):
    old = utcnow() - datetime.timedelta(minutes=31)
    world.order(created_at=old)
    world.order(created_at=old)
    world.order()
    world.order(channel="", profile="")
    world.order(channel="", profile="")
    world.order(channel="", profile="")
    assert run(world)["opened"] == []
    world.instance.alert_payment_min_orders = 1  # the threshold is the instance's setting
    assert run(world)["opened"] == ["payment_stalled:epay/main"]


# -- signature failures ---------------------------------------------------------------------------------


def _rejections(n, channel="epay"):
    for i in range(n):
        record_notice(channel=channel, profile="main", outcome=REJECTED, reason="bad signature", order_no=f"X{i}")


def test_more_than_twenty_rejections_in_ten_minutes_open_an_incident(db_world):
    _rejections(20)
    _rejections(15, channel="alipay")
    for _ in range(5):
        record_notice(channel="epay", profile="main", outcome=ACKNOWLEDGED, reason="not paid")
    assert run(db_world)["opened"] == []  # 20 is not more than 20; acknowledged ones are no failures

    _rejections(1)
    assert run(db_world)["opened"] == ["signature_failures:epay"]
    assert run(db_world)["opened"] == []
    assert "21 notifications rejected" in db_world.incidents()[0].detail
    assert db_world.subjects() == ["Alert: Notification signature failures (epay)"]

    quiet = utcnow() + datetime.timedelta(minutes=11)  # ten quiet minutes later
    assert run(db_world, now=quiet)["cleared"] == ["signature_failures:epay"]
    assert [e[0] for e in db_world.receiver.events()] == ["incident.opened", "incident.cleared"]


# -- the job queue stalled ------------------------------------------------------------------------------


def test_a_stale_heartbeat_is_seen_on_the_dashboard_and_cleared_by_the_worker(world):
    now = utcnow()
    assert incidents.dashboard_view(world.instance, now=now)["open"] == []  # no heartbeat yet: not judged
    incidents.beat(now - datetime.timedelta(minutes=5))
    assert incidents.dashboard_view(world.instance, now=now)["open"] == []  # 5 minutes: not older than 5

    incidents.beat(now - datetime.timedelta(minutes=5, seconds=1))
    view = incidents.dashboard_view(world.instance, now=now)
    assert [(i.kind, i.key) for i in view["open"]] == [("queue_stalled", "worker")]
    incidents.dashboard_view(world.instance, now=now)  # every view judges again: still one incident
    assert len(world.incidents()) == 1
    assert world.subjects() == ["Alert: Job worker not running (worker)"]  # sent at once, not queued

    create_account(world.main, "boss", PASSWORD)
    console = sign_in_console(SiteClient(world.host, "main.localhost"), "boss", PASSWORD)
    page = console.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="open-incidents"' in page and 'data-incident="queue_stalled:worker"' in page

    result = run(world, now=now, heartbeat=True)  # the worker runs again: its job writes the heartbeat
    assert result["cleared"] == ["queue_stalled:worker"]
    page = console.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="open-incidents"' not in page and 'id="no-incidents"' in page
    assert 'id="cleared-incidents"' in page and 'data-incident="queue_stalled:worker"' in page
    assert world.subjects()[1:] == ["Cleared: Job worker not running (worker)"]


def test_the_worker_job_is_registered_and_writes_the_heartbeat(world):
    huey = jobs.make_jobs(world.instance, immediate=True, name="incidents-test").huey
    (task,) = [t for t in huey._registry._periodic_tasks if t.__name__ == "incidents_check"]
    assert all(task().validate_datetime(datetime.datetime(2026, 12, 1, 10, m)) for m in range(60))  # every minute
    huey.execute(task())
    assert incidents.Heartbeat.get(incidents.Heartbeat.name == "worker").beat_at is not None


def test_the_command_line_runs_the_checks_and_exits_1_while_one_is_open(world):
    from click.testing import CliRunner

    from kamengsite.cli import main

    incidents.beat(utcnow() - datetime.timedelta(minutes=30))
    runner = CliRunner()
    result = runner.invoke(main, ["--instance", str(world.instance.path), "incidents", "check"])
    assert result.exit_code == 1, result.output
    assert "OPEN     queue_stalled:worker" in result.output
    incidents.beat()
    result = runner.invoke(main, ["--instance", str(world.instance.path), "incidents", "check"])
    assert result.exit_code == 0, result.output
    assert "cleared  queue_stalled:worker" in result.output and "no open incidents" in result.output
    secret = runner.invoke(main, ["--instance", str(world.instance.path), "incidents", "webhook-secret"])
    assert secret.output.strip() == incidents.webhook_secret(world.instance)


# -- the disk -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total, free, low", [
    (100 * GB, 5 * GB, False),          # exactly 5 %: not below
    (100 * GB, 5 * GB - 1, True),       # below 5 %
    (10 * GB, 1 * GB, False),           # 10 % and exactly 1 GB
    (10 * GB, 1 * GB - 1, True),        # below 1 GB
])
def test_disk_nearly_full(world, monkeypatch, total, free, low):
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(total, total - free, free))
    assert run(world)["opened"] == (["disk_low:instance"] if low else [])
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(total, 0, total))
    assert run(world)["cleared"] == (["disk_low:instance"] if low else [])


# -- the webhook ----------------------------------------------------------------------------------------


def test_the_webhook_is_signed_with_a_key_derived_from_the_instance_secret(world, monkeypatch):
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 99 * GB, GB // 2))
    run(world)
    [(headers, body)] = world.receiver.posts
    secret = incidents.webhook_secret(world.instance)
    assert secret != world.instance.secret_key and len(secret) == 64
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Kamengsite-Signature"], expected)
    assert headers["X-Kamengsite-Event"] == "incident.opened"
    document = json.loads(body)
    assert {k: document[k] for k in ("event", "kind", "key", "cleared_at")} == {
        "event": "incident.opened", "kind": "disk_low", "key": "instance", "cleared_at": None}
    assert document["opened_at"].endswith("Z") and "512 MB free" in document["detail"]


def test_a_failing_webhook_is_logged_not_retried_forever_and_the_mail_still_goes(world, monkeypatch, caplog):
    world.receiver.status = 500
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 99 * GB, GB // 2))
    run(world)
    run(world)
    assert len(world.receiver.posts) == incidents.WEBHOOK_ATTEMPTS  # two tries, then never again
    assert "HTTP 500" in caplog.text
    assert world.subjects() == ["Alert: Disk nearly full (instance)"]


def test_a_webhook_to_a_private_address_is_refused(world, monkeypatch):
    world.instance.alert_webhook_url = "http://10.0.0.8/alerts"
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 99 * GB, GB // 2))
    run(world)
    assert world.receiver.posts == [] and len(world.subjects()) == 1


# -- plugins: operational_checks ------------------------------------------------------------------------


class OpsPlugin:
    """A test plugin reporting whatever ``problems`` holds (or raising)."""

    def __init__(self):
        self.problems = []
        self.broken = False

    @hookimpl
    def operational_checks(self, instance):
        if self.broken:
            raise RuntimeError("check broke")
        return list(self.problems)


def test_a_plugins_problems_open_and_clear_and_a_broken_plugin_clears_nothing(world):
    plugin = OpsPlugin()
    world.host.plugins.register(plugin, name="ops-test")
    plugin.problems = [("queue_depth", "mail", "1200 mails waiting"), ("bad",), ("disk_low", "x", "core kind")]
    assert run(world)["opened"] == ["queue_depth:mail"]  # the malformed and the core-kind answers are ignored
    plugin.broken = True
    assert run(world) == {"opened": [], "cleared": []}  # unknown: left open
    plugin.broken = False
    plugin.problems = []
    assert run(world)["cleared"] == ["queue_depth:mail"]
    assert [e[0] for e in world.receiver.events()] == ["incident.opened", "incident.cleared"]


def test_an_upstream_failing_three_times_is_an_incident(world):
    models = pytest.importorskip("kamengsite_upstreams.models")
    upstream = models.Upstream.create(name="supplier-a", protocol="kamengsite", failures=2,
                                      last_error="connection refused")
    assert run(world)["opened"] == []
    models.Upstream.update(failures=3).where(models.Upstream.id == upstream.id).execute()
    assert run(world)["opened"] == [f"upstream_failing:upstream/{upstream.id}"]
    [incident] = world.incidents("upstream_failing")
    assert "supplier-a" in incident.detail and "connection refused" in incident.detail
    assert world.subjects() == [f"Alert: Upstream sync failing (upstream/{upstream.id})"]
    models.Upstream.update(failures=0).where(models.Upstream.id == upstream.id).execute()
    assert run(world)["cleared"] == [f"upstream_failing:upstream/{upstream.id}"]


# -- concurrency, on every database ---------------------------------------------------------------------


def test_concurrent_runs_open_one_incident_and_notify_once(db_world, monkeypatch):
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 99 * GB, GB // 2))
    for _ in range(3):
        db_world.order()
    results, errors = at_once(lambda _n: incidents.run_checks(db_world.instance), 4)
    assert errors == []
    opened = sorted(key for result in results for key in result["opened"])
    assert opened == ["disk_low:instance", "payment_stalled:epay/main"]  # each opened by one run only
    assert sorted((i.kind, i.key) for i in db_world.incidents()) == [("disk_low", "instance"),
                                                                    ("payment_stalled", "epay/main")]
    assert len(db_world.smtp.messages) == 2 and len(db_world.receiver.posts) == 2


def test_the_database_refuses_a_second_open_incident_of_the_same_key(db_world):
    import peewee

    now = utcnow()
    Incident.create(kind="disk_low", key="instance", open_key="disk_low:instance", opened_at=now, last_seen_at=now)
    with pytest.raises(peewee.IntegrityError):
        with database.atomic():
            Incident.create(kind="disk_low", key="instance", open_key="disk_low:instance", opened_at=now,
                            last_seen_at=now)
    Incident.update(open_key=None, cleared_at=now).execute()
    Incident.create(kind="disk_low", key="instance", open_key="disk_low:instance", opened_at=now, last_seen_at=now)
    assert len(db_world.incidents()) == 2


# -- settings -------------------------------------------------------------------------------------------


def test_thresholds_are_instance_settings_checked_on_load(tmp_path):
    instance = Instance.create(tmp_path / "a", alert_payment_min_orders=5, alert_webhook_url="https://ops.example/h")
    assert (instance.alert_payment_min_orders, instance.alert_payment_minutes) == (5, 30)
    with pytest.raises(ConfigError, match="alert_disk_min_percent"):
        Instance.create(tmp_path / "b", alert_disk_min_percent=90)
    with pytest.raises(ConfigError, match="alert_webhook_url"):
        Instance.create(tmp_path / "c", alert_webhook_url="ftp://x")


def test_a_sub_sites_dashboard_shows_no_platform_incidents(world, monkeypatch):
    monkeypatch.setattr(incidents.shutil, "disk_usage", lambda path: Usage(100 * GB, 99 * GB, GB // 2))
    run(world)
    world.host.registry.create("shop1", template="gaming")
    create_account(Site.get(Site.slug == "shop1").id, "owner", PASSWORD)
    console = sign_in_console(SiteClient(world.host, "shop1.localhost"), "owner", PASSWORD)
    response = console.get("/admin/dashboard")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'id="incidents"' not in page and "disk_low" not in page


def test_a_plugins_detail_is_shown_escaped_on_the_dashboard(world):
    plugin = OpsPlugin()
    world.host.plugins.register(plugin, name="ops-evil")
    plugin.problems = [("feed_broken", "<b>feed</b>", "<script>alert(1)</script>")]
    run(world)
    create_account(world.main, "boss", PASSWORD)
    console = sign_in_console(SiteClient(world.host, "main.localhost"), "boss", PASSWORD)
    page = console.get("/admin/dashboard").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "&lt;b&gt;feed&lt;/b&gt;" in page
