"""Auto-commit against real repositories, checked with the git CLI.

Time is driven with a fake monotonic clock and `due()`/`fire_due()` (what the timer calls) or
`commit_now()`; one test lets a real timer fire with small option values.
"""

from __future__ import annotations

import asyncio
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
from autopm_realtime.sources import Clock, SourceContext
from autopm_realtime.sources import snapshot
from autopm_realtime.sources.autocommit import AutoCommitOptions, AutoCommitter

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_EDITOR": "true",
    "GIT_MERGE_AUTOEDIT": "no",
}
WAIT = 5.0


def git(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**GIT_ENV, **(env or {})})
    if check and done.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """dulwich reads ~/.gitconfig (core.excludesFile); keep the machine's out of the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository on `main` with one commit."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write(path / "README.md", "hello\n")
    write(path / "src" / "app.py", "print('app')\n")
    write(path / "src" / "old_name.py", "x = 1\n")
    write(path / "docs" / "gone.md", "bye\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now)


class Harness:
    """An AutoCommitter on a MemoryBroker, with its auto_commit events collected in a queue."""

    def __init__(self, path: Path, clock: Clock, options: AutoCommitOptions) -> None:
        self.broker = MemoryBroker()
        self.context = SourceContext(Project("p", path), self.broker, EventTypeRegistry(),
                                     DEFAULT_MAX_EVENT_BYTES, clock)
        self.committer = AutoCommitter(self.context, options)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.broker.add_listener(
            lambda event: self.events.put_nowait(event.data) if event.type == "auto_commit" else None)

    async def change(self, *paths: str) -> None:
        for path in paths:
            await self.context.publish("file_change", {"file_path": path, "change_type": "modified"})

    async def next_event(self, timeout: float = WAIT) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def commit(self, trigger: str = "manual") -> tuple[dict[str, Any], dict[str, Any]]:
        """commit_now, returning its start and closing events."""
        closing = await self.committer.commit_now(trigger)
        start = await self.next_event()
        assert start["event"] == "start" and start["trigger"] == trigger, start
        assert await self.next_event() == closing
        return start, closing


@pytest.fixture
def harness(io_loop):
    made: list[Harness] = []

    async def make(path: Path, clock: Clock | None = None, **options: Any) -> Harness:
        h = Harness(path, clock or Clock(), AutoCommitOptions(**options))
        made.append(h)
        await h.committer.start()
        return h
    yield make
    for h in made:
        io_loop.run_sync(h.committer.stop)


def tree_listing(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and link of the working tree outside .git: mode and content (or link target)."""
    listing = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            full = Path(root, name)
            rel = full.relative_to(path).as_posix()
            st = full.lstat()
            listing[rel] = (st.st_mode, os.readlink(full).encode() if full.is_symlink() else full.read_bytes())
    return listing


class UserState:
    """What shadow mode must leave alone: index bytes and mtime, status, HEAD, branches, files."""

    def __init__(self, path: Path) -> None:
        self.status = git(path, "--no-optional-locks", "status", "--porcelain")   # does not refresh the index
        index = path / ".git" / "index"
        self.index = (index.read_bytes(), index.stat().st_mtime_ns) if index.exists() else None
        self.head = (path / ".git" / "HEAD").read_bytes()
        self.branches = git(path, "for-each-ref", "refs/heads")
        self.files = tree_listing(path)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other)


def add_all_tree(path: Path, tmp_path: Path) -> str:
    """The tree `git add -A` would write, computed on a copy of the index."""
    index = tmp_path / "expected-index"
    if (path / ".git" / "index").exists():
        shutil.copy(path / ".git" / "index", index)
    env = {"GIT_INDEX_FILE": str(index)}
    git(path, "add", "-A", env=env)
    tree = git(path, "write-tree", env=env)
    index.unlink()
    return tree


def trailer(path: Path, rev: str) -> str:
    return git(path, "log", "-1", "--format=%(trailers:key=Autopm-Base,valueonly)", rev)


