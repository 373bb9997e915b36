"""The file watcher: a project's working tree → `file_change` events, one per path per coalescing window.

How a change travels
--------------------
watchdog's threads (inotify reader, emitter, dispatcher) hand each filesystem event to `Handler`, which
makes it project-relative, drops the noise of `.git/` at once and appends it to a bounded `Inbox`; the
first item of a batch wakes the IOLoop with `IOLoop.add_callback`. Everything else happens on the loop,
in one task (`_pump`), so nothing there needs a lock:

1. *translate* each event into per-file operations (created / modified / deleted / moved-in), skipping
   ignored paths (`ignore.py`); a directory becomes one operation per file it holds, known from the
   index of files (`FileIndex`, built by a scan at start and kept current);
2. *merge* the operation into that path's pending change with `merge()` (the table in `changes.py`);
3. *flush* a path once its window (`coalesce_seconds`, from its first change) is over: `os.lstat` it —
   a path that is not there (or is a directory) was a phantom and is not reported as created/modified —
   then publish.

The merge rules, and how directories are reported, are in `changes.py`; watchdog's threads and the
overflow hook are in `inotify.py`.

Overflow, crashes, bounds
-------------------------
When the kernel's inotify queue overflows (`IN_Q_OVERFLOW`), watchdog 7 only logs and rebuilds its
watches; our `InotifyFD` subclass sees the event in `handle_event` first and flags it. The inbox flags the
same when it is full and drops an event. Either way the tree is rescanned and compared with the index
(size, mtime_ns and inode per file), and the differences go through the same merge and flush, so nothing
is lost. A crash — an exception in any watchdog thread (their `run` is guarded) or in our handling on the
loop — is logged; the observer is torn down and started again after a backoff of
`restart_backoff_seconds`, doubling up to `restart_backoff_max_seconds`, followed by a rescan. After
`max_restarts` crashes in a row (a crash more than `restart_reset_seconds` after the last restart starts
the count again) the watcher gives up and logs an error; the server stays up either way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any, Callable

from tornado.ioloop import IOLoop

from . import Source, SourceContext
from .changes import (CREATED, DELETED, MODIFIED, MOVED, Change, FileIndex, Signature, merge, reportable,
                      scan_tree, settle, signature_of)
from .ignore import IgnoreRules, is_rule_file
from .inotify import EVENT_FILTER, Handler, Inbox, RawEvent, WatcherObserver


log = logging.getLogger(__name__)



@dataclass(frozen=True)
class WatcherOptions:
    """How a `FileWatcher` behaves; every bound is here, with its default."""

    ignore: tuple[str, ...] = ()
    """Extra gitignore-style globs never to report (`--ignore`), on top of .gitignore and editor
    temporaries."""
    coalesce_seconds: float = 0.1
    """A path's changes within this long of its first change are published as one event."""
    max_pending_paths: int = 50_000
    """Paths waiting in their coalescing window; reaching it publishes them all at once."""
    max_queued_events: int = 50_000
    """Filesystem events between watchdog's thread and the IOLoop; past it events are dropped and the
    tree is rescanned instead (as after a kernel queue overflow), so nothing is lost."""
    max_restarts: int = 5
    """Crashes in a row after which the watcher gives up (logged; the server stays up)."""
    restart_backoff_seconds: float = 0.5
    """Wait before the first restart; doubled for each further crash in a row."""
    restart_backoff_max_seconds: float = 30.0
    """The longest wait before a restart."""
    restart_reset_seconds: float = 60.0
    """A crash this long after the last restart counts as the first of a new row."""

    def __post_init__(self) -> None:
        for name in ("max_pending_paths", "max_queued_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be 0 or more")
        for name in ("coalesce_seconds", "restart_backoff_seconds", "restart_backoff_max_seconds",
                     "restart_reset_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        object.__setattr__(self, "ignore", tuple(self.ignore))


# --- the source --------------------------------------------------------------------------------

@dataclass
class _Pending:
    change: Change
    deadline: float


COUNTERS = (
    "published",        # events published
    "phantoms",         # paths reported by watchdog that were not files when their window closed
    "overflows",        # rescans after lost events (kernel queue overflow, or a full inbox)
    "dropped_events",   # events the full inbox dropped
    "crashes",          # exceptions in watchdog's threads or in our handling
    "restarts",         # successful restarts after a crash
)


class _GiveUp(Exception):
    """Too many crashes in a row: the watcher stops for good."""


class FileWatcher(Source):
    """Publishes `file_change` for the project's working tree. See the module docstring."""

    def __init__(self, context: SourceContext, options: WatcherOptions = WatcherOptions()) -> None:
        super().__init__(context)
        self.options = options
        self.root = os.path.realpath(context.project.path)
        self._rules = IgnoreRules(self.root, options.ignore)
        self._rules_changed_in_step = False
        self._index = FileIndex()
        self._pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._moved_to: dict[str, str] = {}           # origin → the path a pending move took it to
        self._io_loop: IOLoop | None = None
        self._wake = asyncio.Event()
        self._inbox: Inbox | None = None
        self._observer: Any = None
        self._observer_lock = threading.Lock()
        self._helpers: set[threading.Thread] = set()
        self._abort = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._stopping = False
        self._indexed = False                          # the scan at start has been done
        self._crashes_in_a_row = 0
        self._last_restart = -float("inf")
        self.counters = collections.Counter[str](dict.fromkeys(COUNTERS, 0))

    # -- lifecycle --

    async def start(self) -> None:
        """Returns at once; the observer starts and the tree is scanned in the background (`ready()`)."""
        if self._task is not None:
            raise RuntimeError("the file watcher is already started")
        self._io_loop = IOLoop.current()
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._pump())

    async def ready(self) -> bool:
        """Wait until the watcher watches (True), or has given up (False)."""
        assert self._ready is not None, "start() first"
        return await asyncio.shield(self._ready)

    async def stop(self) -> None:
        """Stop the observer's threads, any scan and the pump; nothing is published after this returns."""
        self._stopping = True
        self._abort.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._join_helpers()
        await self._halt_observer()
        await self._join_helpers()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(False)

    def known_files(self) -> list[str]:
        """The project-relative paths of the files the watcher knows of, sorted (for other sources)."""
        return sorted(self._index.paths())

    def stats(self) -> dict[str, int]:
        """The counters (`COUNTERS`) and the current sizes of the index, the windows and the inbox."""
        inbox = self._inbox
        return {**self.counters, "known_files": len(self._index), "pending_paths": len(self._pending),
                "queued_events": len(inbox) if inbox is not None else 0}

    # -- threads --

    async def _in_thread(self, name: str, work: Callable[[], Any]) -> Any:
        """Run `work` in a thread of its own (joined by `stop`, so none outlives the watcher)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle_future(result: Any, error: BaseException | None) -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)

        def body() -> None:
            result, error = None, None
            try:
                result = work()
            except BaseException as caught:          # handed to the awaiting task
                error = caught
            try:
                loop.call_soon_threadsafe(settle_future, result, error)
            except RuntimeError:                      # the loop has closed: nobody is waiting
                pass

        thread = threading.Thread(target=body, name=f"autopm-watcher-{name}", daemon=True)
        self._helpers = {t for t in self._helpers if t.is_alive()}
        self._helpers.add(thread)
        thread.start()
        try:
            return await future
        finally:
            if future.done():
                thread.join()         # it has handed over its result and is ending

    async def _join_helpers(self) -> None:
        while any(t.is_alive() for t in self._helpers):
            await asyncio.sleep(0.005)
        self._helpers.clear()

    def _start_observer(self, inbox: Inbox) -> None:
        """(helper thread) A new observer on the root, running, remembered for `_halt_observer`."""
        observer = WatcherObserver(inbox)
        with self._observer_lock:
            self._observer = observer
        observer.schedule(Handler(self.root, inbox), self.root, recursive=True, event_filter=EVENT_FILTER)
        observer.start()

    async def _halt_observer(self) -> None:
        with self._observer_lock:
            observer, self._observer = self._observer, None
        if observer is None:
            return

        def halt() -> None:
            observer.stop()
            if observer.ident is not None:
                observer.join()
        await self._in_thread("stop", halt)

    def _wake_up(self) -> None:
        assert self._io_loop is not None
        self._io_loop.add_callback(self._wake.set)

    # -- the pump: everything on the loop happens here, one step at a time --

    async def _pump(self) -> None:
        try:
            try:
                await self._launch(initial=True)
            except Exception as error:
                await self._recover(error)
            assert self._ready is not None
            self._ready.set_result(True)
            while True:
                await self._wait_for_work()
                try:
                    await self._step()
                except Exception as error:
                    await self._recover(error)
        except _GiveUp:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(False)

    async def _launch(self, initial: bool) -> None:
        """Start a fresh observer, then scan: the index (at start) or the differences to it (after an
        overflow or a crash). Watching starts first, so nothing changed during the scan is missed."""
        inbox = Inbox(self.options.max_queued_events, self._wake_up)
        await self._in_thread("start", lambda: self._start_observer(inbox))
        self._inbox = inbox
        if initial:
            self._index = FileIndex(await self._scan())
            self._indexed = True
        else:
            await self._reconcile()

    async def _scan(self) -> dict[str, Signature]:
        rules = self._rules
        return await self._in_thread("scan", lambda: scan_tree(self.root, rules, abort=self._abort))

    async def _wait_for_work(self) -> None:
        timeout = None
        if self._pending:
            first = next(iter(self._pending.values()))
            timeout = max(0.0, first.deadline - self.context.clock.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _step(self) -> None:
        assert self._inbox is not None
        items, overflowed, dropped, crash = self._inbox.take()
        if crash is not None:
            raise crash
        for done, item in enumerate(items, 1):
            self._apply(item)
            if len(self._pending) >= self.options.max_pending_paths:
                await self._flush(everything=True)
            if done % 1000 == 0:
                await asyncio.sleep(0)                # let the rest of the server run during a burst
        if overflowed or dropped:
            self.counters["overflows"] += 1
            self.counters["dropped_events"] += dropped
            log.warning("file watcher for %s: %s; rescanning", self.context.project.id,
                        "the kernel's inotify queue overflowed" if overflowed else
                        f"{dropped} events found the queue full ({self.options.max_queued_events} waiting)")
            await self._reconcile()
        if self._rules_changed_in_step:
            await self._forget_newly_ignored()
        await self._flush()

    async def _recover(self, error: BaseException) -> None:
        """Log the crash, tear the observer down and start again after a backoff; raise `_GiveUp` after
        `max_restarts` crashes in a row."""
        options = self.options
        while True:
            now = self.context.clock.monotonic()
            if now - self._last_restart > options.restart_reset_seconds:
                self._crashes_in_a_row = 0
            self._crashes_in_a_row += 1
            self.counters["crashes"] += 1
            await self._halt_observer()
            if self._crashes_in_a_row > options.max_restarts:
                log.error("file watcher for %s crashed %d times in a row; giving up, file changes are no "
                          "longer reported", self.context.project.id, self._crashes_in_a_row,
                          exc_info=error)
                raise _GiveUp()
            delay = min(options.restart_backoff_seconds * 2 ** (self._crashes_in_a_row - 1),
                        options.restart_backoff_max_seconds)
            log.error("file watcher for %s crashed; restarting in %.2f s (%d of at most %d in a row)",
                      self.context.project.id, delay, self._crashes_in_a_row, options.max_restarts,
                      exc_info=error)
            await asyncio.sleep(delay)
            self._last_restart = self.context.clock.monotonic()
            try:
                await self._launch(initial=not self._indexed)
            except Exception as again:
                error = again
                continue
            self.counters["restarts"] += 1
            return

    # -- translate: raw events → per-file operations --

    def _apply(self, item: RawEvent) -> None:
        kind, path, destination = item
        for touched in (path, destination):
            if touched is not None and is_rule_file(touched):
                self._rules_changed()
        if kind == "file_created":
            self._operate(path, CREATED)
        elif kind == "file_modified":
            self._operate(path, MODIFIED)
        elif kind == "file_attrib":
            self._attributes_changed(path)
        elif kind == "file_deleted":
            self._operate(path, DELETED)
        elif kind == "file_moved":
            assert destination is not None
            self._move(path, destination)
        elif kind == "dir_deleted":
            self._delete_tree(path)
        elif kind == "dir_moved":
            assert destination is not None
            self._move_tree(path, destination)
        elif kind == "dir_created":
            for created in scan_tree(self.root, self._rules, path):
                self._operate(created, CREATED)

    def _visible(self, path: str) -> bool:
        return bool(path) and reportable(path) and not self._rules.is_ignored(path)

    def _operate(self, path: str, operation: str, origin: str | None = None) -> None:
        """Merge one operation into `path`'s pending change and keep the index current."""
        if operation == DELETED:
            if path not in self._index:
                return                                # never reported (ignored, or already gone)
        elif not self._visible(path):
            return
        entry = self._pending.get(path)
        change = merge(entry.change if entry else None, path in self._index, operation, origin)
        if operation == DELETED:
            self._index.discard(path)
        elif path not in self._index:
            self._index.set(path, None)
        if change is None:
            if entry is not None:
                del self._pending[path]
            return
        if entry is None:
            self._pending[path] = _Pending(change, self.context.clock.monotonic()
                                           + self.options.coalesce_seconds)
        else:
            entry.change = change
        if change.kind == MOVED and change.old_path is not None:
            self._moved_to[change.old_path] = path

    def _origin_of(self, path: str) -> str | None:
        """Where the content now at `path` was before this window: itself if it existed, its own origin
        if it was moved here in this window, None if it is new (or not known at all)."""
        if path not in self._index:
            return None
        entry = self._pending.get(path)
        if entry is None or entry.change.kind == MODIFIED:
            return path
        return entry.change.old_path                  # moved: its origin; created: None

    def _move(self, source: str, destination: str) -> None:
        origin = self._origin_of(source)
        self._operate(source, DELETED)
        self._operate(destination, MOVED, origin)

    def _attributes_changed(self, path: str) -> None:
        """Metadata only: a change for us when size, mtime or inode moved (`touch`), not for `chmod`."""
        try:
            current = signature_of(os.lstat(os.path.join(self.root, path)))
        except OSError:
            return
        if path not in self._index or self._index.signature(path) != current:
            self._operate(path, MODIFIED)

    def _delete_tree(self, directory: str) -> None:
        for path in self._index.under(directory):
            if is_rule_file(path):
                self._rules_changed()
            self._operate(path, DELETED)

    def _move_tree(self, source: str, destination: str) -> None:
        origins = {path: self._origin_of(path) for path in self._index.under(source)}
        self._delete_tree(source)
        arrived = scan_tree(self.root, self._rules, destination)
        if any(is_rule_file(path) for path in arrived):
            self._rules_changed()
        for path in arrived:
            self._operate(path, MOVED, origins.get(source + path[len(destination):]))

    # -- rescans --

    async def _reconcile(self) -> None:
        """After events were lost: compare the tree with the index and merge the differences."""
        on_disk = await self._scan()
        for path in self._index.paths():
            if path not in on_disk:
                self._operate(path, DELETED)
        for path, signature in on_disk.items():
            if path not in self._index:
                self._operate(path, CREATED)
            else:
                known = self._index.signature(path)
                if known is not None and known != signature:
                    self._operate(path, MODIFIED)

    def _rules_changed(self) -> None:
        """A rule file changed: later events are judged by the new rules at once."""
        self._rules = self._rules.reloaded()
        self._rules_changed_in_step = True

    async def _forget_newly_ignored(self) -> None:
        """After the rules changed: forget, without an event, the known files they now ignore.

        Files they no longer ignore are not added here: a scan cannot tell one that was there all along
        from one created a moment ago whose event is still on its way, which must come out as `created`.
        So such a file becomes known with its next change, reported as `created`."""
        self._rules_changed_in_step = False
        on_disk = await self._scan()
        for path in self._index.paths():
            if path not in on_disk and self._rules.is_ignored(path):
                self._index.discard(path)
                self._pending.pop(path, None)

    # -- flush: windows that are over → events --

    def _take_due(self, everything: bool) -> dict[str, Change]:
        now = self.context.clock.monotonic()
        group: dict[str, Change] = {}
        while self._pending:
            path, entry = next(iter(self._pending.items()))
            if not everything and entry.deadline > now:
                break
            del self._pending[path]
            group[path] = entry.change
        # a move and the deletion of its origin are settled together, whichever window closed first
        for path, change in list(group.items()):
            partner = change.old_path if change.kind == MOVED else self._moved_to.get(path)
            if partner is not None and partner not in group and partner in self._pending:
                group[partner] = self._pending.pop(partner).change
        for path in group:
            self._moved_to.pop(path, None)
        return group

    async def _flush(self, everything: bool = False) -> None:
        group = self._take_due(everything)
        if not group:
            return
        present: dict[str, bool] = {}
        for path, change in group.items():
            if change.kind == DELETED:
                continue
            try:
                st = os.lstat(os.path.join(self.root, path))
            except OSError:
                st = None
            present[path] = st is not None and not stat.S_ISDIR(st.st_mode)
            if present[path]:
                self._index.set(path, signature_of(st))  # type: ignore[arg-type]
            else:
                self._index.discard(path)
                self.counters["phantoms"] += 1
        for published, (change_type, path, old_path) in enumerate(settle(group, present), 1):
            if self._stopping:
                return
            data = {"file_path": path, "change_type": change_type}
            if old_path is not None:
                data["old_path"] = old_path
            await self.context.publish("file_change", data)
            self.counters["published"] += 1
            if published % 500 == 0:
                await asyncio.sleep(0)

