"""The crm plugin: segments from paid orders (and their boundaries), tags, campaigns fired once per member.

Time is pinned: ``NOW`` is a little after the real clock (orders and members are made now and
then moved back in time), and each order is paid for real (``create_order`` + ``mark_paid``)
before its ``paid_at`` is set to the moment the test needs.
"""

from __future__ import annotations

import datetime
import sys
import threading

import pytest

from kamengsite import accounts, members, refunds
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, release_connections
from kamengsite.instance import PROJECT_ROOT
from kamengsite.members import Member
from kamengsite.models import Site, utcnow
from kamengsite.orders import Order, create_order, mark_paid
from kamengsite.tenancy import acting_for, all_sites
from kamengsite.testing import csrf_token, sign_in_console, sign_in_member
from kamengsite_crm import campaigns, segments
from kamengsite_crm.campaigns import CrmError
from kamengsite_crm.models import CampaignDelivery, MemberSegment, Message

sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from mailhelpers import SmtpServer  # noqa: E402

PASSWORD = "secret-pass-1"
DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)
NOW = utcnow().replace(microsecond=0) + datetime.timedelta(minutes=10)
RULES = segments.default_rules()


# -- helpers ------------------------------------------------------------------------------


class Shop:
    """Two sub-sites selling one main-site product; crm enabled on both."""

    def __init__(self, host, plugins=("crm",)):
        self.host = host
        host.registry.create("shop1", template="gaming")
        host.registry.create("shop2", template="gaming")
        for slug in ("shop1", "shop2"):
            host.registry.update(slug, plugins=list(plugins))
        self.site1, self.site2 = (Site.get(Site.slug == s).id for s in ("shop1", "shop2"))
        self.product = create_product(Site.get(Site.slug == "main"), "营销测试卡", 1000)
        self.sku = self.product.skus[0].id
        import_keys(self.product.skus[0], [f"CRM-{i:04d}" for i in range(200)],
                    CardKeyCipher.from_instance(host.instance))
        self._trade = 0

    def member(self, site_id, name, registered=None, status="active") -> int:
        m = members.register(site_id, f"{name}@example.com", PASSWORD, name)
        with acting_for(site_id):
            Member.update(created_at=registered or NOW - 100 * DAY, status=status).where(Member.id == m.id).execute()
        return m.id

    def order(self, site_id, member_id, fen, paid_at=None) -> str:
        """An order of ``fen`` goods by the member; paid at ``paid_at`` (None: left unpaid)."""
        order = create_order(site_id=site_id, sku_id=self.sku, quantity=1, contact="b@example.com",
                             unit_price_fen=fen, member_id=member_id)
        if paid_at is not None:
            self._trade += 1
            mark_paid(order.order_no, channel="alipay", trade_no=f"T{self._trade}", amount_fen=order.amount_fen)
            with all_sites():
                Order.update(paid_at=paid_at).where(Order.id == order.id).execute()
        return order.order_no

    def config(self, slug="shop1"):
        return self.host.registry.load(slug)


@pytest.fixture
def shop(host):
    return Shop(host)


@pytest.fixture
def db_shop(db_host):
    """The same shop on every database of the matrix (SQLite, PostgreSQL, MariaDB)."""
    yield Shop(db_host)
    release_connections()


@pytest.fixture
def smtp(host):
    server = SmtpServer().start()
    host.instance.smtp_url = server.url
    yield server
    server.stop()


def mails_to(server, address) -> list:
    return [m for _, rcpt, m in server.messages if address in rcpt]


def inbox_count(site_id, member_id) -> int:
    with acting_for(site_id):
        return Message.select().where(Message.member == member_id).count()


def campaign(site_id, fires_on="segment:dormant", **kwargs):
    values = dict(name="召回", fires_on=fires_on, subject="好久不见，{name}", body="送你优惠券 COME-BACK-10", active=True)
    values.update(kwargs)
    return campaigns.create_campaign(site_id, **values)


# -- segments -------------------------------------------------------------------------------


