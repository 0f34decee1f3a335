"""Tenant scoping (kamengsite/tenancy.py) on every database backend: no query crosses a site by accident."""

from __future__ import annotations

import threading

import peewee
import pytest
from flask import jsonify

from kamengsite.db import database, init_database
from kamengsite.models import Site
from kamengsite.tenancy import CrossTenantError, TenantModel, all_sites, current_site_id, site_scope

from conftest import SiteClient


class Widget(TenantModel):
    """A test-only tenant table."""

    name = peewee.CharField(max_length=40)
    qty = peewee.IntegerField(default=0)

    class Meta:
        table_name = "test_tenancy_widget"


def names(query=None):
    return sorted(w.name for w in (query if query is not None else Widget.select()))


def everything():
    """(name, site id) of every row, read unscoped."""
    with all_sites():
        return sorted((w.name, w.site_id) for w in Widget.select())


@pytest.fixture
def sites(db_instance):
    """Sites alpha and beta on a fresh database of each backend, two widgets each; yields their ids."""
    init_database(db_instance.database_url)
    with database.connection_context():
        database.create_tables([Widget])
        a = Site.create(slug="alpha").id
        b = Site.create(slug="beta").id
        with all_sites():
            Widget.insert_many([("a1", 1, a), ("a2", 2, a), ("b1", 10, b), ("b2", 20, b)],
                               fields=[Widget.name, Widget.qty, Widget.site]).execute()
        yield a, b


# -- outside any scope ----------------------------------------------------------------------------


