"""The instance folder (kamengsite/instance.py): generated secrets, validated settings, environment overrides."""

from __future__ import annotations

import base64
import os
import stat
import tomllib

import pytest
import tomli_w

from kamengsite import instance as instance_module
from kamengsite.errors import ConfigError, InstanceError, KamengsiteError
from kamengsite.instance import CONFIG_NAME, PROJECT_ROOT, Instance


def write_config(folder, values=None, content=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    if content is None:
        values = {"secret_key": "s" * 64, **(values or {})}
        content = tomli_w.dumps(values)
    path.write_text(content, encoding="utf-8")
    return path


def load_error(folder) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Instance.load(folder)
    assert info.value.path == str(folder / CONFIG_NAME)
    return info.value


# -- create: generated secrets ----------------------------------------------------------------


def test_create_generates_secrets(tmp_path):
    instance = Instance.create(tmp_path / "inst")
    assert len(instance.secret_key) == 64 and int(instance.secret_key, 16) >= 0
    assert len(instance.card_key_keys) == 1
    assert len(base64.b64decode(instance.card_key_keys[0], validate=True)) == 32  # AES-256
    stored = tomllib.loads((tmp_path / "inst" / CONFIG_NAME).read_text())
    assert stored["secret_key"] == instance.secret_key
    assert stored["card_key_keys"] == instance.card_key_keys
    assert (tmp_path / "inst" / "sites").is_dir()


def test_secrets_are_never_the_same_twice(tmp_path):
    instances = [Instance.create(tmp_path / f"inst{i}") for i in range(5)]
    assert len({i.secret_key for i in instances}) == 5
    assert len({i.card_key_keys[0] for i in instances}) == 5
    assert not {i.secret_key for i in instances} & {i.card_key_keys[0] for i in instances}


def test_config_file_is_private(tmp_path):
    Instance.create(tmp_path / "inst")
    mode = stat.S_IMODE(os.stat(tmp_path / "inst" / CONFIG_NAME).st_mode)
    assert mode == 0o600
    assert not list((tmp_path / "inst").glob("*.tmp")), "no temporary file is left behind"


def test_secrets_are_never_readable_by_others_while_written(tmp_path, monkeypatch):
    """Even under a permissive umask the file holding the secrets is 0600 from its first byte."""
    modes = []
    real_dump = tomli_w.dump

    def spy(values, fh):
        modes.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        return real_dump(values, fh)

    monkeypatch.setattr(instance_module.tomli_w, "dump", spy)
    old = os.umask(0)
    try:
        Instance.create(tmp_path / "inst")
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_create_is_idempotent(tmp_path):
    first = Instance.create(tmp_path / "inst", base_domain="example.com")
    before = (tmp_path / "inst" / CONFIG_NAME).read_bytes()
    again = Instance.create(tmp_path / "inst", base_domain="other.com")
    assert again.secret_key == first.secret_key
    assert again.card_key_keys == first.card_key_keys
    assert again.base_domain == "example.com"  # an existing instance is loaded, never rewritten
    assert (tmp_path / "inst" / CONFIG_NAME).read_bytes() == before


def test_create_stores_settings(tmp_path):
    instance = Instance.create(tmp_path / "inst", base_domain="kameng.example.com", main_site="zhuzhan",
                               database_url="postgresql://db/x", app_cache_size=8,
                               sites_dir=tmp_path / "elsewhere", production=True, themes_dir=None)
    assert instance.base_domain == "kameng.example.com"
    assert instance.main_site == "zhuzhan"
    assert instance.database_url == "postgresql://db/x"
    assert instance.app_cache_size == 8
    assert instance.production is True
    assert instance.sites_dir == tmp_path / "elsewhere"
    assert instance.themes_dir == PROJECT_ROOT / "themes"  # None means "the default"
    assert tomllib.loads((tmp_path / "inst" / CONFIG_NAME).read_text())["sites_dir"] == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("settings, key", [
    ({"colour": "red"}, "colour"),
    ({"app_cache_size": "many"}, "app_cache_size"),
    ({"base_domain": "Example.COM"}, "base_domain"),
    ({"main_site": "www"}, "main_site"),
])
def test_create_refuses_bad_settings_and_writes_nothing(tmp_path, settings, key):
    with pytest.raises(ConfigError) as info:
        Instance.create(tmp_path / "inst", **settings)
    assert info.value.key == key
    assert not (tmp_path / "inst" / CONFIG_NAME).exists()
    assert not list((tmp_path / "inst").glob("*.tmp"))


# -- load: defaults and errors ----------------------------------------------------------------


def test_defaults(tmp_path):
    write_config(tmp_path / "inst")
    instance = Instance.load(tmp_path / "inst")
    assert instance.path == (tmp_path / "inst").resolve() and instance.path.is_absolute()
    assert instance.base_domain == "localhost" and instance.main_site == "main"
    assert instance.sites_dir == instance.path / "sites"
    assert instance.themes_dir == PROJECT_ROOT / "themes"
    assert instance.templates_dir == PROJECT_ROOT / "sites"
    assert instance.database_url == f"sqlite:///{instance.path / 'kamengsite.db'}"
    assert instance.production is False
    assert instance.app_cache_size >= 1


def test_relative_path_is_resolved(tmp_path, monkeypatch):
    write_config(tmp_path / "inst")
    monkeypatch.chdir(tmp_path)
    assert Instance.load("inst").path == (tmp_path / "inst").resolve()


def test_missing_instance_folder(tmp_path):
    with pytest.raises(InstanceError) as info:
        Instance.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / CONFIG_NAME) in str(info.value)
    assert "kamengsite init" in str(info.value)
    assert issubclass(InstanceError, KamengsiteError)