def assert_fsck_clean(path: Path) -> None:
    done = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=path, capture_output=True,
                          text=True, env=GIT_ENV)
    complaints = [line for line in done.stderr.splitlines() if not line.startswith("notice: HEAD points to an unborn")]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def diverge(path: Path) -> None:
    """`main` and `other` each change conflict.txt, so merging, rebasing or picking one onto the other
    stops with a conflict."""
    write(path / "conflict.txt", "base\n")
    git(path, "add", "conflict.txt")
    git(path, "commit", "-q", "-m", "base")
    git(path, "checkout", "-q", "-b", "other")
    write(path / "conflict.txt", "other\n")
    git(path, "commit", "-q", "-am", "other")
    git(path, "checkout", "-q", "main")
    write(path / "conflict.txt", "main\n")
    git(path, "commit", "-q", "-am", "main")


# --- shadow mode ------------------------------------------------------------------------------

async def test_shadow_snapshot_is_the_working_tree_and_leaves_the_user_alone(io_loop, repo, tmp_path, harness):
    write(repo / "README.md", "hello, changed\n")                     # tracked, modified
    (repo / "docs" / "gone.md").unlink()                             # tracked, deleted
    (repo / "src" / "old_name.py").rename(repo / "src" / "new_name.py")   # renamed
    write(repo / "notes" / "todo.txt", "untracked\n")                # untracked
    write(repo / ".gitignore", "*.log\nbuild/\n")
    write(repo / "app.log", "ignored\n")
    write(repo / "build" / "out.o", "ignored dir\n")
    write(repo / "src" / ".gitignore", "generated.py\n")             # nested .gitignore
    write(repo / "src" / "generated.py", "ignored by src/.gitignore\n")
    write(repo / ".git" / "info" / "exclude", "secret.txt\n")
    write(repo / "secret.txt", "excluded by info/exclude\n")
    write(repo / "global-excludes", "*.swp\n")
    git(repo, "config", "core.excludesFile", str(repo / "global-excludes"))
    write(repo / "edit.swp", "excluded by core.excludesFile\n")
    script = write(repo / "run.sh", "#!/bin/sh\necho run\n")
    script.chmod(0o755)
    (repo / "link-to-readme").symlink_to("README.md")
    before = UserState(repo)
    head = git(repo, "rev-parse", "HEAD")

    h = await harness(repo)
    assert h.committer.mode == "shadow"
    await h.change("README.md", "src/new_name.py")
    start, result = await h.commit()

    assert start == {**start, "changes_count": 2, "trigger": "manual", "mode": "shadow"}
    ref = "refs/autopm/autosave/main"
    assert result["success"] is True and result["ref"] == ref and result["base"] == head
    assert result["sha"] == git(repo, "rev-parse", ref) and result["duration_ms"] >= 0
    assert git(repo, "rev-parse", f"{ref}^{{tree}}") == add_all_tree(repo, tmp_path)
    listing = git(repo, "ls-tree", "-r", "--name-only", ref).splitlines()
    assert {"README.md", "src/new_name.py", "notes/todo.txt", "run.sh", "link-to-readme"} <= set(listing)
    assert not {"docs/gone.md", "src/old_name.py", "app.log", "build/out.o", "src/generated.py",
                "secret.txt", "edit.swp"} & set(listing)
    modes = {name: mode for mode, _, _, name in map(str.split, git(repo, "ls-tree", "-r", ref).splitlines())}
    assert modes["run.sh"] == "100755" and modes["README.md"] == "100644"
    assert modes["link-to-readme"] == "120000"
    assert git(repo, "cat-file", "-p", f"{ref}:link-to-readme") == "README.md"
    assert git(repo, "cat-file", "-p", f"{ref}:README.md") == "hello, changed"
    # README.md modified; gone.md, old_name.py deleted; new_name.py, todo.txt, .gitignore, src/.gitignore,
    # run.sh, link-to-readme, global-excludes added
    assert result["changes_count"] == 10
    assert git(repo, "log", "-1", "--format=%P", ref) == head
    assert trailer(repo, ref) == head
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", ref) == (
        "autopm-realtime <autopm-realtime@localhost>|autopm-realtime <autopm-realtime@localhost>|"
        "autopm: snapshot of 10 change(s)")
    assert UserState(repo) == before
    assert git(repo, "rev-parse", "HEAD") == head
    assert_fsck_clean(repo)