def test_segment_rules_hold_at_their_boundaries(db_shop):
    shop = db_shop
    s = shop.site1
    m = {name: shop.member(s, name) for name in (
        "hv", "hv_miss", "outside", "pot_edge", "pot_late", "dorm_edge", "dorm_miss", "twice", "refunded",
        "disabled")}
    shop.order(s, m["hv"], 30000, NOW - 10 * DAY)
    shop.order(s, m["hv"], 20000, NOW - 90 * DAY)  # exactly at the window's start: counted
    shop.order(s, m["hv_miss"], 49999, NOW - DAY)  # one fen short
    shop.order(s, m["outside"], 60000, NOW - 90 * DAY - SECOND)  # a second before the window
    shop.order(s, m["pot_edge"], 100, NOW - 30 * DAY)  # exactly 30 days ago
    shop.order(s, m["pot_late"], 100, NOW - 30 * DAY - SECOND)
    shop.order(s, m["dorm_edge"], 100, NOW - 60 * DAY)  # exactly 60 days ago
    shop.order(s, m["dorm_miss"], 100, NOW - 60 * DAY + SECOND)
    shop.order(s, m["twice"], 100, NOW - 2 * DAY)
    shop.order(s, m["twice"], 100, NOW - 3 * DAY)
    refunds.refund_order(shop.order(s, m["refunded"], 90000, NOW - DAY), to="manual")
    shop.order(s, m["disabled"], 90000, NOW - DAY)
    with acting_for(s):
        Member.update(status="disabled").where(Member.id == m["disabled"]).execute()
    fresh = shop.member(s, "fresh", registered=NOW - 30 * DAY)  # registered exactly 30 days ago
    stale = shop.member(s, "stale", registered=NOW - 30 * DAY - SECOND)
    unpaid = shop.member(s, "unpaid", registered=NOW - DAY)
    shop.order(s, unpaid, 100)  # never paid: still a new member
    future = shop.member(s, "future", registered=NOW - DAY)
    shop.order(s, future, 100, NOW + SECOND)  # paid after NOW: not yet an order at NOW

    got = segments.compute_segments(s, NOW, RULES)
    assert got["high_value"] == {m["hv"]}
    assert got["potential"] == {m["hv_miss"], m["pot_edge"]}
    assert got["dormant"] == {m["outside"], m["dorm_edge"]}
    assert got["new"] == {fresh, unpaid, future}
    assert stale not in set().union(*got.values())
    stats = segments.order_stats(s, NOW, RULES, [m["hv"]])[m["hv"]]
    assert (stats.orders, stats.window_orders, stats.window_spend_fen) == (2, 2, 50000)


def test_tuning_the_settings_changes_the_segments(shop):
    s = shop.site1
    a, b, c = shop.member(s, "a"), shop.member(s, "b"), shop.member(s, "c")
    shop.order(s, a, 40000, NOW - DAY)
    shop.order(s, b, 100, NOW - 70 * DAY)
    shop.order(s, c, 100, NOW - 40 * DAY)
    before = segments.compute_segments(s, NOW)  # rules read from the site's folder: the defaults
    assert (before["high_value"], before["dormant"], before["potential"]) == (set(), {b}, {a})

    shop.host.registry.update("shop1", settings={"crm": {"high_value_spend_fen": 40000, "dormant_days": 35,
                                                         "potential_recent_days": 45}})
    assert segments.rules_for(s)["dormant_days"] == 35
    after = segments.compute_segments(s, NOW)
    assert after["high_value"] == {a}
    assert after["dormant"] == {b, c}
    assert after["potential"] == {c}  # a is high value now; c's one order (40 days ago) is within 45 days
    assert segments.compute_segments(s, NOW, {"potential_recent_days": 39})["potential"] == {a}


def test_refresh_records_who_entered_and_who_left(shop):
    s = shop.site1
    a = shop.member(s, "a")
    shop.order(s, a, 100, NOW - 61 * DAY)
    assert segments.refresh_segments(s, NOW, RULES) == {"dormant": [a]}
    assert segments.refresh_segments(s, NOW, RULES) == {}  # nothing new the second time
    with acting_for(s):
        first = MemberSegment.get(MemberSegment.member == a)
    shop.order(s, a, 100, NOW - DAY)  # back: no longer dormant, potential? no, two orders
    assert segments.refresh_segments(s, NOW, RULES) == {}
    with acting_for(s):
        assert MemberSegment.select().where(MemberSegment.member == a).count() == 0
    assert segments.refresh_segments(s, NOW + 61 * DAY, RULES) == {"dormant": [a]}
    with acting_for(s):
        assert MemberSegment.get(MemberSegment.member == a).entered_at > first.entered_at


