"""Site folders (kamengsite/sites.py): create from a template, change, disable, sync — all without a restart."""

from __future__ import annotations

import os
import shutil
import tomllib

import pytest

from kamengsite.config import SITE_FILE
from kamengsite.db import database
from kamengsite.errors import ConfigError, KamengsiteError
from kamengsite.host import Host
from kamengsite.models import Site, SiteDomain

from conftest import TEMPLATES_DIR, THEMES_DIR, SiteClient


def get(host, host_name, path="/"):
    return SiteClient(host, host_name).get(path)


def site_row(slug):
    with database.connection_context():
        return Site.get_or_none(Site.slug == slug)


def domains_of(slug):
    with database.connection_context():
        return sorted(d.domain for d in SiteDomain.select().join(Site).where(Site.slug == slug))


def folder_listing(host):
    """Every entry under the sites folder, hidden ones included."""
    return sorted(p.name for p in host.registry.root.iterdir())


# -- create ---------------------------------------------------------------------------------------


def test_created_site_serves_at_once(host):
    assert get(host, "localhost").status_code == 200  # the host is up and serving
    assert get(host, "shop1.localhost").status_code == 404
    config = host.registry.create("shop1", template="shop", name="新开小店", domains=["Shop1.Example.com."])
    assert config.domains == ("shop1.example.com",)  # normalised like a Host header
    response = get(host, "shop1.localhost")
    assert response.status_code == 200 and "新开小店" in response.text
    assert get(host, "shop1.example.com", "/healthz").get_json()["site"] == "shop1"


def test_created_site_serves_in_another_running_host(host):
    """Another worker process (here: another Host on the same instance) needs no restart either."""
    other = Host(host.instance)
    assert get(other, "localhost").status_code == 200
    host.registry.create("shop1", template="gaming", domains=["shop1.example.com"])
    assert get(other, "shop1.localhost", "/healthz").get_json()["site"] == "shop1"
    assert get(other, "shop1.example.com", "/healthz").get_json()["site"] == "shop1"


def test_create_copies_the_template(host):
    config = host.registry.create("shop1", template="wholesale", name="批发一号", parent="main")
    folder = host.registry.root / "shop1"
    template = tomllib.loads((TEMPLATES_DIR / "wholesale" / SITE_FILE).read_text())
    written = tomllib.loads((folder / SITE_FILE).read_text())
    assert written["name"] == "批发一号"
    assert written["theme"] == template["theme"] == config.theme
    assert written["tagline"] == template["tagline"]
    assert written["template"] == "wholesale" and written["parent"] == "main"
    for extra in ("assets", "layouts"):
        assert (folder / extra).is_dir()
    assert not [p for p in folder_listing(host) if p.startswith(".")]  # no staging folder left
    assert site_row("shop1").parent.slug == "main"


def test_create_with_theme_and_parent(host):
    host.registry.create("agent", template="shop")
    config = host.registry.create("shop1", template="shop", theme="dark", parent="agent")
    assert (config.theme, config.parent) == ("dark", "agent")
    assert site_row("shop1").parent_id == site_row("agent").id
    assert "theme-dark" in get(host, "shop1.localhost").text


def test_a_dropped_in_folder_serves_at_once(host):
    """An operator may copy a folder by hand; it is indexed on its first request."""
    shutil.copytree(TEMPLATES_DIR / "gaming", host.registry.root / "shop9")
    assert site_row("shop9") is None
    assert get(host, "shop9.localhost", "/healthz").get_json()["site"] == "shop9"
    assert site_row("shop9").parent.slug == "main"


def test_create_refuses_an_existing_slug(host):
    host.registry.create("shop1", template="shop", name="原来的店")
    before = (host.registry.root / "shop1" / SITE_FILE).read_bytes()
    with pytest.raises(KamengsiteError, match="already exists"):
        host.registry.create("shop1", template="gaming", name="抢注")
    assert (host.registry.root / "shop1" / SITE_FILE).read_bytes() == before
    assert "原来的店" in get(host, "shop1.localhost").text


def test_create_refuses_the_main_site_again(host):
    with pytest.raises(KamengsiteError, match="already exists"):
        host.registry.create("main", template="main")


def test_create_refuses_an_unknown_template_and_lists_the_available(host):
    with pytest.raises(KamengsiteError) as info:
        host.registry.create("shop1", template="nosuch")
    available = sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / SITE_FILE).is_file())
    assert len(available) >= 2
    assert "'nosuch'" in str(info.value)
    assert f"(available: {', '.join(available)})" in str(info.value)
    assert host.registry.templates() == available
    assert folder_listing(host) == ["main"]


@pytest.mark.parametrize("template", ["../main", "../../etc", "/etc", "Shop", ""])
def test_template_name_cannot_escape_the_templates_folder(host, template):
    with pytest.raises(ConfigError):
        host.registry.create("shop1", template=template)
    assert folder_listing(host) == ["main"]


