"""Both conftest.py files (tests/ and tests/reliability/) are imported by pytest as a module
named `conftest`, the later replacing the earlier in sys.modules: in a whole-suite run
tests/reliability/ is collected before tests/test_*.py, so there `from conftest import …` gets
the reliability one. This finds each by its file (the instance pytest loaded, so the fakes are
the fixtures' own classes). tests/ is on sys.path in every run (pytest puts each conftest's
folder there), so `from _conftests import conftest_module` works from both folders."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_FILES = {"tests": HERE / "conftest.py", "reliability": HERE / "reliability" / "conftest.py"}


def conftest_module(which: str):
    """The module of tests/conftest.py ("tests") or tests/reliability/conftest.py ("reliability")."""
    path = _FILES[which]
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    spec = importlib.util.spec_from_file_location(f"_edge_retrieval_{which}_conftest", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