async def test_snapshots_chain_and_an_unchanged_tree_makes_no_commit(io_loop, repo, harness):
    h = await harness(repo, message_template="{mode} {trigger} on {branch} at {timestamp}: {changes_count}")
    write(repo / "README.md", "one\n")
    _, first = await h.commit()
    write(repo / "README.md", "two\n")
    _, second = await h.commit("schedule")
    ref = "refs/autopm/autosave/main"
    assert git(repo, "log", "--format=%P", "-1", ref) == first["sha"]
    assert second["changes_count"] == 1 and second["trigger"] == "schedule"
    subject = git(repo, "log", "-1", "--format=%s", ref)
    assert subject.startswith("shadow schedule on main at 20") and subject.endswith("Z: 1")

    _, third = await h.commit()
    assert third == {**third, "event": "result", "success": True, "changes_count": 0, "ref": ref}
    assert "sha" not in third
    assert git(repo, "rev-parse", ref) == second["sha"]
    assert_fsck_clean(repo)


async def test_a_clean_tree_makes_no_first_snapshot(io_loop, repo, harness):
    h = await harness(repo)
    _, result = await h.commit()
    assert result["success"] is True and result["changes_count"] == 0 and "sha" not in result
    assert git(repo, "for-each-ref", "refs/autopm") == ""


async def test_unborn_branch_gets_a_parentless_snapshot(io_loop, tmp_path, harness):
    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q", "-b", "trunk")
    write(path / "first.txt", "first\n")
    h = await harness(path)
    _, result = await h.commit()
    ref = "refs/autopm/autosave/trunk"
    assert result["ref"] == ref and result["base"] is None and result["changes_count"] == 1
    assert git(path, "rev-list", "--parents", "-1", ref) == result["sha"]   # no parent listed
    assert trailer(path, ref) == "unborn"
    assert not (path / ".git" / "index").exists()
    assert git(path, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""
    assert_fsck_clean(path)


async def test_detached_head_snapshots_to_a_ref_named_after_the_commit(io_loop, repo, harness):
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "--detach")
    write(repo / "README.md", "detached work\n")
    h = await harness(repo)
    _, result = await h.commit()
    assert result["ref"] == f"refs/autopm/autosave/detached-{head[:12]}"
    assert git(repo, "log", "-1", "--format=%P", result["ref"]) == head
    assert git(repo, "rev-parse", "HEAD") == head


async def test_shadow_works_while_another_process_holds_the_index_lock(io_loop, repo, harness):
    lock = repo / ".git" / "index.lock"
    lock.write_bytes(b"someone else's")
    write(repo / "README.md", "while locked\n")
    before = UserState(repo)
    h = await harness(repo)
    _, result = await h.commit()
    assert result["success"] is True and result["sha"]
    assert lock.read_bytes() == b"someone else's"
    assert UserState(repo) == before
    lock.unlink()
    assert_fsck_clean(repo)


async def test_shadow_snapshots_a_merge_in_progress(io_loop, repo, tmp_path, harness):
    diverge(repo)
    git(repo, "merge", "other", check=False)
    assert (repo / ".git" / "MERGE_HEAD").exists()
    before = UserState(repo)
    h = await harness(repo)
    _, result = await h.commit()
    assert result["success"] is True
    assert "<<<<<<<" in git(repo, "cat-file", "-p", f"{result['sha']}:conflict.txt")
    assert git(repo, "rev-parse", f"{result['sha']}^{{tree}}") == add_all_tree(repo, tmp_path)
    assert UserState(repo) == before
    assert (repo / ".git" / "MERGE_HEAD").exists()
    assert_fsck_clean(repo)


async def test_a_concurrent_ref_update_is_not_overwritten(io_loop, repo, harness, monkeypatch):
    ref = "refs/autopm/autosave/main"
    write(repo / "README.md", "first\n")
    h = await harness(repo)
    _, first = await h.commit()
    concurrent = git(repo, "commit-tree", "-p", first["sha"], "-m", "someone else", f"{first['sha']}^{{tree}}")
    original = snapshot.make_commit
    calls = []

    def make_commit_then_lose_the_race(*args, **kwargs):
        sha = original(*args, **kwargs)
        if not calls:       # between our read of the ref and our write, another writer moves it
            git(repo, "update-ref", ref, concurrent, first["sha"])
        calls.append(sha.decode())
        return sha
    monkeypatch.setattr(snapshot, "make_commit", make_commit_then_lose_the_race)
    write(repo / "README.md", "second\n")
    _, second = await h.commit()
    assert len(calls) == 2 and second["sha"] == calls[1]
    assert git(repo, "rev-parse", ref) == second["sha"]
    assert git(repo, "log", "-1", "--format=%P", ref) == concurrent
    assert_fsck_clean(repo)


