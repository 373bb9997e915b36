"""The file watcher: real files in tmp_path, a real watchdog observer, real git where ignore rules matter.

Events are awaited, never slept for. Where nothing must arrive, `Watch.quiet()` writes a sentinel file
after the thing that must be ignored and returns what came before the sentinel's event.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from autopm_realtime.brokers.memory import MemoryBroker
from autopm_realtime.events import DEFAULT_MAX_EVENT_BYTES, EventTypeRegistry
from autopm_realtime.project import Project
from autopm_realtime.sources import SourceContext
from autopm_realtime.sources import inotify
from autopm_realtime.sources import watcher as watcher_module
from autopm_realtime.sources.ignore import IgnoreRules
from autopm_realtime.sources.changes import CREATED, DELETED, MODIFIED, MOVED, Change, merge, settle
from autopm_realtime.sources.watcher import FileWatcher, WatcherOptions

from support import require

TIMEOUT = 5.0
QUEUE_LIMIT = "/proc/sys/fs/inotify/max_queued_events"


class Watch:
    """A started watcher and the `file_change` events it published, as tuples
    `(change_type, file_path)` or `(change_type, file_path, old_path)`."""

    def __init__(self, watcher: FileWatcher, root: Path) -> None:
        self.watcher = watcher
        self.root = root
        self.received: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()
        self._sentinels = itertools.count(1)

    def record(self, event: Any) -> None:
        data = event.data
        self.received.put_nowait((data["change_type"], data["file_path"])
                                 + ((data["old_path"],) if "old_path" in data else ()))

    async def next(self, timeout: float = TIMEOUT) -> tuple[str, ...]:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def events(self, count: int) -> list[tuple[str, ...]]:
        return [await self.next() for _ in range(count)]

    async def quiet(self) -> list[tuple[str, ...]]:
        """Write a sentinel file; return every event published before the sentinel's `created`."""
        name = f"sentinel-{next(self._sentinels)}.txt"
        (self.root / name).write_text("sentinel")
        before = []
        while (event := await self.next()) != (CREATED, name):
            before.append(event)
        return before


@pytest.fixture
def watch(io_loop, tmp_path):
    """`await watch(root=None, **options)` starts a FileWatcher (project root: tmp_path/"project")."""
    started: list[FileWatcher] = []

    async def start(root: Path | None = None, project_id: str = "p", **options: Any) -> Watch:
        root = root or tmp_path / "project"
        root.mkdir(exist_ok=True)
        broker = MemoryBroker()
        context = SourceContext(Project(project_id, root), broker, EventTypeRegistry(), DEFAULT_MAX_EVENT_BYTES)
        watcher = FileWatcher(context, WatcherOptions(**options))
        result = Watch(watcher, root)
        broker.add_listener(result.record)
        started.append(watcher)
        await watcher.start()
        assert await asyncio.wait_for(watcher.ready(), TIMEOUT)
        return result

    yield start
    for watcher in started:
        io_loop.run_sync(watcher.stop)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(root: Path, *args: str) -> str:
    env = {**GIT_ENV, "XDG_CONFIG_HOME": str(root / ".no-xdg"), "HOME": str(root / ".no-home")}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("autopm-watcher")]


# --- the merge table (pure) ----------------------------------------------------------------------

NONE = None
C, M, D = Change(CREATED), Change(MODIFIED), Change(DELETED)


def mv(origin: str) -> Change:
    return Change(MOVED, origin)


@pytest.mark.parametrize("previous, existed, operation, origin, expected", [
    (NONE, False, CREATED, None, C),
    (C, False, MODIFIED, None, C),                 # created + modified → created
    (C, False, DELETED, None, NONE),               # created + deleted → nothing (did not exist before)
    (D, True, CREATED, None, M),                   # deleted + created → modified
    (mv("a"), False, MODIFIED, None, mv("a")),     # moved a→b, then b modified → moved
    (NONE, True, CREATED, None, M),                # a "create" of a known file rewrote it
    (NONE, False, DELETED, None, NONE),            # deleting what was never reported
    (NONE, False, MOVED, "a", mv("a")),
    (NONE, True, MOVED, "a", M),                   # moved over an existing file: it was replaced
    (C, False, MOVED, "a", mv("a")),
    (mv("a"), False, DELETED, None, NONE),
    (mv("a"), False, MOVED, "b", mv("b")),
    (M, True, DELETED, None, D),
    (D, True, MOVED, "a", M),
    (NONE, False, MOVED, None, C),                 # moved from nowhere we knew: created
])
def test_merge_rules(previous, existed, operation, origin, expected):
    assert merge(previous, existed, operation, origin) == expected


