"""The plugin host's checkout, lifecycle and extension hooks, and what happens when a plugin breaks."""

from __future__ import annotations

import datetime
import re

import pytest
from click.testing import CliRunner
from huey import crontab
from markupsafe import Markup

from kamengsite import hooks, orders, refunds
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.checkout import Checkout, CheckoutInput, CheckoutRefused
from kamengsite.crypto import CardKeyCipher
from kamengsite.errors import ConfigError
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site, utcnow
from kamengsite.plugin_settings import check_settings, settings_for
from kamengsite.plugins import PluginError
from kamengsite.sections import Section
from kamengsite.tenancy import all_sites

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
PASSWORD = "correct horse battery"
LATER = datetime.timedelta(hours=1)
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "banner": {"type": "string", "title": "横幅文字", "default": "欢迎", "maxLength": 20},
        "percent": {"type": "integer", "title": "折扣", "default": 5, "minimum": 0, "maximum": 50},
        "loud": {"type": "boolean", "title": "醒目", "default": False},
        "api_key": {"type": "string", "title": "接口密钥", "writeOnly": True},
        "tiers": {"type": "array", "title": "阶梯", "items": {"type": "integer"}, "default": [1, 2]},
        "levels": {"type": "array", "title": "等级", "default": [], "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "title": "名称"},
                           "min_spend_fen": {"type": "integer", "title": "门槛（分）", "minimum": 0},
                           "vip": {"type": "boolean", "title": "贵宾"}}}},
        "extra": {"type": "object", "title": "高级", "default": {}},
    },
}


