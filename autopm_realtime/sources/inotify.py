"""watchdog's side of the watcher: its threads, the bounded inbox to the IOLoop, and the overflow hook.

Everything here runs on watchdog's threads except `Inbox.drain`, which the loop calls; see `watcher.py`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Callable

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from .ignore import EXCLUDE_FILE, is_git_internal


log = logging.getLogger(__name__)


# --- watchdog's side ---------------------------------------------------------------------------

# What we ask watchdog for: no opened/closed/directory-modified events, which would only fill the queues
# (inotify then watches IN_CREATE|IN_MODIFY|IN_ATTRIB|IN_MOVE|IN_DELETE|IN_DELETE_SELF only).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileDeletedEvent, FileMovedEvent,
    DirDeletedEvent, DirMovedEvent,
]
_KINDS: dict[type[FileSystemEvent], str] = {
    FileCreatedEvent: "file_created", FileModifiedEvent: "file_modified", FileAttribEvent: "file_attrib",
    FileDeletedEvent: "file_deleted", FileMovedEvent: "file_moved", DirDeletedEvent: "dir_deleted",
    DirMovedEvent: "dir_moved",
}

RawEvent = tuple[str, str, str | None]   # (kind, path, destination for moves), project-relative


class Inbox:
    """The bounded hand-over from watchdog's threads to the loop.

    `put` appends an event (or, when full, drops it and flags an overflow); `overflow` and `crash` flag
    what the loop must handle; the first of a batch schedules one wake-up on the loop. A new inbox is made
    for each observer, so a torn-down observer's threads can no longer reach the loop."""

    def __init__(self, capacity: int, wake: Callable[[], None]) -> None:
        self.capacity = capacity
        self._wake = wake
        self._lock = threading.Lock()
        self._items: collections.deque[RawEvent] = collections.deque()
        self._overflowed = False                      # the kernel's queue overflowed
        self._dropped = 0                             # events this inbox had no room for
        self._crash: BaseException | None = None
        self._wake_scheduled = False

    def _flag(self, change: Callable[[], None]) -> None:
        with self._lock:
            change()
            wake, self._wake_scheduled = not self._wake_scheduled, True
        if wake:
            self._wake()

    def put(self, item: RawEvent) -> None:
        def append() -> None:
            if len(self._items) < self.capacity:
                self._items.append(item)
            else:
                self._dropped += 1
        self._flag(append)

    def overflow(self) -> None:
        self._flag(lambda: setattr(self, "_overflowed", True))

    def crash(self, error: BaseException) -> None:
        def record() -> None:
            if self._crash is None:
                self._crash = error
        self._flag(record)

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> tuple[list[RawEvent], bool, int, BaseException | None]:
        """Everything handed over since the last take: events, kernel overflow, events dropped, crash."""
        with self._lock:
            items, self._items = list(self._items), collections.deque()
            overflowed, self._overflowed = self._overflowed, False
            dropped, self._dropped = self._dropped, 0
            crash, self._crash = self._crash, None
            self._wake_scheduled = False
        return items, overflowed, dropped, crash


class Handler(FileSystemEventHandler):
    """Runs on watchdog's dispatch thread: makes events project-relative and hands them to the inbox."""

    def __init__(self, root: str, inbox: Inbox) -> None:
        self._root = root
        self._prefix = root.rstrip(os.sep) + os.sep
        self._inbox = inbox

    def _relative(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        if path == self._root:
            return ""
        if not path.startswith(self._prefix):
            return None
        relative = path[len(self._prefix):]
        return relative if os.sep == "/" else relative.replace(os.sep, "/")

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(type(event))
        if kind is None:
            return
        moved = kind in ("file_moved", "dir_moved")
        if moved and event.is_synthetic:
            return   # the files of a moved directory: the loop scans the destination itself
        source = self._relative(event.src_path)
        destination = self._relative(event.dest_path) if moved else None
        if _is_noise(source) and _is_noise(destination):
            return
        if moved and destination is None:             # moved out of the tree
            kind = "file_deleted" if kind == "file_moved" else "dir_deleted"
        elif moved and source is None:                # moved in from outside the tree
            kind, source, destination = ("file_created" if kind == "file_moved" else "dir_created"), \
                destination, None
        assert source is not None
        self._inbox.put((kind, source, destination))


def _is_noise(path: str | None) -> bool:
    """Outside the tree, or git's own files (except the exclude file, which holds ignore rules)."""
    return path is None or (is_git_internal(path) and path != EXCLUDE_FILE)


class Guarded:
    """Mixed into watchdog's thread classes: an exception that would end the thread, or the thread ending
    without being asked to, is reported to the inbox (which the loop treats as a crash) instead of being
    lost in a thread nobody joins."""

    _inbox: Inbox

    def run(self) -> None:
        try:
            super().run()                             # type: ignore[misc]
        except Exception as error:
            self._inbox.crash(error)
            return
        if not self.stopped_event.is_set():           # type: ignore[attr-defined]
            self._inbox.crash(RuntimeError(f"watchdog thread {self.name} ended")) # type: ignore[attr-defined]


def _make_observer_class() -> Callable[[Inbox], Any]:
    """Our observer factory: on Linux, watchdog 7's inotify observer with an `InotifyFD` that reports
    `IN_Q_OVERFLOW` and guarded threads; elsewhere the platform's observer with a guarded dispatch
    thread (no overflow detection: FSEvents/ReadDirectoryChangesW/kqueue report it differently)."""
    try:
        from watchdog.observers.api import BaseObserver
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
        from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
    except Exception:                                 # not Linux (watchdog refuses a libc without inotify)
        from watchdog.observers import Observer

        class _PlatformObserver(Guarded, Observer):  # type: ignore[valid-type,misc]
            def __init__(self, inbox: Inbox) -> None:
                super().__init__()
                self._inbox = inbox
        return _PlatformObserver

    class _InotifyFD(Guarded, InotifyFD):
        def __init__(self, inbox: Inbox) -> None:
            super().__init__()
            self._inbox = inbox
            self.name = "autopm-watcher-inotify"

        def _add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            # watchdog registers a new directory twice when a tree appears at once (`mkdir -p a/b`: once
            # walking `a`, once for b's own IN_CREATE) and `warnings.warn`s each time, with a message
            # unique to the watch, before overwriting the callback with itself. Same effect, no warning.
            watch = self._get_or_create_watch(path, mask)
            watch.callbacks[id_] = callback
            return watch.wd

        def handle_event(self, event: InotifyEvent) -> None:
            # watchdog logs the overflow and rebuilds its watches in the call below; the events the
            # kernel dropped are ours to find, by a rescan
            if event.is_queue_overflow:
                self._inbox.overflow()
            super().handle_event(event)

    class _Emitter(Guarded, InotifyEmitter):
        def __init__(self, *args: Any, inbox: Inbox, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._inbox = inbox
            self.name = "autopm-watcher-emitter"

    class _InotifyObserver(Guarded, InotifyObserver):
        def __init__(self, inbox: Inbox) -> None:
            # InotifyObserver.__init__ with our own InotifyFD and emitter classes (watchdog 7.x layout)
            self._inotify_fd = _InotifyFD(inbox)
            self._inotify_fd.start()
            BaseObserver.__init__(self, _Emitter, inotify_fd=self._inotify_fd, inbox=inbox)
            self._inbox = inbox
            self.name = "autopm-watcher-dispatch"

    return _InotifyObserver


WatcherObserver = _make_observer_class()


