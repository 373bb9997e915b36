"""One `Settings` object, from command-line flags, `AUTOPM_*` environment variables and defaults.

Each setting is declared once in `OPTIONS`; the `serve` flags, their `--help` text, the environment
variable names and the table in the README are all derived from that declaration. A flag beats the
environment; the environment beats the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .events import DEFAULT_MAX_EVENT_BYTES, EventTypeRegistry, parse_extra_event_type
from .brokers.memory import DEFAULT_HISTORY_SIZE
from .connection import DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES
from .hub import DEFAULT_BACKLOG_EVENTS, DEFAULT_HEARTBEAT_SECONDS, DEFAULT_SLICE_MS

ENV_PREFIX = "AUTOPM_"


class ConfigError(ValueError):
    """A setting is invalid or the combination is unsafe; the message says what to change."""


@dataclass(frozen=True)
class ProjectSpec:
    """A directory the server serves, and the id events name it by."""

    path: Path
    id: str

    @classmethod
    def parse(cls, text: str) -> ProjectSpec:
        """`PATH` or `PATH=ID`; the id defaults to the folder's name."""
        from .events import PROJECT_ID_PATTERN

        raw_path, sep, raw_id = text.rpartition("=") if "=" in text else (text, "", "")
        path = Path(raw_path).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--project {text!r}: {path} is not a directory")
        project_id = raw_id if sep else path.name
        if not PROJECT_ID_PATTERN.match(project_id):
            raise ConfigError(f"--project {text!r}: project id {project_id!r} must be 1-128 letters, "
                              "digits, '.', '_' or '-'; give one explicitly as PATH=ID")
        return cls(path, project_id)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    projects: tuple[ProjectSpec, ...] = ()
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    history: int = DEFAULT_HISTORY_SIZE
    cors_origins: tuple[str, ...] = ()
    publish_token: str | None = None
    insecure: bool = False
    log_level: str = "info"
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_message_bytes: int = 64 * 1024
    max_publish_bytes: int = 1024 * 1024
    max_publish_events: int = 1_000
    queue_max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    fanout_slice_ms: float = DEFAULT_SLICE_MS
    fanout_backlog: int = DEFAULT_BACKLOG_EVENTS
    write_interval_ms: float = 0.0
    sse_retry_ms: int = 3_000
    websocket_compression: bool = False
    event_types: tuple[str, ...] = ()
    no_watch: bool = False
    ignore: tuple[str, ...] = ()
    coalesce_ms: int = 100
    auto_commit: str | None = None   # None: shadow in a git repository, off elsewhere
    commit_quiet: float = 2.0
    commit_max_wait: float = 30.0
    commit_interval: float = 900.0
    commit_message: str = "autopm: snapshot of {changes_count} change(s)"
    commit_author: str = "autopm-realtime <autopm-realtime@localhost>"
    watch_max_pending: int = 50_000
    watch_max_queued: int = 50_000
    watch_max_restarts: int = 5
    watch_start_timeout: float = 30.0
    commit_max_pending: int = 10_000
    commit_lock_retries: int = 5
    commit_ref_retries: int = 5
    tasks: tuple[str, ...] = ()
    risk_interval: float = 60.0
    stall_after: float = 3 * 24 * 3600.0
    velocity_window: float = 7 * 24 * 3600.0
    velocity_min_tasks: int = 2
    commit_failures: int = 3
    max_task_files: int = 100
    max_tasks_per_file: int = 10_000
    max_task_file_bytes: int = 1024 * 1024
    broker: str = "memory"
    redis_prefix: str = "autopm"
    workers: int = 1
    worker_restarts: int = 5
    owner_ttl: float = 10.0
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    ws_message_rate: float = 50.0
    ws_message_burst: int = 200
    ws_rate_violations: int = 20
    publish_rate: float = 1000.0
    publish_burst: int = 2000
    rate_limit_keys: int = 10_000
    max_connections: int = 20_000
    max_connections_per_address: int = 0

    def with_port(self, port: int) -> Settings:
        return dataclasses.replace(self, port=port)

    @property
    def uses_redis(self) -> bool:
        return self.broker != "memory"

    def validate(self) -> Settings:
        """Refuse unsafe or impossible combinations before anything binds."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be 0-65535")
        positive = ("heartbeat", "history", "max_event_bytes", "max_message_bytes", "max_publish_bytes",
                    "max_publish_events", "queue_max_messages", "queue_max_bytes", "fanout_slice_ms",
                    "fanout_backlog", "sse_retry_ms", "coalesce_ms", "commit_quiet", "commit_max_wait",
                    "commit_interval", "workers", "owner_ttl", "ws_message_rate", "ws_message_burst",
                    "ws_rate_violations", "publish_rate", "publish_burst", "rate_limit_keys",
                    "max_connections")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        for name in ("write_interval_ms", "worker_restarts", "max_connections_per_address",
                     "watch_start_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more")
        if self.queue_max_bytes < 2 * self.max_event_bytes:
            raise ConfigError(f"--queue-max-bytes {self.queue_max_bytes} must be at least twice "
                              f"--max-event-bytes {self.max_event_bytes}, or one large event would close "
                              "every connection as a slow consumer")
        if not is_loopback(self.host) and not self.publish_token and not self.insecure:
            raise ConfigError(
                f"refusing to bind {self.host}: it is reachable from other machines and no "
                "--publish-token is set, so anyone there could publish. Set --publish-token, bind "
                "127.0.0.1, or pass --insecure if this is really what you want.")
        try:
            EventTypeRegistry(parse_extra_event_type(spec) for spec in self.event_types)
        except ValueError as error:
            raise ConfigError(f"--event-type: {error}") from None
        from .project import source_options   # the sources' own checks, so a bad value stops start-up

        try:
            source_options(self)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self._validate_cluster_and_auth()
        ids = [p.id for p in self.projects]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError("two --project entries share the id " + ", ".join(duplicates)
                              + "; give them distinct ids with PATH=ID")
        return self

    def _validate_cluster_and_auth(self) -> None:
        if self.broker != "memory" and not self.broker.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--broker {self.broker!r}: use memory or a redis://host:port/db URL")
        if self.workers > 1 and not self.uses_redis:
            raise ConfigError(f"--workers {self.workers} needs --broker redis://...: with the in-process "
                              "memory broker each worker would keep its own history and its clients would "
                              "see only the events published to that worker")
        if self.jwt_secret and self.jwt_public_key:
            raise ConfigError("give --jwt-secret (HS256) or --jwt-public-key (RS256/ES256), not both")
        if self.jwt_public_key and not Path(self.jwt_public_key).is_file():
            raise ConfigError(f"--jwt-public-key {self.jwt_public_key}: no such file (give the path of a "
                              "PEM public key)")
        if (self.jwt_audience or self.jwt_issuer) and not self.jwt_enabled:
            raise ConfigError("--jwt-audience and --jwt-issuer need --jwt-secret or --jwt-public-key")
        from .service import make_verifier   # the key's own checks, so a bad key stops start-up

        try:
            make_verifier(self)
        except (ValueError, OSError) as error:
            raise ConfigError(f"--jwt-secret/--jwt-public-key: {error}") from None

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False   # a host name other than localhost may resolve to anything


@dataclass(frozen=True)
class Option:
    """One `serve` setting as the command line and the environment see it."""

    name: str                       # the Settings field
    help: str
    kind: Callable[[str], Any] = str
    repeatable: bool = False        # flag may be given many times; env var is comma-separated
    switch: bool = False            # a flag without a value
    singular: str | None = None     # the flag's name when it differs from the field's (--project)
    separator: str = ","            # between a repeatable option's values in its environment variable
    default_text: str | None = None  # how --help shows a default that is computed, not a value

    @property
    def flag(self) -> str:
        return "--" + (self.singular or self.name).replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError("must be debug, info, warning or error")
    return level


def _auto_commit_mode(text: str) -> str:
    mode = text.lower()
    if mode not in AUTO_COMMIT_MODES:
        raise argparse.ArgumentTypeError("must be " + ", ".join(AUTO_COMMIT_MODES))
    return mode


AUTO_COMMIT_MODES = ("shadow", "branch", "off")


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use 1/0, true/false)")


OPTIONS: tuple[Option, ...] = (
    Option("projects", "a directory to serve, as PATH or PATH=ID (repeatable; the id defaults to the "
           "folder's name)", repeatable=True, singular="project", default_text="current directory"),
    Option("host", "address to bind; anything but loopback needs --publish-token or --insecure"),
    Option("port", "TCP port (0 picks a free one)", int),
    Option("heartbeat", "seconds between heartbeats on every connection", float),
    Option("history", "events kept for history and resume", int),
    Option("cors_origins", "an origin allowed cross-origin HTTP and WebSocket access, e.g. "
           "https://dash.example.com (repeatable; '*' allows any)", repeatable=True,
           singular="cors_origin"),
    Option("publish_token", "require 'Authorization: Bearer TOKEN' on POST /api/v1/events"),
    Option("insecure", "allow binding a non-loopback address without a publish token", _boolean,
           switch=True),
    Option("log_level", "debug, info, warning or error", _log_level),
    Option("max_event_bytes", "largest event accepted, in bytes of encoded envelope", int),
    Option("max_message_bytes", "largest inbound WebSocket message; larger ones close with 1009", int),
    Option("max_publish_bytes", "largest POST /api/v1/events body", int),
    Option("max_publish_events", "most events in one array publish", int),
    Option("queue_max_messages", "messages queued per connection before it is closed as a slow "
           "consumer", int),
    Option("queue_max_bytes", "bytes queued per connection before it is closed as a slow consumer", int),
    Option("fanout_slice_ms", "milliseconds one loop turn may spend delivering events before the server "
           "turns to other work (heartbeats, new connections, publishes) and comes back", float),
    Option("fanout_backlog", "events received but not yet offered to connections; beyond it the hub "
           "offers them all at once instead of in slices", int),
    Option("websocket_compression", "offer permessage-deflate to WebSocket clients: less bandwidth, but "
           "each compressed connection's events are deflated for it alone, costing CPU per delivery",
           _boolean, switch=True),
    Option("write_interval_ms", "at least this many milliseconds between two rounds of writes to the "
           "connections: events published meanwhile share one write per connection, trading that much "
           "latency for far less CPU at high event rates (0: write as soon as possible)", float),
    Option("sse_retry_ms", "the SSE 'retry:' reconnection delay sent to browsers, in milliseconds", int),
    Option("event_types", "register an extra event type, as NAME or NAME:field1,field2 naming its "
           "required data fields (repeatable; ';' between types in the environment variable)",
           repeatable=True, singular="event_type", separator=";"),
    Option("no_watch", "do not watch the projects' files (no file_change events, no auto-commit or "
           "progress updates triggered by edits)", _boolean, switch=True),
    Option("ignore", "a gitignore-style pattern of paths not to watch or snapshot, on top of "
           ".gitignore, .git/info/exclude and editor temporaries (repeatable)", repeatable=True),
    Option("coalesce_ms", "changes to one path within this many milliseconds make one event", int),
    Option("auto_commit", "snapshot mode: shadow (commits on refs/autopm/autosave/<branch>, never "
           "touching your branch or index), branch (commits on your branch when it is safe) or off",
           _auto_commit_mode, default_text="shadow in a git repository, else off"),
    Option("commit_quiet", "seconds without changes before a snapshot", float),
    Option("commit_max_wait", "at most this many seconds after the first change while changes keep "
           "coming", float),
    Option("commit_interval", "seconds between scheduled snapshots while changes are pending", float),
    Option("commit_message", "snapshot commit message; {changes_count}, {trigger}, {branch} and "
           "{timestamp} are filled in"),
    Option("commit_author", "author and committer of snapshots, as 'Name <email>'"),
    Option("watch_max_pending", "paths waiting in their coalescing window before all are published", int),
    Option("watch_max_queued", "file events between the watcher thread and the server before the tree "
           "is rescanned instead", int),
    Option("watch_max_restarts", "watcher crashes in a row before it gives up (the server stays up)", int),
    Option("watch_start_timeout", "seconds `serve` waits for the watchers to watch and index their trees "
           "before it answers, so that every change made once it answers is seen; past it, or when a "
           "watcher gave up, it serves anyway and logs a warning (0: do not wait)", float),
    Option("commit_max_pending", "changed paths remembered between snapshots (more are counted only)",
           int),
    Option("commit_lock_retries", "branch mode: retries while another process holds .git/index.lock",
           int),
    Option("commit_ref_retries", "retries when the snapshot ref moves under a commit", int),
    Option("tasks", "a glob of task files, relative to the project (repeatable; replaces the default)",
           repeatable=True, default_text="TODO.md, TASKS.md and .autopm/tasks.json"),
    Option("risk_interval", "seconds between evaluations of the time-based risk rules", float),
    Option("stall_after", "seconds of unchanged progress, with tasks open, before a 'stalled' risk",
           float),
    Option("velocity_window", "seconds in each of the two windows the 'velocity' risk compares", float),
    Option("velocity_min_tasks", "completions in the earlier window needed to judge velocity", int),
    Option("commit_failures", "auto-commit errors in a row before a 'commit_failures' risk", int),
    Option("max_task_files", "task files read per project", int),
    Option("max_tasks_per_file", "tasks read from one task file", int),
    Option("max_task_file_bytes", "largest task file read", int),
    Option("broker", "memory (in this process) or a Redis URL such as redis://127.0.0.1:6379/0 (Redis "
           "Streams: shared by every server process, history survives restarts of the server)"),
    Option("redis_prefix", "prefix of every Redis key this server uses (one prefix per deployment)"),
    Option("workers", "server processes on one port (SO_REUSEPORT); above 1 needs a Redis --broker", int),
    Option("worker_restarts", "times a worker that died on its own is started again before the server "
           "gives up", int),
    Option("owner_ttl", "seconds a process holds a project's Redis lock without renewing it; the one "
           "holding it runs the project's sources, and another takes over this long after it dies", float),
    Option("jwt_secret", "require a JWT signed with this HS256 secret on every connection and request"),
    Option("jwt_public_key", "require a JWT signed with the private key of this PEM public key file "
           "(RS256 for RSA, ES256 for EC P-256)"),
    Option("jwt_audience", "the 'aud' a JWT must carry"),
    Option("jwt_issuer", "the 'iss' a JWT must carry"),
    Option("ws_message_rate", "WebSocket messages per second a client may send (token bucket)", float),
    Option("ws_message_burst", "WebSocket messages a client may send at once before the rate applies", int),
    Option("ws_rate_violations", "messages refused with 'rate_limited' in a row before the WebSocket is "
           "closed with 1008", int),
    Option("publish_rate", "publish requests per second per token, or per client address without one",
           float),
    Option("publish_burst", "publish requests at once before the rate applies", int),
    Option("rate_limit_keys", "tokens and addresses whose publish rate is tracked (least recently seen "
           "are forgotten)", int),
    Option("max_connections", "open WebSocket and SSE connections in total", int),
    Option("max_connections_per_address", "open connections from one client address; 0: no limit "
           "(behind a proxy every client has the proxy's address)", int),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for option in OPTIONS:
        shown = option.default_text or getattr(defaults, option.name)
        help_text = f"{option.help} [default: {shown}; env {option.env}]"
        if option.switch:
            parser.add_argument(option.flag, dest=option.name, action="store_const", const=True,
                                default=None, help=help_text)
        elif option.repeatable:
            parser.add_argument(option.flag, dest=option.name, action="append", default=None,
                                metavar=option.flag[2:].upper(), help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.name, type=option.kind, default=None,
                                metavar=option.name.upper(), help=help_text)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Flags over environment over defaults; raises ConfigError naming the bad flag or variable."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is None and option.env in environ:
            value = _from_environment(option, environ[option.env])
        if value is not None:
            values[option.name] = value
    values["projects"] = tuple(ProjectSpec.parse(p) for p in values.get("projects") or [str(Path.cwd())])
    for option in OPTIONS:
        if option.repeatable and option.name in values:
            values[option.name] = tuple(values[option.name])
    return Settings(**values).validate()


def _from_environment(option: Option, text: str) -> Any:
    try:
        if option.repeatable:
            return [item.strip() for item in text.split(option.separator) if item.strip()]
        return option.kind(text) if option.kind is not str else text
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ConfigError(f"{option.env}={text!r}: {error}") from None

