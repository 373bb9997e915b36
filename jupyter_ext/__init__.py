"""Everything that needs Jupyter: the server extension (`app.py`, `handlers.py`) and notebook widgets.

The core package `autopm_realtime` never imports from here. Importing this package imports nothing from
Jupyter; `jupyter server` finds the extension through `_jupyter_server_extension_points`.
"""

from typing import Any

from autopm_realtime import __version__

from .stream import publish_events, stream_events

__all__ = ["ProgressDashboard", "__version__", "publish_events", "stream_events"]


def __getattr__(name: str) -> Any:
    """`ProgressDashboard` on first use, so importing the package does not import ipywidgets."""
    if name == "ProgressDashboard":
        from .widgets import ProgressDashboard

        return ProgressDashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    """The extension's entry point for jupyter_server 2.x (`jupyter server extension enable jupyter_ext`)."""
    from .app import AutoPMRealtime

    return [{"module": "jupyter_ext.app", "app": AutoPMRealtime}]
