"""A sub-site's life after opening: suspend / resume / close (closed page, no checkout, money
untouched), expiry and renewal with a fake clock, level changes, the operator's site list and the
`kamengsite site …` / `kamengsite level …` commands."""

from __future__ import annotations

import datetime
import tomllib

import pytest

from kamengsite import ledger, opening
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import init_database, release_connections
from kamengsite.levels import seed_default_levels
from kamengsite.models import Site
from kamengsite.opening import OpeningError, SiteApplication
from kamengsite.orders import Order, Payment
from kamengsite.tenancy import all_sites
from test_opening import (MAIN, MEMBER, NOW, PASSWORD, applicant, fund, new_key, open_site, operator_console,
                          owner_login, revenue, text, token, wallet)

DAY = datetime.timedelta(days=1)
SILVER_FEE, GOLD_FEE, BRONZE_FEE = 29900, 99900, 9900


@pytest.fixture
def shop(host):
    """``shop9``: a 白银 (silver) sub-site opened at NOW, selling the main site's card product."""
    seed_default_levels()
    open_site(host.registry, "shop9", level="silver", now=NOW)
    main = Site.get(Site.slug == "main")
    product = create_product(main, "测试月卡", 1500, max_qty=5)
    import_keys(product.skus[0], [f"CODE-{i:04d}" for i in range(5)], CardKeyCipher.from_instance(host.instance))
    return product


def available(slug="shop9") -> int:
    return ledger.balance(ledger.account("site_available", site=Site.get(Site.slug == slug).id))


def site_row(slug="shop9") -> Site:
    return Site.get(Site.slug == slug)


def orders() -> list:
    with all_sites():
        return list(Order.select(Order.order_no, Order.status).tuples())


def buy_form(client, product):
    page = client.get(f"/p/{product.id}")
    return page, {"csrf_token": token(page), "sku": product.skus[0].id, "quantity": 1,
                  "contact": "buyer@example.com", "query_password": "pass1234"}


def balances() -> list:
    return [(acct.code, amount) for acct, amount in ledger.balances()]


# -- suspend / resume / close -------------------------------------------------------------------


def test_a_suspended_site_shows_the_closed_page_and_serves_no_checkout(host, shop, client_for):
    fund(ledger.account("site_available", site=site_row().id), 1234, "profit-1")
    buyer = client_for("shop9.localhost")
    page, data = buy_form(buyer, shop)  # the buyer had the page open before the suspension
    created = buyer.post(f"/p/{shop.id}", data=data)
    assert created.status_code == 302
    order_no = created.headers["Location"].rsplit("/", 1)[1]
    before_orders, before_money = orders(), balances()

    opening.suspend(host.registry, "shop9", "投诉处理中")
    config = host.registry.load("shop9")
    assert config.enabled is False and opening.lifecycle_state(config) == "suspended"
    assert config.settings["lifecycle"]["reason"] == "投诉处理中"
    assert site_row().status == "disabled"
    for response in (buyer.get("/"), buyer.post(f"/p/{shop.id}", data=data),
                     buyer.post(f"/pay/{order_no}", data={"csrf_token": data["csrf_token"]})):
        assert response.status_code == 503 and "暂停营业" in text(response)
    assert orders() == before_orders  # no order written, the earlier one untouched
    with all_sites():
        assert Payment.select().count() == 0
    assert balances() == before_money and available() == 1234
    # The owner still reaches the console (balance, renewal, domains).
    owner = client_for("shop9.localhost")
    assert owner_login(owner).status_code == 302
    assert 'data-state="suspended"' in text(owner.get("/admin/"))

    opening.resume(host.registry, "shop9")
    assert host.registry.load("shop9").enabled is True and "lifecycle" not in host.registry.load("shop9").settings
    page, data = buy_form(buyer, shop)
    assert buyer.post(f"/p/{shop.id}", data=data).status_code == 302
    assert len(orders()) == len(before_orders) + 1


def test_a_closed_site_stays_closed(host, shop, client_for):
    opening.close(host.registry, "shop9", "站长申请关闭")
    assert opening.lifecycle_state(host.registry.load("shop9")) == "closed"
    assert client_for("shop9.localhost").get("/").status_code == 503
    for action in (lambda: opening.resume(host.registry, "shop9"), lambda: opening.suspend(host.registry, "shop9"),
                   lambda: opening.renew(host.registry, "shop9"),
                   lambda: opening.change_level(host.registry, "shop9", "gold")):
        with pytest.raises(OpeningError, match="is closed"):
            action()
    states = {s.slug: s.state for s in opening.site_summaries(host.registry)}
    assert states == {"main": "active", "shop9": "closed"}