def test_instance_path_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InstanceError):
        Instance.load(tmp_path / "afile")


def test_bad_toml(tmp_path):
    write_config(tmp_path / "inst", content='secret_key = "unterminated\n')
    error = load_error(tmp_path / "inst")
    assert error.key is None and "not valid TOML" in error.reason


@pytest.mark.parametrize("values, key, fragment", [
    ({"secret": "x"}, "secret", "unknown setting"),
    ({"base_domian": "example.com"}, "base_domian", "unknown setting"),
    ({"app_cache_size": "10"}, "app_cache_size", "must be a int, got str"),
    ({"app_cache_size": True}, "app_cache_size", "must be a int, got bool"),
    ({"app_cache_size": 0}, "app_cache_size", "at least 1"),
    ({"app_cache_size": -5}, "app_cache_size", "at least 1"),
    ({"production": "yes"}, "production", "must be a bool"),
    ({"production": 1}, "production", "must be a bool"),
    ({"card_key_keys": "abc"}, "card_key_keys", "must be a list"),
    ({"database_url": 5}, "database_url", "must be a str"),
    ({"base_domain": "Example.com"}, "base_domain", "not a lowercase domain name"),
    ({"base_domain": "example.com:8000"}, "base_domain", "not a lowercase domain name"),
    ({"base_domain": "example.com."}, "base_domain", "not a lowercase domain name"),
    ({"base_domain": "http://example.com"}, "base_domain", "not a lowercase domain name"),
    ({"base_domain": ""}, "base_domain", "not a lowercase domain name"),
    ({"main_site": "www"}, "main_site", "reserved"),
    ({"main_site": "../main"}, "main_site", "not a valid site name"),
])
def test_bad_settings_name_file_and_key(tmp_path, values, key, fragment):
    write_config(tmp_path / "inst", values)
    error = load_error(tmp_path / "inst")
    assert error.key == key
    assert fragment in error.reason
    assert str(error).startswith(f"{tmp_path / 'inst' / CONFIG_NAME}: {key}: ")


@pytest.mark.parametrize("base_domain", ["localhost", "example.com", "kameng.example.com.cn", "xn--fiqs8s.cn"])
def test_good_base_domains(tmp_path, base_domain):
    write_config(tmp_path / "inst", {"base_domain": base_domain})
    assert Instance.load(tmp_path / "inst").base_domain == base_domain