def model(existed: bool, operations: list[tuple[str, str | None]]) -> Change | None:
    """The net change told from what the file went through, independently of the table: a delete
    removes it; a move (with an origin) gives it that content; a create or write brings a missing file
    into being and otherwise just changes it."""
    exists, origin = existed, None
    for operation, moved_from in operations:
        if operation == DELETED:
            exists, origin = False, None
        elif operation == MOVED and moved_from is not None:
            exists, origin = True, moved_from
        elif not exists:
            exists, origin = True, None
    if existed:
        return M if exists else D
    if not exists:
        return None
    return mv(origin) if origin else C


def test_merge_table_agrees_with_the_model_for_every_sequence_of_up_to_four_operations():
    operations = [(CREATED, None), (MODIFIED, None), (DELETED, None), (MOVED, "a"), (MOVED, "b"), (MOVED, None)]
    checked = 0
    for existed in (False, True):
        for length in range(1, 5):
            for sequence in itertools.product(operations, repeat=length):
                change = None
                for operation, origin in sequence:
                    change = merge(change, existed, operation, origin)
                assert change == model(existed, list(sequence)), (existed, sequence)
                checked += 1
    assert checked == 2 * sum(6 ** n for n in range(1, 5))


def test_settle_publishes_a_move_only_when_its_origin_is_gone():
    everything_present = collections.defaultdict(lambda: True)
    assert settle({"a": D, "b": mv("a")}, everything_present) == [(MOVED, "b", "a")]
    assert settle({"a": M, "b": mv("a")}, everything_present) == [(MODIFIED, "a", None), (CREATED, "b", None)]
    # two paths claim one origin (moved away, recreated, moved away again): the first one gets the move
    assert settle({"a": D, "b": mv("a"), "c": mv("a")}, everything_present) == [
        (MOVED, "b", "a"), (CREATED, "c", None)]


def test_settle_reports_phantoms_as_nothing_or_as_deleted():
    assert settle({"new": C}, {"new": False}) == []
    assert settle({"known": M}, {"known": False}) == [(DELETED, "known", None)]
    assert settle({"a": D, "b": mv("a")}, {"b": False}) == [(DELETED, "a", None)]


def test_options_are_checked():
    assert WatcherOptions(ignore=["*.o"]).ignore == ("*.o",)
    with pytest.raises(ValueError):
        WatcherOptions(max_pending_paths=0)
    with pytest.raises(ValueError):
        WatcherOptions(coalesce_seconds=-1)


# --- the watcher on real files ---------------------------------------------------------------------

async def test_create_modify_move_delete_of_files_in_nested_folders(watch, project):
    write(project / "known.txt")
    w = await watch()
    assert w.watcher.known_files() == ["known.txt"]
    write(project / "src/pkg/a.py", "one")
    assert await w.next() == (CREATED, "src/pkg/a.py")
    write(project / "src/pkg/a.py", "two")
    assert await w.next() == (MODIFIED, "src/pkg/a.py")
    os.rename(project / "src/pkg/a.py", project / "src/b.py")
    assert await w.next() == (MOVED, "src/b.py", "src/pkg/a.py")
    os.unlink(project / "known.txt")
    assert await w.next() == (DELETED, "known.txt")
    (project / "empty-folder/inner").mkdir(parents=True)          # folders themselves: no event
    assert await w.quiet() == []
    assert w.watcher.known_files() == ["sentinel-1.txt", "src/b.py"]


async def test_touch_is_a_modification_and_chmod_is_not(watch, project):
    target = write(project / "t.txt")
    w = await watch()
    os.chmod(target, 0o600)
    assert await w.quiet() == []
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    assert await w.next() == (MODIFIED, "t.txt")


async def test_the_kernel_is_asked_only_for_the_events_the_watcher_uses(watch):
    from watchdog.observers.inotify_c import InotifyConstants as k
    w = await watch()
    [emitter] = w.watcher._observer.emitters
    mask = emitter.get_event_mask_from_filter()
    assert mask & (k.IN_CREATE | k.IN_MODIFY | k.IN_MOVED_FROM | k.IN_MOVED_TO | k.IN_DELETE) == (
        k.IN_CREATE | k.IN_MODIFY | k.IN_MOVED_FROM | k.IN_MOVED_TO | k.IN_DELETE)
    assert not mask & (k.IN_OPEN | k.IN_ACCESS | k.IN_CLOSE_WRITE | k.IN_CLOSE_NOWRITE)


