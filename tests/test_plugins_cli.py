"""`kamengsite plugins list` and `kamengsite plugins new` (the scaffold's own tests must pass as generated)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import tomli_w

from kamengsite import plugins as plugin_host
from kamengsite.instance import PROJECT_ROOT
from kamengsite.plugins import CORE_PLUGINS

BROKEN = EntryPoint(name="broken_demo", value="kamengsite_no_such_module_for_tests", group="kamengsite")


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def refused(result, *expected):
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.stderr
    return result.stderr


def set_site_keys(instance_path: Path, slug: str, **changes):
    # By hand, as an operator edits site.toml.
    path = instance_path / "sites" / slug / "site.toml"
    values = tomllib.loads(path.read_text(encoding="utf-8"))
    values.update(changes)
    path.write_text(tomli_w.dumps(values), encoding="utf-8")


def installed_entry_points():
    return list(entry_points(group="kamengsite"))


@pytest.fixture
def with_broken_plugin(monkeypatch):
    """The installed entry points plus one whose module does not exist.

    PluginHost imported ``entry_points`` by name, so it is patched where the host looks it up
    (``kamengsite.plugins.entry_points``); the listing reads it there too.
    """
    real = installed_entry_points()
    monkeypatch.setattr(plugin_host, "entry_points", lambda group: [*real, BROKEN] if group == "kamengsite" else [])


# -- list ---------------------------------------------------------------------------------------


def test_list_shows_core_installed_with_versions_broken_and_the_enabling_sites(cli, with_broken_plugin):
    ok(cli("init"))
    ok(cli("site", "new", "shop1"))
    ok(cli("site", "new", "shop2"))
    set_site_keys(cli.instance_path, "shop1", plugins=["sandbox", "broken_demo", "ghost"])
    set_site_keys(cli.instance_path, "shop2", plugins=["sandbox"], enabled=False)

    result = cli("plugins", "list")
    out = ok(result)
    stdout = result.stdout.splitlines()
    for name in CORE_PLUGINS:
        assert f"  {name}" in stdout
    # Every installed entry point (the payment channels) with its distribution and version.
    for ep in installed_entry_points():
        assert any(ep.name in line and f"{ep.dist.name} {ep.dist.version}" in line for line in stdout), (ep, out)
    sandbox = next(line for line in stdout if line.split()[:1] == ["sandbox"])
    assert "sites: shop1, shop2 (site disabled)" in sandbox
    assert "payment channels on every site" in sandbox  # channels ignore the per-site list
    epay = next(line for line in stdout if line.split()[:1] == ["epay"])
    assert "sites: none" in epay
    broken = next(line for line in stdout if line.split()[:1] == ["broken_demo"])
    assert "BROKEN: ModuleNotFoundError: No module named 'kamengsite_no_such_module_for_tests'" in broken
    assert "sites: shop1" in broken
    assert "site shop1 lists plugin 'ghost', which is not installed" in result.stderr


def test_list_without_an_instance_still_lists_the_plugins(cli):
    result = cli("plugins", "list")
    out = ok(result)
    assert "kamengsite.storefront" in out
    assert "sites: unknown (no instance)" in out
    assert "kamengsite init" in result.stderr


# -- new ----------------------------------------------------------------------------------------


def test_new_writes_a_plugin_package(cli, tmp_path):
    out = ok(cli("plugins", "new", "demo-x", "--dir", tmp_path))
    folder = tmp_path / "kamengsite-demo-x"
    assert f"created {folder}" in out
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", "kamengsite_demo_x/__init__.py", "pyproject.toml",
                     "tests/conftest.py", "tests/test_demo_x.py"]
    project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "kamengsite-demo-x"
    assert project["project"]["entry-points"]["kamengsite"] == {"demo_x": "kamengsite_demo_x"}
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme.index("## 中文") < readme.index("## English")
    assert "pip install -e plugins/kamengsite-demo-x" in readme and 'plugins = ["demo_x"]' in readme


def test_the_generated_module_is_a_plugin_of_the_host(cli, tmp_path, host):
    ok(cli("plugins", "new", "demo-x", "--dir", tmp_path / "out"))
    path = tmp_path / "out" / "kamengsite-demo-x" / "kamengsite_demo_x" / "__init__.py"
    spec = importlib.util.spec_from_file_location("kamengsite_demo_x_by_path", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SETTINGS_SCHEMA["type"] == "object"
    host.plugins.register(module, name="demo_x")
    config = host.registry.load(host.instance.main_site)
    assert host.plugins.hook_for(()).site_template_context(site=config) == []  # not enabled: not called
    assert {"demo_x_greeting": f"欢迎光临 {config.name}"} in host.plugins.hook_for(("demo_x",)).site_template_context(site=config)


def test_new_refuses_an_existing_folder(cli, tmp_path):
    (tmp_path / "kamengsite-demo-x").mkdir()
    refused(cli("plugins", "new", "demo-x", "--dir", tmp_path), "already exists")
    assert list((tmp_path / "kamengsite-demo-x").iterdir()) == []


@pytest.mark.parametrize("name", ["Demo", "1demo", "-demo", "demo.x", "demo x", "../demo", "d" * 33])
def test_new_refuses_a_bad_name(cli, tmp_path, name):
    refused(cli("plugins", "new", "--dir", tmp_path, "--", name), "is not a valid plugin name")
    assert not list(tmp_path.glob("**/kamengsite-*"))


def test_new_refuses_the_name_of_an_installed_plugin(cli, tmp_path):
    refused(cli("plugins", "new", "sandbox", "--dir", tmp_path), "already installed")
    assert not (tmp_path / "kamengsite-sandbox").exists()


def fake_checkout(root: Path) -> Path:
    """A folder laid out like the repository: tests/conftest.py, plugins/conftest.py, pytest settings."""
    (root / "tests").mkdir(parents=True)
    (root / "plugins").mkdir()
    shutil.copy(PROJECT_ROOT / "tests" / "conftest.py", root / "tests" / "conftest.py")
    shutil.copy(PROJECT_ROOT / "plugins" / "conftest.py", root / "plugins" / "conftest.py")
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    settings = {"tool": {"pytest": {"ini_options": pyproject["tool"]["pytest"]["ini_options"]}}}
    (root / "pyproject.toml").write_text(tomli_w.dumps(settings), encoding="utf-8")
    return root / "plugins"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["standalone", "under-plugins"])
def test_the_generated_tests_pass_as_generated(cli, tmp_path, layout):
    # standalone: the package anywhere (its tests/conftest.py finds the host's fixtures);
    # under-plugins: where `plugins new` puts it by default, beside plugins/conftest.py.
    root = tmp_path / "work"
    parent = fake_checkout(root) if layout == "under-plugins" else root
    ok(cli("plugins", "new", "demo-x", "--dir", parent))
    package = parent / "kamengsite-demo-x"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-m", "pytest", str(package / "tests"), "-p", "no:cacheprovider", "-q"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b4 passed\b", run.stdout), run.stdout
