"""Plugin tests share the core suite's fixtures (instance, host, client_for, backend matrix, ...).

``tests/conftest.py`` is loaded once under the module name ``kamengsite_test_fixtures``;
its fixtures and helpers (``make_instance``, ``make_host``, ``SiteClient``) are re-exported here.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "kamengsite_test_fixtures"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).resolve().parent.parent / "tests" / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

globals().update({k: v for k, v in vars(sys.modules[_NAME]).items() if not k.startswith("__")})
