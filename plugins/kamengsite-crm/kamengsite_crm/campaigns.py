"""Tags, birthdays, in-site messages and the campaigns that reach members by email and inbox.

A campaign fires on ``segment:<name>`` (every member in that segment — so also the members
who enter it later), ``tag:<name>`` (every member with the owner's tag), ``date:YYYY-MM-DD``
(every active member, on that day) or ``date:birthday`` (members whose birthday is today;
once a year). Dates are the site's local dates (``utc_offset_hours``, Beijing time by default).

At most once per member per campaign (per year for birthdays): the delivery row is inserted
first, with the in-site message in the same transaction, under the unique key
(campaign, member, occasion) — a second worker's insert fails and it moves on. The email goes
out after that commit; a failure is recorded on the row (``failed``) and the next run sends it
again (the in-site message is never written twice). ``gave_up`` after ``MAX_EMAIL_ATTEMPTS``.
"""

from __future__ import annotations

import datetime
import logging
import re

import peewee
from peewee import fn

from kamengsite import mail
from kamengsite.db import database, retry_transient
from kamengsite.i18n import _, _l
from kamengsite.members import Member
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import acting_for, all_sites

from .models import SEGMENTS, Campaign, CampaignDelivery, MemberProfile, MemberSegment, MemberTag, Message, Tag
from .segments import load_rules, refresh_segments

log = logging.getLogger(__name__)

MAX_EMAIL_ATTEMPTS = 5
STALE_SENDING = datetime.timedelta(hours=1)  # a "sending" row older than this: its worker died; send again
NAME_MAX = 60
SUBJECT_MAX = 120
BODY_MAX = 2000
TAG_MAX = 32
TAG_RE = re.compile(r"^[^\s:<>\"'&]{1,32}$")
DATE_RE = re.compile(r"^date:(\d{4})-(\d{2})-(\d{2})$")
CHUNK = 500
EMAIL_LABELS = {"": _l("No email"), "sending": _l("Sending"), "sent": _l("Sent"), "failed": _l("Failed, retrying next time"),
                "skipped": _l("Not sent (no mail server configured)"), "gave_up": _l("Failed repeatedly, given up")}


class CrmError(ValueError):
    """What the owner asked cannot be done (the message is shown to them, in Chinese)."""


# -- time -----------------------------------------------------------------------------------


def local_date(now: datetime.datetime, rules: dict) -> datetime.date:
    """The site's calendar date at ``now`` (naive UTC)."""
    return (now + datetime.timedelta(hours=rules["utc_offset_hours"])).date()


def _birthday_keys(today: datetime.date) -> list[int]:
    """The ``birth_md`` values celebrated on ``today``: 29 February falls on the 28th in other years."""
    keys = [today.month * 100 + today.day]
    if (today.month, today.day) == (2, 28):
        try:
            datetime.date(today.year, 2, 29)
        except ValueError:
            keys.append(229)
    return keys


# -- tags -----------------------------------------------------------------------------------


def check_tag_name(name: str) -> str:
    name = (name or "").strip()
    if not TAG_RE.match(name):
        raise CrmError(_("A tag name is 1 to %(max)s characters, without spaces, colons or quotes", max=TAG_MAX))
    return name


def create_tag(site_id: int, name: str) -> Tag:
    name = check_tag_name(name)
    with acting_for(site_id):
        try:
            with database.atomic():
                return Tag.create(name=name)
        except peewee.IntegrityError:
            raise CrmError(_("The tag “%(name)s” already exists", name=name)) from None


def delete_tag(site_id: int, tag_id: int) -> bool:
    with acting_for(site_id):
        with database.atomic():
            MemberTag.delete().where(MemberTag.tag == tag_id).execute()
            return bool(Tag.delete().where(Tag.id == tag_id).execute())


def tags(site_id: int) -> list[tuple[Tag, int]]:
    """The site's tags with how many members carry each."""
    with acting_for(site_id):
        counts = dict(MemberTag.select(MemberTag.tag, fn.COUNT(MemberTag.id)).group_by(MemberTag.tag).tuples())
        return [(t, int(counts.get(t.id, 0))) for t in Tag.select().order_by(Tag.name)]


def tag_member(site_id: int, tag_id: int, member_id: int) -> bool:
    """Tag a member of this site; False when they already had it. CrmError for another site's tag or member."""
    with acting_for(site_id):
        if Tag.get_or_none(Tag.id == tag_id) is None:
            raise CrmError(_("No such tag"))
        if Member.get_or_none(Member.id == member_id) is None:
            raise CrmError(_("This site has no such member"))
        if MemberTag.select().where((MemberTag.tag == tag_id) & (MemberTag.member == member_id)).exists():
            return False
        try:
            with database.atomic():
                MemberTag.create(tag=tag_id, member=member_id)
        except peewee.IntegrityError:  # tagged concurrently
            return False
        return True


