"""The rejected-notification log (``notice_log``): what the notify route keeps of every refusal and
every notification acknowledged without a payment, what it never keeps, and that recording can
never change the reply a gateway gets."""

from __future__ import annotations

import logging
import urllib.parse

import pytest

from conftest import SiteClient
from kamengsite import notice_log
from kamengsite.db import database, init_database, release_connections
from kamengsite.hookspecs import hookimpl
from kamengsite.notice_log import PaymentNotice, latest_notices, notice_channels, record_notice
from kamengsite.payments import Channel, Notification, PayType, Rejection

SECRET = "s3cret-signing-key-0123456789"


class Fake(Channel):
    """Signs with the profile's secret itself (a test channel); paid unless told otherwise."""

    id = "fake"
    name = "Fake"
    pay_types = (PayType("x", "X"),)
    settings_schema = {"type": "object", "properties": {"secret": {"type": "string", "writeOnly": True}},
                       "required": ["secret"], "additionalProperties": False}

    def verify_notification(self, profile, notice, now):
        if notice.fields.get("sig") != profile.get("secret"):
            return Rejection("bad signature")
        return Notification(notice.fields["out_trade_no"], 100, "T1", notice.fields.get("status", "paid"),
                            raw_status=notice.fields.get("status", "paid"))


class FakePlugin:
    @hookimpl
    def payment_channels(self, instance):
        return [Fake()]


@pytest.fixture
def host(host_factory):
    h = host_factory("notices", payments={"fake": {"a": {"secret": SECRET}}})
    h.plugins.register(FakePlugin(), name="fake-channel")
    return h


def notify(host, fields, path="/pay/notify/fake/a", ip="203.0.113.9"):
    client = SiteClient(host, "main.localhost")
    return client.get(path + "?" + urllib.parse.urlencode(fields), environ_base={"REMOTE_ADDR": ip})


def rows():
    return list(PaymentNotice.select().order_by(PaymentNotice.id))


def test_a_forged_notification_is_recorded_as_rejected_without_its_secret_or_body(host, caplog):
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(host, {"out_trade_no": "K2024070100000000001", "sig": "forged-" + SECRET[:6],
                                 "money": "0.01", "buyer": "someone@example.com"})
    assert (response.status_code, response.get_data()) == (400, b"fail")
    assert "payment notification rejected" in caplog.text  # the log line is still written
    [row] = rows()
    assert (row.channel, row.profile, row.order_no, row.outcome, row.reason, row.remote_ip) == (
        "fake", "a", "K2024070100000000001", "rejected", "bad signature", "203.0.113.9")
    assert row.created_at is not None
    stored = " ".join(str(v) for v in row.__data__.values())
    for never in (SECRET[:6], "someone@example.com", "0.01"):  # no signature, no body field
        assert never not in stored


def test_a_notification_without_a_payment_is_recorded_as_acknowledged(host):
    response = notify(host, {"out_trade_no": "K2024070100000000002", "sig": SECRET, "status": "TRADE_CLOSED"})
    assert (response.status_code, response.get_data()) == (200, b"success")
    [row] = rows()
    assert (row.outcome, row.order_no, row.outcome_label) == ("acknowledged", "K2024070100000000002", "Acknowledged (not paid)")
    assert "TRADE_CLOSED" in row.reason


def test_an_unknown_channel_or_profile_is_recorded_with_its_url_parts_cut(host):
    long_name = "x" * 300
    assert notify(host, {"sig": "1"}, path=f"/pay/notify/{long_name}/a").status_code == 404
    assert notify(host, {"sig": "1"}, path="/pay/notify/fake/nope").status_code == 404
    first, second = rows()
    assert len(first.channel) == notice_log.CHANNEL_MAX and first.channel.endswith("…")
    assert (second.channel, second.profile, second.reason) == ("fake", "nope", "no such configured channel/profile")


def test_a_genuine_notification_for_an_unknown_order_is_recorded_as_rejected(host):
    assert notify(host, {"out_trade_no": "K2024070100000000003", "sig": SECRET}).status_code == 400
    assert [r.reason for r in rows()] == ["unknown order 'K2024070100000000003'"]