# -- campaigns ------------------------------------------------------------------------------


def test_entering_a_segment_fires_the_campaign_once_by_mail_and_in_site(shop, smtp):
    s, instance = shop.site1, shop.host.instance
    a, b = shop.member(s, "a"), shop.member(s, "b")
    shop.order(s, a, 100, NOW - 61 * DAY)
    shop.order(s, b, 100, NOW - DAY)
    win_back = campaign(s)
    for _ in range(2):
        campaigns.run_site(s, NOW, instance, shop.config())
    assert len(mails_to(smtp, "a@example.com")) == 1 and inbox_count(s, a) == 1
    assert mails_to(smtp, "b@example.com") == [] and inbox_count(s, b) == 0
    mail = mails_to(smtp, "a@example.com")[0]
    assert mail["Subject"] == "好久不见，a" and "COME-BACK-10" in mail.get_content()
    with acting_for(s):
        delivery = CampaignDelivery.get(CampaignDelivery.campaign == win_back.id)
        assert (delivery.member_id, delivery.email_status, delivery.occasion) == (a, "sent", 0)

    # b goes dormant later: the campaign reaches b then, and a still only once
    campaigns.run_site(s, NOW + 60 * DAY, instance, shop.config())
    assert len(mails_to(smtp, "b@example.com")) == 1 and inbox_count(s, b) == 1
    assert len(mails_to(smtp, "a@example.com")) == 1 and inbox_count(s, a) == 1


def test_an_inactive_campaign_sends_nothing_and_channels_are_respected(shop, smtp):
    s, instance = shop.site1, shop.host.instance
    a = shop.member(s, "a")
    shop.order(s, a, 100, NOW - 61 * DAY)
    off = campaign(s, active=False)
    inbox_only = campaign(s, name="只发站内信", send_email=False)
    campaigns.run_site(s, NOW, instance, shop.config())
    assert smtp.messages == [] and inbox_count(s, a) == 1
    assert campaigns.set_active(s, off.id, True)
    campaigns.run_site(s, NOW, instance, shop.config())
    assert len(smtp.messages) == 1 and inbox_count(s, a) == 2
    counts = dict((c.id, n) for c, n in campaigns.campaigns_with_counts(s))
    assert counts[off.id] == {"total": 1, "sent": 1} and counts[inbox_only.id] == {"total": 1, "": 1}


def test_a_failed_email_is_retried_next_run_without_a_second_in_site_message(shop):
    s, instance = shop.site1, shop.host.instance
    server = SmtpServer()  # not started yet: connections are refused
    instance.smtp_url = server.url
    a = shop.member(s, "a")
    shop.order(s, a, 100, NOW - 61 * DAY)
    win_back = campaign(s)
    campaigns.run_site(s, NOW, instance, shop.config())
    with acting_for(s):
        row = CampaignDelivery.get(CampaignDelivery.campaign == win_back.id)
    assert (row.email_status, row.email_attempts) == ("failed", 1) and "could not send" in row.email_error
    assert inbox_count(s, a) == 1
    server.start()
    try:
        campaigns.run_site(s, NOW + SECOND, instance, shop.config())
        campaigns.run_site(s, NOW + 2 * SECOND, instance, shop.config())
        assert len(mails_to(server, "a@example.com")) == 1
    finally:
        server.stop()
    assert inbox_count(s, a) == 1
    with acting_for(s):
        row = CampaignDelivery.get(CampaignDelivery.campaign == win_back.id)
        assert CampaignDelivery.select().count() == 1
    assert (row.email_status, row.email_attempts, row.sent_at) == ("sent", 2, NOW + SECOND)