async def test_nothing_under_git_is_published(watch, project):
    git(project, "init", "-q")
    w = await watch()
    write(project / "tracked.txt")
    assert await w.next() == (CREATED, "tracked.txt")
    git(project, "add", "tracked.txt")
    git(project, "commit", "-q", "-m", "first")
    git(project, "gc", "-q")
    assert await w.quiet() == []


IGNORE_RULES = {
    ".gitignore": "*.log\n!keep.log\nbuild/\n/anchored.txt\ndocs/**/secret.md\ncache/*\n!cache/keep.txt\n",
    "sub/.gitignore": "*.md\n!readme.md\nlocal/\n",
    "sub/deeper/.gitignore": "!notes.md\n",
}
CANDIDATES = [
    "app.log", "keep.log", "sub/app.log", "sub/keep.log", "build/out.o", "sub/build/x.o", "sub/deeper/build",
    "anchored.txt", "sub/anchored.txt", "docs/secret.md", "docs/a/b/secret.md", "docs/public.md",
    "cache/data.bin", "cache/keep.txt", "sub/notes.md", "sub/readme.md", "sub/deeper/notes.md",
    "sub/deeper/other.md", "sub/local/f.txt", "local/f.txt", "excluded.txt", "sub/excluded.txt", "plain.txt",
]


async def test_gitignore_at_every_level_and_info_exclude_decide_as_git_does(watch, project):
    git(project, "init", "-q")
    for path, rules in IGNORE_RULES.items():
        write(project / path, rules)
    (project / ".git/info/exclude").write_text("excluded.txt\n")
    w = await watch()
    for path in CANDIDATES:
        write(project / path)
    published = await w.quiet()
    assert all(kind == CREATED for kind, _ in published)
    reported = {path for _, path in published}
    untracked = set(git(project, "ls-files", "--others", "--exclude-standard").split()) - set(IGNORE_RULES)
    assert reported == untracked - {"sentinel-1.txt"}
    assert reported == {"keep.log", "sub/keep.log", "sub/deeper/build", "sub/anchored.txt", "docs/public.md",
                        "cache/keep.txt", "sub/readme.md", "sub/deeper/notes.md", "local/f.txt", "plain.txt"}


def test_ignore_rules_match_git_check_ignore_for_directories_too(project):
    git(project, "init", "-q")
    for path, rules in IGNORE_RULES.items():
        write(project / path, rules)
    (project / ".git/info/exclude").write_text("excluded.txt\n")
    for path in CANDIDATES:
        write(project / path)
    rules = IgnoreRules(project)
    checked = [*CANDIDATES, ".git/config", ".git"]
    ignored_by_git = set(git(project, "check-ignore", "--no-index", *CANDIDATES).split()) | {".git/config", ".git"}
    assert {path for path in checked if rules.is_ignored(path)} == ignored_by_git
    assert rules.is_ignored("build", is_dir=True) and rules.may_skip_directory("build")
    assert rules.is_ignored("cache", is_dir=True) and not rules.may_skip_directory("cache")  # !cache/keep.txt


async def test_a_changed_gitignore_or_exclude_takes_effect_without_restart(watch, project):
    git(project, "init", "-q")
    write(project / ".gitignore", "*.tmp\n")
    write(project / "old.tmp")
    write(project / "keep.dat")
    w = await watch()
    write(project / "a.tmp")
    assert await w.quiet() == []
    write(project / ".gitignore", "*.dat\n")
    write(project / "b.tmp")
    write(project / "keep.dat", "changed")
    assert await w.quiet() == [(MODIFIED, ".gitignore"), (CREATED, "b.tmp")]
    # keep.dat, now ignored, was forgotten silently; old.tmp, no longer ignored, is reported with its
    # next change, as created since nothing was ever said of it
    assert "keep.dat" not in w.watcher.known_files()
    write(project / "old.tmp", "changed")
    assert await w.next() == (CREATED, "old.tmp")
    write(project / "sub/.gitignore", "x.txt\n")                  # a new nested .gitignore
    write(project / "sub/x.txt")
    (project / ".git/info/exclude").write_text("*.ex\n")
    write(project / "a.ex")
    assert await w.quiet() == [(CREATED, "sub/.gitignore")]


