"""The plugin host: per-site enablement and the template-context hook."""

from __future__ import annotations

import re

from kamengsite.hookspecs import hookimpl


class Greeter:
    @hookimpl
    def site_template_context(self, site):
        return {"greeting": f"欢迎光临 {site.name}"}

    @hookimpl
    def prepare_site_app(self, app, site):
        from flask import render_template_string

        app.add_url_rule("/greeting", "greeting", lambda: render_template_string("[{{ greeting }}]"))


def test_template_context_hook_reaches_only_sites_that_enable_the_plugin(host, client_for, site_files):
    host.plugins.register(Greeter(), name="greeter")
    host.registry.create("shop1", template="shop", name="一号店")
    host.registry.create("shop2", template="shop", name="二号店")
    site_files.edit("shop1", plugins=["greeter"])
    assert client_for("shop1.localhost").get("/greeting").get_data(as_text=True) == "[欢迎光临 一号店]"
    # shop2 does not enable the plugin: neither its route nor its context variable exist there.
    assert client_for("shop2.localhost").get("/greeting").status_code == 404


class Tuned:
    """A plugin with settings: a number with a range and a table, for the settings page."""

    @hookimpl
    def plugin_settings_schema(self):
        return {"type": "object", "properties": {
            "percent": {"type": "integer", "title": "折扣", "minimum": 1, "maximum": 100},
            "levels": {"type": "array", "title": "等级", "items": {"type": "object", "properties": {
                "name": {"type": "string", "title": "名称"}, "vip": {"type": "boolean", "title": "VIP"}}}},
        }}


def _console(host, client_for):
    from kamengsite.accounts import create_account
    from kamengsite.models import Site
    from kamengsite.testing import sign_in_console

    create_account(Site.get(Site.slug == "main").id, "boss", "correct horse battery staple")
    return sign_in_console(client_for("main.localhost"), "boss", "correct horse battery staple")


def test_the_plugins_pages_speak_chinese_by_default_and_english_on_request(host, client_for, site_files):
    host.plugins.register(Tuned(), name="tuned")
    site_files.edit("main", plugins=["tuned"])
    console = _console(host, client_for)
    page = console.get("/admin/plugins/").get_data(as_text=True)
    assert "<h1>插件</h1>" in page and "已启用" in page and ">停用</button>" in page
    settings = console.get("/admin/plugins/tuned/settings").get_data(as_text=True)
    assert "插件设置" in settings and "返回插件列表" in settings and ">否</option>" in settings

    page = console.get("/admin/plugins/?lang=en").get_data(as_text=True)
    assert "<h1>Plugins</h1>" in page and "Enabled" in page and ">Turn off</button>" in page
    assert "<h1>插件</h1>" not in page and "已启用" not in page and "停用" not in page
    settings = console.get("/admin/plugins/tuned/settings").get_data(as_text=True)  # the cookie keeps English
    assert "Plugin settings" in settings and "Back to the plugin list" in settings and ">No</option>" in settings
    assert "插件设置" not in settings and "返回插件列表" not in settings and "整行留空" not in settings
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', settings).group(1)
    refused = console.post("/admin/plugins/tuned/settings", data={"csrf_token": token, "percent": "500"})
    assert "Out of the allowed range" in refused.get_data(as_text=True)
