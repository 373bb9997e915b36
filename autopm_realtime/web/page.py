"""The page at `/`. A placeholder until the dashboard lands: it says what the server offers."""

from __future__ import annotations

from importlib import resources

from .base import JsonHandler


class DashboardPageHandler(JsonHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(resources.files(__package__).joinpath("static/index.html").read_bytes())
