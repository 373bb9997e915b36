"""A working tree recorded as git objects with dulwich: blobs, trees, a commit, a ref moved safely.

`Snapshotter` does the git work of auto-commit (`autocommit.py` decides when, and publishes the events).
Everything here is blocking file-system work and runs on auto-commit's worker thread, never on the IOLoop.

- `Snapshotter.shadow()`: commit the working tree as it is (tracked and untracked files; ignored files
  left out) onto `refs/autopm/autosave/<branch>`. It reads the user's index but never writes it, nor HEAD,
  a branch or the working tree, so it works while another process holds `.git/index.lock` and in the
  middle of a merge or rebase.
- `Snapshotter.commit_branch()`: `git add -A && git commit` on the current branch, only in a clean state,
  under `.git/index.lock` taken the way git takes it.

What git would record is what we record: `.gitignore` at every level, `.git/info/exclude` and
`core.excludesFile` decide what is ignored (tracked files are never ignored); symbolic links are stored as
links, not followed; the executable bit is kept (unless `core.fileMode` is false: then tracked files keep
their index mode); a nested repository becomes a gitlink to its HEAD. Content filters (`core.autocrlf`,
`.gitattributes` `text`/`filter`, LFS) are not applied: files are stored byte for byte.

Hashing is the cost of a snapshot, so a file is read only when neither of two stat caches vouches for it:
the user's index (an entry whose stat data matches and is not racily clean, exactly git's own test) and our
cache of the blob ids we computed (path -> size, mtime_ns, ctime_ns, inode, mode). A file modified less than
`RACY_MARGIN_NS` before the scan is not cached, since a second write within the file system's timestamp
granularity would not change its stat data.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from dulwich.diff_tree import tree_changes
from dulwich.file import FileLocked
from dulwich.ignore import IgnoreFilterManager
from dulwich.index import (EXTENDED_FLAG_INTEND_TO_ADD, ConflictedIndexEntry, IndexChecksumReader,
                           IndexChecksumWriter, IndexEntry, index_entry_from_stat,
                           read_index_dict_with_version, read_submodule_head, unchanged_entry_flags,
                           write_index_dict)
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.reflog import format_reflog_line
from dulwich.repo import Repo

AUTOSAVE_PREFIX = "refs/autopm/autosave/"
BASE_TRAILER = "Autopm-Base"          # `Autopm-Base: <sha of the HEAD commit>` or `Autopm-Base: unborn`
RACY_MARGIN_NS = 2_000_000_000         # files younger than this at scan time are re-read next time

MODE_FILE, MODE_EXECUTABLE, MODE_LINK, MODE_GITLINK, MODE_TREE = 0o100644, 0o100755, 0o120000, 0o160000, 0o40000
_UINT32 = 0xFFFFFFFF

# Operations during which a commit on the branch would mix the user's half-done work into history.
_OPERATIONS = (("MERGE_HEAD", "a merge is in progress"),
               ("rebase-merge", "a rebase is in progress"),
               ("rebase-apply", "a rebase (or git am) is in progress"),
               ("CHERRY_PICK_HEAD", "a cherry-pick is in progress"),
               ("REVERT_HEAD", "a revert is in progress"),
               ("BISECT_START", "a bisect is in progress"))


class CommitRefused(Exception):
    """No commit was made, for a reason the user can act on (repository state, a held lock, a race)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    ref: str                  # the ref committed to (or that would have been)
    sha: str | None           # the new commit; None when the tree equals its parent's and nothing was made
    changes_count: int        # paths added, modified or deleted relative to the parent commit
    base: str | None          # the HEAD commit the work was based on; None on an unborn branch


@dataclass(frozen=True)
class Signature:
    """Author and committer of a commit, and when."""

    identity: bytes           # b"Name <email>"
    time: int                 # seconds since the epoch
    timezone: int             # offset from UTC in seconds

    @classmethod
    def now(cls, identity: str, wall: float) -> Signature:
        return cls(identity.encode("utf-8"), int(wall), time.localtime(wall).tm_gmtoff)


