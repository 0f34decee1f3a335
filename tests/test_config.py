"""Site configuration (kamengsite/config.py): every error names the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from kamengsite.config import RESERVED_SLUGS, SITE_FILE, SiteConfig, check_slug, read_site_config
from kamengsite.errors import ConfigError, KamengsiteError
from kamengsite.themes import ThemeRegistry

from conftest import THEMES_DIR

VALID = 'name = "小店"\ntheme = "light"\n'


@pytest.fixture(scope="module")
def themes():
    return ThemeRegistry(THEMES_DIR)


@pytest.fixture
def site_folder(tmp_path):
    """``site_folder("shop1", toml_text)`` → the folder, with site.toml written (None: no file)."""

    def make(slug, content=VALID, *, raw=False):
        folder = tmp_path / "sites" / slug
        folder.mkdir(parents=True)
        if content is not None:
            (folder / SITE_FILE).write_bytes(content if raw else content.encode("utf-8"))
        return folder

    return make


def read(folder, themes=None, base_domain="localhost", main_site="main"):
    return read_site_config(folder, base_domain=base_domain, main_site=main_site, themes=themes)


def expect_error(folder, key, fragment, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read(folder, **kwargs)
    error = info.value
    config_file = str(folder / SITE_FILE)
    assert error.path == config_file
    assert error.key == key
    assert fragment in error.reason
    # The message an operator sees starts with the file and the key.
    prefix = f"{config_file}: {key}: " if key else f"{config_file}: "
    assert str(error).startswith(prefix), str(error)
    return error


# -- a valid folder --------------------------------------------------------------------------


def test_valid_config_is_read_with_defaults(site_folder, themes):
    folder = site_folder("shop1")
    config = read(folder, themes)
    assert isinstance(config, SiteConfig)
    assert (config.slug, config.name, config.theme) == ("shop1", "小店", "light")
    assert config.path == folder and config.config_file == folder / SITE_FILE
    assert config.parent == "main"  # a sub-site without a parent belongs to the main site
    assert config.enabled is True
    assert config.domains == () and config.plugins == ()
    assert (config.locale, config.currency) == ("zh_CN", "CNY")


def test_every_setting_is_read(site_folder, themes):
    folder = site_folder("shop2", """
name = "批发站"
tagline = "量大从优"
theme = "business"
domains = ["shop2.example.com", "www.shop2.example.com"]
locale = "en"
currency = "CNY"
parent = "agent1"
level = "gold"
enabled = false
plugins = ["mailer", "stats_v2"]
template = "wholesale"