def untag_member(site_id: int, tag_id: int, member_id: int) -> bool:
    with acting_for(site_id):
        return bool(MemberTag.delete().where((MemberTag.tag == tag_id) & (MemberTag.member == member_id)).execute())


def tagged_members(site_id: int, tag_id: int, limit: int = 500) -> list[int]:
    with acting_for(site_id):
        return [m for (m,) in MemberTag.select(MemberTag.member).where(MemberTag.tag == tag_id)
                .order_by(MemberTag.id.desc()).limit(limit).tuples()]


def member_tags(site_id: int, member_ids) -> dict[int, list[str]]:
    ids = list(member_ids)
    if not ids:
        return {}
    found: dict[int, list[str]] = {}
    with acting_for(site_id):
        rows = (MemberTag.select(MemberTag.member, Tag.name).join(Tag, on=(Tag.id == MemberTag.tag))
                .where(MemberTag.member.in_(ids)).order_by(Tag.name).tuples())
        for member_id, name in rows:
            found.setdefault(member_id, []).append(name)
    return found


# -- birthdays ------------------------------------------------------------------------------


def birthday_of(site_id: int, member_id: int) -> datetime.date | None:
    with acting_for(site_id):
        profile = MemberProfile.get_or_none(MemberProfile.member == member_id)
    return profile.birthday if profile is not None else None


def set_birthday(site_id: int, member_id: int, birthday: datetime.date | None, today: datetime.date | None = None):
    """Set (or clear with None) the member's birthday; CrmError for a date in the future or before 1900."""
    today = today or datetime.date.today()
    if birthday is not None and not (datetime.date(1900, 1, 1) <= birthday <= today):
        raise CrmError(_("Please enter a real birthday"))
    md = birthday.month * 100 + birthday.day if birthday is not None else None
    with acting_for(site_id):
        if Member.get_or_none(Member.id == member_id) is None:
            raise CrmError(_("This site has no such member"))

        def save():
            with database.atomic():
                changed = MemberProfile.update(birthday=birthday, birth_md=md, updated_at=utcnow()).where(
                    MemberProfile.member == member_id).execute()
                if not changed:
                    MemberProfile.insert(member=member_id, birthday=birthday, birth_md=md,
                                         updated_at=utcnow()).on_conflict_ignore().execute()

        retry_transient(save)


# -- in-site messages -----------------------------------------------------------------------


def inbox(site_id: int, member_id: int, limit: int = 100) -> list[Message]:
    with acting_for(site_id):
        return list(Message.select().where(Message.member == member_id)
                    .order_by(Message.created_at.desc(), Message.id.desc()).limit(limit))


def unread_count(site_id: int, member_id: int) -> int:
    with acting_for(site_id):
        return Message.select().where((Message.member == member_id) & Message.read_at.is_null()).count()


def mark_read(site_id: int, member_id: int, message_id: int | None = None) -> int:
    """Mark one of the member's messages (or all of them) read; another member's message is never touched."""
    query = (Message.member == member_id) & Message.read_at.is_null()
    if message_id is not None:
        query &= Message.id == message_id
    with acting_for(site_id):
        return Message.update(read_at=utcnow()).where(query).execute()


# -- campaigns ------------------------------------------------------------------------------


def check_trigger(site_id: int, text: str) -> str:
    """The normalised trigger, or CrmError saying what is wrong."""
    text = (text or "").strip()
    kind, _sep, arg = text.partition(":")
    if kind == "segment" and arg in SEGMENTS:
        return text
    if kind == "tag":
        with acting_for(site_id):
            if Tag.get_or_none(Tag.name == arg) is None:
                raise CrmError(_("There is no tag named “%(name)s”", name=arg))
        return text
    if text == "date:birthday":
        return text
    match = DATE_RE.match(text)
    if match:
        try:
            datetime.date(*map(int, match.groups()))
        except ValueError:
            raise CrmError(_("No such date")) from None
        return text
    raise CrmError(_("The trigger must be segment:<segment>, tag:<tag name>, date:birthday or date:YYYY-MM-DD"))


