"""The Jupyter Server extension: one `RealtimeService` started and stopped with the server, and the core's
handlers (with Jupyter's authentication, `handlers.py`) mounted under `{base_url}autopm/`.

Configured with traitlets on `AutoPMRealtime` (`c.AutoPMRealtime.heartbeat = 10`, or
`--AutoPMRealtime.heartbeat=10` on the `jupyter server` command line). The traits become a core
`Settings`, checked by the same `Settings.validate()` as the standalone server; an invalid value is
logged as one error naming the trait, and the extension does not start (with
`ServerApp.reraise_server_extension_failures = True` the server does not start either).

Lifecycle (jupyter_server 2.x): the service is built and the handlers mounted when the extension is
loaded (`initialize_settings`, `initialize_handlers`), it starts once the server's event loop runs
(`_start_jupyter_server_extension`) and stops in the server's shutdown hook (`stop_extension`), which
jupyter_server awaits on SIGTERM, on `POST /api/shutdown` and on a confirmed Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Dict, Float, Integer, List, Unicode

from autopm_realtime.brokers.memory import DEFAULT_HISTORY_SIZE
from autopm_realtime.config import OPTIONS, ConfigError, ProjectSpec, Settings
from autopm_realtime.events import PROJECT_ID_PATTERN
from autopm_realtime.hub import DEFAULT_HEARTBEAT_SECONDS
from autopm_realtime.service import RealtimeService

from .handlers import jupyter_routes

#: Where the endpoints are mounted, below the server's `base_url`.
URL_PREFIX = "/autopm/"

#: The in-process broker; `redis://...` (and `rediss://`, `unix://`) selects the Redis Streams broker.
MEMORY_BROKER_URL = "memory://"

TRAIT_CLASS = "AutoPMRealtime"

#: Settings fields that have a trait of their own, by field name → trait name.
TRAIT_FIELDS = {"projects": "projects", "heartbeat": "heartbeat", "history": "history",
                "auto_commit": "auto_commit", "tasks": "tasks", "no_watch": "no_watch", "broker": "broker_url"}

#: Settings fields that mean nothing inside Jupyter: Jupyter binds, authenticates, logs and does CORS.
SERVER_FIELDS = frozenset({"host", "port", "cors_origins", "publish_token", "insecure", "log_level",
                           "workers", "worker_restarts", "jwt_secret", "jwt_public_key", "jwt_audience",
                           "jwt_issuer"})

_OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def build_settings(*, root_dir: str | Path, projects: Sequence[str] = (),
                   heartbeat: float = DEFAULT_HEARTBEAT_SECONDS, history: int = DEFAULT_HISTORY_SIZE,
                   broker_url: str = MEMORY_BROKER_URL, auto_commit: str = "off",
                   tasks: Sequence[str] = (), no_watch: bool = False,
                   core_settings: Mapping[str, Any] | None = None) -> Settings:
    """The core `Settings` for the extension's traits, validated as the standalone server's are.

    Raises ConfigError whose message names the `AutoPMRealtime` trait to change."""
    try:
        values: dict[str, Any] = _core_values(core_settings or {})
        values["broker"] = _broker(broker_url)
        root = Path(root_dir).expanduser().resolve()
        values.update(
            projects=tuple(_project(text, root) for text in projects) or (_default_project(root),),
            heartbeat=heartbeat, history=history, auto_commit=auto_commit.strip().lower(),
            tasks=tuple(tasks), no_watch=no_watch)
        return Settings(**values).validate()
    except ConfigError as error:
        message = _in_trait_names(str(error))
        raise ConfigError(message if TRAIT_CLASS in message else f"{TRAIT_CLASS}: {message}") from None


def _broker(url: str) -> str:
    """The core's `--broker` value for a `broker_url` trait."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "memory" and not parts.netloc and parts.path in ("", "/"):
        return "memory"
    if scheme in ("redis", "rediss", "unix"):
        return url.strip()
    raise ConfigError(f"{TRAIT_CLASS}.broker_url {url!r} is not supported: use {MEMORY_BROKER_URL!r} (the "
                      "in-process broker) or a redis://host:port/db URL")


def _core_values(core_settings: Mapping[str, Any]) -> dict[str, Any]:
    """`core_settings` holds any other `Settings` field by name, e.g. {"commit_quiet": 1}."""
    values = {}
    for name, value in core_settings.items():
        where = f"{TRAIT_CLASS}.core_settings[{name!r}]"
        if name in TRAIT_FIELDS:
            raise ConfigError(f"{where}: set {TRAIT_CLASS}.{TRAIT_FIELDS[name]} instead")
        if name in SERVER_FIELDS:
            raise ConfigError(f"{where}: Jupyter Server decides this; it has no meaning here")
        if name not in _OPTIONS_BY_NAME:
            raise ConfigError(f"{where}: no such setting (see `python -m autopm_realtime serve --help`)")
        option = _OPTIONS_BY_NAME[name]
        try:
            if option.repeatable:
                items = [value] if isinstance(value, str) else list(value)
                values[name] = tuple(str(item) for item in items)
            else:
                values[name] = option.kind(str(value)) if option.kind is not str else str(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"{where} = {value!r}: {error}") from None
    return values