# The commit message for (changes_count, branch): the caller's template, rendered.
MessageFor = Callable[[int, str], str]


@dataclass(frozen=True)
class Head:
    branch: str | None        # "main", or None when HEAD is detached
    sha: str | None           # the commit HEAD resolves to; None on an unborn branch


def read_head(repo: Repo) -> Head:
    names, sha = repo.refs.follow(b"HEAD")
    target = names[-1].decode("utf-8", "surrogateescape")
    sha_text = sha.decode("ascii") if sha else None
    if target == "HEAD":
        return Head(None, sha_text)
    return Head(target.removeprefix("refs/heads/"), sha_text)


def operation_in_progress(repo: Repo) -> str | None:
    """Why the repository is not in a state to commit on the branch, or None."""
    control = repo.controldir()
    for name, reason in _OPERATIONS:
        if os.path.exists(os.path.join(control, name)):
            return reason
    return None


def autosave_name(repo: Repo, head: Head) -> str:
    """The branch the working tree belongs to: HEAD's branch; during a rebase the branch being rebased;
    `detached-<sha12>` for any other detached HEAD."""
    if head.branch is not None:
        return head.branch
    for state in ("rebase-merge", "rebase-apply"):
        try:
            with open(os.path.join(repo.controldir(), state, "head-name"), "rb") as f:
                name = f.read().strip().decode("utf-8", "surrogateescape")
        except OSError:
            continue
        if name.startswith("refs/heads/"):
            return name.removeprefix("refs/heads/")
    return f"detached-{(head.sha or '0' * 40)[:12]}"


# --- the user's index, read only --------------------------------------------------------------

@dataclass(frozen=True)
class IndexSnapshot:
    entries: Mapping[bytes, IndexEntry | ConflictedIndexEntry]
    version: int | None
    mtime_ns: int             # entries whose mtime is not older than this are racily clean

    @property
    def has_conflicts(self) -> bool:
        return any(isinstance(e, ConflictedIndexEntry) for e in self.entries.values())


class IndexReader:
    """Reads the user's index, never writes it; parses it again only when the file was replaced."""

    def __init__(self) -> None:
        self._last: tuple[tuple[int, int, int, int], IndexSnapshot] | None = None

    def read(self, path: str) -> IndexSnapshot:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return IndexSnapshot({}, None, 0)
        with f:
            st = os.fstat(f.fileno())
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            reader = IndexChecksumReader(f)
            entries, version, _ = read_index_dict_with_version(reader)
            reader.check_checksum(allow_empty=True)
        index = IndexSnapshot(entries, version, st.st_mtime_ns)
        self._last = (key, index)
        return index