def test_the_main_site_is_never_suspended(host, shop):
    with pytest.raises(OpeningError, match="main site"):
        opening.suspend(host.registry, "main")
    with pytest.raises(OpeningError, match="no sub-site named"):
        opening.suspend(host.registry, "nosuch")


# -- expiry and renewal (a fake clock) ----------------------------------------------------------------


def test_a_site_expires_after_its_term_and_a_renewal_reopens_it(host, shop, client_for):
    assert site_row().expires_at == NOW + 365 * DAY
    assert opening.expire_sites(host.registry, now=NOW + 364 * DAY) == {"expired": [], "reopened": []}
    assert client_for("shop9.localhost").get("/healthz").status_code == 200

    late = NOW + 400 * DAY
    assert opening.expire_sites(host.registry, now=late) == {"expired": ["shop9"], "reopened": []}
    assert opening.expire_sites(host.registry, now=late) == {"expired": [], "reopened": []}  # once
    # The worker has no language of its own: the reason is in the site's (zh_CN here).
    assert host.registry.load("shop9").settings["lifecycle"]["reason"] == "服务期已到"
    response = client_for("shop9.localhost").get("/")
    assert response.status_code == 503 and "服务已到期" in text(response)
    with pytest.raises(OpeningError, match="expired on 2031-01-01; renew it to resume it"):
        opening.resume(host.registry, "shop9", now=late)

    # The renewal fee (白银: ¥299.00) from the site's balance; a late renewal buys a full term from now.
    fund(ledger.account("site_available", site=site_row().id), SILVER_FEE - 1, "profit-1")
    with pytest.raises(OpeningError, match="Insufficient balance: the renewal costs ¥299.00"):
        opening.renew(host.registry, "shop9", now=late)
    assert site_row().expires_at == NOW + 365 * DAY and available() == 29899
    fund(ledger.account("site_available", site=site_row().id), 101, "profit-2")
    assert opening.renew(host.registry, "shop9", now=late) == late + 365 * DAY
    assert site_row().expires_at == late + 365 * DAY
    assert available() == 100 and revenue() == SILVER_FEE
    assert host.registry.load("shop9").enabled is True
    assert client_for("shop9.localhost").get("/healthz").status_code == 200
    assert ledger.check() == []


def test_an_early_renewal_adds_a_term_to_the_end(host, shop):
    fund(ledger.account("site_available", site=site_row().id), 2 * SILVER_FEE, "profit-1")
    assert opening.renew(host.registry, "shop9", now=NOW + 300 * DAY) == NOW + 730 * DAY
    assert opening.renew(host.registry, "shop9", now=NOW + 301 * DAY) == NOW + 1095 * DAY
    assert available() == 0 and revenue() == 2 * SILVER_FEE


def test_renewal_from_the_owners_wallet(host, shop):
    fund(wallet(host.registry), 50000, "topup-1")
    opening.open_self_service(host.registry, applicant("shop8", level="silver"), submit_key=new_key(),
                              member_id=MEMBER, now=NOW)
    assert ledger.balance(wallet(host.registry)) == 50000 - SILVER_FEE == 20100
    with pytest.raises(OpeningError, match="Insufficient balance"):
        opening.renew(host.registry, "shop8", pay_from="wallet", now=NOW)
    fund(wallet(host.registry), SILVER_FEE, "topup-2")
    assert opening.renew(host.registry, "shop8", pay_from="wallet", now=NOW) == NOW + 730 * DAY
    assert ledger.balance(wallet(host.registry)) == 20100
    with pytest.raises(OpeningError, match="no member wallet"):
        opening.renew(host.registry, "shop9", pay_from="wallet", now=NOW)  # opened without a member


def test_a_suspended_site_that_expires_stays_suspended_after_renewal(host, shop):
    opening.suspend(host.registry, "shop9")
    assert opening.expire_sites(host.registry, now=NOW + 400 * DAY) == {"expired": [], "reopened": []}
    fund(ledger.account("site_available", site=site_row().id), SILVER_FEE, "profit-1")
    opening.renew(host.registry, "shop9", now=NOW + 400 * DAY)
    assert opening.lifecycle_state(host.registry.load("shop9")) == "suspended"


def test_a_level_without_a_term_never_expires(host, shop):
    from kamengsite.levels import save_level

    save_level(code="forever", name="永久", term_days=0)
    open_site(host.registry, "shop7", level="forever", now=NOW, username="o7")
    assert site_row("shop7").expires_at is None
    assert opening.expire_sites(host.registry, now=NOW + 5000 * DAY)["expired"] == ["shop9"]
    with pytest.raises(OpeningError, match="nothing to renew"):
        opening.renew(host.registry, "shop7")