def test_a_recording_failure_never_changes_the_reply(host, monkeypatch, caplog):
    def broken(**fields):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PaymentNotice, "create", broken)
    with caplog.at_level(logging.ERROR, logger="kamengsite.notice_log"):
        refused = notify(host, {"out_trade_no": "K1", "sig": "bad"})
        acknowledged = notify(host, {"out_trade_no": "K2", "sig": SECRET, "status": "WAIT_BUYER_PAY"})
        unknown = notify(host, {}, path="/pay/notify/nope/a")
    assert (refused.status_code, refused.get_data()) == (400, b"fail")
    assert (acknowledged.status_code, acknowledged.get_data()) == (200, b"success")
    assert unknown.status_code == 404
    assert caplog.text.count("payment notice could not be recorded") == 3


def test_a_missing_table_never_changes_the_reply(host):
    SiteClient(host, "main.localhost").get("/")  # the site app binds the database
    database.execute_sql("DROP TABLE payment_notice")
    response = notify(host, {"out_trade_no": "K1", "sig": "bad"})
    assert (response.status_code, response.get_data()) == (400, b"fail")


def test_fields_are_cut_and_made_printable(host):
    row = record_notice(channel="fake", profile="a\nb", outcome="rejected", reason="r" * 1000,
                        order_no="K\x00" + "9" * 100, remote_ip="2001:db8::1")
    assert row.profile == "a?b" and len(row.reason) == notice_log.REASON_MAX and row.reason.endswith("…")
    assert row.order_no.startswith("K?") and len(row.order_no) == notice_log.ORDER_MAX
    fresh = PaymentNotice.get_by_id(row.id)
    assert (fresh.profile, fresh.reason, fresh.remote_ip) == (row.profile, row.reason, "2001:db8::1")


def test_an_unknown_outcome_is_not_recorded_and_does_not_raise(host):
    assert record_notice(channel="fake", profile="a", outcome="paid", reason="x") is None
    assert rows() == []


def test_the_table_keeps_only_the_latest_rows(host, monkeypatch):
    monkeypatch.setattr(notice_log, "KEEP_ROWS", 5)
    monkeypatch.setattr(notice_log, "PRUNE_EVERY", 1)
    for i in range(12):
        record_notice(channel="fake", profile="a", outcome="rejected", reason=f"r{i}")
    assert [r.reason for r in rows()] == [f"r{i}" for i in range(7, 12)]


def test_latest_notices_are_newest_first_and_filter_by_channel(host):
    for channel in ("epay", "usdt", "epay"):
        record_notice(channel=channel, profile="main", outcome="rejected", reason=channel)
    assert [n.channel for n in latest_notices()] == ["epay", "usdt", "epay"]
    assert [n.id for n in latest_notices("epay")] == sorted((n.id for n in latest_notices("epay")), reverse=True)
    assert len(latest_notices("epay")) == 2 and latest_notices("usdt", limit=1)[0].channel == "usdt"
    assert notice_channels() == ["epay", "usdt"]


def test_the_migrated_table_records_on_every_backend(db_instance):
    init_database(db_instance.database_url)
    try:
        with database.connection_context():
            row = record_notice(channel="epay", profile="main", outcome="acknowledged", reason="状态 TRADE_CLOSED",
                                order_no="K2024070100000000001", remote_ip="198.51.100.7")
            assert row is not None
            [found] = latest_notices("epay")
            assert (found.reason, found.outcome, found.remote_ip) == ("状态 TRADE_CLOSED", "acknowledged", "198.51.100.7")
    finally:
        release_connections()


def test_the_outcome_label_is_in_the_page_language():
    from flask import Flask
    from flask_babel import force_locale

    from kamengsite import i18n

    app = Flask(__name__)
    i18n.install(app)
    row = PaymentNotice(channel="fake", profile="a", outcome="acknowledged")
    with app.test_request_context("/"):
        with force_locale("zh_CN"):
            assert (row.outcome_label, PaymentNotice(outcome="rejected").outcome_label) == ("已确认（未付款）", "已拒绝")
        with force_locale("en"):
            assert row.outcome_label == "Acknowledged (not paid)"
    assert PaymentNotice(outcome="other").outcome_label == "other"
