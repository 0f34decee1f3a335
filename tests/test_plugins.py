"""The plugin host: per-site enablement and the template-context hook."""

from __future__ import annotations

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
