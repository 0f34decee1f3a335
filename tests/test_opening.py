"""Opening sub-sites (kamengsite/opening.py, /open, the operator's /admin/sites/applications):
apply → approve → the site serves and its owner signs in; reject; names held once; self-service
paid opening charging exactly once, even for concurrent double submits, on every backend."""

from __future__ import annotations

import datetime
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kamengsite import ledger, opening, opening_routes
from kamengsite.accounts import Account, create_account, verify_password
from kamengsite.errors import KamengsiteError
from kamengsite.levels import get_level, save_level, seed_default_levels
from kamengsite.models import Site
from kamengsite.opening import OpeningError, SiteApplication
from kamengsite.tenancy import acting_for
from kamengsite.testing import SiteClient

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
SUBMIT_KEY = re.compile(r'name="submit_key" type="hidden" value="([^"]+)"|id="submit_key" name="submit_key" '
                        r'type="hidden" value="([^"]+)"')
PASSWORD = "owner-pass-12345"
OPERATOR_PASSWORD = "correct horse battery staple"
MAIN = "main.localhost"
NOW = datetime.datetime(2030, 1, 1, 12, 0, 0)
MEMBER = 7  # a member id of the main site (the wallet is a ledger account; the member row is not needed)
BRONZE_FEE = 9900  # the seeded 青铜 level: ¥99.00 to open, 365 days


# -- helpers (used by test_site_lifecycle.py and test_domains.py too) -------------------------------


def text(response) -> str:
    return response.get_data(as_text=True)


def token(response) -> str:
    return TOKEN.search(text(response)).group(1)


def page_submit_key(response) -> str:
    match = re.search(r'<input[^>]*name="submit_key"[^>]*value="([^"]+)"', text(response))
    return match.group(1)


def applicant(slug="shop9", **overrides) -> dict:
    values = dict(slug=slug, name="九号小店", template="gaming", level="bronze", contact="owner@example.com",
                  real_name="张三", business_info="", username="owner", password=PASSWORD)
    values.update(overrides)
    return values


def new_key() -> str:
    return secrets.token_urlsafe(24)


def open_site(registry, slug, level="silver", now=None, **fields) -> SiteApplication:
    """Apply and approve: a sub-site at ``level`` owned by ``owner`` / PASSWORD."""
    application = opening.submit_application(registry, applicant(slug, level=level, **fields), submit_key=new_key())
    return opening.approve(registry, application.id, now=now)


def fund(acct, amount: int, reference: str):
    """Money arriving from outside (a gateway) into ``acct``."""
    return ledger.post("adjustment", reference, [(acct, amount), (ledger.account("channel_clearing", channel="test"),
                                                                  -amount)])


def wallet(registry, member=MEMBER):
    main = Site.get(Site.slug == registry.main_site)
    return ledger.account("member_wallet", site=main.id, member=member)


def revenue() -> int:
    return ledger.balance(ledger.account("platform_revenue"))


def owner_login(client, username="owner", password=PASSWORD):
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"csrf_token": token(page), "username": username, "password": password})


def operator_console(host):
    main = Site.get(Site.slug == "main")
    create_account(main.id, "boss", OPERATOR_PASSWORD)
    client = SiteClient(host, MAIN)
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"csrf_token": token(page), "username": "boss",
                                                 "password": OPERATOR_PASSWORD})
    assert response.status_code == 302
    return client


@pytest.fixture
def levels(host):
    seed_default_levels()
    return host


@pytest.fixture
def member_signed_in(monkeypatch):
    """A signed-in main-site member for /open (the member pages are not what is tested here)."""
    monkeypatch.setattr(opening_routes, "signed_in_member_id", lambda: MEMBER)
    return MEMBER


def form_data(page, **overrides) -> dict:
    data = {"csrf_token": token(page), "submit_key": page_submit_key(page), **applicant(), "password2": PASSWORD}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# -- apply → approve ----------------------------------------------------------------------------