@pytest.mark.parametrize("slug", ["www", "admin", "static", "Shop1", "shop_1", "-shop", "a" * 33, "", "..",
                                  "../evil", "../../tmp/evil", "a/b", "shop1\n"])
def test_create_refuses_reserved_and_invalid_slugs(host, tmp_path, slug):
    with pytest.raises(ConfigError):
        host.registry.create(slug, template="shop")
    assert folder_listing(host) == ["main"]
    assert not (host.registry.root.parent / "evil").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("domain", ["shop1.example.com", "SHOP1.example.com", "shop1.example.com."])
def test_create_refuses_a_domain_bound_to_another_site_and_leaves_nothing(host, domain):
    host.registry.create("shop1", template="shop", name="先来的店", domains=["shop1.example.com"])
    with pytest.raises(ConfigError) as info:
        host.registry.create("shop2", template="shop", name="后来的店", domains=["ok.example.org", domain])
    assert info.value.key == "domains[1]"
    assert "already bound to site 'shop1'" in info.value.reason
    assert folder_listing(host) == ["main", "shop1"]  # no folder, no staging leftovers
    assert site_row("shop2") is None and domains_of("shop2") == []
    assert get(host, "ok.example.org").status_code == 404
    assert "先来的店" in get(host, "shop1.example.com").text


@pytest.mark.parametrize("changes, key", [
    ({"domains": ["shop1.localhost"]}, "domains[0]"),      # under the platform domain
    ({"domains": ["not a domain"]}, "domains[0]"),
    ({"theme": "neon"}, "theme"),
    ({"name": "x" * 61}, "name"),
])
def test_create_validates_before_touching_the_disk(host, changes, key):
    with pytest.raises(ConfigError) as info:
        host.registry.create("shop1", template="shop", **changes)
    assert info.value.key == key
    assert folder_listing(host) == ["main"]
    assert site_row("shop1") is None


def test_create_with_a_missing_parent_leaves_nothing(host):
    with pytest.raises(ConfigError, match="no site named 'ghost'"):
        host.registry.create("shop1", template="shop", parent="ghost")
    assert folder_listing(host) == ["main"]
    assert site_row("shop1") is None


# -- changed folders are reloaded ------------------------------------------------------------------


def test_changed_name_is_served_on_the_next_request(host, site_files):
    host.registry.create("shop1", template="shop", name="旧名字")
    assert "旧名字" in get(host, "shop1.localhost").text
    site_files.edit("shop1", name="新的名字呀")
    response = get(host, "shop1.localhost")
    assert "新的名字呀" in response.text and "旧名字" not in response.text


def test_changed_theme_is_served_on_the_next_request(host, site_files):
    host.registry.create("shop1", template="shop")
    response = get(host, "shop1.localhost")
    assert "theme-light" in response.text
    assert get(host, "shop1.localhost", "/static/theme.css").data == (THEMES_DIR / "light/static/theme.css").read_bytes()
    site_files.edit("shop1", theme="dark")
    response = get(host, "shop1.localhost")
    assert "theme-dark" in response.text and "theme-light" not in response.text
    assert get(host, "shop1.localhost", "/static/theme.css").data == (THEMES_DIR / "dark/static/theme.css").read_bytes()


def test_changed_parent_is_indexed_on_the_next_request(host, site_files):
    host.registry.create("agent", template="shop")
    host.registry.create("shop1", template="shop")
    get(host, "shop1.localhost")
    site_files.edit("shop1", parent="agent")
    get(host, "shop1.localhost")
    assert site_row("shop1").parent.slug == "agent"


def test_in_place_edit_that_keeps_size_and_mtime_is_reloaded(host):
    host.registry.create("shop1", template="shop", name="AAAA店")
    assert "AAAA店" in get(host, "shop1.localhost").text
    path = host.registry.root / "shop1" / SITE_FILE
    before = os.stat(path)
    content = path.read_text(encoding="utf-8").replace("AAAA店", "BBBB店")
    with open(path, "r+", encoding="utf-8") as fh:  # same inode, same size
        fh.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "BBBB店" in get(host, "shop1.localhost").text


def test_domain_added_by_editing_the_folder_serves(host, site_files):
    host.registry.create("shop1", template="shop")
    assert get(host, "shop1.localhost").status_code == 200
    site_files.edit("shop1", domains=["new.example.com"])
    response = get(host, "new.example.com", "/healthz")
    assert response.status_code == 200 and response.get_json()["site"] == "shop1"


# -- update / disable -----------------------------------------------------------------------------


def test_update_changes_the_folder_and_the_index(host):
    host.registry.create("shop1", template="shop", domains=["a.example.com"])
    config = host.registry.update("shop1", name="改名了", domains=["b.example.com"], enabled=False)
    assert (config.name, config.domains, config.enabled) == ("改名了", ("b.example.com",), False)
    written = tomllib.loads((host.registry.root / "shop1" / SITE_FILE).read_text())
    assert written["name"] == "改名了" and written["enabled"] is False
    assert site_row("shop1").status == "disabled"
    assert domains_of("shop1") == ["b.example.com"]
    assert not [p for p in (host.registry.root / "shop1").iterdir() if p.name.startswith(".")]