async def test_a_failure_is_an_error_event_and_the_next_trigger_retries(io_loop, repo, harness):
    blocker = repo / ".git" / "refs" / "autopm"
    blocker.write_text("not a directory\n")          # a damaged repository: the ref cannot be written
    write(repo / "README.md", "changed\n")
    h = await harness(repo)
    await h.change("README.md", "b.txt")
    start, error = await h.commit()
    assert start["changes_count"] == 2
    assert error == {**error, "event": "error", "success": False, "changes_count": 2, "trigger": "manual"}
    assert error["reason"] and error["duration_ms"] >= 0
    assert h.committer.pending_count == 2                   # kept for the next attempt
    blocker.unlink()
    start, result = await h.commit()
    assert start["changes_count"] == 2 and result["success"] is True and result["sha"]
    assert h.committer.pending_count == 0


async def test_a_nested_repository_is_recorded_as_a_gitlink(io_loop, repo, tmp_path, harness):
    nested = repo / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q", "-b", "main")
    write(nested / "lib.py", "lib\n")
    git(nested, "add", "-A")
    git(nested, "commit", "-q", "-m", "lib")
    h = await harness(repo)
    _, result = await h.commit()
    assert git(repo, "ls-tree", result["sha"], "vendor/lib").split()[:3] == [
        "160000", "commit", git(nested, "rev-parse", "HEAD")]
    assert git(repo, "rev-parse", f"{result['sha']}^{{tree}}") == add_all_tree(repo, tmp_path)


async def test_unchanged_files_are_not_read_again(io_loop, repo, harness, monkeypatch):
    """Blob ids are reused while a file's stat data is unchanged (untracked files here, so the index's
    own stat data cannot vouch for them); files modified just now are always read."""
    long_ago = 1_600_000_000
    for i in range(20):
        os.utime(write(repo / "data" / f"{i}.txt", f"{i}\n"), (long_ago, long_ago))
    hashed = []

    class CountingBlob(snapshot.Blob):
        @classmethod
        def from_string(cls, data):
            hashed.append(data)
            return super().from_string(data)
    monkeypatch.setattr(snapshot, "Blob", CountingBlob)
    h = await harness(repo)
    await h.commit()
    assert len(hashed) == 20
    hashed.clear()
    os.utime(write(repo / "data" / "3.txt", "three\n"), (long_ago + 1, long_ago + 1))
    write(repo / "data" / "4.txt", "four, just now\n")
    _, result = await h.commit()
    assert sorted(hashed) == [b"four, just now\n", b"three\n"] and result["changes_count"] == 2
    hashed.clear()
    await h.commit()
    assert hashed == [b"four, just now\n"]      # too recent to trust its stat data yet


# --- branch mode ------------------------------------------------------------------------------

async def test_branch_mode_commits_like_add_all(io_loop, repo, tmp_path, harness):
    write(repo / "README.md", "changed\n")
    (repo / "docs" / "gone.md").unlink()
    write(repo / "new" / "file.txt", "new\n")
    write(repo / ".gitignore", "*.log\n")
    write(repo / "debug.log", "ignored\n")
    (repo / "tool").symlink_to("src/app.py")
    old_head = git(repo, "rev-parse", "HEAD")
    expected = add_all_tree(repo, tmp_path)
    h = await harness(repo, mode="branch", message_template="wip: {changes_count} on {branch}")
    start, result = await h.commit()
    assert start["mode"] == "branch"
    head = git(repo, "rev-parse", "HEAD")
    assert result == {**result, "success": True, "sha": head, "ref": "refs/heads/main", "base": old_head,
                      "changes_count": 5}
    assert git(repo, "rev-parse", "HEAD^{tree}") == expected
    assert git(repo, "log", "-1", "--format=%P|%an|%s") == f"{old_head}|autopm-realtime|wip: 5 on main"
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "diff", "--cached", "--name-only") == ""
    assert not (repo / ".git" / "index.lock").exists()
    assert git(repo, "reflog", "-1", "--format=%gs", "main") == "commit: wip: 5 on main"
    assert_fsck_clean(repo)

    _, unchanged = await h.commit()
    assert unchanged["changes_count"] == 0 and "sha" not in unchanged
    assert git(repo, "rev-parse", "HEAD") == head