def test_apply_approve_then_the_site_serves_its_template_and_the_owner_signs_in(levels, client_for):
    host = levels
    main = client_for(MAIN)
    page = main.get("/open")
    assert page.status_code == 200 and "开通分站" in text(page)
    assert "main" not in re.findall(r'<option value="([a-z]+)"', text(page))  # the main site's template is not offered
    response = main.post("/open", data=form_data(page))
    assert response.status_code == 302
    application = SiteApplication.get(SiteApplication.slug == "shop9")
    assert response.headers["Location"].endswith(f"/open/status/{application.submit_key}")
    assert (application.status, application.level, application.template, application.real_name) == (
        "requested", "bronze", "gaming", "张三")
    # Hashed at once: the plain password is in no column of the row.
    assert application.password_hash.startswith("scrypt$") and verify_password(PASSWORD, application.password_hash)
    assert not any(PASSWORD in str(value) for value in application.__data__.values())
    assert "待审核" in text(main.get(f"/open/status/{application.submit_key}"))
    assert client_for("shop9.localhost").get("/").status_code == 404  # nothing serves before approval

    approved = opening.approve(host.registry, application.id, now=NOW)
    assert approved.status == "approved" and approved.decided_at == NOW
    # Outside a request (this call, the command line) messages are the English source text.
    assert (approved.notice, approved.notice_label) == ("no_smtp", "Not sent: no mail server is configured")
    site = Site.get(Site.slug == "shop9")
    assert approved.site_id == site.id
    assert site.parent_id == Site.get(Site.slug == "main").id and site.level == "bronze"
    assert site.expires_at == NOW + datetime.timedelta(days=365)
    assert host.registry.load("shop9").template == "gaming"

    home = client_for("shop9.localhost").get("/")
    assert home.status_code == 200
    assert "九号小店" in text(home) and 'class="theme-dark"' in text(home)  # the gaming template's theme
    owner = client_for("shop9.localhost")
    assert owner.get("/admin/").status_code == 302  # the console needs a login
    assert owner_login(owner, password="wrong-password-1").status_code == 200
    response = owner_login(owner)
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    console = text(owner.get("/admin/"))
    assert "九号小店" in console and 'data-state="active"' in console and "2031-01-01" in console
    with acting_for(site.id):
        assert Account.get(Account.username == "owner").password_hash == application.password_hash
    assert "已开通" in text(main.get(f"/open/status/{application.submit_key}"))
    # An owner's login is this site's only: the same credentials are void on the main site's console.
    assert "用户名或密码错误" in text(main.post("/admin/login", data={
        "csrf_token": token(main.get("/admin/login")), "username": "owner", "password": PASSWORD}))


def test_the_operator_approves_and_rejects_in_the_console_with_csrf(levels, client_for):
    host = levels
    first = opening.submit_application(host.registry, applicant("shop9"), submit_key=new_key())
    second = opening.submit_application(host.registry, applicant("shop8", username="other"), submit_key=new_key())
    console = operator_console(host)
    page = console.get("/admin/sites/applications")
    assert page.status_code == 200 and "shop9" in text(page) and "shop8" in text(page)
    # No token, no write.
    assert console.post(f"/admin/sites/applications/{first.id}/approve").status_code == 400
    assert opening.get_application(first.id).status == "requested"
    response = console.post(f"/admin/sites/applications/{first.id}/approve", data={"csrf_token": token(page)})
    assert response.status_code == 302
    assert opening.get_application(first.id).status == "approved"
    assert client_for("shop9.localhost").get("/").status_code == 200

    # A rejection needs a reason.
    console.post(f"/admin/sites/applications/{second.id}/reject", data={"csrf_token": token(page), "reason": " "})
    assert opening.get_application(second.id).status == "requested"
    console.post(f"/admin/sites/applications/{second.id}/reject", data={"csrf_token": token(page),
                                                                        "reason": "资料不全"})
    rejected = opening.get_application(second.id)
    assert (rejected.status, rejected.reason, rejected.active_slug) == ("rejected", "资料不全", None)
    assert "资料不全" in text(client_for(MAIN).get(f"/open/status/{second.submit_key}"))
    # Signed out, the pages are closed.
    assert SiteClient(host, MAIN).get("/admin/sites/applications").status_code == 302


def test_reject_frees_the_name_and_creates_nothing(levels):
    host = levels
    application = opening.submit_application(host.registry, applicant("shop9"), submit_key=new_key())
    with pytest.raises(OpeningError, match="already applied"):
        opening.submit_application(host.registry, applicant("shop9"), submit_key=new_key())
    with pytest.raises(OpeningError, match="reason for the rejection"):
        opening.reject(host.registry, application.id, "")
    opening.reject(host.registry, application.id, "名称不当", now=NOW)
    assert not (host.registry.root / "shop9").exists() and Site.get_or_none(Site.slug == "shop9") is None
    with pytest.raises(OpeningError, match="cannot be approved"):
        opening.approve(host.registry, application.id)
    again = opening.submit_application(host.registry, applicant("shop9"), submit_key=new_key())
    assert again.status == "requested"