def _project(text: str, root: Path) -> ProjectSpec:
    """`PATH` or `PATH=ID`, a relative PATH being relative to the server's root directory."""
    raw_path, sep, raw_id = text.rpartition("=") if "=" in text else (text, "", "")
    path = Path(raw_path).expanduser()
    return ProjectSpec.parse(f"{path if path.is_absolute() else root / path}{sep}{raw_id}")


def _default_project(root: Path) -> ProjectSpec:
    """The root directory, with an id made from its name (a name that is no valid id is tidied)."""
    project_id = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).lstrip("-._")[:128].rstrip("-")
    if not PROJECT_ID_PATTERN.match(project_id):
        project_id = "jupyter"
    return ProjectSpec.parse(f"{root}={project_id}")


def _in_trait_names(message: str) -> str:
    """Say `AutoPMRealtime.heartbeat` where the core's message says `--heartbeat`."""
    for option in sorted(OPTIONS, key=lambda o: len(o.flag), reverse=True):
        if option.name in TRAIT_FIELDS:
            name = f"{TRAIT_CLASS}.{TRAIT_FIELDS[option.name]}"
        else:
            name = f"{TRAIT_CLASS}.core_settings[{option.name!r}]"
        message = re.sub(re.escape(option.flag) + r"(?![\w-])", name, message)
    return message


class AutoPMRealtime(ExtensionApp):
    """autopm-realtime inside Jupyter Server: the event hub's WebSocket, SSE and HTTP API under
    `{base_url}autopm/`, behind Jupyter's authentication."""

    name = "autopm"
    description = __doc__
    extension_url = URL_PREFIX
    load_other_extensions = True

    projects = List(Unicode(), help="""Directories to serve, as PATH or PATH=ID (a relative PATH is
        relative to the server's root directory; the id defaults to the folder's name). Default: the
        server's root directory.""").tag(config=True)
    heartbeat = Float(DEFAULT_HEARTBEAT_SECONDS,
                      help="Seconds between heartbeats on every connection.").tag(config=True)
    history = Integer(DEFAULT_HISTORY_SIZE, help="Events kept for history and resume.").tag(config=True)
    broker_url = Unicode(MEMORY_BROKER_URL, help="""The broker: 'memory://' (in-process) or a Redis URL
        such as 'redis://127.0.0.1:6379/0' (Redis Streams, shared with standalone servers on the same
        prefix; needs the [redis] extra).""").tag(config=True)
    auto_commit = Unicode("off", help="""Snapshots of the projects into git: 'off' (the default inside
        Jupyter), 'shadow' (commits on refs/autopm/autosave/<branch>, never touching your branch or
        index) or 'branch' (commits on your branch when it is safe).""").tag(config=True)
    tasks = List(Unicode(), help="""Globs of task files, relative to each project (replace the default
        TODO.md, TASKS.md and .autopm/tasks.json).""").tag(config=True)
    no_watch = Bool(False, help="""Do not watch the projects' files (no file_change events, and no
        snapshots or progress updates triggered by edits).""").tag(config=True)
    core_settings = Dict(help="""Any other setting of the standalone server by its name, e.g.
        {"commit_quiet": 1, "ignore": ["*.log"]} (see `python -m autopm_realtime serve --help`;
        host, port, CORS, publish token and log level are Jupyter's business).""").tag(config=True)

    service: RealtimeService | None = None
    startup_error: str | None = None
    _started = False

    def build_settings(self) -> Settings:
        assert self.serverapp is not None
        return build_settings(root_dir=self.serverapp.root_dir, projects=self.projects,
                              heartbeat=self.heartbeat, history=self.history, broker_url=self.broker_url,
                              auto_commit=self.auto_commit, tasks=self.tasks, no_watch=self.no_watch,
                              core_settings=self.core_settings)

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        _log_through(self.log)
        try:
            settings = self.build_settings()
        except ConfigError as error:
            self.startup_error = str(error)
            self.log.error("autopm-realtime is not started: %s", error)
            if self.serverapp.reraise_server_extension_failures:
                raise
            return
        self.service = RealtimeService(settings)

    def initialize_handlers(self) -> None:
        if self.service is not None:
            self.handlers.extend(jupyter_routes(self.service, URL_PREFIX))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.service is None:
            return
        try:
            await self.service.start()
        except BaseException:
            await self.service.stop()
            raise
        self._started = True
        projects = ", ".join(f"{p.id}={p.path}" for p in self.service.settings.projects)
        self.log.info("autopm-realtime serving %s (projects: %s)",
                      url_path_join(serverapp.connection_url, URL_PREFIX), projects)

    async def stop_extension(self) -> None:
        """Sources, hub (closing every connection with 1001) and broker, in that order."""
        if self.service is not None and self._started:
            self._started = False
            await self.service.stop()
            self.log.info("autopm-realtime stopped")


def _log_through(log: logging.Logger) -> None:
    """The core logs to `autopm_realtime`; send that through Jupyter's log handlers and format."""
    core = logging.getLogger("autopm_realtime")
    if not core.handlers and log.handlers:
        for handler in log.handlers:
            core.addHandler(handler)
        core.setLevel(log.getEffectiveLevel())
        core.propagate = False