async def test_branch_mode_makes_the_first_commit_of_an_unborn_branch(io_loop, tmp_path, harness):
    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write(path / "a.txt", "a\n")
    h = await harness(path, mode="branch")
    _, result = await h.commit()
    assert result["sha"] == git(path, "rev-parse", "HEAD") and result["base"] is None
    assert git(path, "rev-list", "--parents", "-1", "HEAD") == result["sha"]
    assert git(path, "status", "--porcelain") == ""
    assert_fsck_clean(path)


def _merge(path: Path) -> None:
    git(path, "merge", "other", check=False)


def _rebase(path: Path) -> None:
    git(path, "rebase", "other", check=False)


def _rebase_apply(path: Path) -> None:
    git(path, "rebase", "--apply", "other", check=False)


def _cherry_pick(path: Path) -> None:
    git(path, "cherry-pick", "other", check=False)


def _revert(path: Path) -> None:
    git(path, "revert", "--no-edit", "HEAD~1", check=False)   # conflict.txt changed since "base"


def _bisect(path: Path) -> None:
    git(path, "bisect", "start")


def _detach(path: Path) -> None:
    git(path, "checkout", "-q", "--detach")


@pytest.mark.parametrize("enter, marker, words", [
    (_merge, "MERGE_HEAD", "merge"),
    (_rebase, "rebase-merge", "rebase"),
    (_rebase_apply, "rebase-apply", "rebase"),
    (_cherry_pick, "CHERRY_PICK_HEAD", "cherry-pick"),
    (_revert, "REVERT_HEAD", "revert"),
    (_bisect, "BISECT_START", "bisect"),
    (_detach, None, "detached"),
], ids=["merge", "rebase-merge", "rebase-apply", "cherry-pick", "revert", "bisect", "detached"])
async def test_branch_mode_pauses_with_a_reason(io_loop, repo, harness, enter, marker, words):
    diverge(repo)
    enter(repo)
    assert marker is None or (repo / ".git" / marker).exists()
    write(repo / "README.md", "work in progress\n")
    before = UserState(repo)
    head = git(repo, "rev-parse", "HEAD")
    h = await harness(repo, mode="branch")
    await h.change("README.md")
    _, error = await h.commit()
    assert error["event"] == "error" and error["success"] is False and error["changes_count"] == 1
    assert error["reason"].startswith("paused: ") and words in error["reason"]
    assert git(repo, "rev-parse", "HEAD") == head
    assert UserState(repo) == before


async def test_branch_mode_backs_off_from_a_held_index_lock(io_loop, repo, harness):
    lock = repo / ".git" / "index.lock"
    lock.write_bytes(b"held by another git")
    write(repo / "README.md", "changed\n")
    head = git(repo, "rev-parse", "HEAD")
    h = await harness(repo, mode="branch", lock_retries=2, lock_backoff_seconds=0.01)
    _, error = await h.commit()
    assert error["success"] is False and "index.lock is held" in error["reason"]
    assert lock.read_bytes() == b"held by another git"
    assert git(repo, "rev-parse", "HEAD") == head
    lock.unlink()
    _, result = await h.commit()
    assert result["success"] is True and git(repo, "rev-parse", "HEAD") == result["sha"]
    assert git(repo, "status", "--porcelain") == ""


# --- when commits run -------------------------------------------------------------------------

async def test_quiet_period_waits_for_writes_to_stop(io_loop, repo, harness):
    fake = FakeClock()
    h = await harness(repo, fake.clock(), quiet_seconds=2.0, max_wait_seconds=30.0)
    assert h.committer.due() is None
    await h.change("README.md")
    fake.advance(1.5)
    await h.change("README.md", "src/app.py")
    fake.advance(1.9)
    assert h.committer.due() is None and await h.committer.fire_due() is None
    fake.advance(0.1)
    assert h.committer.due() == "quiet_period"
    write(repo / "README.md", "quiet\n")
    result = await h.committer.fire_due()
    start = await h.next_event()
    assert start == {**start, "event": "start", "trigger": "quiet_period", "changes_count": 2}
    assert await h.next_event() == result and result["trigger"] == "quiet_period" and result["sha"]
    assert h.committer.due() is None


