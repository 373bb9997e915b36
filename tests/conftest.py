"""Fixtures: an in-process server (pytest-tornasync) built from `Settings` a test can adjust."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from autopm_realtime.config import ProjectSpec, Settings
from autopm_realtime.service import RealtimeService
from autopm_realtime.server import make_http_server
from support import SseClient, WsClient

pytest_plugins = ["tornasync_loader"]   # pytest-tornasync, loaded past its deprecations

# The packages whose new releases have broken a fresh install before; their versions head every run, so a
# failure in CI can be read against what pip resolved that day.
KEY_PACKAGES = ("pytest", "pytest-tornasync", "tornado", "watchdog", "dulwich", "jupyter_server", "redis",
                "playwright")


def pytest_report_header(config: pytest.Config) -> str:
    return "key packages: " + ", ".join(f"{name} {_installed_version(name)}" for name in KEY_PACKAGES)


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


@pytest.fixture
def settings_overrides(request) -> dict[str, Any]:
    """Settings a test changes, given with `@with_settings(...)` (tests/support.py)."""
    return getattr(request, "param", {})


@pytest.fixture
def settings(tmp_path, settings_overrides) -> Settings:
    base = Settings(projects=(ProjectSpec(tmp_path, "my-project"),), heartbeat=30.0)
    return dataclasses.replace(base, **settings_overrides).validate()


@pytest.fixture
def service(io_loop, settings) -> RealtimeService:
    service = RealtimeService(settings, run_sources=False)   # transport tests; sources have their own
    io_loop.run_sync(service.start)
    yield service
    io_loop.run_sync(service.stop)


@pytest.fixture
def http_server(io_loop, http_server_port, service):
    """The in-process server, built as `serve` builds it (overrides pytest-tornasync's, which would
    need an `app` fixture and a plain HTTPServer)."""
    server = make_http_server(service)
    server.add_socket(http_server_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.fixture
def port(http_server, http_server_port) -> int:
    return http_server_port[1]


@pytest.fixture
def http(http_server) -> AsyncHTTPClient:
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def close_test_clients(io_loop):
    """Close every test client a test opened, even when it failed half-way."""
    yield
    for client in (*WsClient.opened, *SseClient.opened):
        client.close()
    WsClient.opened.clear()
    SseClient.opened.clear()
