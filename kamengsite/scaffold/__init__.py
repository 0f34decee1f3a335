"""What ``kamengsite plugins new NAME`` writes: a plugin package that works and tests itself as generated.

The files are ``string.Template`` texts (``$name`` placeholders, ``$$`` for a literal dollar) rather
than files on disk, so they ship inside the ``kamengsite`` package without package-data settings.
"""

from __future__ import annotations

import re
from string import Template

#: NAME as typed: lowercase letters, digits, '-' and '_', starting with a letter. The entry-point
#: name (NAME with '-' → '_') must match what a site.toml may list in ``plugins = [...]``.
PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "kamengsite plugin $ep: a greeting on every page of the sites that enable it"
readme = "README.md"
requires-python = ">=3.11"
license = "MIT"
dependencies = ["kamengsite"]

[project.entry-points.kamengsite]
$ep = "$package"

[tool.setuptools]
packages = ["$package"]
"""

README = """\
# $dist

## 中文

kamengsite 插件 `$ep`：在启用它的站点的每个页面模板里提供变量 `${ep}_greeting`（问候语）。
这是 `kamengsite plugins new $name` 生成的起步代码，按需改写 `$package/__init__.py`。

安装（在 kamengsite 的虚拟环境里）：

```sh
pip install -e plugins/$dist
kamengsite plugins list        # 应看到 $ep 及其版本
```

在站点上启用：编辑该站点的 `site.toml`，把 `"$ep"` 加进 `plugins`；设置写在 `[settings.$ep]` 下
（字段见 `SETTINGS_SCHEMA`）：

```toml
plugins = ["$ep"]

[settings.$ep]
greeting = "欢迎光临 {site}"
```

模板里使用：`{{ ${ep}_greeting }}`。测试：`pytest plugins/$dist`。

## English

kamengsite plugin `$ep`: gives every template of the sites that enable it a `${ep}_greeting`
variable. It is the starting point `kamengsite plugins new $name` generated; rewrite
`$package/__init__.py` to taste.

