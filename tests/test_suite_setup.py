"""The suite itself: it starts under the pytest that pip resolves today, keeps our own warnings errors,
and stops with one line that says what to install when pytest outgrows pytest-tornasync."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from support import ROOT, environment

ONE_TEST = "tests/test_config.py::test_project_with_explicit_id"


def run_pytest(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args, ONE_TEST],
                          cwd=ROOT, env=environment(PYTHONPATH=f"{tmp_path}:{ROOT}"), capture_output=True,
                          text=True, timeout=120)


def test_the_suite_starts_with_pytest_tornasync_loaded(tmp_path):
    result = run_pytest(tmp_path, "--fixtures")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "http_server_port" in result.stdout and "io_loop" in result.stdout   # tornasync's fixtures


def test_a_pytest_without_yield_fixture_stops_the_run_with_what_to_pin(tmp_path):
    """pytest 10 removes `pytest.yield_fixture`, which pytest-tornasync 0.6 uses: the run must say what to
    install in one line, not fail in a plugin-load traceback."""
    (tmp_path / "pytest_without_yield_fixture.py").write_text("import pytest\ndel pytest.yield_fixture\n")
    result = run_pytest(tmp_path, "-p", "pytest_without_yield_fixture")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    [line] = [line for line in output.splitlines() if line.strip()]
    assert line.startswith("ERROR: pytest-tornasync ") and "pip install 'pytest<10'" in line, output


def test_our_own_deprecation_warnings_are_still_errors():
    """The loader silences pytest's deprecations for the plugin's import only, not for the suite."""
    with pytest.raises(pytest.PytestDeprecationWarning):
        warnings.warn("a deprecated pytest feature", pytest.PytestRemovedIn10Warning)