def _stat_key(st: os.stat_result, mode: int) -> tuple[int, int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, mode


def _time_ns(value: object) -> int | None:
    if isinstance(value, tuple):
        return value[0] * 1_000_000_000 + value[1]
    return None


def _index_vouches(entry: object, st: os.stat_result, mode: int, index_mtime_ns: int) -> bool:
    """git's stat test: the index entry's stat data matches the file and the entry is not racily clean."""
    if not isinstance(entry, IndexEntry) or entry.mode != mode or (entry.size == 0 and st.st_size):
        return False
    mtime, ctime = _time_ns(entry.mtime), _time_ns(entry.ctime)
    return (mtime is not None and mtime < index_mtime_ns
            and entry.size == st.st_size & _UINT32 and entry.ino == st.st_ino & _UINT32
            and mtime == _truncated_ns(st.st_mtime_ns) and ctime == _truncated_ns(st.st_ctime_ns))


def _truncated_ns(ns: int) -> int:
    """A time as the index stores it: 32-bit seconds, then nanoseconds."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return (seconds & _UINT32) * 1_000_000_000 + nanos


# --- the working tree -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TreeFile:
    """One path of a scanned working tree."""

    mode: int
    sha: bytes
    stat: os.stat_result | None   # None: a skip-worktree entry carried over from the index


class WorkingTree:
    """Scans one working tree into {path: TreeFile}, writing new blobs, and remembers blob ids by stat."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fsencode(os.fspath(root))
        self._blob_ids: dict[bytes, tuple[tuple[int, int, int, int, int], bytes]] = {}

    def scan(self, repo: Repo, index: IndexSnapshot) -> dict[bytes, TreeFile]:
        store = repo.object_store
        config = repo.get_config()
        trust_mode = config.get_boolean(b"core", b"filemode", True)
        ignore = IgnoreFilterManager.from_repo(repo)
        tracked = index.entries
        tracked_dirs = _directories_of(tracked)
        scan_start = time.time_ns()
        blob_ids: dict[bytes, tuple[tuple[int, int, int, int, int], bytes]] = {}
        files: dict[bytes, TreeFile] = {}
        pending_dirs = [b""]
        while pending_dirs:
            directory = pending_dirs.pop()
            try:
                listing = os.scandir(os.path.join(self.root, directory) if directory else self.root)
            except (FileNotFoundError, NotADirectoryError):
                continue      # removed while we walked
            with listing:
                for item in listing:
                    if item.name == b".git":
                        continue
                    path = directory + b"/" + item.name if directory else item.name
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    entry = tracked.get(path)
                    if stat.S_ISDIR(st.st_mode):
                        if os.path.lexists(os.path.join(item.path, b".git")) and (
                                path not in tracked_dirs or getattr(entry, "mode", 0) == MODE_GITLINK):
                            link = self._gitlink(item.path, entry, path, ignore)
                            if link is not None:
                                files[path] = TreeFile(MODE_GITLINK, link, st)
                        elif path in tracked_dirs or not _ignored_directory(ignore, path):
                            pending_dirs.append(path)
                        continue
                    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                        continue      # sockets, fifos, devices: git does not store them
                    if entry is None and ignore.is_ignored(os.fsdecode(path)):
                        continue
                    mode = _git_mode(st)
                    if not trust_mode and stat.S_ISREG(st.st_mode) and getattr(entry, "mode", 0) in (
                            MODE_FILE, MODE_EXECUTABLE):
                        mode = entry.mode
                    sha = self._blob_id(store, item.path, path, st, mode, entry, index.mtime_ns)
                    if sha is None:
                        continue      # removed while we read it
                    if st.st_mtime_ns < scan_start - RACY_MARGIN_NS:
                        blob_ids[path] = (_stat_key(st, mode), sha)
                    files[path] = TreeFile(mode, sha, st)
        for path, entry in tracked.items():
            if isinstance(entry, IndexEntry) and entry.skip_worktree and path not in files:
                files[path] = TreeFile(entry.mode, entry.sha, None)
        self._blob_ids = blob_ids     # only paths of this scan: the cache is as large as the tree
        return files

    def _blob_id(self, store: BaseObjectStore, full: bytes, path: bytes, st: os.stat_result, mode: int,
                 entry: object, index_mtime_ns: int) -> bytes | None:
        cached = self._blob_ids.get(path)
        if cached is not None and cached[0] == _stat_key(st, mode):
            return cached[1]
        if _index_vouches(entry, st, mode, index_mtime_ns):
            return entry.sha
        try:
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(full)
            else:
                with open(full, "rb") as f:
                    data = f.read()
        except FileNotFoundError:
            return None
        return add_if_missing(store, Blob.from_string(data))

    @staticmethod
    def _gitlink(full: bytes, entry: object, path: bytes, ignore: IgnoreFilterManager) -> bytes | None:
        """A nested repository: its HEAD as a gitlink, as `git add` records it (None: leave it out)."""
        if entry is None and ignore.is_ignored(os.fsdecode(path) + "/"):
            return None
        head = read_submodule_head(full)
        if head is None and isinstance(entry, IndexEntry):
            return entry.sha
        return head


def _directories_of(paths: Iterable[bytes]) -> set[bytes]:
    """Every directory holding one of `paths`, at any depth (the root is b"")."""
    directories = {b""}
    for path in paths:
        while b"/" in path:
            path = path.rpartition(b"/")[0]
            if path in directories:
                break
            directories.add(path)
    return directories


def _ignored_directory(ignore: IgnoreFilterManager, path: bytes) -> bool:
    """An ignored directory with no tracked file and no re-included path inside: not walked at all."""
    name = os.fsdecode(path)
    return bool(ignore.is_ignored(name + "/")) and ignore.may_prune_directory(name)


def _git_mode(st: os.stat_result) -> int:
    if stat.S_ISLNK(st.st_mode):
        return MODE_LINK
    return MODE_EXECUTABLE if st.st_mode & stat.S_IXUSR else MODE_FILE


# --- objects ----------------------------------------------------------------------------------

def add_if_missing(store: BaseObjectStore, obj: ShaFile) -> bytes:
    """Store an object unless the repository has it (dulwich's add_object would write a loose copy of
    a packed object); returns its id."""
    sha = obj.id
    if sha not in store:
        store.add_object(obj)
    return sha


class TreeWriter:
    """Writes the trees for {path: (mode, sha)}. A directory whose entries are the same as last time keeps
    its tree id without being serialized or looked up again."""

    def __init__(self) -> None:
        self._trees: dict[bytes, tuple[frozenset[tuple[bytes, int, bytes]], bytes]] = {}

    def write(self, store: BaseObjectStore, files: Mapping[bytes, tuple[int, bytes]]) -> bytes:
        """Returns the root tree's id."""
        children: dict[bytes, list[tuple[bytes, int, bytes]]] = {b"": []}
        for path, (mode, sha) in files.items():
            parent, _, name = path.rpartition(b"/")
            _directory(children, parent).append((name, mode, sha))
        trees = {}
        tree_id = b""
        for directory in sorted(children, key=_depth, reverse=True):   # a directory after all below it
            entries = frozenset(children[directory])
            known = self._trees.get(directory)
            if known is not None and known[0] == entries:
                tree_id = known[1]
            else:
                tree = Tree()
                for name, mode, sha in entries:
                    tree.add(name, mode, sha)
                tree_id = add_if_missing(store, tree)
            trees[directory] = (entries, tree_id)
            if directory:
                parent, _, name = directory.rpartition(b"/")
                children[parent].append((name, MODE_TREE, tree_id))
        self._trees = trees      # only this tree's directories: the cache is as large as the tree
        return tree_id           # the root's, which comes last


def _directory(children: dict[bytes, list[tuple[bytes, int, bytes]]],
               directory: bytes) -> list[tuple[bytes, int, bytes]]:
    if directory not in children:
        children[directory] = []
        _directory(children, directory.rpartition(b"/")[0])
    return children[directory]


def _depth(directory: bytes) -> int:
    return directory.count(b"/") + 1 if directory else 0


def count_changes(store: BaseObjectStore, old_tree: bytes | None, new_tree: bytes) -> int:
    return sum(1 for _ in tree_changes(store, old_tree, new_tree))


def make_commit(store: BaseObjectStore, tree: bytes, parents: list[bytes], message: str,
                signature: Signature) -> bytes:
    commit = Commit()
    commit.tree = tree
    commit.parents = parents
    commit.author = commit.committer = signature.identity
    commit.author_time = commit.commit_time = signature.time
    commit.author_timezone = commit.commit_timezone = signature.timezone
    commit.encoding = b"UTF-8"
    commit.message = message.encode("utf-8")
    return add_if_missing(store, commit)


def _tree_of(repo: Repo, commit_sha: bytes | None) -> bytes | None:
    return repo[commit_sha].tree if commit_sha else None


def _with_trailer(message: str, base: str | None) -> str:
    return f"{message.rstrip()}\n\n{BASE_TRAILER}: {base or 'unborn'}\n"


def _compare_and_swap(repo: Repo, ref: bytes, old: bytes | None, new: bytes, **reflog: object) -> bool:
    """Move `ref` from `old` (None: must not exist) to `new`; False when someone else moved it first or
    holds its lock."""
    try:
        if old is None:
            return repo.refs.add_if_new(ref, new, **reflog)
        return repo.refs.set_if_equals(ref, old, new, **reflog)
    except FileLocked:
        return False


# --- the two ways of committing ---------------------------------------------------------------

class IndexLock:
    """`.git/index.lock`, taken as git takes it: created with O_EXCL, the new index written into it,
    renamed over the index to commit, removed to abort. Someone else's lock is waited for (bounded
    exponential backoff) and never removed."""

    def __init__(self, index_path: str, retries: int, backoff_seconds: float) -> None:
        self.index_path = index_path
        self.path = index_path + ".lock"
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._fd: int | None = None
        self._done = False

    def __enter__(self) -> IndexLock:
        for attempt in range(self.retries + 1):
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                return self
            except FileExistsError:
                if attempt == self.retries:
                    break
                time.sleep(self.backoff_seconds * 2 ** attempt)
        raise CommitRefused(f"{self.path} is held by another git process; tried {self.retries + 1} "
                            "times, will try again at the next trigger")

    def write(self, entries: Mapping[bytes, IndexEntry], version: int | None) -> None:
        # No extensions: a cached tree from the old index would describe the old entries.
        fd, self._fd = self._fd, None
        with os.fdopen(fd, "wb") as f:
            writer = IndexChecksumWriter(f)
            write_index_dict(writer, entries, version=version)
            writer.write_checksum()

    def commit(self) -> None:
        os.replace(self.path, self.index_path)
        self._done = True

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
        if not self._done:
            try:
                os.unlink(self.path)      # ours: we created it with O_EXCL
            except FileNotFoundError:
                pass


class Snapshotter:
    """The git side of auto-commit for one working tree. Keeps its caches (blob ids by stat, the parsed
    index, tree ids by directory) between commits. Not thread-safe: one commit at a time (auto-commit
    runs it on a single worker thread). `lock_backoff_seconds` also spaces the retries of a lost ref
    update."""

    def __init__(self, root: str | os.PathLike[str], *, ref_retries: int = 5, lock_retries: int = 5,
                 lock_backoff_seconds: float = 0.05) -> None:
        self.root = os.fspath(root)
        self.working_tree = WorkingTree(root)
        self.index = IndexReader()
        self.trees = TreeWriter()
        self.ref_retries = ref_retries
        self.lock_retries = lock_retries
        self.lock_backoff_seconds = lock_backoff_seconds

    def open(self) -> Repo:
        return Repo(self.root)

    def _record(self, repo: Repo, index: IndexSnapshot) -> tuple[dict[bytes, TreeFile], bytes]:
        """The working tree's files, their blobs and trees written; returns the files and the root tree."""
        files = self.working_tree.scan(repo, index)
        return files, self.trees.write(repo.object_store, {p: (f.mode, f.sha) for p, f in files.items()})

    def shadow(self, message: MessageFor, signature: Signature) -> Outcome:
        """Commit the working tree onto refs/autopm/autosave/<branch>, parented on that ref's previous
        snapshot (the first one on the HEAD commit; on an unborn branch, no parent)."""
        with self.open() as repo:
            head = read_head(repo)
            name = autosave_name(repo, head)
            ref_name = AUTOSAVE_PREFIX + name
            ref = ref_name.encode("utf-8", "surrogateescape")
            _, tree = self._record(repo, self.index.read(repo.index_path()))
            base = head.sha.encode("ascii") if head.sha else None
            for attempt in range(self.ref_retries + 1):
                previous = repo.refs.read_ref(ref)
                parent = previous or base
                parent_tree = _tree_of(repo, parent)
                if tree == parent_tree:
                    return Outcome(ref_name, None, 0, head.sha)
                changes = count_changes(repo.object_store, parent_tree, tree)
                commit = make_commit(repo.object_store, tree, [parent] if parent else [],
                                     _with_trailer(message(changes, name), head.sha), signature)
                if _compare_and_swap(repo, ref, previous, commit):
                    return Outcome(ref_name, commit.decode("ascii"), changes, head.sha)
                time.sleep(self.lock_backoff_seconds * attempt)
            raise CommitRefused(f"{ref_name} kept moving under us; gave up after "
                                f"{self.ref_retries + 1} attempts")

    def commit_branch(self, message: MessageFor, signature: Signature) -> Outcome:
        """`git add -A && git commit` on the current branch, under .git/index.lock."""
        with self.open() as repo:
            head = read_head(repo)
            busy = operation_in_progress(repo)
            if busy:
                raise CommitRefused(f"paused: {busy}")
            if head.branch is None:
                raise CommitRefused("paused: HEAD is detached (check out a branch to resume)")
            ref_name = "refs/heads/" + head.branch
            ref = ref_name.encode("utf-8", "surrogateescape")
            with IndexLock(repo.index_path(), self.lock_retries, self.lock_backoff_seconds) as lock:
                index = self.index.read(repo.index_path())
                if index.has_conflicts:
                    raise CommitRefused("paused: the index has unmerged paths")
                scan_start = time.time_ns()
                files, tree = self._record(repo, index)
                base = head.sha.encode("ascii") if head.sha else None
                parent_tree = _tree_of(repo, base)
                if tree == parent_tree:
                    return Outcome(ref_name, None, 0, head.sha)
                changes = count_changes(repo.object_store, parent_tree, tree)
                text = message(changes, head.branch)
                commit = make_commit(repo.object_store, tree, [base] if base else [], text, signature)
                lock.write(index_entries(files, index, scan_start), index.version)
                subject = text.strip().splitlines()[0] if text.strip() else ""
                reflog = b"commit" + (b" (initial)" if base is None else b"") + b": " + subject.encode()
                if not _compare_and_swap(repo, ref, base, commit, committer=signature.identity,
                                         timestamp=signature.time, timezone=signature.timezone,
                                         message=reflog):
                    raise CommitRefused(f"{ref_name} moved while we committed; will try again")
                try:
                    lock.commit()
                except OSError:      # the branch must not name a commit the index does not match
                    if base is None:
                        repo.refs.remove_if_equals(ref, commit)
                    else:
                        _compare_and_swap(repo, ref, commit, base)
                    raise
                _append_head_reflog(repo, base, commit, signature, reflog)
            return Outcome(ref_name, commit.decode("ascii"), changes, head.sha)


def index_entries(files: Mapping[bytes, TreeFile], index: IndexSnapshot,
                  scan_start_ns: int) -> dict[bytes, IndexEntry]:
    """The index `git add -A` would write for the scanned files: unchanged entries kept as they are,
    others made from the file's stat. An entry for a file modified within the racy margin gets size 0
    (git's "smudge"), so git compares its content instead of trusting its stat data."""
    entries: dict[bytes, IndexEntry] = {}
    for path, scanned in files.items():
        old = index.entries.get(path)
        if scanned.stat is None:
            entries[path] = old
            continue
        st = scanned.stat
        if (isinstance(old, IndexEntry) and old.sha == scanned.sha
                and _index_vouches(old, st, scanned.mode, index.mtime_ns)):
            entries[path] = old
            continue
        flags, extended = unchanged_entry_flags(index.entries, path, scanned.sha, scanned.mode)
        entry = index_entry_from_stat(st, scanned.sha, scanned.mode, flags=flags,
                                      extended_flags=extended & ~EXTENDED_FLAG_INTEND_TO_ADD)
        entry = replace(entry, size=st.st_size & _UINT32, uid=st.st_uid & _UINT32, gid=st.st_gid & _UINT32,
                        mtime=_split_ns(_truncated_ns(st.st_mtime_ns)),
                        ctime=_split_ns(_truncated_ns(st.st_ctime_ns)))
        if st.st_mtime_ns >= scan_start_ns - RACY_MARGIN_NS:
            entry = replace(entry, size=0)
        entries[path] = entry
    return entries


def _split_ns(ns: int) -> tuple[int, int]:
    return divmod(ns, 1_000_000_000)


def _append_head_reflog(repo: Repo, old: bytes | None, new: bytes, signature: Signature,
                        message: bytes) -> None:
    """git logs a commit on the checked-out branch in HEAD's reflog too; dulwich logs only the branch."""
    path = os.path.join(repo.controldir(), "logs", "HEAD")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab") as f:
            f.write(format_reflog_line(old, new, signature.identity, signature.time, signature.timezone,
                                       message) + b"\n")
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