Install it (in kamengsite's virtualenv) with `pip install -e plugins/$dist`; `kamengsite plugins list`
then shows `$ep` with its version. Enable it on a site by adding `"$ep"` to `plugins = [...]` in the
site's `site.toml`; its settings go under `[settings.$ep]` (fields: `SETTINGS_SCHEMA`), as above.
Use `{{ ${ep}_greeting }}` in a template. Tests: `pytest plugins/$dist`.
"""

PACKAGE = '''\
"""kamengsite plugin ``$ep``: a greeting for every page of the sites that enable it.

A site enables it by listing ``"$ep"`` in ``plugins = [...]`` of its ``site.toml``; its settings
live under ``[settings.$ep]`` in the same file (see ``SETTINGS_SCHEMA``).
"""

from __future__ import annotations

import logging

from kamengsite.errors import ConfigError
from kamengsite.hookspecs import hookimpl
from kamengsite.plugin_settings import settings_for as checked_settings

log = logging.getLogger(__name__)

#: The entry-point name: what a site lists in ``plugins = [...]`` and the key of its settings.
NAME = "$ep"
DEFAULT_GREETING = "欢迎光临 {site}"

#: JSON schema of this plugin's per-site settings (``[settings.$ep]`` in ``site.toml``).
SETTINGS_SCHEMA = {
    "$$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "greeting": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "title": "问候语 · Greeting",
            "description": "Shown to visitors; {site} becomes the shop's name.",
            "default": DEFAULT_GREETING,
        },
    },
}


@hookimpl
def plugin_settings_schema():
    """The schema the console's 插件 page renders as this plugin's settings form."""
    return SETTINGS_SCHEMA


def settings_for(site) -> dict:
    """This plugin's settings on ``site`` (a ``SiteConfig``), defaults filled in; invalid ones are logged."""
    try:
        return checked_settings(site, NAME, SETTINGS_SCHEMA)
    except ConfigError as exc:
        # A hook must not take the site's pages down over a typo in site.toml: fall back to defaults.
        log.warning("site %s: %s; using defaults", site.slug, exc)
        return {"greeting": DEFAULT_GREETING}


@hookimpl
def site_template_context(site):
    """Every template rendered on ``site`` gets ``${ep}_greeting``."""
    greeting = settings_for(site)["greeting"]
    return {"${ep}_greeting": greeting.replace("{site}", site.name)}
'''

TESTS_CONFTEST = '''\
"""The host's test fixtures (``host``, ``client_for``, ``site_files``, ``register_plugin`` …) for these tests.

They live in kamengsite's own ``tests/conftest.py``; it is loaded once under the module name
``kamengsite_test_fixtures`` (as ``plugins/conftest.py`` does), so these tests also run when the
package sits outside ``plugins/``, as long as kamengsite is an editable checkout.
"""

import importlib.util
import sys

from kamengsite.instance import PROJECT_ROOT

_NAME = "kamengsite_test_fixtures"
if _NAME not in sys.modules:
    _path = PROJECT_ROOT / "tests" / "conftest.py"
    if not _path.is_file():
        raise RuntimeError(f"these tests need kamengsite's test fixtures: {_path} is missing "
                           f"(install kamengsite from a checkout, `pip install -e`)")
    _spec = importlib.util.spec_from_file_location(_NAME, _path)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

globals().update({k: v for k, v in vars(sys.modules[_NAME]).items() if not k.startswith("__")})
'''

TEST_MODULE = '''\
"""Tests of the ``$ep`` plugin; they pass as generated: ``pytest plugins/$dist``."""

import jsonschema
from flask import render_template_string

import $package as plugin


def enable(host):
    # Once the package is installed, the host has already loaded it through its entry point.
    if not host.plugins.pm.has_plugin(plugin.NAME):
        host.plugins.register(plugin, name=plugin.NAME)


def greeting_page(app, site):
    # A test-only page that shows the variable the plugin puts in every template.
    app.add_url_rule("/_test/greeting", "test_greeting",
                     lambda: render_template_string("[{{ ${ep}_greeting }}]"))


def test_the_greeting_reaches_pages_of_the_sites_that_enable_the_plugin(host, client_for, site_files,
                                                                        register_plugin):
    enable(host)
    register_plugin(host, greeting_page, name="greeting-page")
    host.registry.create("shop1", template="shop", name="一号店")
    host.registry.create("shop2", template="shop", name="二号店")
    site_files.edit("shop1", plugins=[plugin.NAME])
    page = client_for("shop1.localhost").get("/_test/greeting")
    assert page.get_data(as_text=True) == "[欢迎光临 一号店]"
    # shop2 does not list the plugin: its hook is not called there, the variable is empty.
    assert client_for("shop2.localhost").get("/_test/greeting").get_data(as_text=True) == "[]"


def test_the_greeting_comes_from_the_site_settings(host, site_files):
    enable(host)
    host.registry.create("shop1", template="shop", name="一号店")
    site_files.edit("shop1", plugins=[plugin.NAME], settings={plugin.NAME: {"greeting": "你好，{site}"}})
    results = host.plugins.hook_for((plugin.NAME,)).site_template_context(site=host.registry.load("shop1"))
    assert {"${ep}_greeting": "你好，一号店"} in results


def test_invalid_settings_fall_back_to_the_default(host, site_files):
    enable(host)
    host.registry.create("shop1", template="shop", name="一号店")
    site_files.edit("shop1", plugins=[plugin.NAME], settings={plugin.NAME: {"greeting": 5}})
    results = host.plugins.hook_for((plugin.NAME,)).site_template_context(site=host.registry.load("shop1"))
    assert {"${ep}_greeting": "欢迎光临 一号店"} in results


def test_the_settings_schema_is_a_valid_json_schema_the_console_can_render(host):
    jsonschema.Draft202012Validator.check_schema(plugin.SETTINGS_SCHEMA)
    assert jsonschema.Draft202012Validator(plugin.SETTINGS_SCHEMA).is_valid({"greeting": "hi {site}"})
    enable(host)
    assert host.plugins.settings_schemas()[plugin.NAME] is plugin.SETTINGS_SCHEMA
'''


def plugin_names(name: str) -> dict[str, str]:
    """The names derived from NAME: folder/distribution, entry point, Python package."""
    ep = name.replace("-", "_")
    return {"name": name, "dist": f"kamengsite-{name}", "ep": ep, "package": f"kamengsite_{ep}"}


def plugin_files(name: str) -> dict[str, str]:
    """{relative path: text} of the package ``kamengsite-NAME/`` (paths relative to that folder)."""
    names = plugin_names(name)
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names['package']}/__init__.py": PACKAGE,
        "tests/conftest.py": TESTS_CONFTEST,
        f"tests/test_{names['ep']}.py": TEST_MODULE,
    }
    return {path: Template(text).substitute(names) for path, text in files.items()}
