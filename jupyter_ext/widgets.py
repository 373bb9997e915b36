"""Notebook widgets: `ProgressDashboard` follows one project live.

    ProgressDashboard.follow("my-project")          # the last expression of a cell: the widget shows

The dashboard shows the project's progress (bar, percentage, completed/total tasks), a counter of file
changes with the last few paths, the latest auto-commit and the raised risk alerts with their severity.
A background asyncio task in the kernel feeds it from `jupyter_ext.stream.follow` — the core's
`RealtimeClient` (reconnect, resume, SSE fallback) plus a start without a gap — so it keeps updating
while the kernel is idle. It starts from the project's recent history (the latest `history` events and
the server's latest progress), so a dashboard opened late still shows where the project stands.

Every child widget is an attribute (`progress`, `progress_label`, `files`, `commit`, `risks`,
`status`), and so is the state they render (`file_change_count`, `recent_files`, `last_commit`,
`alerts`). Every string that comes from an event is HTML-escaped. Everything is bounded: the last
`max_files` paths, the `max_alerts` newest raised alerts, one widget update per `render_interval` at
most. The task ends on `stop()` and when the widget is closed.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import deque
from contextlib import aclosing
from typing import Any, Callable

import ipywidgets

from .discovery import ServerInfo, resolve_server
from .stream import Message, follow, publish_events, recent_events, request_json, stream_events

__all__ = ["ProgressDashboard", "stream_events", "publish_events", "recent_events"]

log = logging.getLogger(__name__)

DASHBOARD_TYPES = ("progress_update", "file_change", "auto_commit", "risk_alert")
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
SEVERITY_COLOURS = {"critical": "#7f1d1d", "high": "#b91c1c", "medium": "#b45309", "low": "#4b5563"}
RESOLVED_PREFIX = "Resolved: "


def _text(value: Any) -> str:
    """An event's value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def _changes(commit: dict[str, Any]) -> str:
    count = commit.get("changes_count", 0)
    return f"{_text(count)} change{'' if count == 1 else 's'}"


def _when(commit: dict[str, Any]) -> str:
    return f" <small>{_text(commit['timestamp'])}</small>" if commit.get("timestamp") else ""


