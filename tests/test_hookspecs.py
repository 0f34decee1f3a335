"""Every hook is documented in docs/plugins.md with its exact signature, and exercised by a test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kamengsite import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, fn in vars(hookspecs).items()
               if inspect.isfunction(fn) and hasattr(fn, "kamengsite_spec"))


def test_there_are_hooks():
    assert {"prepare_site_app", "order_delivered", "payment_channels"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_its_exact_signature(name):
    fn = getattr(hookspecs, name)
    assert (fn.__doc__ or "").strip(), f"{name} has no docstring in hookspecs.py"
    signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
    assert f"`{signature}`" in (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8"), \
        f"docs/plugins.md does not document {signature}"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_exercised_by_a_test(name):
    # A test that implements the hook, or calls it through the plugin manager.
    needles = (f"def {name}(", f"hook.{name}(")
    test_files = [p for p in list((ROOT / "tests").rglob("test_*.py")) + list((ROOT / "plugins").rglob("test_*.py"))
                  if p.name != "test_hookspecs.py"]
    assert any(any(n in p.read_text(encoding="utf-8") for n in needles) for p in test_files), \
        f"no test implements or calls the hook {name}"