def test_an_email_that_keeps_failing_is_given_up(shop):
    s, instance = shop.site1, shop.host.instance
    instance.smtp_url = SmtpServer().url  # never started
    a = shop.member(s, "a")
    shop.order(s, a, 100, NOW - 61 * DAY)
    win_back = campaign(s)
    for i in range(campaigns.MAX_EMAIL_ATTEMPTS + 2):
        campaigns.run_site(s, NOW + i * SECOND, instance, shop.config())
    with acting_for(s):
        row = CampaignDelivery.get(CampaignDelivery.campaign == win_back.id)
    assert (row.email_status, row.email_attempts) == ("gave_up", campaigns.MAX_EMAIL_ATTEMPTS)
    assert inbox_count(s, a) == 1


def test_without_an_smtp_server_the_email_is_skipped_and_the_message_still_arrives(shop):
    s = shop.site1
    a = shop.member(s, "a")
    shop.order(s, a, 100, NOW - 61 * DAY)
    win_back = campaign(s)
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    with acting_for(s):
        assert CampaignDelivery.get(CampaignDelivery.campaign == win_back.id).email_status == "skipped"
    assert inbox_count(s, a) == 1


def test_a_birthday_campaign_fires_on_the_day_once_a_year(shop, smtp):
    s, instance = shop.site1, shop.host.instance
    today = campaigns.local_date(NOW, RULES)
    if (today.month, today.day) == (2, 29):
        pytest.skip("the leap day is covered by test_birthdays_use_the_sites_time_zone_and_leap_days")
    a, b = shop.member(s, "a"), shop.member(s, "b")
    campaigns.set_birthday(s, a, today.replace(year=1990), today=today)
    campaigns.set_birthday(s, b, (today + DAY).replace(year=1991) if (today + DAY).day != 29 or (today + DAY).month != 2
                           else datetime.date(1991, 3, 1), today=today)
    birthday = campaign(s, fires_on="date:birthday", name="生日礼", subject="生日快乐", body="生日券 BDAY")
    for _ in range(2):
        campaigns.run_site(s, NOW, instance, shop.config())
    assert len(mails_to(smtp, "a@example.com")) == 1 and inbox_count(s, a) == 1
    assert inbox_count(s, b) == 0 and mails_to(smtp, "b@example.com") == []
    campaigns.run_site(s, NOW + DAY, instance, shop.config())  # the next day: b's birthday, not a's
    assert (inbox_count(s, a), inbox_count(s, b)) == (1, 1)
    next_year = NOW + 365 * DAY if campaigns.local_date(NOW + 365 * DAY, RULES).day == today.day else NOW + 366 * DAY
    campaigns.run_site(s, next_year, instance, shop.config())
    campaigns.run_site(s, next_year + SECOND, instance, shop.config())
    assert len(mails_to(smtp, "a@example.com")) == 2 and inbox_count(s, a) == 2
    with acting_for(s):
        years = sorted(o for (o,) in CampaignDelivery.select(CampaignDelivery.occasion)
                       .where((CampaignDelivery.campaign == birthday.id) & (CampaignDelivery.member == a)).tuples())
    assert years == [today.year, today.year + 1]


def test_birthdays_use_the_sites_time_zone_and_leap_days():
    rules = dict(RULES)
    late = datetime.datetime(2027, 3, 14, 17, 0)  # 01:00 on 15 March in Beijing
    assert campaigns.local_date(late, rules) == datetime.date(2027, 3, 15)
    assert campaigns.local_date(late, dict(rules, utc_offset_hours=0)) == datetime.date(2027, 3, 14)
    assert campaigns._birthday_keys(datetime.date(2027, 2, 28)) == [228, 229]  # no 29 Feb in 2027
    assert campaigns._birthday_keys(datetime.date(2028, 2, 28)) == [228]
    assert campaigns._birthday_keys(datetime.date(2028, 2, 29)) == [229]


