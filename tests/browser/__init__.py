"""Real-browser tests (a package, so its conftest does not take the module name ``conftest`` from tests/conftest.py)."""