def create_campaign(site_id: int, *, name: str, fires_on: str, subject: str, body: str, send_email: bool = True,
                    send_inbox: bool = True, active: bool = False) -> Campaign:
    name, subject, body = (name or "").strip(), (subject or "").strip(), (body or "").strip()
    if not 0 < len(name) <= NAME_MAX:
        raise CrmError(_("A campaign name is 1 to %(max)s characters", max=NAME_MAX))
    if not 0 < len(subject) <= SUBJECT_MAX or "\n" in subject or "\r" in subject:
        raise CrmError(_("The subject is 1 to %(max)s characters, on one line", max=SUBJECT_MAX))
    if len(body) > BODY_MAX:
        raise CrmError(_("The message is at most %(max)s characters", max=BODY_MAX))
    if not (send_email or send_inbox):
        raise CrmError(_("Choose at least one way to send (email or in-site message)"))
    fires_on = check_trigger(site_id, fires_on)
    with acting_for(site_id):
        return Campaign.create(name=name, fires_on=fires_on, subject=subject, body=body, send_email=bool(send_email),
                               send_inbox=bool(send_inbox), active=bool(active))


def set_active(site_id: int, campaign_id: int, active: bool) -> bool:
    with acting_for(site_id):
        return bool(Campaign.update(active=bool(active)).where(Campaign.id == campaign_id).execute())


def campaigns_with_counts(site_id: int) -> list[tuple[Campaign, dict]]:
    """Every campaign, newest first, with ``{"total": n, <email_status>: n, …}`` of its deliveries."""
    with acting_for(site_id):
        rows = (CampaignDelivery.select(CampaignDelivery.campaign, CampaignDelivery.email_status,
                                        fn.COUNT(CampaignDelivery.id))
                .group_by(CampaignDelivery.campaign, CampaignDelivery.email_status).tuples())
        counts: dict[int, dict] = {}
        for campaign_id, status, n in rows:
            entry = counts.setdefault(campaign_id, {"total": 0})
            entry[status] = int(n)
            entry["total"] += int(n)
        return [(c, counts.get(c.id, {"total": 0})) for c in Campaign.select().order_by(Campaign.id.desc())]


def _active_ids(query):
    return query.join(Member, on=(Member.id == query.model.member)).where(Member.status == "active")


def targets(site_id: int, campaign: Campaign, now: datetime.datetime, rules: dict) -> tuple[int, list[int]] | None:
    """``(occasion, member ids)`` the campaign is due for now, or None when it is not its day."""
    kind, _sep, arg = campaign.fires_on.partition(":")
    today = local_date(now, rules)
    with acting_for(site_id):
        if kind == "segment":
            query = _active_ids(MemberSegment.select(MemberSegment.member).where(MemberSegment.segment == arg))
            return 0, [m for (m,) in query.tuples()]
        if kind == "tag":
            query = _active_ids(MemberTag.select(MemberTag.member).join_from(MemberTag, Tag, on=(Tag.id == MemberTag.tag))
                                .where(Tag.name == arg))
            return 0, [m for (m,) in query.tuples()]
        if campaign.fires_on == "date:birthday":
            query = _active_ids(MemberProfile.select(MemberProfile.member)
                                .where(MemberProfile.birth_md.in_(_birthday_keys(today))))
            return today.year, [m for (m,) in query.tuples()]
        match = DATE_RE.match(campaign.fires_on)
        if match and datetime.date(*map(int, match.groups())) == today:
            return 0, [m for (m,) in Member.select(Member.id).where(Member.status == "active").tuples()]
    return None


def _personal(text: str, member: Member, site_name: str) -> str:
    return text.replace("{name}", member.display_name or "").replace("{site}", site_name or "")


def deliver(site_id: int, campaign: Campaign, member_ids, occasion: int, now: datetime.datetime,
            instance=None, site_name: str = "") -> int:
    """Reach each member once for (campaign, occasion); returns how many were reached by this call."""
    with acting_for(site_id):
        done = {m for (m,) in CampaignDelivery.select(CampaignDelivery.member)
                .where((CampaignDelivery.campaign == campaign.id) & (CampaignDelivery.occasion == occasion)).tuples()}
    todo = sorted(set(member_ids) - done)
    reached = 0
    for i in range(0, len(todo), CHUNK):
        with acting_for(site_id):
            people = list(Member.select(Member.id, Member.email, Member.display_name)
                          .where(Member.id.in_(todo[i:i + CHUNK])))
        for member in people:
            delivery_id = _claim(site_id, campaign, member, occasion, now, site_name)
            if delivery_id is None:
                continue  # another run reached this member first
            reached += 1
            if campaign.send_email:
                _send_email(site_id, delivery_id, campaign, member, now, instance, site_name)
    return reached


def _claim(site_id, campaign, member, occasion, now, site_name) -> int | None:
    """Insert the delivery (and the in-site message) in one transaction; None if it already existed."""

    def insert():
        with acting_for(site_id), database.atomic():
            delivery_id = CampaignDelivery.insert(
                campaign=campaign.id, member=member.id, occasion=occasion, created_at=now,
                email_status="sending" if campaign.send_email else "",
                email_claimed_at=now if campaign.send_email else None).execute()
            if campaign.send_inbox:
                Message.insert(member=member.id, campaign=campaign.id,
                               subject=_personal(campaign.subject, member, site_name)[:SUBJECT_MAX],
                               body=_personal(campaign.body, member, site_name), created_at=now).execute()
            return delivery_id

    try:
        return retry_transient(insert)
    except peewee.IntegrityError:
        return None


