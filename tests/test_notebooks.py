"""The example notebooks, executed top to bottom in a real kernel against a standalone server.

Each notebook asserts what it shows in its own cells, so a notebook that runs without a cell error is a
notebook that works. The kernel is this test's Python, through a kernelspec written to a temporary
JUPYTER_PATH (nothing is installed for the user); AUTOPM_URL points it at the server this file starts.
"""

from __future__ import annotations

import json
import sys
from typing import Iterator

import nbformat
import pytest
from nbclient import NotebookClient

from support import ROOT, Process

NOTEBOOKS = ROOT / "notebooks"
NAMES = ["stream_events.ipynb", "progress_widget.ipynb", "standalone_server.ipynb"]
KERNEL_NAME = "autopm-test-python"
CELL_TIMEOUT = 30

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]   # a kernel per notebook


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> Iterator[str]:
    project = tmp_path_factory.mktemp("project")
    process, url = Process.serve("--project", f"{project}=demo", "--no-watch", "--auto-commit", "off")
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture
def kernel_environment(tmp_path, monkeypatch, server_url) -> None:
    """A kernelspec for this interpreter in a temporary JUPYTER_PATH, and the environment the kernel
    inherits: the server's URL, the repository importable, a throw-away IPython profile."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "autopm tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("AUTOPM_URL", server_url)
    monkeypatch.delenv("AUTOPM_TOKEN", raising=False)


@pytest.mark.parametrize("name", NAMES)
async def test_notebook_runs_top_to_bottom(name, kernel_environment):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    await client.async_execute()   # raises CellExecutionError, with the cell and its traceback, on an error
    errors = [output for cell in notebook.cells for output in cell.get("outputs", ())
              if output.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert (cell.outputs, cell.execution_count) == ([], None), cell.source[:60]


def test_every_notebook_is_tested():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
