"""The command line (kamengsite/cli.py): operator workflows, and one clear line for every operator mistake."""

from __future__ import annotations

import os
import stat
import tomllib

import pytest
from click.testing import CliRunner

from kamengsite import migrations
from kamengsite.cli import main
from kamengsite.db import make_database
from kamengsite.host import Host
from kamengsite.instance import CONFIG_NAME, Instance

from conftest import TEMPLATES_DIR, SiteClient

MIGRATIONS = sorted(p.stem for p in migrations.DIRECTORY.glob("[0-9][0-9][0-9][0-9]_*.py"))


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def operator_error(result, *fragments) -> str:
    """An operator mistake: exit status 1, one line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def applied(instance_path):
    database = make_database(Instance.load(instance_path).database_url)
    try:
        return sorted(m.name for m in migrations.runner(database).status() if m.applied)
    finally:
        database.close()


@pytest.fixture
def initialised(cli):
    ok(cli("init"))
    return cli


# -- init -----------------------------------------------------------------------------------------


def test_init_creates_instance_database_and_main_site(cli):
    out = ok(cli("init", "--base-domain", "kameng.example.com"))
    path = cli.instance_path
    assert f"instance ready at {path.resolve()}" in out
    assert f"applied migrations: {', '.join(MIGRATIONS)}" in out
    assert "created main site 'main'" in out

    config = tomllib.loads((path / CONFIG_NAME).read_text())
    assert config["base_domain"] == "kameng.example.com"
    assert len(config["secret_key"]) == 64
    assert stat.S_IMODE(os.stat(path / CONFIG_NAME).st_mode) == 0o600
    assert (path / "sites" / "main" / "site.toml").is_file()
    assert applied(path) == MIGRATIONS

    host = Host(Instance.load(path))
    assert SiteClient(host, "kameng.example.com").get("/healthz").get_json()["site"] == "main"


def test_init_is_idempotent(cli):
    ok(cli("init"))
    secret = tomllib.loads((cli.instance_path / CONFIG_NAME).read_text())["secret_key"]
    site_toml = (cli.instance_path / "sites" / "main" / "site.toml").read_bytes()
    out = ok(cli("init"))
    assert "instance ready" in out
    assert "applied migrations" not in out and "created main site" not in out
    assert tomllib.loads((cli.instance_path / CONFIG_NAME).read_text())["secret_key"] == secret
    assert (cli.instance_path / "sites" / "main" / "site.toml").read_bytes() == site_toml


def test_init_with_a_database_url(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    ok(cli("init", "--database-url", url))
    assert Instance.load(cli.instance_path).database_url == url
    assert (tmp_path / "elsewhere.db").is_file()
    assert applied(cli.instance_path) == MIGRATIONS


def test_instance_folder_from_the_environment(cli, tmp_path):
    target = tmp_path / "from-env"
    result = CliRunner().invoke(main, ["init"], env={"KAMENGSITE_INSTANCE": str(target)})
    ok(result)
    assert (target / CONFIG_NAME).is_file()


def test_database_url_from_the_environment(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    ok(cli("init", env={"DATABASE_URL": url}))
    assert (tmp_path / "env.db").is_file()
    assert not (cli.instance_path / "kamengsite.db").exists()


# -- db -------------------------------------------------------------------------------------------


def test_db_status_and_upgrade(cli):
    Instance.create(cli.instance_path)  # an instance whose database was never migrated
    out = ok(cli("db", "status"))
    assert out.split("\n")[:-1] == [f"pending  {name}" for name in MIGRATIONS]

    out = ok(cli("db", "upgrade"))
    assert out.strip() == f"applied: {', '.join(MIGRATIONS)}"
    assert applied(cli.instance_path) == MIGRATIONS

    assert ok(cli("db", "upgrade")).strip() == "database is up to date"
    assert ok(cli("db", "status")).split("\n")[:-1] == [f"applied  {name}" for name in MIGRATIONS]


def test_db_upgrade_on_a_server_database(cli, backend_url):
    Instance.create(cli.instance_path, database_url=backend_url)
    assert ok(cli("db", "upgrade")).strip() == f"applied: {', '.join(MIGRATIONS)}"
    assert ok(cli("db", "upgrade")).strip() == "database is up to date"
    assert applied(cli.instance_path) == MIGRATIONS


# -- sites ----------------------------------------------------------------------------------------


def test_site_new_list_disable_enable(initialised):
    cli = initialised
    out = ok(cli("site", "new", "shop1", "--template", "gaming", "--name", "电竞一号",
                 "--domain", "shop1.example.com", "--domain", "www.shop1.example.com"))
    assert "created site 'shop1' (电竞一号, theme dark)" in out
    assert "http://shop1.localhost/" in out and "http://www.shop1.example.com/" in out
    ok(cli("site", "new", "shop2", "--theme", "business", "--parent", "shop1"))

    listing = ok(cli("site", "list")).splitlines()
    rows = {line.split()[0]: line for line in listing}
    assert sorted(rows) == ["main", "shop1", "shop2"]
    assert "enabled" in rows["shop1"] and "theme=dark" in rows["shop1"]
    assert "domains=shop1.example.com, www.shop1.example.com" in rows["shop1"]
    assert "parent=shop1" in rows["shop2"] and "theme=business" in rows["shop2"]
    assert "parent=-" in rows["main"]

    assert ok(cli("site", "disable", "shop1")).strip() == "site 'shop1' disabled"
    assert tomllib.loads((cli.instance_path / "sites/shop1/site.toml").read_text())["enabled"] is False
    assert "disabled" in {line.split()[0]: line for line in ok(cli("site", "list")).splitlines()}["shop1"]

    host = Host(Instance.load(cli.instance_path))
    assert SiteClient(host, "shop1.localhost").get("/").status_code == 503
    assert ok(cli("site", "enable", "shop1")).strip() == "site 'shop1' enabled"
    assert SiteClient(host, "shop1.localhost").get("/healthz").get_json()["site"] == "shop1"


def test_site_new_uses_the_shop_template_by_default(initialised):
    ok(initialised("site", "new", "shop1"))
    written = tomllib.loads((initialised.instance_path / "sites/shop1/site.toml").read_text())
    assert written["template"] == "shop" and written["parent"] == "main"


def test_site_templates(initialised):
    out = ok(initialised("site", "templates"))
    assert out.split() == sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / "site.toml").is_file())


def test_site_list_reports_broken_folders_and_fails(initialised):
    ok(initialised("site", "new", "shop1"))
    broken = initialised.instance_path / "sites" / "broken"
    broken.mkdir()
    (broken / "site.toml").write_text('name = "x"\ntheme = "neon"\n')
    result = initialised("site", "list")
    assert result.exit_code == 1
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "BROKEN" in rows["broken"] and "theme: unknown theme 'neon'" in rows["broken"]
    assert str(broken / "site.toml") in rows["broken"]
    assert "enabled" in rows["shop1"] and "enabled" in rows["main"]


# -- operator mistakes: one line, exit 1 ---------------------------------------------------------


def test_unknown_template(initialised):
    line = operator_error(initialised("site", "new", "shop1", "--template", "nosuch"),
                          "no site template 'nosuch'", "available: ")
    for name in ("main", "shop", "gaming"):
        assert name in line
    assert not (initialised.instance_path / "sites" / "shop1").exists()


@pytest.mark.parametrize("slug", ["Shop1", "www", "../evil", "a" * 33, "shop_1"])
def test_bad_slug(initialised, slug):
    operator_error(initialised("site", "new", slug), repr(slug))
    assert sorted(p.name for p in (initialised.instance_path / "sites").iterdir()) == ["main"]


def test_existing_slug(initialised):
    ok(initialised("site", "new", "shop1"))
    operator_error(initialised("site", "new", "shop1"), "'shop1' already exists")


def test_domain_taken(initialised):
    ok(initialised("site", "new", "shop1", "--domain", "taken.example.com"))
    operator_error(initialised("site", "new", "shop2", "--domain", "taken.example.com"),
                   "domains[0]", "already bound to site 'shop1'")
    assert not (initialised.instance_path / "sites" / "shop2").exists()


def test_domain_under_the_platform_domain(initialised):
    operator_error(initialised("site", "new", "shop1", "--domain", "shop1.localhost"), "under the platform domain")


def test_unknown_theme_and_parent(initialised):
    operator_error(initialised("site", "new", "shop1", "--theme", "neon"), "unknown theme 'neon'")
    operator_error(initialised("site", "new", "shop1", "--parent", "ghost"), "no site named 'ghost'")
    assert not (initialised.instance_path / "sites" / "shop1").exists()


@pytest.mark.parametrize("command", [("disable", "nosuch"), ("enable", "nosuch")])
def test_disable_or_enable_an_unknown_site(initialised, command):
    operator_error(initialised("site", *command), "no site 'nosuch'")
    assert not (initialised.instance_path / "sites" / "nosuch").exists()


@pytest.mark.parametrize("args", [
    ("site", "list"), ("site", "new", "shop1"), ("site", "templates"), ("site", "disable", "shop1"),
    ("db", "upgrade"), ("db", "status"),
])
def test_missing_instance_folder(cli, tmp_path, args):
    missing = tmp_path / "nowhere"
    operator_error(cli(*args, instance_path=missing), str(missing / CONFIG_NAME), "kamengsite init")
    assert not missing.exists()


def test_broken_instance_config(cli):
    ok(cli("init"))
    config = cli.instance_path / CONFIG_NAME
    config.write_text(config.read_text() + 'base_domian = "typo.com"\n')
    operator_error(cli("site", "list"), f"{config}: base_domian: unknown setting")


@pytest.mark.parametrize("base_domain", ["Example.COM", "example.com:8000", "http://example.com"])
def test_init_with_a_bad_base_domain(cli, base_domain):
    operator_error(cli("init", "--base-domain", base_domain), "base_domain", repr(base_domain))
    assert not (cli.instance_path / CONFIG_NAME).exists()


@pytest.mark.parametrize("url, fragment", [
    ("nosuch://db/x", "Unrecognized or unsupported scheme"),
    ("postgresql://postgres:hunter2@127.0.0.1:5432/ks_no_such_database",
     "postgresql://postgres:***@127.0.0.1:5432/ks_no_such_database"),
])
def test_unusable_database(cli, url, fragment):
    line = operator_error(cli("init", "--database-url", url), "cannot open the database", fragment)
    assert "hunter2" not in line  # the password is never printed


def test_bad_arguments_are_usage_errors(initialised):
    result = initialised("site", "new")
    assert result.exit_code == 2 and "Missing argument 'SLUG'" in result.output


def test_init_refuses_to_silently_ignore_a_different_database_url(tmp_path):
    from click.testing import CliRunner

    from kamengsite.cli import main

    runner = CliRunner()
    path = str(tmp_path / "inst")
    first = runner.invoke(main, ["--instance", path, "init", "--database-url", f"sqlite:///{tmp_path / 'a.db'}"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["--instance", path, "init", "--database-url", f"sqlite:///{tmp_path / 'b.db'}"])
    assert again.exit_code == 1
    assert "already sets database_url" in again.output and "config.toml" in again.output