def _send_email(site_id, delivery_id, campaign, member, now, instance, site_name) -> str:
    """Send one delivery's email (the row is ours: status ``sending``) and record the outcome."""
    status, error = "sent", ""
    try:
        if instance is None or mail.smtp_settings(instance) is None:
            status = "skipped"
        else:
            message = mail.build_message(instance, to=member.email,
                                         subject=_personal(campaign.subject, member, site_name),
                                         body=_personal(campaign.body, member, site_name) + "\n",
                                         from_name=site_name)
            if not mail.send_message(instance, message):
                status = "skipped"
    except Exception as exc:  # noqa: BLE001 - MailError or a bad address: recorded, retried next run
        status, error = "failed", f"{type(exc).__name__}: {exc}"[:255]
        log.warning("crm: campaign %s email to member %s failed: %s", campaign.id, member.id, error)
    with acting_for(site_id):
        row = CampaignDelivery.get_by_id(delivery_id)
        attempts = row.email_attempts + (0 if status == "skipped" else 1)
        if status == "failed" and attempts >= MAX_EMAIL_ATTEMPTS:
            status = "gave_up"
        CampaignDelivery.update(email_status=status, email_attempts=attempts, email_error=error,
                                sent_at=now if status == "sent" else None).where(
            (CampaignDelivery.id == delivery_id) & (CampaignDelivery.email_status == "sending")).execute()
    return status


def retry_emails(site_id: int, now: datetime.datetime, instance=None, site_name: str = "") -> int:
    """Send again the emails of active campaigns that failed (or whose sender died); returns how many were tried."""
    stale = now - STALE_SENDING
    D = CampaignDelivery  # noqa: N806
    with acting_for(site_id):
        rows = list(D.select(D.id, D.email_status, D.email_claimed_at, D.campaign, D.member)
                    .join(Campaign, on=(Campaign.id == D.campaign))
                    .where(Campaign.active & Campaign.send_email
                           & ((D.email_status == "failed") | ((D.email_status == "sending") & (D.email_claimed_at < stale))))
                    .order_by(D.id).limit(CHUNK))
    tried = 0
    for row in rows:
        guard = (D.id == row.id) & (D.email_status == row.email_status)
        if row.email_status == "sending":
            guard &= D.email_claimed_at == row.email_claimed_at
        with acting_for(site_id):
            if not D.update(email_status="sending", email_claimed_at=now).where(guard).execute():
                continue  # another worker took it
            campaign = Campaign.get_by_id(row.campaign_id)
            member = Member.get_or_none(Member.id == row.member_id)
        if member is None:
            continue
        _send_email(site_id, row.id, campaign, member, now, instance, site_name)
        tried += 1
    return tried


# -- the job --------------------------------------------------------------------------------


def run_site(site_id: int, now: datetime.datetime | None = None, instance=None, site=None) -> dict:
    """Refresh the site's segments, retry failed emails, then fire its active campaigns."""
    from kamengsite import hooks, jobs

    now = now or utcnow()
    if site is None:
        site = hooks.site_config(site_id)
    if instance is None:
        instance = jobs.current_instance()
    rules = load_rules(site)
    site_name = getattr(site, "name", "") or ""
    entered = refresh_segments(site_id, now, rules)
    retried = retry_emails(site_id, now, instance, site_name)
    reached = 0
    with acting_for(site_id):
        active = list(Campaign.select().where(Campaign.active).order_by(Campaign.id))
    for campaign in active:
        due = targets(site_id, campaign, now, rules)
        if due is not None:
            occasion, member_ids = due
            reached += deliver(site_id, campaign, member_ids, occasion, now, instance, site_name)
    return {"entered": {k: len(v) for k, v in entered.items()}, "retried": retried, "reached": reached}


def run_all(instance, now: datetime.datetime | None = None) -> dict[str, dict]:
    """``run_site`` for every site that enables the plugin (the periodic job); a failing site is logged and skipped."""
    from kamengsite import opening

    registry = opening.registry_for(instance)
    with all_sites():
        sites = list(Site.select(Site.id, Site.slug).tuples())
    results = {}
    for site_id, slug in sites:
        try:
            config = registry.load(slug)
            if "crm" not in config.plugins or not config.enabled:
                continue
            results[slug] = run_site(site_id, now, instance, config)
        except Exception:  # noqa: BLE001 - one broken site must not stop the others
            log.exception("crm: site %s's run failed", slug)
    return results
