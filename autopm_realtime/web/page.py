"""The page at `/`: the live dashboard, one self-contained HTML response.

`static/dashboard.html` holds two markers that are replaced by `static/dashboard.css` and
`static/dashboard.js`, so the page needs no route of its own for assets (inside Jupyter only the routes of
`web/app.py` are mounted) and works offline. The page's own URLs are relative (see the script).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from .base import JsonHandler

CSS_MARKER = "/*__DASHBOARD_CSS__*/"
JS_MARKER = "/*__DASHBOARD_JS__*/"


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def dashboard_page() -> bytes:
    """The dashboard with its stylesheet and script inlined (read once per process)."""
    html = _read("dashboard.html")
    # Neither inlined text may end its element early.
    css = re.sub(r"</(style)", r"<\\/\1", _read("dashboard.css"), flags=re.IGNORECASE)
    js = re.sub(r"</(script)", r"<\\/\1", _read("dashboard.js"), flags=re.IGNORECASE)
    html = html.replace(CSS_MARKER, css, 1).replace(JS_MARKER, js, 1)
    return html.encode("utf-8")


class DashboardPageHandler(JsonHandler):
    requires_token = False   # the page holds no data; its requests carry the `?token=` it was opened with
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(dashboard_page())
