"""Fixtures: an in-process server (pytest-tornasync) built from `Settings` a test can adjust."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from autopm_realtime.config import ProjectSpec, Settings
from autopm_realtime.service import RealtimeService
from autopm_realtime.web.app import make_app


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change the server's settings."""
    return {}


@pytest.fixture
def settings(tmp_path, settings_overrides) -> Settings:
    base = Settings(projects=(ProjectSpec(tmp_path, "my-project"),), heartbeat=30.0)
    return dataclasses.replace(base, **settings_overrides).validate()


@pytest.fixture
def service(io_loop, settings) -> RealtimeService:
    service = RealtimeService(settings)
    io_loop.run_sync(service.start)
    yield service
    io_loop.run_sync(service.stop)


@pytest.fixture
def app(service):
    return make_app(service)


@pytest.fixture
def port(http_server, http_server_port) -> int:
    return http_server_port[1]


@pytest.fixture
def http(http_server) -> AsyncHTTPClient:
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()