[settings.mailer]
sender = "shop@example.com"
""")
    config = read(folder, themes)
    assert config.tagline == "量大从优"
    assert config.domains == ("shop2.example.com", "www.shop2.example.com")
    assert config.locale == "en" and config.level == "gold" and config.template == "wholesale"
    assert config.parent == "agent1"
    assert config.enabled is False
    assert config.plugins == ("mailer", "stats_v2")
    assert config.settings == {"mailer": {"sender": "shop@example.com"}}


# -- schema errors: file + key + reason -------------------------------------------------------


@pytest.mark.parametrize("content, key, fragment", [
    ('theme = "light"\n', "name", "required setting is missing"),
    ('name = "x"\n', "theme", "required setting is missing"),
    (VALID + 'colour = "red"\n', "colour", "unknown setting"),
    (VALID + '[extra]\nx = 1\n', "extra", "unknown setting"),
    ('name = 5\ntheme = "light"\n', "name", "must be a string, got int 5"),
    ('name = ""\ntheme = "light"\n', "name", "should be non-empty"),
    (VALID + 'enabled = "yes"\n', "enabled", "must be a boolean"),
    (VALID + 'domains = "shop.example.com"\n', "domains", "must be a array"),
    (VALID + 'domains = ["Shop.Example.com"]\n', "domains[0]", "is not valid here"),
    (VALID + 'domains = ["ok.example.com", "bad_domain.com"]\n', "domains[1]", "'bad_domain.com' is not valid here"),
    (VALID + 'domains = ["shop.example.com:8080"]\n', "domains[0]", "is not valid here"),
    (VALID + 'domains = ["shop.example.com."]\n', "domains[0]", "is not valid here"),
    (VALID + 'domains = ["shop.example.com\\n"]\n', "domains[0]", "is not valid here"),
    (VALID + 'domains = ["a.example.com", "a.example.com"]\n', "domains", "non-unique"),
    ('name = "x"\ntheme = "Dark"\n', "theme", "is not valid here"),
    ('name = "x"\ntheme = "light\\n"\n', "theme", "is not valid here"),
    (VALID + 'locale = "fr"\n', "locale", "'fr' is not one of 'zh_CN', 'en'"),
    (VALID + 'currency = "USD"\n', "currency", "is not one of"),
    (VALID + 'parent = "../main"\n', "parent", "is not valid here"),
    (VALID + 'plugins = ["Mailer"]\n', "plugins[0]", "is not valid here"),
    (VALID + '[settings]\npay = 1\n', "settings.pay", "must be a object"),
])
def test_schema_errors_name_file_and_key(site_folder, themes, content, key, fragment):
    expect_error(site_folder("shop1", content), key, fragment, themes=themes)


def test_unknown_setting_lists_the_known_ones(site_folder):
    error = expect_error(site_folder("shop1", VALID + "nmae = 'typo'\n"), "nmae", "unknown setting")
    for known in ("name", "theme", "domains", "parent", "enabled"):
        assert known in error.reason


def test_unknown_theme_lists_available_themes(site_folder, themes):
    error = expect_error(site_folder("shop1", 'name = "x"\ntheme = "neon"\n'), "theme", "unknown theme 'neon'",
                         themes=themes)
    available = sorted(p.name for p in THEMES_DIR.iterdir() if (p / "theme.json").is_file())
    assert available, "the checkout ships themes"
    assert f"available: {', '.join(available)}" in error.reason


def test_theme_is_not_checked_without_a_theme_registry(site_folder):
    assert read(site_folder("shop1", 'name = "x"\ntheme = "neon"\n')).theme == "neon"


def test_bad_toml_syntax(site_folder):
    error = expect_error(site_folder("shop1", 'name = "unterminated\ntheme = "light"\n'), None, "not valid TOML")
    assert "line 1" in error.reason  # the parser's position is kept


def test_duplicate_key_is_a_toml_error(site_folder):
    expect_error(site_folder("shop1", VALID + 'name = "again"\n'), None, "not valid TOML")


def test_not_utf8(site_folder):
    expect_error(site_folder("shop1", 'name = "\xb5\xea"\ntheme = "light"\n'.encode("latin-1"), raw=True),
                 None, "not UTF-8")


def test_missing_site_toml(site_folder):
    expect_error(site_folder("shop1", None), None, "missing")


# -- domains and the platform domain ----------------------------------------------------------


@pytest.mark.parametrize("base, domain", [
    ("localhost", "shop1.localhost"),
    ("example.com", "example.com"),
    ("example.com", "shop1.example.com"),
    ("example.com", "www.example.com"),
    ("example.com", "a.b.example.com"),
])
def test_domain_under_the_platform_domain_is_refused(site_folder, base, domain):
    folder = site_folder("shop1", VALID + f'domains = ["own.example.org", "{domain}"]\n')
    error = expect_error(folder, "domains[1]", "under the platform domain", base_domain=base)
    assert repr(domain) in error.reason and repr(base) in error.reason


@pytest.mark.parametrize("domain", ["myexample.com", "example.com.cn", "example.co"])
def test_look_alike_of_the_platform_domain_is_allowed(site_folder, domain):
    config = read(site_folder("shop1", VALID + f'domains = ["{domain}"]\n'), base_domain="example.com")
    assert config.domains == (domain,)


# -- parents ----------------------------------------------------------------------------------


def test_main_site_has_no_parent(site_folder):
    assert read(site_folder("main")).parent is None
    expect_error(site_folder("main2", VALID + 'parent = "shop1"\n'), "parent", "the main site has no parent",
                 main_site="main2")


def test_site_cannot_be_its_own_parent(site_folder):
    expect_error(site_folder("shop1", VALID + 'parent = "shop1"\n'), "parent", "its own parent")


def test_explicit_parent_is_kept(site_folder):
    assert read(site_folder("shop1", VALID + 'parent = "agent"\n')).parent == "agent"


def test_parent_follows_the_instance_main_site(site_folder):
    assert read(site_folder("shop1"), main_site="zhuzhan").parent == "zhuzhan"


# -- site names (folder names) ----------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a", "shop1", "7k", "my-shop", "a" * 32, "x-1-y"])
def test_valid_slugs(slug):
    assert check_slug(slug) == slug


@pytest.mark.parametrize("slug", [
    "", "Shop", "-shop", "shop-", "my_shop", "my.shop", "a" * 33, "商店", " shop", "shop ",
    "shop\n", "shop\x00", "..", ".", "../etc", "../../etc/passwd", "shop/../main", "/etc", "a/b", "a\\b",
    "%2e%2e", None, 5,
])
def test_invalid_slugs_and_path_traversal(slug):
    with pytest.raises(ConfigError) as info:
        check_slug(slug, where="--slug")
    assert info.value.path == "--slug"
    assert "is not a valid site name" in info.value.reason
    assert repr(slug) in str(info.value)


@pytest.mark.parametrize("slug", sorted(RESERVED_SLUGS))
def test_reserved_slugs(slug):
    with pytest.raises(ConfigError, match="is reserved"):
        check_slug(slug)


def test_config_error_is_an_operator_error():
    assert issubclass(ConfigError, KamengsiteError)


@pytest.mark.parametrize("folder_name", ["Shop", "my_shop", "www", "shop-"])
def test_folder_with_an_invalid_name_is_refused(site_folder, folder_name):
    folder = site_folder(folder_name)
    with pytest.raises(ConfigError) as info:
        read(folder)
    assert info.value.path == str(folder)
    assert repr(folder_name) in info.value.reason


def test_config_error_without_key():
    error = ConfigError(Path("/x/site.toml"), None, "broken")
    assert str(error) == "/x/site.toml: broken"
    assert (error.path, error.key, error.reason) == ("/x/site.toml", None, "broken")