class Promo:
    """A test plugin implementing every checkout, lifecycle and extension hook; ``fail`` names hooks that raise."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.fail: set[str] = set()

    def _maybe_fail(self, hook):
        if hook in self.fail:
            raise RuntimeError(f"promo broke in {hook}")

    @hookimpl
    def checkout_inputs(self, site):
        return [CheckoutInput("promo", "优惠码", placeholder="输入优惠码")]

    @hookimpl
    def adjust_price(self, checkout, stage):
        self._maybe_fail("adjust_price")
        if stage == "promotion":
            checkout.offer_unit_price(1000, source="promo", label="活动价")
        if stage == "coupon" and checkout.inputs.get("promo") == "OFF2":
            checkout.take_off(200, source="promo", label="优惠码 OFF2")
            checkout.note("promo", code="OFF2")

    @hookimpl
    def validate_checkout(self, checkout):
        self._maybe_fail("validate_checkout")
        if checkout.inputs.get("promo") == "BAD":
            raise CheckoutRefused("优惠码 BAD 无效")

    @hookimpl
    def assess_risk(self, checkout):
        return "contact on the block list" if checkout.contact == "risky@example.com" else None

    @hookimpl
    def order_reserving(self, order, checkout):
        self._maybe_fail("order_reserving")
        if checkout.inputs.get("promo") == "GONE":
            raise CheckoutRefused("优惠码已用完")
        self.events.append(("reserving", order.order_no, checkout.notes.get("promo", {}).get("code")))

    @hookimpl
    def order_created(self, order, site):
        self._maybe_fail("order_created")
        self.events.append(("created", order.order_no, site.slug))

    @hookimpl
    def order_paid(self, order, site):
        self._maybe_fail("order_paid")
        self.events.append(("paid", order.order_no, order.status))

    @hookimpl
    def order_delivered(self, order, site):
        self.events.append(("delivered", order.order_no, site.slug))

    @hookimpl
    def order_expiring(self, order):
        self._maybe_fail("order_expiring")
        self.events.append(("expiring", order.order_no, None))

    @hookimpl
    def order_refunded(self, order, refund, site):
        self.events.append(("refunded", order.order_no, refund.destination))

    @hookimpl
    def plugin_settings_schema(self):
        return SCHEMA

    @hookimpl
    def theme_sections(self, site):
        return [Section("promo_banner", "活动横幅", self._banner),
                Section("promo_plain", "纯文本", lambda ctx: "<b>不是 HTML</b>"),
                Section("promo_broken", "坏掉的", self._broken)]

    def _banner(self, context):
        return Markup("<div class='promo'>限时活动 · {}</div>").format(context["page"])

    def _broken(self, context):
        raise RuntimeError("this section is broken")

    @hookimpl
    def admin_menu(self, site):
        return [("活动", "promo_admin"), ("不存在", "no.such.endpoint")]

    @hookimpl
    def prepare_site_app(self, app, site):
        app.add_url_rule("/admin/promo/", "promo_admin", lambda: "活动管理")


def token(response):
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def buy(client, product, *, promo="", contact="buyer@example.com", quantity=1):
    page = client.get(f"/p/{product.id}")
    return client.post(f"/p/{product.id}", data={
        "csrf_token": token(page), "sku": product.skus[0].id, "quantity": quantity, "contact": contact,
        "query_password": "pass1234", "promo": promo})


def site_orders(slug):
    with all_sites():
        site = Site.get(Site.slug == slug)
        return list(orders.Order.select().where(orders.Order.site == site.id))


@pytest.fixture
def promo(host, site_files):
    plugin = Promo()
    host.plugins.register(plugin, name="promo")
    host.registry.create("shop1", template="shop")
    host.registry.create("shop2", template="shop")
    site_files.edit("main", plugins=["promo"])
    site_files.edit("shop1", plugins=["promo"])
    return plugin


@pytest.fixture
def card(host):
    main = Site.get(Site.slug == "main")
    product = create_product(main, "测试月卡", 1500, max_qty=5)
    import_keys(product.skus[0], [f"CODE-{i:04d}" for i in range(6)], CardKeyCipher.from_instance(host.instance))
    return product


def stock(product) -> int:
    return Sku.get_by_id(product.skus[0].id).stock


# -- the price pipeline, validation and risk ------------------------------------------------------


def test_the_price_pipeline_sets_what_the_buyer_pays_and_the_page_shows_it(promo, card, client_for):
    client = client_for("main.localhost")
    page = client.get(f"/p/{card.id}").get_data(as_text=True)
    assert "¥10.00" in page and "活动价" in page and "<del" in page and 'name="promo"' in page
    assert buy(client, card, promo="OFF2").status_code == 302
    [order] = site_orders("main")
    assert (order.unit_price_fen, order.discount_fen, order.goods_fen, order.amount_fen) == (1000, 200, 800, 800)
    assert promo.events[0] == ("reserving", order.order_no, "OFF2")
    assert ("created", order.order_no, "main") in promo.events


def test_a_site_that_does_not_enable_the_plugin_keeps_its_prices(promo, card, client_for):
    client = client_for("shop2.localhost")
    assert "活动价" not in client.get(f"/p/{card.id}").get_data(as_text=True)
    assert buy(client, card, promo="OFF2").status_code == 302
    [order] = site_orders("shop2")
    assert order.discount_fen == 0 and order.unit_price_fen > 1000
    assert promo.events == []


def test_no_price_goes_below_the_selling_sites_cost(promo, card, client_for):
    buy(client_for("shop1.localhost"), card, promo="OFF2")
    [order] = site_orders("shop1")
    cost = order.costs[0][1]
    assert cost > 1000  # the offer (10.00) is below shop1's cost: the cost is the floor
    assert (order.unit_price_fen, order.discount_fen, order.goods_fen) == (cost, 0, cost)


def test_checkout_never_takes_the_goods_under_the_floor_or_to_zero():
    checkout = Checkout(site_id=1, site=None, product=None, sku_id=1, quantity=2, list_unit_fen=500, floor_unit_fen=300)
    assert checkout.take_off(10_000, source="t", label="满减") == 400
    assert checkout.goods_fen == 600
    assert not checkout.offer_unit_price(100, source="t", label="秒杀") or checkout.unit_price_fen == 300
    assert checkout.goods_fen == 600
    free = Checkout(site_id=1, site=None, product=None, sku_id=1, quantity=1, list_unit_fen=500)
    assert free.take_off(500, source="t", label="全免") == 499 and free.goods_fen == 1
    with pytest.raises(ValueError):
        free.take_off(-1, source="t", label="负数")


def test_a_refusing_plugin_shows_its_message_and_creates_nothing(promo, card, client_for):
    client = client_for("main.localhost")
    before = stock(card)
    page = client.post(f"/p/{card.id}", data={}, follow_redirects=True)  # primes the session
    response = buy(client, card, promo="BAD")
    assert response.status_code == 200 and "优惠码 BAD 无效" in response.get_data(as_text=True)
    response = buy(client, card, promo="GONE")
    assert "优惠码已用完" in response.get_data(as_text=True)
    assert site_orders("main") == [] and stock(card) == before and page is not None


def test_a_risky_checkout_is_refused_with_a_generic_message(promo, card, client_for):
    response = buy(client_for("main.localhost"), card, contact="risky@example.com")
    text = response.get_data(as_text=True)
    assert "存在风险" in text and "block list" not in text
    assert site_orders("main") == []


# -- broken plugins -------------------------------------------------------------------------------


def failures() -> dict:
    return {(f.plugin, f.hook): f for f in PluginError.select()}


def test_a_plugin_raising_in_the_price_pipeline_is_skipped_and_recorded(promo, card, client_for):
    promo.fail.add("adjust_price")
    client = client_for("main.localhost")
    assert buy(client, card).status_code == 302
    [order] = site_orders("main")
    assert order.unit_price_fen == 1500  # the list price: nothing from the broken plugin
    assert failures()[("promo", "adjust_price")].count >= 2  # the page's preview and the checkout


def test_a_plugin_raising_while_reserving_fails_the_order_closed(promo, card, client_for):
    promo.fail.add("order_reserving")
    before = stock(card)
    response = buy(client_for("main.localhost"), card)
    assert "插件出错" in response.get_data(as_text=True)
    assert site_orders("main") == [] and stock(card) == before
    assert "promo broke in order_reserving" in failures()[("promo", "order_reserving")].message


def test_a_plugin_raising_after_the_order_leaves_the_order_and_the_payment_standing(promo, card, client_for):
    promo.fail |= {"order_created", "order_paid"}
    client = client_for("main.localhost")
    path = buy(client, card).headers["Location"]
    page = client.get(path)
    client.post(path + "/demo-pay", data={"csrf_token": token(page)})
    [order] = site_orders("main")
    assert order.status == "delivered"
    assert ("delivered", order.order_no, "main") in promo.events  # the other hooks still ran
    assert {("promo", "order_created"), ("promo", "order_paid")} <= set(failures())


def test_lifecycle_hooks_run_once_each(promo, card, client_for, host):
    client = client_for("main.localhost")
    path = buy(client, card).headers["Location"]
    csrf = token(client.get(path))
    for _ in range(2):  # a replayed payment fires nothing twice
        client.post(path + "/demo-pay", data={"csrf_token": csrf})
    [order] = site_orders("main")
    kinds = [event[0] for event in promo.events]
    assert kinds == ["reserving", "created", "paid", "delivered"]
    assert promo.events[2] == ("paid", order.order_no, "delivered")
    refund = refunds.refund_order(order.order_no, to="manual", reason="test")
    assert promo.events[-1] == ("refunded", order.order_no, "manual") and refund.status == "pending"
    refunds.refund_order(order.order_no, to="manual")  # the same refund again: no second event
    assert [e[0] for e in promo.events].count("refunded") == 1


def test_order_expiring_runs_in_the_expiry_and_a_failure_keeps_the_order_for_the_next_sweep(promo, card, client_for):
    client = client_for("main.localhost")
    buy(client, card)
    [order] = site_orders("main")
    before = stock(card)
    promo.fail.add("order_expiring")
    assert orders.expire_due(now=utcnow() + LATER, expiring=hooks.expiring_callback()) == 0
    with all_sites():
        assert orders.Order.get_by_id(order.id).status == "created" and stock(card) == before
    assert ("promo", "order_expiring") in failures()
    promo.fail.clear()
    assert orders.expire_due(now=utcnow() + LATER, expiring=hooks.expiring_callback()) == 1
    with all_sites():
        assert orders.Order.get_by_id(order.id).status == "expired" and stock(card) == before + 1
    assert ("expiring", order.order_no, None) in promo.events


def test_a_broken_plugin_is_listed_with_its_failures(promo, card, client_for, host, cli):
    promo.fail.add("order_created")
    buy(client_for("main.localhost"), card)
    result = cli("plugins", "list", instance_path=host.instance.path)
    assert result.exit_code == 0, result.output
    assert re.search(r"promo\s+order_created\s+1× .*promo broke in order_created", result.output)


# -- sections, menu, settings, jobs, commands ----------------------------------------------------


def test_theme_sections_render_escaped_and_a_broken_one_is_left_out(promo, card, client_for):
    home = client_for("main.localhost").get("/").get_data(as_text=True)
    assert "<div class='promo'>限时活动 · home</div>" in home
    assert "&lt;b&gt;不是 HTML&lt;/b&gt;" in home and "<b>不是 HTML</b>" not in home
    assert 'data-section="promo_broken"' not in home
    product_page = client_for("main.localhost").get(f"/p/{card.id}").get_data(as_text=True)
    assert "限时活动 · product" in product_page
    assert "限时活动" not in client_for("shop2.localhost").get("/").get_data(as_text=True)


@pytest.fixture
def console(host, client_for):
    main = Site.get(Site.slug == "main")
    create_account(main.id, "boss", PASSWORD)
    client = client_for("main.localhost")
    page = client.get("/admin/login")
    assert client.post("/admin/login", data={"csrf_token": token(page), "username": "boss",
                                             "password": PASSWORD}).status_code == 302
    return client


def test_the_console_menu_shows_the_plugins_links_that_exist(promo, console):
    page = console.get("/admin/plugins/").get_data(as_text=True)
    assert 'href="/admin/promo/">活动</a>' in page and "不存在" not in page


def test_owners_switch_a_plugin_per_site_and_the_other_site_keeps_it(promo, card, console, client_for, site_files):
    page = console.get("/admin/plugins/")
    assert "promo" in page.get_data(as_text=True)
    response = console.post("/admin/plugins/promo/toggle", data={"csrf_token": token(page)})
    assert response.status_code == 302
    assert "promo" not in site_files.read("main").get("plugins", [])
    assert "活动价" not in client_for("main.localhost").get(f"/p/{card.id}").get_data(as_text=True)
    assert 'name="promo"' in client_for("shop1.localhost").get(f"/p/{card.id}").get_data(as_text=True)
    assert console.post("/admin/plugins/promo/toggle", data={}).status_code == 400  # no CSRF token


def test_the_settings_form_validates_keeps_secrets_and_writes_the_site_file(promo, console, site_files, monkeypatch):
    page = console.get("/admin/plugins/promo/settings")
    text = page.get_data(as_text=True)
    assert "横幅文字" in text and 'value="欢迎"' in text and "已设置" not in text
    assert text.count('<input name="levels"') == 2 * 2  # an empty table: two blank rows (two text cells each)
    levels = ["银卡", "10000", "0", "金卡", "50000", "1", "", "", "0", "", "", "0"]  # row by row; blank rows dropped
    form = {"csrf_token": token(page), "banner": "双十一", "percent": "80", "loud": "y", "api_key": "s3cret",
            "tiers": "3，4", "levels": levels, "extra": '{"a": 1}'}
    bad = console.post("/admin/plugins/promo/settings", data=form).get_data(as_text=True)
    assert "超出允许范围" in bad and "promo" not in site_files.read("main").get("settings", {})
    too_long = console.post("/admin/plugins/promo/settings", data={**form, "percent": "8", "banner": "长" * 21})
    assert "最多 20 个字" in too_long.get_data(as_text=True)
    bad_json = console.post("/admin/plugins/promo/settings", data={**form, "percent": "8", "extra": "{"})
    assert "JSON 格式不正确" in bad_json.get_data(as_text=True)
    bad_cell = console.post("/admin/plugins/promo/settings", data={**form, "percent": "8",
                                                                   "levels": ["银卡", "1万", "0"]})
    assert "第 1 行「门槛（分）」须为整数" in bad_cell.get_data(as_text=True)
    bad_schema = console.post("/admin/plugins/promo/settings", data={**form, "percent": "8",
                                                                     "levels": ["", "100", "0"]})
    assert "第 1 行「name」必须填写" in bad_schema.get_data(as_text=True)
    assert "promo" not in site_files.read("main").get("settings", {})
    saved = console.post("/admin/plugins/promo/settings", data={**form, "percent": "8"})
    assert saved.status_code == 302
    stored = site_files.read("main")["settings"]["promo"]
    assert stored == {"banner": "双十一", "percent": 8, "loud": True, "api_key": "s3cret", "tiers": [3, 4],
                      "levels": [{"name": "银卡", "min_spend_fen": 10000, "vip": False},
                                 {"name": "金卡", "min_spend_fen": 50000, "vip": True}], "extra": {"a": 1}}
    again = console.get("/admin/plugins/promo/settings").get_data(as_text=True)
    assert "s3cret" not in again and "已设置" in again
    # Saving with the secret left empty keeps it; an env: reference must name a set variable.
    page = console.get("/admin/plugins/promo/settings")
    assert 'value="金卡"' in page.get_data(as_text=True) and 'value="3, 4"' in page.get_data(as_text=True)
    form = {"csrf_token": token(page), "banner": "新横幅", "percent": "8", "tiers": "", "api_key": ""}
    assert console.post("/admin/plugins/promo/settings", data=form).status_code == 302
    assert site_files.read("main")["settings"]["promo"]["api_key"] == "s3cret"
    missing = console.post("/admin/plugins/promo/settings", data={**form, "api_key": "env:PROMO_KEY_UNSET"})
    assert "PROMO_KEY_UNSET" in missing.get_data(as_text=True)
    monkeypatch.setenv("PROMO_KEY", "from-env")
    assert console.post("/admin/plugins/promo/settings", data={**form, "api_key": "env:PROMO_KEY"}).status_code == 302
    assert site_files.read("main")["settings"]["promo"]["api_key"] == "env:PROMO_KEY"


def test_settings_are_checked_against_the_schema_and_name_the_key(monkeypatch):
    assert check_settings(SCHEMA, {}, where="site.toml", plugin="promo") == {
        "banner": "欢迎", "percent": 5, "loud": False, "tiers": [1, 2], "levels": [], "extra": {}}
    with pytest.raises(ConfigError, match=r"settings\.promo\.percent: 99 is greater than the maximum of 50"):
        check_settings(SCHEMA, {"percent": 99}, where="site.toml", plugin="promo")
    with pytest.raises(ConfigError, match=r"settings\.promo\.colour: unknown setting"):
        check_settings(SCHEMA, {"colour": "red"}, where="site.toml", plugin="promo")
    with pytest.raises(ConfigError) as raised:
        check_settings(SCHEMA, {"api_key": 12345678}, where="site.toml", plugin="promo")
    assert "12345678" not in str(raised.value)  # a secret is never quoted back
    monkeypatch.setenv("PROMO_KEY", "k")

    class Site_:
        settings = {"promo": {"api_key": "env:PROMO_KEY"}}
        config_file = "sites/x/site.toml"

    assert settings_for(Site_(), "promo", SCHEMA)["api_key"] == "k"


def test_plugins_add_jobs_and_a_raising_one_is_skipped(promo, host):
    from kamengsite.jobs import make_jobs

    ran = []

    class JobPlugin:
        @hookimpl
        def register_jobs(self, huey, instance):
            @huey.periodic_task(crontab(minute="*/5"), name="jobplugin.tick")
            def tick():
                ran.append(instance.path)

    class BadJobs:
        @hookimpl
        def register_jobs(self, huey, instance):
            raise RuntimeError("no jobs today")

    host.plugins.register(JobPlugin(), name="jobplugin")
    host.plugins.register(BadJobs(), name="badjobs")
    jobs = make_jobs(host.instance, immediate=True)
    names = {task.__name__ for task in jobs.huey._registry._periodic_tasks}
    assert {"jobplugin.tick", "expire_orders"} <= names
    tick = next(t for t in jobs.huey._registry._periodic_tasks if t.__name__ == "jobplugin.tick")
    tick().execute()
    assert ran == [host.instance.path]
    assert ("badjobs", "register_jobs") in failures()


def test_plugins_add_commands(promo, host):
    import click

    from kamengsite import cli as cli_module

    class CommandPlugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("promo-hello")
            def hello():
                click.echo("你好，插件命令")

    host.plugins.register(CommandPlugin(), name="commandplugin")
    try:
        cli_module._register_plugin_commands()
        result = CliRunner().invoke(cli_module.main, ["promo-hello"])
        assert result.exit_code == 0 and "你好，插件命令" in result.output
    finally:
        cli_module.main.commands.pop("promo-hello", None)


def test_a_plugin_ships_templates_that_a_theme_may_override(host, tmp_path, monkeypatch):
    import importlib
    import sys

    package = tmp_path / "kamengsite_tplplugin"
    (package / "templates" / "tplplugin").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "templates" / "tplplugin" / "hello.html").write_text("插件模板 {{ who }}", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kamengsite_tplplugin")
    try:
        host.plugins.register(module, name="tplplugin")
        assert package / "templates" in host.plugins.template_dirs()
        host.themes.add_template_dirs(host.plugins.template_dirs())
        rendered = host.themes.environment("light").get_template("tplplugin/hello.html").render(who="<b>")
        assert rendered == "插件模板 &lt;b&gt;"
        # A theme's own file of the same name wins over the plugin's.
        theme_copy = tmp_path / "themes"
        import shutil

        shutil.copytree(host.themes.root / "light", theme_copy / "light")
        (theme_copy / "light" / "templates" / "tplplugin").mkdir()
        (theme_copy / "light" / "templates" / "tplplugin" / "hello.html").write_text("主题版", encoding="utf-8")
        from kamengsite.themes import ThemeRegistry

        themes = ThemeRegistry(theme_copy)
        themes.add_template_dirs(host.plugins.template_dirs())
        assert themes.environment("light").get_template("tplplugin/hello.html").render() == "主题版"
    finally:
        sys.modules.pop("kamengsite_tplplugin", None)


def test_a_hidden_checkout_input_travels_only_with_links(promo, card, client_for, host, site_files):
    class Linked:
        @hookimpl
        def checkout_inputs(self, site):
            return [CheckoutInput("team", "组队下单", hidden=True)]

    host.plugins.register(Linked(), name="linked")
    site_files.edit("shop2", plugins=["linked"])
    client = client_for("shop2.localhost")
    assert 'name="team"' not in client.get(f"/p/{card.id}").get_data(as_text=True)
    page = client.get(f"/p/{card.id}?team=join%3A7").get_data(as_text=True)
    assert '<input type="hidden" name="team" value="join:7">' in page and "组队下单" in page


def test_a_plugin_that_fails_to_import_is_reported_and_its_sites_keep_serving(instance, monkeypatch):
    from importlib.metadata import EntryPoint

    from kamengsite import plugins as plugin_module
    from kamengsite.host import Host
    from kamengsite.plugins import PluginHost
    from kamengsite.testing import SiteClient

    broken = EntryPoint(name="broken_demo", value="kamengsite_no_such_module_for_tests", group="kamengsite")
    real = list(plugin_module.entry_points(group="kamengsite"))
    monkeypatch.setattr(plugin_module, "entry_points", lambda group: [*real, broken])
    host = Host(instance, plugins=PluginHost())
    host.registry.create("main", template="main")
    host.registry.update("main", plugins=["broken_demo"])
    assert "No module named 'kamengsite_no_such_module_for_tests'" in host.plugins.broken["broken_demo"]
    client = SiteClient(host, "main.localhost")
    assert client.get("/").status_code == 200  # the site listing it serves, without it
    main = Site.get(Site.slug == "main")
    create_account(main.id, "boss", PASSWORD)
    page = client.get("/admin/login")
    client.post("/admin/login", data={"csrf_token": token(page), "username": "boss", "password": PASSWORD})
    listing = client.get("/admin/plugins/").get_data(as_text=True)
    assert "加载失败的插件" in listing and "kamengsite_no_such_module_for_tests" in listing


def _form_fields(html: str) -> list[tuple[str, str]]:
    """(name, value) of every input, select and textarea of a page, in order, as a browser would submit them."""
    from html import unescape

    fields = []
    pattern = r'<select\b([^>]*)>(.*?)</select>|<textarea\b([^>]*)>(.*?)</textarea>|<input\b([^>]*)>'
    for tag in re.finditer(pattern, html, re.S):
        select_attrs, options, area_attrs, text, input_attrs = tag.groups()
        attrs = select_attrs or area_attrs or input_attrs or ""
        name = re.search(r'name="([^"]+)"', attrs)
        if name is None:
            continue
        if select_attrs is not None:
            chosen = (re.search(r'<option\b(?=[^>]*\bselected\b)[^>]*value="([^"]*)"', options)
                      or re.search(r'<option value="([^"]*)"', options))
            fields.append((name.group(1), chosen.group(1) if chosen else ""))
        elif area_attrs is not None:
            fields.append((name.group(1), unescape(text)))
        elif 'type="checkbox"' in attrs:
            if "checked" in attrs:
                fields.append((name.group(1), "y"))
        else:
            value = re.search(r'value="([^"]*)"', attrs)
            fields.append((name.group(1), unescape(value.group(1)) if value else ""))
    return fields


def test_every_installed_plugins_settings_form_renders_and_saves_as_shown(host, console, site_files):
    from werkzeug.datastructures import MultiDict

    schemas = host.plugins.settings_schemas()
    channels = {impl.plugin_name for impl in host.plugins.pm.hook.payment_channels.get_hookimpls()}
    with_forms = [name for name in host.plugins.names() if name in schemas and name not in channels]
    assert {"seo", "coupons", "distribution"} <= set(with_forms)
    for name in with_forms:
        page = console.get(f"/admin/plugins/{name}/settings")
        assert page.status_code == 200, name
        form = MultiDict(_form_fields(page.get_data(as_text=True).split("<main>", 1)[1]))
        saved = console.post(f"/admin/plugins/{name}/settings", data=form)
        assert saved.status_code == 302, (name, re.findall(r'class="error">([^<]*)', saved.get_data(as_text=True)))
        stored = site_files.read("main")["settings"][name]
        assert check_settings(schemas[name], stored, where="site.toml", plugin=name) is not None