async def test_max_wait_caps_the_quiet_period(io_loop, repo, harness):
    fake = FakeClock()
    h = await harness(repo, fake.clock(), quiet_seconds=2.0, max_wait_seconds=30.0)
    for _ in range(20):                 # a write every 1.5 s: never quiet for 2 s
        await h.change("README.md")
        fake.advance(1.5)
        if h.committer.due():
            break
    assert fake.now - 1000.0 == 30.0 and h.committer.due() == "quiet_period"


async def test_schedule_commits_pending_changes_every_interval(io_loop, repo, harness):
    fake = FakeClock()
    h = await harness(repo, fake.clock(), quiet_seconds=2.0, max_wait_seconds=30.0, interval_seconds=60.0)
    fake.advance(120)
    assert h.committer.due() is None                       # nothing pending, nothing scheduled
    (repo / ".git" / "refs" / "autopm").write_text("")     # the first attempt will fail
    write(repo / "README.md", "scheduled\n")
    await h.change("README.md")
    fake.advance(2)
    assert (await h.committer.fire_due())["event"] == "error"
    assert h.committer.pending_count == 1
    fake.advance(30)
    assert h.committer.due() is None          # a failed change does not retry on the quiet rule...
    fake.advance(30)
    assert h.committer.due() == "schedule"    # ...but on the schedule
    (repo / ".git" / "refs" / "autopm").unlink()
    result = await h.committer.fire_due()
    assert result["trigger"] == "schedule" and result["success"] is True and result["sha"]


async def test_a_real_timer_commits_after_the_quiet_period(io_loop, repo, harness):
    h = await harness(repo, quiet_seconds=0.05, max_wait_seconds=0.2)
    write(repo / "README.md", "timer\n")
    await h.change("README.md")
    start = await h.next_event()
    result = await h.next_event()
    assert start["event"] == "start" and start["trigger"] == "quiet_period"
    assert result["event"] == "result" and result["sha"] == git(repo, "rev-parse", "refs/autopm/autosave/main")


async def test_one_commit_at_a_time_and_changes_during_it_stay_pending(io_loop, repo, harness, monkeypatch):
    h = await harness(repo)
    release = threading.Event()
    running, most = [0], [0]
    original = h.committer._snapshotter.shadow

    def slow_shadow(*args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        release.wait(WAIT)
        try:
            return original(*args)
        finally:
            running[0] -= 1
    monkeypatch.setattr(h.committer._snapshotter, "shadow", slow_shadow)
    write(repo / "README.md", "first\n")
    await h.change("README.md")
    first = asyncio.ensure_future(h.committer.commit_now())
    second = asyncio.ensure_future(h.committer.commit_now())
    assert (await h.next_event())["changes_count"] == 1          # the first start
    await h.change("src/app.py")                                 # arrives during the commit
    assert h.committer.pending_count == 1
    release.set()
    first_result, second_result = await asyncio.gather(first, second)
    assert most[0] == 1
    assert first_result["sha"] and second_result["changes_count"] == 0
    kinds = [(await h.next_event())["event"] for _ in range(3)]
    assert kinds == ["result", "start", "result"]
    assert h.committer.pending_count == 0


async def test_stop_cancels_the_timer_and_publishes_nothing_after(io_loop, repo, harness):
    h = await harness(repo, quiet_seconds=0.05, max_wait_seconds=0.05)
    await h.change("README.md")
    await h.committer.stop()
    await asyncio.sleep(0.15)
    assert h.events.empty()
    assert await h.committer.commit_now() is None


async def test_off_outside_a_repository_and_an_explicit_mode_there_is_an_error(io_loop, tmp_path, harness):
    plain = tmp_path / "plain"
    plain.mkdir()
    h = await harness(plain)
    assert h.committer.mode == "off" and await h.committer.commit_now() is None
    assert h.events.empty()
    h = await harness(plain, mode="shadow")
    error = await h.next_event()
    assert error["event"] == "error" and "not a git repository" in error["reason"]
    assert await h.committer.commit_now() is None


@pytest.mark.parametrize("bad", [
    {"mode": "sometimes"}, {"quiet_seconds": 0}, {"max_wait_seconds": 1.0}, {"interval_seconds": -1},
    {"message_template": "{nope}"}, {"message_template": "{changes_count"}, {"message_template": " "},
    {"author": "no email"}, {"lock_retries": -1}, {"max_pending_paths": 0},
])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        AutoCommitOptions(**bad)