def test_an_expired_site_reopens_on_the_next_check_if_renewed_meanwhile(host, shop):
    opening.expire_sites(host.registry, now=NOW + 400 * DAY)
    # Renewed by hand in the database (or the reopening write failed after the payment).
    Site.update(expires_at=NOW + 800 * DAY).where(Site.slug == "shop9").execute()
    assert opening.expire_sites(host.registry, now=NOW + 401 * DAY) == {"expired": [], "reopened": ["shop9"]}
    assert host.registry.load("shop9").enabled is True


def test_the_expiry_job_runs_every_ten_minutes_and_expires_due_sites(host, shop):
    from kamengsite import jobs

    queue = jobs.make_jobs(host.instance, immediate=True)
    periodic = {task.__name__: task() for task in queue.huey._registry._periodic_tasks}
    start = datetime.datetime(2030, 1, 1, 0, 0)
    minutes = [start + datetime.timedelta(minutes=m) for m in range(0, 120, 5)]
    assert [m.minute for m in minutes if periodic["expire_sites"].validate_datetime(m)] == [0, 10, 20, 30, 40, 50] * 2
    assert queue.expire_sites.call_local() == {"expired": [], "reopened": []}  # NOW + 365 days is still ahead
    Site.update(expires_at=datetime.datetime(2001, 1, 1)).where(Site.slug == "shop9").execute()
    assert queue.expire_sites.call_local() == {"expired": ["shop9"], "reopened": []}
    assert opening.lifecycle_state(host.registry.load("shop9")) == "expired"


# -- level changes -------------------------------------------------------------------------------


def test_upgrading_pays_the_difference_from_the_site_balance(host, shop):
    difference = GOLD_FEE - SILVER_FEE  # 999.00 − 299.00 = 700.00
    fund(ledger.account("site_available", site=site_row().id), difference - 1, "profit-1")
    with pytest.raises(OpeningError, match="costs ¥700.00 more"):
        opening.change_level(host.registry, "shop9", "gold")
    assert site_row().level == "silver" and host.registry.load("shop9").level == "silver" and available() == 69999
    fund(ledger.account("site_available", site=site_row().id), 1 + 500, "profit-2")
    assert opening.change_level(host.registry, "shop9", "gold").level == "gold"
    assert site_row().level == "gold" and available() == 500
    assert tomllib.loads(host.registry.folder("shop9").joinpath("site.toml").read_text())["level"] == "gold"
    assert opening.change_level(host.registry, "shop9", "gold").level == "gold" and available() == 500  # no-op
    # Down costs nothing and refunds nothing.
    assert opening.change_level(host.registry, "shop9", "bronze").level == "bronze"
    assert available() == 500 and revenue() == 70000
    assert ledger.check() == []


# -- the operator's site list ---------------------------------------------------------------------


def test_the_operators_site_list_shows_balances_and_acts_with_csrf(host, shop, client_for):
    site_id = site_row().id
    fund(ledger.account("site_available", site=site_id), 1234, "profit-1")
    ledger.post("payment", "order-x", [(ledger.account("site_frozen", site=site_id), 566),
                                       (ledger.account("channel_clearing", channel="test"), -566)])
    console = operator_console(host)
    page = console.get("/admin/sites/")
    body = text(page)
    assert page.status_code == 200
    row = body[body.index('id="site-shop9"'):]
    row = row[:row.index("</tr>")]
    assert "silver" in row and "main" in row and "2031-01-01 20:00" in row and "¥18.00" in row  # Shanghai time; 12.34 + 5.66
    assert 'data-state="active"' in row
    assert console.post("/admin/sites/shop9/suspend", data={"reason": "x"}).status_code == 400  # no token
    assert host.registry.load("shop9").enabled is True
    response = console.post("/admin/sites/shop9/suspend", data={"csrf_token": token(page), "reason": "核查中"})
    assert response.status_code == 302 and host.registry.load("shop9").enabled is False
    assert 'data-state="suspended"' in text(console.get("/admin/sites/"))
    console.post("/admin/sites/shop9/resume", data={"csrf_token": token(page)})
    assert host.registry.load("shop9").enabled is True
    assert console.post("/admin/sites/main/suspend", data={"csrf_token": token(page)}).status_code == 404
    assert "白银" in text(console.get("/admin/sites/levels"))
    assert client_for(MAIN).get("/admin/sites/").status_code == 302  # signed out: to the login