def test_a_dated_campaign_fires_on_its_day_to_every_active_member(shop):
    s = shop.site1
    a, b = shop.member(s, "a"), shop.member(s, "b")
    shop.member(s, "off", status="disabled")
    day = campaigns.local_date(NOW, RULES) + DAY
    campaign(s, fires_on=f"date:{day.isoformat()}", name="双十一")
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    assert inbox_count(s, a) == 0
    campaigns.run_site(s, NOW + DAY, shop.host.instance, shop.config())
    campaigns.run_site(s, NOW + DAY + SECOND, shop.host.instance, shop.config())
    assert (inbox_count(s, a), inbox_count(s, b)) == (1, 1)
    with acting_for(s):
        assert CampaignDelivery.select().count() == 2  # not the disabled member


def test_a_tag_campaign_reaches_tagged_members(shop):
    s = shop.site1
    a, b = shop.member(s, "a"), shop.member(s, "b")
    vip = campaigns.create_tag(s, "VIP")
    assert campaigns.tag_member(s, vip.id, a) is True
    assert campaigns.tag_member(s, vip.id, a) is False
    campaign(s, fires_on="tag:VIP", name="VIP 专享", send_email=False)
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    assert (inbox_count(s, a), inbox_count(s, b)) == (1, 0)
    assert campaigns.tags(s)[0][1] == 1 and campaigns.member_tags(s, [a, b]) == {a: ["VIP"]}
    assert campaigns.untag_member(s, vip.id, a) and campaigns.tagged_members(s, vip.id) == []


@pytest.mark.parametrize("fires_on", ["segment:vip", "tag:nope", "date:2026-02-30", "date:tomorrow", "always", ""])
def test_bad_triggers_are_refused(shop, fires_on):
    with pytest.raises(CrmError):
        campaign(shop.site1, fires_on=fires_on)


def test_campaign_fields_are_checked(shop):
    with pytest.raises(CrmError):
        campaign(shop.site1, subject="两行\n标题")
    with pytest.raises(CrmError):
        campaign(shop.site1, send_email=False, send_inbox=False)
    with pytest.raises(CrmError):
        campaigns.create_tag(shop.site1, "有 空格")
    campaigns.create_tag(shop.site1, "VIP")
    with pytest.raises(CrmError):
        campaigns.create_tag(shop.site1, "VIP")


# -- tenant isolation -----------------------------------------------------------------------


def test_sites_never_see_each_others_members_tags_or_campaigns(shop, smtp):
    s1, s2, instance = shop.site1, shop.site2, shop.host.instance
    a1, a2 = shop.member(s1, "a"), shop.member(s2, "a")  # the same email on two shops: two members
    shop.order(s1, a1, 100, NOW - 61 * DAY)
    shop.order(s2, a2, 90000, NOW - DAY)
    assert segments.compute_segments(s1, NOW, RULES)["dormant"] == {a1}
    assert segments.compute_segments(s2, NOW, RULES)["dormant"] == set()
    assert segments.compute_segments(s2, NOW, RULES)["high_value"] == {a2}
    campaign(s1)
    campaigns.run_site(s1, NOW, instance, shop.config("shop1"))
    campaigns.run_site(s2, NOW, instance, shop.config("shop2"))
    assert (inbox_count(s1, a1), inbox_count(s2, a2)) == (1, 0)
    assert len(mails_to(smtp, "a@example.com")) == 1
    tag1 = campaigns.create_tag(s1, "VIP")
    campaigns.create_tag(s2, "VIP")  # the same name on another site is another tag
    with pytest.raises(CrmError):
        campaigns.tag_member(s1, tag1.id, a2)  # another site's member
    with pytest.raises(CrmError):
        campaigns.tag_member(s2, tag1.id, a2)  # another site's tag
    assert campaigns.campaigns_with_counts(s2) == []
    assert segments.segment_counts(s2) == {"high_value": 1, "potential": 0, "dormant": 0, "new": 0}
    assert campaigns.mark_read(s2, a2) == 0 and campaigns.mark_read(s1, a2) == 0
    with pytest.raises(CrmError):
        campaigns.set_birthday(s2, a1, datetime.date(1990, 1, 1))