@pytest.mark.parametrize("slug", ["shop1", "main", "www", "../etc", "Shop 9", "-shop", "a" * 33, ""])
def test_names_that_are_taken_reserved_or_malformed_are_refused(levels, slug):
    host = levels
    host.registry.create("shop1", template="shop")
    with pytest.raises(OpeningError, match="(?i)sub-domain") as refused:
        opening.submit_application(host.registry, applicant(slug), submit_key=new_key())
    assert refused.value.field == "slug"  # the form shows it next to the sub-domain
    assert SiteApplication.select().count() == 0


def test_the_same_submit_key_is_one_application(levels):
    host = levels
    key = new_key()
    first = opening.submit_application(host.registry, applicant("shop9"), submit_key=key)
    again = opening.submit_application(host.registry, applicant("shop9"), submit_key=key)
    assert again.id == first.id and SiteApplication.select().count() == 1
    with pytest.raises(OpeningError, match="form has expired"):
        opening.submit_application(host.registry, applicant("shop7"), submit_key="short")


def test_the_form_says_what_is_wrong(levels, client_for):
    main = client_for(MAIN)
    page = main.get("/open")
    response = main.post("/open", data=form_data(page, password="short", password2="short", contact="nope",
                                                  real_name=""))
    body = text(response)
    assert response.status_code == 200 and "请填写有效的邮箱或 11 位手机号" in body
    response = main.post("/open", data=form_data(page, real_name="", password2="different-password"))
    assert "两次输入的密码不一致" in text(response)
    response = main.post("/open", data=form_data(page, real_name=""))
    assert "请填写真实姓名" in text(response)  # required by default
    response = main.post("/open", data=form_data(page, password="short-pw", password2="short-pw"))
    assert "后台密码至少 10 位" in text(response)
    assert SiteApplication.select().count() == 0


def test_the_operator_decides_which_fields_are_required(levels, site_files):
    host = levels
    site_files.edit("main", settings={"opening": {"required_fields": ["business_info"]}})
    settings = opening.opening_settings(host.registry.load("main"))
    assert settings.required_fields == ("business_info",)
    with pytest.raises(OpeningError, match="Business information is required"):
        opening.submit_application(host.registry, applicant(real_name="", business_info=""), submit_key=new_key(),
                                   settings=settings)
    done = opening.submit_application(host.registry, applicant(real_name="", business_info="某某科技有限公司"),
                                      submit_key=new_key(), settings=settings)
    assert done.business_info == "某某科技有限公司"
    # A broken table falls back to the defaults (real name required) instead of taking /open down.
    site_files.edit("main", settings={"opening": {"required_fields": ["shoe_size"]}})
    assert opening.opening_settings(host.registry.load("main")).required_fields == ("real_name",)


def test_a_failed_approval_leaves_nothing_behind_and_can_be_retried(levels, monkeypatch):
    host = levels
    application = opening.submit_application(host.registry, applicant("shop9"), submit_key=new_key())
    original = opening.get_level

    def broken_level(code):  # the level lookup after the folder was created fails
        if code == "bronze" and (host.registry.root / "shop9").exists():
            raise KamengsiteError("disk on fire")
        return original(code)

    monkeypatch.setattr(opening, "get_level", broken_level)
    with pytest.raises(OpeningError, match="disk on fire"):
        opening.approve(host.registry, application.id)
    assert not (host.registry.root / "shop9").exists() and Site.get_or_none(Site.slug == "shop9") is None
    assert opening.get_application(application.id).status == "requested"
    monkeypatch.setattr(opening, "get_level", original)
    assert opening.approve(host.registry, application.id).status == "approved"
    assert opening.approve(host.registry, application.id).status == "approved"  # again: nothing more happens
    assert Site.select().where(Site.slug == "shop9").count() == 1


def test_the_applicant_is_mailed_the_decision(levels, tmp_path):
    from mailhelpers import SmtpServer

    host = levels
    server = SmtpServer()
    server.start()
    try:
        host.instance.smtp_url = f"smtp://127.0.0.1:{server.port}"
        approved = open_site(host.registry, "shop9", level="bronze")
        rejected = opening.submit_application(host.registry, applicant("shop8"), submit_key=new_key())
        rejected = opening.reject(host.registry, rejected.id, "资料不全")
    finally:
        server.stop()
    assert (approved.notice, rejected.notice) == ("mailed", "mailed")
    assert approved.notice_label == "Notified by email"
    # Decided outside a request (as by the command line): the mail is in the main site's language all the same.
    bodies = [(rcpts, msg["Subject"], msg.get_content()) for _, rcpts, msg in server.messages]
    assert bodies[0][:2] == (["owner@example.com"], "分站已开通")
    assert "http://shop9.localhost/admin/" in bodies[0][2] and PASSWORD not in bodies[0][2]
    assert "后台用户名：owner" in bodies[0][2]
    assert bodies[1][1] == "分站申请未通过" and "原因：资料不全" in bodies[1][2]


