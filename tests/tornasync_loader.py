"""A pytest plugin that loads pytest-tornasync, the in-process Tornado test plugin, so that pytest's
deprecations of it neither break the run nor hide our own.

pytest-tornasync 0.6 (its last release) decorates a fixture with `pytest.yield_fixture` and marks its hooks
with `@pytest.mark.tryfirst`. pytest 9.2 warns about both with `PytestRemovedIn10Warning` while it loads
entry-point plugins, and our `filterwarnings = error` turned that into "Error while loading plugin" before
any test ran. So pytest.ini blocks the entry point (`-p no:tornado`) and tests/conftest.py loads this
module, which imports and registers the plugin with pytest's deprecation warnings silenced, by category,
for those two steps only: every warning our own code raises is still an error. When a pytest release
removes what the plugin needs, the run stops with one line that says what to install, not a traceback.
"""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest

ASYNC_TEST_TIMEOUT = 30.0   # seconds an async test may run before pytest-tornasync fails it

_problem: str | None = None   # why pytest-tornasync could not be loaded


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Register pytest-tornasync now, so that its own options exist before the command line is parsed."""
    global _problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pytest.PytestDeprecationWarning)
            from pytest_tornasync import plugin
            pluginmanager.register(plugin, "tornasync")
    except ModuleNotFoundError as error:
        if error.name != "pytest_tornasync":
            raise
        _problem = "pytest-tornasync is not installed: install the test extras, pip install -e '.[test]'"
    except AttributeError as error:   # pytest removed something the plugin uses
        _problem = (f"pytest-tornasync {metadata.version('pytest-tornasync')} cannot load under pytest "
                    f"{pytest.__version__} ({error}); install a pytest it supports: pip install 'pytest<10' "
                    "(the range setup.py's [test] extra pins)")


def pytest_configure(config: pytest.Config) -> None:
    if _problem:
        raise pytest.UsageError(_problem)
    if config.option.async_test_timeout is None:
        config.option.async_test_timeout = ASYNC_TEST_TIMEOUT