def test_the_job_runs_only_sites_that_enable_the_plugin(host):
    shop = Shop(host, plugins=())
    host.registry.update("shop1", plugins=["crm"])
    a1, a2 = shop.member(shop.site1, "a"), shop.member(shop.site2, "a")
    shop.order(shop.site1, a1, 100, NOW - 61 * DAY)
    shop.order(shop.site2, a2, 100, NOW - 61 * DAY)
    campaign(shop.site1)
    campaign(shop.site2)
    results = campaigns.run_all(host.instance, NOW)
    assert set(results) == {"shop1"} and results["shop1"]["reached"] == 1
    assert (inbox_count(shop.site1, a1), inbox_count(shop.site2, a2)) == (1, 0)


# -- concurrency on every database ----------------------------------------------------------


def test_two_concurrent_runs_reach_each_member_once(db_host):
    server = SmtpServer().start()
    db_host.instance.smtp_url = server.url
    try:
        shop = Shop(db_host)
        s = shop.site1
        people = [shop.member(s, f"m{i}") for i in range(12)]
        for p in people:
            shop.order(s, p, 100, NOW - 61 * DAY)
        campaign(s)
        config = shop.config()
        gate = threading.Barrier(2)
        errors = []

        def run():
            try:
                gate.wait(timeout=30)
                campaigns.run_site(s, NOW, db_host.instance, config)
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(exc)
            finally:
                database.close()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        with acting_for(s):
            assert CampaignDelivery.select().count() == len(people)
            assert Message.select().count() == len(people)
            assert MemberSegment.select().where(MemberSegment.segment == "dormant").count() == len(people)
        assert sorted(r for _, rcpts, _ in server.messages for r in rcpts) == sorted(
            f"m{i}@example.com" for i in range(12))
    finally:
        server.stop()
        release_connections()


# -- pages ----------------------------------------------------------------------------------


def test_member_pages_need_a_login_and_show_only_the_members_own_messages(shop, client_for):
    s = shop.site1
    a = shop.member(s, "alice")
    shop.member(s, "bob")
    shop.order(s, a, 100, NOW - 61 * DAY)
    campaign(s, body="<script>alert(1)</script> 券码 XYZ", send_email=False)
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    with acting_for(s):
        mine = Message.get(Message.member == a)

    guest = client_for("shop1.localhost")
    for path in ("/member/messages", "/member/profile"):
        response = guest.get(path)
        assert response.status_code == 302 and "/member/login" in response.headers["Location"]

    alice = client_for("shop1.localhost")
    sign_in_member(alice, "alice@example.com", PASSWORD)
    page = alice.get("/member/messages")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "好久不见，alice" in html and "&lt;script&gt;" in html and "<script>alert" not in html
    assert "1 条未读" in html

    account = alice.get("/member/").get_data(as_text=True)  # the account page links the inbox
    assert 'data-section="crm_inbox"' in account and "/member/messages" in account

    bob = client_for("shop1.localhost")
    sign_in_member(bob, "bob@example.com", PASSWORD)
    assert "好久不见" not in bob.get("/member/messages").get_data(as_text=True)
    token = csrf_token(bob.get("/member/profile"))
    bob.post("/member/messages/read", data={"csrf_token": token, "message_id": str(mine.id)})
    with acting_for(s):
        assert Message.get_by_id(mine.id).read_at is None  # bob cannot mark alice's message
    assert bob.post("/member/messages/read", data={"message_id": str(mine.id)}).status_code == 400  # no token

    token = csrf_token(alice.get("/member/messages"))
    assert alice.post("/member/messages/read", data={"csrf_token": token, "message_id": str(mine.id)}).status_code == 302
    with acting_for(s):
        assert Message.get_by_id(mine.id).read_at is not None
    assert "条未读" not in alice.get("/member/messages").get_data(as_text=True)

    # the other shop's pages know nothing of alice
    other = client_for("shop2.localhost")
    assert other.get("/member/messages").status_code == 302