def test_missing_secret_key(tmp_path):
    write_config(tmp_path / "inst", content='base_domain = "example.com"\n')
    error = load_error(tmp_path / "inst")
    assert error.key == "secret_key" and "kamengsite init" in error.reason


# -- environment overrides --------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    write_config(tmp_path / "inst", {"database_url": "sqlite:///from-file.db", "production": False})
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.internal/kameng")
    monkeypatch.setenv("KAMENGSITE_SECRET_KEY", "from-the-environment")
    monkeypatch.setenv("KAMENGSITE_PRODUCTION", "true")
    instance = Instance.load(tmp_path / "inst")
    assert instance.database_url == "postgresql://db.internal/kameng"
    assert instance.secret_key == "from-the-environment"
    assert instance.production is True


def test_secret_key_may_live_only_in_the_environment(tmp_path, monkeypatch):
    write_config(tmp_path / "inst", content='base_domain = "example.com"\n')
    monkeypatch.setenv("KAMENGSITE_SECRET_KEY", "only-here")
    assert Instance.load(tmp_path / "inst").secret_key == "only-here"


@pytest.mark.parametrize("value, expected", [("1", True), ("YES", True), ("0", False), ("false", False)])
def test_production_flag_from_environment(tmp_path, monkeypatch, value, expected):
    write_config(tmp_path / "inst", {"production": not expected})
    monkeypatch.setenv("KAMENGSITE_PRODUCTION", value)
    assert Instance.load(tmp_path / "inst").production is expected


def test_empty_environment_variables_do_not_override(tmp_path, monkeypatch):
    write_config(tmp_path / "inst", {"database_url": "sqlite:///from-file.db", "secret_key": "k" * 64})
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("KAMENGSITE_SECRET_KEY", "")
    instance = Instance.load(tmp_path / "inst")
    assert instance.database_url == "sqlite:///from-file.db"
    assert instance.secret_key == "k" * 64


def test_environment_overrides_apply_to_a_created_instance(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://root@127.0.0.1/kameng")
    instance = Instance.create(tmp_path / "inst", database_url="sqlite:///ignored.db")
    assert instance.database_url == "mysql://root@127.0.0.1/kameng"
    # The file keeps what was asked for; only the running process sees the override.
    assert tomllib.loads((tmp_path / "inst" / CONFIG_NAME).read_text())["database_url"] == "sqlite:///ignored.db"


def test_rate_limits_are_checked_and_named(tmp_path):
    import pytest

    from kamengsite.errors import ConfigError
    from kamengsite.instance import Instance

    good = Instance.create(tmp_path / "good", rate_limits={"order": "5/minute"})
    assert good.rate_limits == {"order": "5/minute"}
    with pytest.raises(ConfigError, match=r"rate_limits\.lookup.*'ten a minute'"):
        Instance.create(tmp_path / "bad", rate_limits={"lookup": "ten a minute"})


def test_order_ttl_is_bounded_and_named(tmp_path):
    import pytest

    from kamengsite.errors import ConfigError
    from kamengsite.instance import Instance

    assert Instance.create(tmp_path / "a").order_ttl_minutes == 10
    with pytest.raises(ConfigError, match="order_ttl_minutes"):
        Instance.create(tmp_path / "b", order_ttl_minutes=0)


@pytest.mark.parametrize("key, bad", [("page_cache_mb", 0), ("page_cache_ttl", 7200)])
def test_page_cache_settings_are_bounded_and_named(tmp_path, key, bad):
    from kamengsite import pagecache
    from kamengsite.errors import ConfigError
    from kamengsite.instance import Instance

    instance = Instance.create(tmp_path / "a", page_cache_mb=8, page_cache_ttl=5)
    assert (instance.page_cache_mb, instance.page_cache_ttl) == (8, 5)
    pagecache.configure(instance)
    try:
        assert (pagecache.PAGES.max_bytes, pagecache.PAGES.ttl) == (8 * 2**20, 5.0)
    finally:
        pagecache.configure(Instance.create(tmp_path / "c"))
    with pytest.raises(ConfigError, match=key):
        Instance.create(tmp_path / "b", **{key: bad})