async def test_editor_temporaries_and_ignore_globs_are_not_published(watch, project):
    write(project / "a.txt")
    w = await watch(ignore=("*.bak", "generated/"))
    for name in (".a.txt.swp", ".a.txt.swx", "a.txt~", "4913", "x.bak", "generated/g.txt", "sub/generated/h.txt"):
        write(project / name)
    os.symlink("user@host.1234", project / ".#a.txt")              # emacs' lock file
    assert await w.quiet() == []


async def test_atomic_save_is_one_modified_for_an_existing_target_and_one_created_for_a_new_one(watch, project):
    write(project / "existing.txt", "old")
    w = await watch()
    write(project / "existing.txt.tmp-8213", "new")
    os.replace(project / "existing.txt.tmp-8213", project / "existing.txt")
    write(project / ".new.txt.partial", "new")
    os.replace(project / ".new.txt.partial", project / "new.txt")
    assert await w.quiet() == [(MODIFIED, "existing.txt"), (CREATED, "new.txt")]


async def test_vim_save_with_backup_is_one_modified(watch, project):
    write(project / "a.txt", "old")
    w = await watch()
    write(project / "4913")                                       # vim: can I create files here?
    os.unlink(project / "4913")
    os.rename(project / "a.txt", project / "a.txt~")              # keep the original as a backup
    write(project / "a.txt", "new")
    os.unlink(project / "a.txt~")
    assert await w.quiet() == [(MODIFIED, "a.txt")]


async def test_a_deleted_folder_is_one_deleted_per_file(watch, project):
    for name in ("gone/a.txt", "gone/b.txt", "gone/inner/c.txt", "stays.txt"):
        write(project / name)
    w = await watch()
    shutil.rmtree(project / "gone")
    assert sorted(await w.quiet()) == [(DELETED, "gone/a.txt"), (DELETED, "gone/b.txt"),
                                       (DELETED, "gone/inner/c.txt")]


async def test_a_folder_moved_out_is_one_deleted_per_file_and_later_phantoms_are_not_published(
        watch, project, tmp_path):
    for name in ("out/a.txt", "out/inner/b.txt", "out/ignored.swp"):
        write(project / name)
    w = await watch()
    os.rename(project / "out", tmp_path / "elsewhere")
    assert sorted(await w.events(2)) == [(DELETED, "out/a.txt"), (DELETED, "out/inner/b.txt")]
    # the moved folder keeps its inotify watch, so watchdog reports this under its old path in the tree
    write(tmp_path / "elsewhere/inner/new.txt")
    assert await w.quiet() == []
    assert w.watcher.stats()["phantoms"] >= 1


async def test_a_folder_moved_within_the_tree_is_one_moved_per_file(watch, project):
    for name in ("old/a.txt", "old/inner/b.txt"):
        write(project / name)
    w = await watch()
    os.rename(project / "old", project / "new")
    assert sorted(await w.quiet()) == [(MOVED, "new/a.txt", "old/a.txt"),
                                       (MOVED, "new/inner/b.txt", "old/inner/b.txt")]
    assert w.watcher.known_files() == ["new/a.txt", "new/inner/b.txt", "sentinel-1.txt"]


async def test_a_burst_of_2000_files_is_exactly_one_created_per_path(watch, project):
    w = await watch()
    names = [f"d{i % 20}/f{i}.txt" for i in range(2000)]
    for i in range(20):
        (project / f"d{i}").mkdir()
    for name in names:
        (project / name).write_text("x")
    published = await w.quiet()
    assert collections.Counter(published) == collections.Counter((CREATED, name) for name in names)


async def test_when_the_pending_bound_is_reached_paths_are_published_early_and_none_is_lost(watch, project):
    w = await watch(max_pending_paths=10)
    names = [f"f{i}.txt" for i in range(50)]
    for name in names:
        write(project / name)
    published = await w.quiet()
    assert {path for _, path in published} == set(names)
    assert all(kind in (CREATED, MODIFIED) for kind, _ in published)


async def test_a_full_inbox_drops_events_and_the_rescan_finds_them(watch, project):
    w = await watch(max_queued_events=8)
    names = [f"f{i}.txt" for i in range(50)]
    for name in names:                                           # the loop is busy: the inbox overflows
        write(project / name)
    published = await w.events(50)
    assert sorted(published) == sorted((CREATED, name) for name in names)
    assert await w.quiet() == []
    stats = w.watcher.stats()
    assert stats["overflows"] >= 1 and stats["dropped_events"] > 0