def test_a_member_sets_their_birthday_on_the_profile_page(shop, client_for):
    s = shop.site1
    a = shop.member(s, "alice")
    client = client_for("shop1.localhost")
    sign_in_member(client, "alice@example.com", PASSWORD)
    page = client.get("/member/profile")
    assert page.status_code == 200
    response = client.post("/member/profile", data={"csrf_token": csrf_token(page), "birthday": "1995-08-16"})
    assert response.status_code == 302
    assert campaigns.birthday_of(s, a) == datetime.date(1995, 8, 16)
    assert 'value="1995-08-16"' in client.get("/member/profile").get_data(as_text=True)
    page = client.get("/member/profile")
    bad = client.post("/member/profile", data={"csrf_token": csrf_token(page), "birthday": "2999-01-01"})
    assert bad.status_code == 200 and "请填写真实的生日" in bad.get_data(as_text=True)
    bad = client.post("/member/profile", data={"csrf_token": csrf_token(page), "birthday": "16/08/1995"})
    assert "年-月-日" in bad.get_data(as_text=True)
    assert campaigns.birthday_of(s, a) == datetime.date(1995, 8, 16)
    assert client.post("/member/profile", data={"birthday": "1990-01-01"}).status_code == 400  # no CSRF token


def test_a_site_without_the_plugin_has_no_crm_pages(host, client_for):
    Shop(host, plugins=())
    client = client_for("shop1.localhost")
    assert client.get("/member/messages").status_code == 404
    assert client.get("/admin/crm/").status_code == 404


# -- the owner's console --------------------------------------------------------------------


def _console(shop, client_for, slug="shop1"):
    site_id = shop.site1 if slug == "shop1" else shop.site2
    accounts.create_account(site_id, f"owner-{slug}", PASSWORD)
    return sign_in_console(client_for(f"{slug}.localhost"), f"owner-{slug}", PASSWORD)