def test_the_owner_renews_and_upgrades_in_the_console(host, shop, client_for):
    opening.expire_sites(host.registry, now=NOW + 400 * DAY)
    fund(ledger.account("site_available", site=site_row().id), SILVER_FEE, "profit-1")
    owner = client_for("shop9.localhost")
    assert owner_login(owner).status_code == 302
    home = owner.get("/admin/")
    assert 'data-state="expired"' in text(home) and "¥299.00" in text(home)
    assert owner.post("/admin/renew", data={"pay_from": "site"}).status_code == 400  # no token
    response = owner.post("/admin/renew", data={"csrf_token": token(home), "pay_from": "site"})
    assert response.status_code == 302 and available() == 0
    assert 'data-state="active"' in text(owner.get("/admin/"))
    # An owner picks only levels that need no approval (黄金 does); moving down is free.
    owner.post("/admin/level", data={"csrf_token": token(home), "level": "gold"})
    assert "需要平台审核" in text(owner.get("/admin/")) and site_row().level == "silver"
    owner.post("/admin/level", data={"csrf_token": token(home), "level": "bronze"})
    assert site_row().level == "bronze" and host.registry.load("shop9").level == "bronze" and available() == 0


# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def initialised(cli):
    result = cli("init")
    assert result.exit_code == 0, result.output
    yield cli
    release_connections()


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_levels_applications_and_lifecycle(initialised):
    cli = initialised
    assert "no levels" in ok(cli("level", "list"))
    assert ok(cli("level", "seed")).strip() == "created 3 level(s)"
    assert ok(cli("level", "seed")).strip() == "the default levels already exist"
    listed = ok(cli("level", "list"))
    assert "bronze" in listed and "opening=99.00" in listed and "365d" in listed

    from kamengsite.instance import Instance

    instance = Instance.load(cli.instance_path)
    init_database(instance.database_url)
    registry = opening.registry_for(instance)
    first = opening.submit_application(registry, applicant("shop9"), submit_key=new_key())
    second = opening.submit_application(registry, applicant("shop8"), submit_key=new_key())
    listed = ok(cli("site", "applications"))
    assert f"#{first.id}" in listed and "shop8" in listed and "requested" in listed

    assert "site 'shop9' is open at http://shop9.localhost/" in ok(cli("site", "approve", first.id))
    assert cli("site", "approve", first.id).exit_code == 0  # approving again changes nothing
    missing_reason = cli("site", "reject", second.id)
    assert missing_reason.exit_code == 2 and "--reason" in missing_reason.output
    assert "rejected" in ok(cli("site", "reject", second.id, "--reason", "资料不全"))
    assert SiteApplication.get_by_id(second.id).reason == "资料不全"
    assert "no requested applications" in ok(cli("site", "applications"))
    refused = cli("site", "approve", second.id)
    assert refused.exit_code == 1 and '"Rejected" and cannot be approved' in refused.output

    assert ok(cli("site", "suspend", "shop9", "--reason", "核查")).strip() == "site 'shop9' suspended"
    values = tomllib.loads((cli.instance_path / "sites/shop9/site.toml").read_text())
    assert values["enabled"] is False and values["settings"]["lifecycle"]["state"] == "suspended"
    assert ok(cli("site", "resume", "shop9")).strip() == "site 'shop9' resumed"
    assert tomllib.loads((cli.instance_path / "sites/shop9/site.toml").read_text())["enabled"] is True
    assert "expired: none" in ok(cli("site", "expire"))
    Site.update(expires_at=datetime.datetime(2000, 1, 1)).where(Site.slug == "shop9").execute()
    assert "expired: shop9" in ok(cli("site", "expire"))
    refused = cli("site", "suspend", "nosuch")
    assert refused.exit_code == 1 and 'There is no sub-site named "nosuch"' in refused.output
    assert PASSWORD not in listed


# -- in English ---------------------------------------------------------------------------------------


def test_the_operators_and_the_owners_pages_in_english(host, shop, client_for):
    console = operator_console(host)
    assert "到期检查" in text(console.get("/admin/sites/"))  # Chinese by default
    body = text(console.get("/admin/sites/?lang=en"))
    assert "Expiry check" in body and "Open for business" in body and "1 Jan 2031, 20:00" in body
    assert "到期检查" not in body and "营业中" not in body
    levels = text(console.get("/admin/sites/levels"))
    assert "Sub-site levels" in levels and "365 days" in levels and "分站等级" not in levels
    page = console.get("/admin/sites/")
    console.post("/admin/sites/shop9/suspend", data={"csrf_token": token(page), "reason": "x"})
    assert 'Suspended sub-site "shop9"' in text(console.get("/admin/sites/")).replace("&#34;", '"')

    opening.resume(host.registry, "shop9")
    owner = client_for("shop9.localhost")
    owner_login(owner)
    assert "服务期至" in text(owner.get("/admin/"))
    home = text(owner.get("/admin/?lang=en"))
    assert "Term ends" in home and "Renew for ¥299.00 to extend the term by 365 days." in home
    assert "服务期至" not in home and "续费" not in home