class ProgressDashboard(ipywidgets.VBox):
    """A live view of one project; see the module's docstring. Create it with `follow()`."""

    def __init__(self, project_id: str, server: ServerInfo, *, history: int = 100, max_files: int = 5,
                 max_alerts: int = 10, render_interval: float = 0.1, **client_options: Any) -> None:
        if max_files < 1 or max_alerts < 1 or render_interval < 0:
            raise ValueError("max_files and max_alerts must be at least 1, render_interval not negative")
        self.project_id = project_id
        self.server = server
        self.history = history
        self.client_options = client_options
        self.render_interval = render_interval
        # the state the widgets render
        self.percentage: float | None = None
        self.completed_tasks = 0
        self.total_tasks = 0
        self.file_change_count = 0
        self.recent_files: deque[tuple[str, str, str | None]] = deque(maxlen=max_files)  # (change, path, old)
        self.last_commit: dict[str, Any] | None = None      # the latest result or error
        self.pending_commit: dict[str, Any] | None = None   # a snapshot started since then
        self.alerts: dict[str, dict[str, Any]] = {}   # alert key -> data, oldest raised first
        self.max_alerts = max_alerts
        self.event_count = 0
        self.reset_count = 0
        self.last_event_id: str | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        # the widgets
        self.title = ipywidgets.HTML(f"<b>{_text(project_id)}</b> <small>{_text(server.url)}</small>")
        self.progress = ipywidgets.FloatProgress(value=0.0, min=0.0, max=100.0, description="Progress")
        self.progress_label = ipywidgets.Label("no progress reported yet")
        self.files = ipywidgets.HTML()
        self.commit = ipywidgets.HTML()
        self.risks = ipywidgets.HTML()
        self.status = ipywidgets.Label("not started")
        super().__init__([self.title, ipywidgets.HBox([self.progress, self.progress_label]),
                          self.files, self.commit, self.risks, self.status])
        self._rendered_at = 0.0
        self._render_handle: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()   # set on every render and status change
        self._render()

    # --- starting and stopping -------------------------------------------------------------------

    @classmethod
    def follow(cls, project_id: str, url: str | None = None, token: str | None = None,
               **options: Any) -> ProgressDashboard:
        """A dashboard following `project_id`, already running. The server is `url`/`token`, else
        `AUTOPM_URL`/`AUTOPM_TOKEN`, else the Jupyter server that owns this kernel
        (`jupyter_ext.discovery`). `options`: `history`, `max_files`, `max_alerts`, `render_interval`,
        and `RealtimeClient` options such as `transport`."""
        dashboard = cls(project_id, resolve_server(url, token), **options)
        try:
            dashboard.start()
        except BaseException:
            dashboard.close()
            raise
        return dashboard

    def start(self) -> None:
        """Start following in a background task of the running event loop (the kernel's)."""
        loop = _running_loop()
        if loop is None:
            raise RuntimeError("ProgressDashboard needs a running asyncio loop: use it in a notebook cell "
                               "or inside a coroutine")
        if self.task is not None:
            raise RuntimeError("this dashboard has already been started")
        self._set_status(f"connecting to {self.server.url}")
        self.task = loop.create_task(self._run(), name=f"ProgressDashboard({self.project_id})")

    def stop(self) -> None:
        """Stop following: the background task ends and the connection closes."""
        task, handle = getattr(self, "task", None), getattr(self, "_render_handle", None)
        try:
            if task is not None and not task.done():
                task.cancel()
            if handle is not None:
                handle.cancel()
                self._render_handle = None
        except RuntimeError:   # the loop is closed already (a widget collected at exit): nothing runs
            pass

    def close(self) -> None:
        """Stop following and close the widget and its children."""
        self.stop()
        for name in ("progress", "progress_label"):
            if hasattr(self, name):
                getattr(self, name).close()
        for child in self.children:
            child.close()
        super().close()

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait until the background task has ended (after `stop()`, an error, or closing)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait([self.task], timeout=timeout)
            if not self.task.done():
                raise TimeoutError(f"the dashboard's task did not end within {timeout:g} s")

    async def wait_for(self, condition: Callable[[ProgressDashboard], bool], timeout: float = 10.0) -> None:
        """Wait until `condition(dashboard)` holds for what the widgets show; TimeoutError (with the
        dashboard's state) after `timeout` seconds, or the error that ended the dashboard."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition(self):
            if self.error is not None:
                raise self.error
            if self.task is None or self.task.done():
                raise RuntimeError(f"the dashboard is not running ({self.status.value})")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                if condition(self):
                    return
                raise TimeoutError(f"condition not met within {timeout:g} s; {self.describe()}") from None

    def describe(self) -> str:
        """The dashboard's state in one line (for error messages and logs)."""
        return (f"progress {self.progress.value} ({self.progress_label.value}); "
                f"{self.file_change_count} file changes, last {list(self.recent_files)}; "
                f"commit {self.last_commit}; alerts {list(self.alerts)}; status {self.status.value}")

    # --- the background task --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._load_progress()
            self._set_status(f"following {self.project_id} at {self.server.url}")
            async with aclosing(follow(self.server, project_id=self.project_id,
                                       event_types=list(DASHBOARD_TYPES), history=self.history,
                                       **self.client_options)) as events:
                async for message in events:
                    self._apply(message)
        except asyncio.CancelledError:
            self._set_status("stopped")
            raise
        except Exception as error:   # shown in the widget; wait_for() raises it
            log.warning("dashboard for %s stopped: %s", self.project_id, error)
            self.error = error
            self._set_status(f"error: {error}")
        finally:
            self._render()

    async def _load_progress(self) -> None:
        """The server's latest progress for the project (it may be older than the history read next)."""
        try:
            projects = (await request_json(self.server, "api/v1/projects")).get("projects", [])
        except (OSError, ValueError, AttributeError):   # the events will tell, or the client will
            return
        for project in projects:
            if isinstance(project, dict) and project.get("id") == self.project_id \
                    and isinstance(project.get("progress"), dict):
                self._apply_progress(project["progress"])

    def _apply(self, message: Message) -> None:
        kind = message.get("type")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if kind == "reset":
            # The server could not resume: events were missed. Alerts may have been cleared meanwhile;
            # the events the server still has follow this message and raise the current ones again.
            self.reset_count += 1
            self.alerts.clear()
        elif kind == "progress_update":
            self._apply_progress(data)
        elif kind == "file_change":
            self.file_change_count += 1
            old = data.get("old_path")
            self.recent_files.append((str(data.get("change_type", "")), str(data.get("file_path", "")),
                                      None if old is None else str(old)))
        elif kind == "auto_commit":
            if data.get("event") == "start":
                self.pending_commit = dict(data)
            else:
                self.last_commit, self.pending_commit = dict(data), None
        elif kind == "risk_alert":
            self._apply_risk(data)
        if kind != "reset":
            self.event_count += 1
            self.last_event_id = message.get("id")
        self._schedule_render()

    def _apply_progress(self, data: dict[str, Any]) -> None:
        try:
            self.percentage = min(max(float(data["progress_percentage"]), 0.0), 100.0)
            self.completed_tasks = int(data.get("completed_tasks", 0))
            self.total_tasks = int(data.get("total_tasks", 0))
        except (KeyError, TypeError, ValueError):
            pass

    def _apply_risk(self, data: dict[str, Any]) -> None:
        message = str(data.get("message", ""))
        cleared = data.get("state") == "cleared"
        if cleared and message.startswith(RESOLVED_PREFIX):
            message = message[len(RESOLVED_PREFIX):]
        key = str(data.get("alert_key") or data.get("rule") or message)
        self.alerts.pop(key, None)   # a raised alert replaces the earlier one with its key
        if not cleared:
            self.alerts[key] = dict(data)
            while len(self.alerts) > self.max_alerts:
                del self.alerts[next(iter(self.alerts))]

    # --- rendering ------------------------------------------------------------------------------

    def _schedule_render(self) -> None:
        """Render now, or once `render_interval` after the last render: a burst of events makes one
        update of the widgets, not one per event."""
        if self._render_handle is not None:
            return
        wait = self._rendered_at + self.render_interval - time.monotonic()
        if wait <= 0:
            self._render()
        else:
            self._render_handle = asyncio.get_running_loop().call_later(wait, self._render)

    def _render(self) -> None:
        if self._render_handle is not None:
            self._render_handle.cancel()
            self._render_handle = None
        self._rendered_at = time.monotonic()
        if self.percentage is not None:
            self.progress.value = self.percentage
            self.progress.bar_style = "success" if self.percentage >= 100 else ""
            self.progress_label.value = (f"{self.percentage:.1f}% — {self.completed_tasks} of "
                                         f"{self.total_tasks} tasks done")
        self.files.value = self._files_html()
        self.commit.value = self._commit_html()
        self.risks.value = self._risks_html()
        self._changed.set()

    def _files_html(self) -> str:
        count = self.file_change_count
        head = f"<b>{count}</b> file change{'' if count == 1 else 's'}"
        if not self.recent_files:
            return f"<div>{head}</div>"
        items = "".join(
            f"<li><code>{_text(change)}</code> {_text(path)}"
            + (f" <small>(from {_text(old)})</small>" if old else "") + "</li>"
            for change, path, old in reversed(self.recent_files))
        return f"<div>{head}, latest first:<ul style='margin:0'>{items}</ul></div>"

    def _commit_html(self) -> str:
        commit, pending = self.last_commit, self.pending_commit
        if commit is None:
            text = "none yet"
        elif commit.get("success"):
            sha = str(commit.get("sha") or "?")
            text = f"&#10004; <code>{_text(sha[:12])}</code>, {_changes(commit)}{_when(commit)}"
        else:
            reason = f": {_text(commit['reason'])}" if commit.get("reason") else ""
            text = f"&#10008; failed{reason}, {_changes(commit)}{_when(commit)}"
        if pending is not None:
            text += f"; a snapshot of {_changes(pending)} is in progress"
        return f"<div><b>Auto-commit:</b> {text}</div>"

    def _risks_html(self) -> str:
        if not self.alerts:
            return "<div><b>Risks:</b> none raised</div>"
        ordered = sorted(reversed(self.alerts.values()),   # most severe first, then newest first
                         key=lambda alert: SEVERITY_ORDER.get(alert.get("severity"), len(SEVERITY_ORDER)))
        items = "".join(
            f"<li><span style='color:{SEVERITY_COLOURS.get(alert.get('severity'), '#4b5563')};"
            f"font-weight:bold'>{_text(str(alert.get('severity', '')).upper())}</span> "
            f"{_text(alert.get('message', ''))}</li>" for alert in ordered)
        return f"<div><b>Risks:</b><ul style='margin:0'>{items}</ul></div>"

    def _set_status(self, text: str) -> None:
        self.status.value = text
        self._changed.set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