# -- children ----------------------------------------------------------------------------------


def test_a_site_whose_level_may_open_children_takes_applications_for_them(levels, client_for):
    host = levels
    open_site(host.registry, "bronzy", level="bronze", username="b1")
    assert client_for("bronzy.localhost").get("/open").status_code == 404  # 青铜 may not open children
    open_site(host.registry, "silvery", level="silver", username="s1")
    silvery = client_for("silvery.localhost")
    page = silvery.get("/open")
    assert page.status_code == 200
    response = silvery.post("/open", data=form_data(page, slug="kid1"))
    assert response.status_code == 302
    child = SiteApplication.get(SiteApplication.slug == "kid1")
    assert child.parent_id == Site.get(Site.slug == "silvery").id
    opening.approve(host.registry, child.id)
    assert host.registry.load("kid1").parent == "silvery"


# -- self-service: pay from the wallet, open at once -------------------------------------------------


def test_self_service_opening_debits_exactly_the_fee_and_opens_at_once(levels, client_for, member_signed_in):
    host = levels
    fund(wallet(host.registry), 50000, "topup-1")
    main = client_for(MAIN)
    page = main.get("/open")
    response = main.post("/open", data=form_data(page, pay_now="y"))
    assert response.status_code == 302
    application = SiteApplication.get(SiteApplication.slug == "shop9")
    assert (application.status, application.self_service, application.fee_fen, application.member_id) == (
        "approved", True, BRONZE_FEE, MEMBER)
    assert ledger.balance(wallet(host.registry)) == 50000 - BRONZE_FEE == 40100
    assert revenue() == BRONZE_FEE
    assert client_for("shop9.localhost").get("/").status_code == 200
    # The same form again: the first application, no second charge.
    again = main.post("/open", data=form_data(page, pay_now="y"))
    assert again.status_code == 302 and again.headers["Location"] == response.headers["Location"]
    assert ledger.balance(wallet(host.registry)) == 40100 and SiteApplication.select().count() == 1
    assert ledger.check() == []


def test_self_service_needs_a_member_and_a_self_service_level(levels, client_for):
    host = levels
    main = client_for(MAIN)
    page = main.get("/open")
    response = main.post("/open", data=form_data(page, pay_now="y"))
    assert "自助开通需要先登录会员账号" in text(response)
    fund(wallet(host.registry), 200000, "topup-1")
    with pytest.raises(OpeningError, match="needs review"):
        opening.open_self_service(host.registry, applicant(level="gold"), submit_key=new_key(), member_id=MEMBER)
    assert SiteApplication.select().count() == 0 and ledger.balance(wallet(host.registry)) == 200000


def test_a_short_wallet_creates_nothing(levels):
    host = levels
    fund(wallet(host.registry), BRONZE_FEE - 1, "topup-1")
    txns = ledger.LedgerTxn.select().count()
    with pytest.raises(OpeningError, match="Insufficient balance: opening \"青铜\" costs ¥99.00"):
        opening.open_self_service(host.registry, applicant(), submit_key=new_key(), member_id=MEMBER)
    assert SiteApplication.select().count() == 0
    assert Site.get_or_none(Site.slug == "shop9") is None and not (host.registry.root / "shop9").exists()
    assert ledger.balance(wallet(host.registry)) == 9899 and ledger.LedgerTxn.select().count() == txns


def test_a_site_that_cannot_be_created_gets_its_fee_back(levels, monkeypatch):
    host = levels
    fund(wallet(host.registry), 50000, "topup-1")

    def refuse(*args, **kwargs):
        raise KamengsiteError("no space left on device")

    monkeypatch.setattr(host.registry, "create", refuse)
    with pytest.raises(OpeningError, match="the fee was refunded: no space left on device"):
        opening.open_self_service(host.registry, applicant(), submit_key=new_key(), member_id=MEMBER)
    application = SiteApplication.get(SiteApplication.slug == "shop9")
    assert (application.status, application.active_slug) == ("rejected", None)
    assert ledger.balance(wallet(host.registry)) == 50000 and revenue() == 0
    assert Site.get_or_none(Site.slug == "shop9") is None
    assert ledger.check() == []


def test_rejecting_a_paid_application_refunds_it(levels, monkeypatch):
    """A self-service application left requested (its process died before the site was made)."""
    host = levels
    fund(wallet(host.registry), 50000, "topup-1")
    monkeypatch.setattr(opening, "approve", lambda registry, app_id, **kw: opening.get_application(app_id))
    stuck = opening.open_self_service(host.registry, applicant(), submit_key=new_key(), member_id=MEMBER)
    assert stuck.status == "requested" and ledger.balance(wallet(host.registry)) == 40100
    monkeypatch.undo()
    opening.reject(host.registry, stuck.id, "重复申请")
    assert ledger.balance(wallet(host.registry)) == 50000 and revenue() == 0