def test_disable_and_enable(host):
    host.registry.create("shop1", template="shop", name="开关店")
    assert get(host, "shop1.localhost").status_code == 200
    host.registry.update("shop1", enabled=False)
    response = get(host, "shop1.localhost")
    assert response.status_code == 503 and "开关店 暂停营业" in response.text
    assert site_row("shop1").status == "disabled"
    host.registry.update("shop1", enabled=True)
    assert get(host, "shop1.localhost").status_code == 200
    assert site_row("shop1").status == "active"


def test_update_refuses_a_domain_of_another_site(host):
    host.registry.create("shop1", template="shop", domains=["taken.example.com"])
    host.registry.create("shop2", template="shop")
    with pytest.raises(ConfigError, match="already bound to site 'shop1'"):
        host.registry.update("shop2", domains=["taken.example.com"])
    assert domains_of("shop1") == ["taken.example.com"]
    assert get(host, "taken.example.com", "/healthz").get_json()["site"] == "shop1"


def test_invalid_update_leaves_the_site_as_it_was(host):
    host.registry.create("shop1", template="shop", name="好好的店")
    before = (host.registry.root / "shop1" / SITE_FILE).read_bytes()
    with pytest.raises(ConfigError):
        host.registry.update("shop1", theme="neon")
    assert (host.registry.root / "shop1" / SITE_FILE).read_bytes() == before
    assert get(host, "shop1.localhost").status_code == 200


def test_update_of_a_missing_site_is_an_operator_error(host):
    with pytest.raises(KamengsiteError, match="nosuch"):
        host.registry.update("nosuch", enabled=False)


@pytest.mark.parametrize("slug", ["../main", "www", "Shop1"])
def test_update_refuses_invalid_slugs(host, slug):
    with pytest.raises(ConfigError):
        host.registry.update(slug, enabled=False)


# -- sync and scan ----------------------------------------------------------------------------


def test_sync_indexes_good_folders_and_reports_broken_ones(host, site_files):
    host.registry.create("shop1", template="shop")
    shutil.copytree(TEMPLATES_DIR / "shop", host.registry.root / "handmade")
    site_files.write_text("badtoml", "name = [")
    site_files.write_text("badtheme", 'name = "x"\ntheme = "neon"\n')
    (host.registry.root / "nofile").mkdir()
    shutil.copytree(TEMPLATES_DIR / "shop", host.registry.root / "Bad_Name")
    (host.registry.root / ".hidden").mkdir()
    (host.registry.root / "_parked").mkdir()

    broken = host.registry.sync()

    assert sorted(broken) == ["Bad_Name", "badtheme", "badtoml", "nofile"]
    assert all(isinstance(e, ConfigError) for e in broken.values())
    assert "not valid TOML" in str(broken["badtoml"])
    assert broken["badtheme"].key == "theme"
    assert "missing" in str(broken["nofile"])
    assert site_row("handmade") is not None and site_row("handmade").parent.slug == "main"
    for slug in broken:
        assert site_row(slug) is None


def test_sync_reports_domain_conflicts_between_folders(host, site_files):
    host.registry.create("shop1", template="shop", domains=["dup.example.com"])
    shutil.copytree(TEMPLATES_DIR / "shop", host.registry.root / "shop2")
    site_files.edit("shop2", domains=["dup.example.com"])
    broken = host.registry.sync()
    assert list(broken) == ["shop2"]
    assert broken["shop2"].key == "domains[0]" and "'shop1'" in broken["shop2"].reason
    assert domains_of("shop1") == ["dup.example.com"]


def test_sync_creates_parents_before_children(host, site_files):
    # "aaa" sorts before its parent "zzz": sync must index zzz first.
    for slug in ("zzz", "aaa"):
        shutil.copytree(TEMPLATES_DIR / "shop", host.registry.root / slug)
    site_files.edit("aaa", parent="zzz")
    assert host.registry.sync() == {}
    assert site_row("aaa").parent.slug == "zzz"


def test_sync_reports_a_missing_parent(host, site_files):
    shutil.copytree(TEMPLATES_DIR / "shop", host.registry.root / "orphan")
    site_files.edit("orphan", parent="ghost")
    broken = host.registry.sync()
    assert list(broken) == ["orphan"] and broken["orphan"].key == "parent"


def test_sync_of_a_clean_instance_reports_nothing(host):
    host.registry.create("shop1", template="shop")
    assert host.registry.sync() == {}


def test_scan_yields_configs_and_errors(host, site_files):
    host.registry.create("shop1", template="shop")
    site_files.write_text("broken", "x")
    results = dict(host.registry.scan())
    assert set(results) == {"main", "shop1", "broken"}
    assert results["shop1"].slug == "shop1"
    assert isinstance(results["broken"], ConfigError)