async def test_a_kernel_queue_overflow_is_detected_and_the_rescan_publishes_what_changed(watch, project):
    require(os.access(QUEUE_LIMIT, os.W_OK), "lowering the kernel's inotify queue needs root")
    write(project / "modified.txt", "old")
    write(project / "deleted.txt")
    write(project / "unchanged.txt")
    saved = Path(QUEUE_LIMIT).read_text()
    Path(QUEUE_LIMIT).write_text("16")             # read once, by the watcher's inotify_init
    try:
        w = await watch()
    finally:
        Path(QUEUE_LIMIT).write_text(saved)
    names = [f"new{i}.txt" for i in range(100)]
    # the fault: stall watchdog's reader thread (it takes this lock before each read) while the tree changes
    with w.watcher._observer._inotify_fd._lock:
        for name in names:
            write(project / name)
        write(project / "modified.txt", "new content")
        os.unlink(project / "deleted.txt")
    expected = {(CREATED, name) for name in names} | {(MODIFIED, "modified.txt"), (DELETED, "deleted.txt")}
    published = await w.events(len(expected))
    assert sorted(published) == sorted(expected)
    assert await w.quiet() == []
    stats = w.watcher.stats()
    assert stats["overflows"] >= 1 and stats["dropped_events"] == 0     # the kernel's, not our inbox's


async def test_an_exception_in_the_observer_thread_restarts_the_watcher(watch, project, monkeypatch, caplog):
    original = inotify.Handler.dispatch
    faults = []

    def failing(self, event):
        if "boom" in event.src_path and not faults:
            faults.append(event)
            raise RuntimeError("injected fault")
        original(self, event)
    monkeypatch.setattr(inotify.Handler, "dispatch", failing)
    w = await watch(restart_backoff_seconds=0.01)
    first = watcher_threads()
    write(project / "boom.txt")                     # kills the dispatch thread; the rescan reports the file
    assert await w.next() == (CREATED, "boom.txt")
    write(project / "after.txt")
    assert await w.next() == (CREATED, "after.txt")
    assert w.watcher.stats()["restarts"] == 1
    assert "crashed; restarting" in caplog.text and "injected fault" in caplog.text
    assert not set(first) & set(watcher_threads())   # the old observer's threads are gone


async def test_an_exception_while_handling_on_the_loop_restarts_the_watcher(watch, project, monkeypatch):
    original = FileWatcher._apply
    faults = []

    def failing(self, item):
        if item[1] == "boom.txt" and not faults:
            faults.append(item)
            raise RuntimeError("injected fault")
        original(self, item)
    monkeypatch.setattr(FileWatcher, "_apply", failing)
    w = await watch(restart_backoff_seconds=0.01)
    write(project / "boom.txt")
    assert await w.next() == (CREATED, "boom.txt")
    write(project / "after.txt")
    assert await w.next() == (CREATED, "after.txt")
    assert w.watcher.stats()["restarts"] == 1


async def test_after_max_restarts_in_a_row_the_watcher_gives_up_and_leaves_no_thread(
        watch, project, monkeypatch, caplog):
    w = await watch(max_restarts=2, restart_backoff_seconds=0.01)

    def failing(*args, **kwargs):
        raise OSError("injected fault")
    monkeypatch.setattr(FileWatcher, "_apply", failing)           # the first crash
    monkeypatch.setattr(watcher_module, "scan_tree", failing)     # and every restart's rescan fails
    write(project / "a.txt")
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(asyncio.shield(w.watcher._task), TIMEOUT)
    assert "giving up" in caplog.text
    assert w.watcher.stats()["crashes"] == 3
    assert watcher_threads() == []


async def test_stop_ends_every_thread_and_nothing_is_published_afterwards(watch, project, tmp_path):
    before = set(threading.enumerate())
    first = await watch()
    assert watcher_threads()
    write(project / "pending.txt")                  # its window is still open when the watcher stops
    await first.watcher.stop()
    assert watcher_threads() == []
    assert set(threading.enumerate()) <= before
    # a second watcher on the same tree shows that time has passed and changes were seen meanwhile
    second = await watch(project_id="q")
    write(project / "later.txt")
    assert await second.next() == (CREATED, "later.txt")
    assert first.received.empty()