@pytest.fixture
def matrix_host(db_host):
    seed_default_levels()
    return db_host


def test_a_double_submit_at_once_opens_one_site_and_charges_once_on_every_backend(matrix_host, member_signed_in):
    host = matrix_host
    fund(wallet(host.registry), 50000, "topup-1")
    first = SiteClient(host, MAIN)
    page = first.get("/open")
    cookie = first.get_cookie("ks_session", domain=MAIN)
    data = form_data(page, pay_now="y")
    go = threading.Event()

    def submit(_):
        client = SiteClient(host, MAIN)
        client.set_cookie("ks_session", cookie.value, domain=MAIN)  # the same browser, the same form, twice
        go.wait(timeout=10)
        response = client.post("/open", data=data)
        return response.status_code, response.headers.get("Location")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(submit, i) for i in range(4)]
        go.set()
        results = [f.result() for f in futures]
    assert {status for status, _ in results} == {302}
    assert len({location for _, location in results}) == 1  # every submit lands on the one application
    assert SiteApplication.select().count() == 1
    assert SiteApplication.get().status in ("approved", "approving")
    assert Site.select().where(Site.slug == "shop9").count() == 1
    assert ledger.balance(wallet(host.registry)) == 40100 and revenue() == BRONZE_FEE
    assert ledger.LedgerTxn.select().where(ledger.LedgerTxn.reference.startswith("opening:")).count() == 1
    assert ledger.check() == []


def test_two_people_racing_for_one_name_get_one_site_on_every_backend(matrix_host):
    host = matrix_host
    fund(wallet(host.registry, 1), 50000, "topup-1")
    fund(wallet(host.registry, 2), 50000, "topup-2")
    go = threading.Event()

    def race(member):
        go.wait(timeout=10)
        try:
            done = opening.open_self_service(host.registry, applicant(username=f"o{member}"), submit_key=new_key(),
                                             member_id=member)
            return ("ok", member, done.status)
        except OpeningError as exc:
            return ("refused", member, str(exc))

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(race, m) for m in (1, 2)]
        go.set()
        results = sorted(f.result() for f in futures)
    assert [r[0] for r in results] == ["ok", "refused"] and re.search("taken|already applied", results[1][2])
    winner = results[0][1]
    loser = 3 - winner
    assert ledger.balance(wallet(host.registry, winner)) == 40100
    assert ledger.balance(wallet(host.registry, loser)) == 50000
    assert Site.select().where(Site.slug == "shop9").count() == 1 and ledger.check() == []


def test_levels_list_on_the_open_page(levels, client_for):
    save_level(code="diamond", name="钻石", sort=9, opening_fee_fen=123456, term_days=0)
    body = text(client_for(MAIN).get("/open"))
    assert "钻石" in body and "¥1234.56" in body and "长期" in body
    assert get_level("diamond").opening_fee_fen == 123456


# -- in English ----------------------------------------------------------------------------------


def test_the_open_page_its_errors_and_the_operators_list_in_english(levels, client_for):
    host = levels
    host.registry.create("shop1", template="shop")
    main = client_for(MAIN)
    body = text(main.get("/open"))
    assert "开通分站" in body and "365 天" in body and "Open a sub-site" not in body  # Chinese by default
    page = main.get("/open?lang=en")  # the choice is kept in a cookie for the next requests
    body = text(page)
    assert "Open a sub-site" in body and "Shop name" in body and "365 days" in body and "Self-service" in body
    assert "开通分站" not in body and "店铺名称" not in body and "自助开通" not in body
    response = main.post("/open", data=form_data(page, contact="nope"))
    assert "Please enter a valid email address or 11-digit mobile number" in text(response)
    response = main.post("/open", data=form_data(page, slug="shop1"))
    assert 'The sub-domain &#34;shop1&#34; is taken, please choose another' in text(response)
    response = main.post("/open", data=form_data(page))
    assert response.status_code == 302
    status = text(main.get(response.headers["Location"]))
    assert "Sub-site application: " in status and "Awaiting review" in status and "待审核" not in status

    console = operator_console(host)
    listing = text(console.get("/admin/sites/applications?lang=en"))
    assert "Approve and open" in listing and "Real name: 张三" in listing and "通过并开通" not in listing
    assert "通过并开通" in text(console.get("/admin/sites/applications?lang=zh_CN"))