def test_the_owner_console_lists_segments_and_manages_tags_and_campaigns(shop, client_for):
    s = shop.site1
    a = shop.member(s, "alice")
    shop.order(s, a, 100, NOW - 61 * DAY)
    segments.refresh_segments(s, NOW, RULES)
    assert client_for("shop1.localhost").get("/admin/crm/").status_code == 302  # signed out: to the login
    console = _console(shop, client_for)
    page = console.get("/admin/crm/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<a href="/admin/crm/">会员营销</a>' in html  # the console menu
    assert 'id="segment-dormant"' in html and ">1</td>" in html.split('id="segment-dormant"')[1].split("</tr>")[0]
    assert "alice@example.com" in console.get("/admin/crm/segment/dormant").get_data(as_text=True)
    assert console.get("/admin/crm/segment/nope").status_code == 404

    token = csrf_token(page)
    assert console.post("/admin/crm/tags", data={"csrf_token": token, "name": "VIP"}).status_code == 302
    (tag, _), = campaigns.tags(s)
    assert console.post(f"/admin/crm/tag/{tag.id}", data={"csrf_token": token, "email": "alice@example.com"}
                        ).status_code == 302
    assert campaigns.tagged_members(s, tag.id) == [a]
    assert "alice@example.com" in console.get(f"/admin/crm/tag/{tag.id}").get_data(as_text=True)
    assert console.post(f"/admin/crm/tag/{tag.id}/remove/{a}", data={"csrf_token": token}).status_code == 302
    assert campaigns.tagged_members(s, tag.id) == []

    response = console.post("/admin/crm/campaigns", data={
        "csrf_token": token, "name": "召回", "fires_on": "segment:dormant", "subject": "回来看看",
        "body": "券码 BACK", "send_inbox": "y"})
    assert response.status_code == 302
    (item, counts), = campaigns.campaigns_with_counts(s)
    assert (item.active, item.send_email, item.send_inbox) == (False, False, True)
    bad = console.post("/admin/crm/campaigns", data={"csrf_token": token, "name": "x", "fires_on": "whenever",
                                                      "subject": "y", "send_inbox": "y"})
    assert bad.status_code == 400 and "触发条件须为" in bad.get_data(as_text=True)
    assert console.post(f"/admin/crm/campaign/{item.id}/activate", data={"csrf_token": token}).status_code == 302
    assert console.post("/admin/crm/run", data={"csrf_token": token}).status_code == 302
    assert inbox_count(s, a) == 1
    html = console.get("/admin/crm/").get_data(as_text=True)
    assert 'data-active="1"' in html and '<td class="num">1</td>' in html.split(f'id="campaign-{item.id}"')[1]
    assert console.post("/admin/crm/tags", data={"name": "NOCSRF"}).status_code == 400
    assert [t.name for t, _ in campaigns.tags(s)] == ["VIP"]

    # the other shop's owner sees none of it and cannot touch it
    other = _console(shop, client_for, "shop2")
    assert "召回" not in other.get("/admin/crm/").get_data(as_text=True)
    assert other.get(f"/admin/crm/tag/{tag.id}").status_code == 404
    token2 = csrf_token(other.get("/admin/crm/"))
    assert other.post(f"/admin/crm/campaign/{item.id}/deactivate", data={"csrf_token": token2}).status_code == 404
    assert campaigns.campaigns_with_counts(s)[0][0].active is True


def test_the_plugin_declares_its_settings_and_a_job_every_30_minutes(host):
    import kamengsite_crm
    from kamengsite import jobs

    schema = kamengsite_crm.plugin_settings_schema()
    assert all("title" in p and "default" in p for p in schema["properties"].values())

    shop = Shop(host)
    a = shop.member(shop.site1, "a")
    shop.order(shop.site1, a, 100, utcnow() - 61 * DAY)
    campaign(shop.site1, send_email=False)
    queue = jobs.make_jobs(host.instance, immediate=True)
    (task_class,) = [t for t in queue.huey._registry._periodic_tasks if t.__name__ == "crm_run"]
    task = task_class()
    assert task.validate_datetime(datetime.datetime(2026, 1, 1, 0, 30))
    assert not task.validate_datetime(datetime.datetime(2026, 1, 1, 0, 15))
    result = queue.huey.execute(task)
    assert result["shop1"]["reached"] == 1 and inbox_count(shop.site1, a) == 1


def test_the_member_page_section_links_the_inbox_with_the_unread_count(shop):
    import kamengsite_crm

    s = shop.site1
    a = shop.member(s, "alice")
    shop.order(s, a, 100, NOW - 61 * DAY)
    campaign(s, send_email=False)
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    (section,) = kamengsite_crm.theme_sections(shop.config())
    assert section.pages == ("member",)
    app = shop.host.app_for("shop1")
    with app.test_request_context("/member/", base_url="http://shop1.localhost"):
        html = str(section.render({"page": "member", "member_id": a}))
        assert '<a href="/member/messages">站内信（1 条未读）</a>' in html and "/member/profile" in html
        assert str(section.render({"page": "member", "member_id": None})) == ""


# -- languages -------------------------------------------------------------------------------


def test_the_console_and_member_pages_speak_english_on_request(shop, client_for):
    s = shop.site1
    a = shop.member(s, "alice")
    shop.order(s, a, 100, NOW - 61 * DAY)
    campaign(s, send_email=False)
    campaigns.run_site(s, NOW, shop.host.instance, shop.config())
    segments.refresh_segments(s, NOW, RULES)

    console = _console(shop, client_for)
    chinese = console.get("/admin/crm/").get_data(as_text=True)
    assert "<h1>会员营销</h1>" in chinese and "自动分群" in chinese and "沉睡" in chinese
    english = console.get("/admin/crm/?lang=en").get_data(as_text=True)
    assert "<h1>Member marketing</h1>" in english and "Automatic segments" in english and "Dormant" in english
    assert "会员营销" not in english and "自动分群" not in english and "营销活动" not in english
    members_page = console.get("/admin/crm/segment/dormant").get_data(as_text=True)  # the cookie keeps English
    assert "Segment: Dormant" in members_page and "Back to member marketing" in members_page
    assert "返回会员营销" not in members_page

    alice = client_for("shop1.localhost")
    sign_in_member(alice, "alice@example.com", PASSWORD)
    assert "全部标为已读" in alice.get("/member/messages").get_data(as_text=True)
    inbox = alice.get("/member/messages?lang=en").get_data(as_text=True)
    assert "Messages (1 unread)" in inbox and "Mark all as read" in inbox and "Back to my account" in inbox
    assert "站内信" not in inbox and "全部标为已读" not in inbox
    profile = alice.get("/member/profile").get_data(as_text=True)
    assert "<h1>My profile</h1>" in profile and "我的资料" not in profile