def test_queries_outside_a_scope_raise(sites):
    a, _ = sites
    attempts = {
        "select": lambda: list(Widget.select()),
        "get": lambda: Widget.get(Widget.name == "a1"),
        "get_by_id": lambda: Widget.get_by_id(1),
        "count": lambda: Widget.select().count(),
        "update": lambda: Widget.update(qty=0).execute(),
        "delete": lambda: Widget.delete().execute(),
        "insert": lambda: Widget.insert(name="x", site=a).execute(),
        "insert_many": lambda: Widget.insert_many([{"name": "x", "site": a}]).execute(),
        "create": lambda: Widget.create(name="x", site=a),
        "save": lambda: Widget(name="x", site=a).save(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(CrossTenantError, match="no site scope"):
            attempt()
            pytest.fail(f"{what} ran outside a scope")
    assert everything() == [("a1", a), ("a2", a), ("b1", sites[1]), ("b2", sites[1])]


# -- inside a site's scope -----------------------------------------------------------------------


def test_site_scope_confines_reads(sites):
    a, b = sites
    with site_scope(a):
        assert names() == ["a1", "a2"]
        assert Widget.select().count() == 2
        assert names(Widget.select().where(Widget.qty >= 1)) == ["a1", "a2"]
        assert Widget.get(Widget.name == "a1").site_id == a
        with pytest.raises(Widget.DoesNotExist):
            Widget.get(Widget.name == "b1")
        b1 = everything_ids()["b1"]
        with pytest.raises(Widget.DoesNotExist):
            Widget.get_by_id(b1)
        assert Widget.get_or_none(Widget.id == b1) is None
        assert Widget.select(peewee.fn.SUM(Widget.qty)).scalar() == 3
    with site_scope(b):
        assert names() == ["b1", "b2"]


def everything_ids():
    with all_sites():
        return {w.name: w.id for w in Widget.select()}


def test_site_scope_confines_update_and_delete(sites):
    a, b = sites
    with site_scope(a):
        assert Widget.update(qty=Widget.qty + 100).execute() == 2
        assert Widget.update(qty=0).where(Widget.name == "b1").execute() == 0
        assert Widget.delete().where(Widget.name.startswith("b")).execute() == 0
    with all_sites():
        assert {w.name: w.qty for w in Widget.select()} == {"a1": 101, "a2": 102, "b1": 10, "b2": 20}
    with site_scope(b):
        assert Widget.delete().execute() == 2
        assert Widget.delete_by_id(everything_ids()["a1"]) == 0
    assert everything() == [("a1", a), ("a2", a)]


def test_instance_methods_stay_in_scope(sites):
    a, b = sites
    with site_scope(a):
        w = Widget.get(Widget.name == "a1")
        w.qty = 7
        w.save()
        assert Widget.get_by_id(w.id).qty == 7
        w.delete_instance()
        assert names() == ["a2"]
    assert len(everything()) == 3


def test_inserts_are_stamped_with_the_site(sites):
    a, b = sites
    with site_scope(b):
        Widget.create(name="created")
        Widget.insert(name="inserted").execute()
        Widget.insert({Widget.name: "by-field"}).execute()
        Widget(name="saved").save()
        Widget.create(name="explicit", site=b)  # naming its own site is fine
    rows = dict(everything())
    for name in ("created", "inserted", "by-field", "saved", "explicit"):
        assert rows[name] == b, name


def test_writing_for_another_site_from_inside_a_scope_raises(sites):
    a, b = sites
    other = Site.get_by_id(b)
    before = everything()
    attempts = {
        "create": lambda: Widget.create(name="x", site=b),
        "create with a Site": lambda: Widget.create(name="x", site=other),
        "insert site": lambda: Widget.insert(name="x", site=b).execute(),
        "insert site_id": lambda: Widget.insert({"name": "x", "site_id": b}).execute(),
        "insert field": lambda: Widget.insert({Widget.name: "x", Widget.site: b}).execute(),
        "insert_many dicts": lambda: Widget.insert_many([{"name": "ok"}, {"name": "x", "site": b}]).execute(),
        "insert_many tuples": lambda: Widget.insert_many([("ok", a), ("x", b)], fields=[Widget.name, Widget.site]).execute(),
        "insert_many names": lambda: Widget.insert_many([("x", b)], fields=["name", "site"]).execute(),
        "insert_many column": lambda: Widget.insert_many([("x", b)], fields=["name", "site_id"]).execute(),
        "save": lambda: Widget(name="x", site=b).save(),
        "update site": lambda: Widget.update(site=b).execute(),
        "update site_id": lambda: Widget.update({"site_id": b}).execute(),
        "update field": lambda: Widget.update({Widget.site: other}).execute(),
        "replace": lambda: Widget.replace(name="x", site=b).execute(),
        "insert_from": lambda: Widget.insert_from(
            Site.select(Site.slug, peewee.Value(b)), [Widget.name, Widget.site]).execute(),
    }
    with site_scope(a):
        for what, attempt in attempts.items():
            with pytest.raises(CrossTenantError):
                attempt()
                pytest.fail(f"{what} wrote into another site")
    assert everything() == before


def test_a_row_of_another_site_cannot_be_saved_from_inside_a_scope(sites):
    a, b = sites
    with all_sites():
        b1 = Widget.get(Widget.name == "b1")
    b1.qty = 0
    with site_scope(a):
        with pytest.raises(CrossTenantError):
            b1.save()
        b1.site = a  # claiming it for this site does not reach it either: the update is confined
        assert b1.save() == 0
    with all_sites():
        row = Widget.get_by_id(b1.id)
        assert (row.qty, row.site_id) == (10, b)


def test_all_sites_sees_and_writes_everything(sites):
    a, b = sites
    with all_sites():
        assert current_site_id() is None
        assert names() == ["a1", "a2", "b1", "b2"]
        Widget.create(name="b3", site=b)
        Widget.insert_many([{"name": "a3", "site": a}]).execute()
        assert Widget.update(qty=5).execute() == 6
        assert Widget.select().where(Widget.site == a).count() == 3
        with pytest.raises(peewee.DatabaseError):  # but a row still needs a site (NOT NULL)
            with database.atomic():
                Widget.create(name="nobody")


# -- insert_many ----------------------------------------------------------------------------------


def test_insert_many_with_dicts(sites):
    a, b = sites
    with site_scope(a):
        Widget.insert_many([{"name": "d1"}, {"name": "d2", "qty": 3}, {"name": "d3", "site": a}]).execute()
    rows = dict(everything())
    assert (rows["d1"], rows["d2"], rows["d3"]) == (a, a, a)


def test_insert_many_with_tuples_and_fields(sites):
    a, b = sites
    with site_scope(b):
        Widget.insert_many([("t1", 1), ("t2", 2)], fields=[Widget.name, Widget.qty]).execute()
        Widget.insert_many([("t3",)], fields=["name"]).execute()
        Widget.insert_many([("t4", b)], fields=[Widget.name, Widget.site]).execute()
        Widget.insert_many([("t5", b)], fields=["name", "site_id"]).execute()
        Widget.insert_many(((f"g{i}", i) for i in range(3)), fields=[Widget.name, Widget.qty]).execute()
        Widget.insert_many(((f"h{i}", b) for i in range(2)), fields=[Widget.name, Widget.site]).execute()
        assert names() == sorted(["b1", "b2", "t1", "t2", "t3", "t4", "t5", "g0", "g1", "g2", "h0", "h1"])
    assert [site for name, site in everything() if name[0] in "tgh"] == [b] * 10


# -- scope mechanics -------------------------------------------------------------------------------


def test_scopes_nest_and_restore():
    with pytest.raises(CrossTenantError):
        current_site_id()
    with site_scope(1):
        assert current_site_id() == 1
        with all_sites():
            assert current_site_id() is None
            with site_scope(2):
                assert current_site_id() == 2
            assert current_site_id() is None
        assert current_site_id() == 1
    with pytest.raises(CrossTenantError):
        current_site_id()


def test_scope_is_restored_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with site_scope(3):
            1 / 0
    with pytest.raises(CrossTenantError):
        current_site_id()


@pytest.mark.parametrize("bad", ["1", 1.0, None, True, [1]])
def test_site_scope_needs_a_site_id(bad):
    with pytest.raises(TypeError):
        with site_scope(bad):
            pass


def test_site_scope_accepts_a_site_row():
    with site_scope(Site(id=42, slug="x")) as site_id:
        assert site_id == 42 and current_site_id() == 42


def test_a_new_thread_starts_outside_any_scope():
    seen = []

    def work():
        try:
            seen.append(current_site_id())
        except CrossTenantError:
            seen.append("no scope")

    with site_scope(1):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert seen == ["no scope"]


# -- site requests run in their site's scope ------------------------------------------------------


def test_site_requests_see_only_their_rows(db_host, register_plugin):
    def widget_routes(app, site):
        @app.get("/_test/widgets")
        def _list():
            return jsonify(names())

        @app.get("/_test/widgets/add/<name>")  # GET: the storefront guards POSTs with CSRF
        def _add(name):
            Widget.create(name=name)
            return "added"

    register_plugin(db_host, widget_routes, name="test_widgets")
    db_host.registry.create("alpha", template="shop")
    db_host.registry.create("beta", template="shop")
    with database.connection_context():
        database.create_tables([Widget])
        ids = {s.slug: s.id for s in Site.select()}
        with all_sites():
            Widget.insert_many([("a1", ids["alpha"]), ("b1", ids["beta"])], fields=[Widget.name, Widget.site]).execute()

    alpha, beta = SiteClient(db_host, "alpha.localhost"), SiteClient(db_host, "beta.localhost")
    assert alpha.get("/_test/widgets/add/a2").text == "added"
    assert alpha.get("/_test/widgets").get_json() == ["a1", "a2"]
    assert beta.get("/_test/widgets").get_json() == ["b1"]
    assert SiteClient(db_host, "localhost").get("/_test/widgets").get_json() == []
    with database.connection_context():
        assert dict(everything())["a2"] == ids["alpha"]
    with pytest.raises(CrossTenantError):  # and the request's scope ended with the request
        current_site_id()
