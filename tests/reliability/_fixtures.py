"""`conftest_module`, for the reliability tests that import it from here: see tests/_conftests.py."""
from _conftests import conftest_module  # noqa: F401
