"""What changed: per-path merge rules inside a coalescing window, and the index of known files.

Pure logic and plain file-system reads, with no watchdog and no IOLoop, so it is tested exhaustively
on its own.

Merge rules (`merge`, per path, inside one window; "existed" = the path was a known file when its window
opened):

| pending \\ operation    | created   | modified  | deleted        | moved-in from o |
|------------------------|-----------|-----------|----------------|-----------------|
| none, did not exist     | created   | created   | none           | moved(o)        |
| none, existed           | modified  | modified  | deleted        | modified        |
| created                 | created   | created   | none           | moved(o)        |
| moved(x)                | moved(x)  | moved(x)  | none           | moved(o)        |
| modified                | modified  | modified  | deleted        | modified        |
| deleted                 | modified  | modified  | deleted        | modified        |

A move a→b is two operations: deleted on a, moved-in on b carrying a's *origin* (a itself if a existed
before the window; a's own origin if a was moved there in this window; none — i.e. a plain create — if a
was created in this window). When a window closes, `settle` publishes moved(o) at b as `moved` with
`old_path` o only if o is then gone (its pending change is deleted, which the move then stands for);
otherwise b is `created`. So an atomic save (temp file written, then renamed over the target) is one
`modified` for the target (`created` if it did not exist), never a move of the temp file.

Directories
-----------
Only files are reported. A deleted directory, or one moved out of the tree, is a `deleted` per file it
held. A directory moved within the tree is a `moved` per file, with `old_path` (the destination is
scanned, so files that appear or fall under other ignore rules there come out right). A changed
`.gitignore` or `.git/info/exclude` takes effect at once, for the changes that follow it: a file it newly
ignores is forgotten without an event; a file it no longer ignores is reported (as `created`) the next
time it changes. A change of metadata alone is `modified` when size, mtime or inode changed (`touch`),
and nothing for `chmod`. Symbolic links are files; nothing is followed.
"""

from __future__ import annotations

import os
import threading
from typing import Mapping, NamedTuple

from .ignore import IgnoreRules


CREATED, MODIFIED, DELETED, MOVED = "created", "modified", "deleted", "moved"


# --- merge rules (pure) ----------------------------------------------------------------------

class Change(NamedTuple):
    """A path's net change so far in its window. `old_path` only for `moved`."""

    kind: str
    old_path: str | None = None


def merge(previous: Change | None, existed: bool, operation: str, origin: str | None = None) -> Change | None:
    """The pending change of a path after one more operation (see the table in the module docstring).

    `previous` is None when the path has no pending change; then `existed` says whether it was a known
    file. `operation` is created, modified, deleted or moved (moved-in, from `origin`; a move with no
    origin is a create). Returns None when the window nets out to nothing.
    """
    if operation == MOVED and origin is None:
        operation = CREATED
    existed_before = existed if previous is None else previous.kind in (MODIFIED, DELETED)
    if operation == DELETED:
        return Change(DELETED) if existed_before else None
    if existed_before:
        return Change(MODIFIED)
    if operation == MOVED:
        return Change(MOVED, origin)
    if previous is not None and previous.kind == MOVED:
        return previous                      # moved, then written: still a move
    return Change(CREATED)


def settle(group: Mapping[str, Change], present: Mapping[str, bool]) -> list[tuple[str, str, str | None]]:
    """What to publish for changes whose windows closed together: `(change_type, path, old_path)`.

    `present[path]` says whether each path that should exist (all but deleted) is really a file now; a
    path that is not is a phantom: nothing for a new path, `deleted` for one that existed. A move is
    published as such only when its origin is in `group` as deleted, which the move then stands for.
    """
    moved_away: set[str] = set()
    moves: dict[str, str] = {}
    for path, change in group.items():
        origin = change.old_path
        if (change.kind == MOVED and present[path] and origin not in moved_away
                and group.get(origin) == Change(DELETED)):
            moves[path] = origin
            moved_away.add(origin)
    published = []
    for path, change in group.items():
        if path in moves:
            published.append((MOVED, path, moves[path]))
        elif change.kind == DELETED:
            if path not in moved_away:
                published.append((DELETED, path, None))
        elif change.kind == MODIFIED:
            published.append((MODIFIED if present[path] else DELETED, path, None))
        elif present[path]:                  # created, or a move whose origin is still there
            published.append((CREATED, path, None))
    return published


# --- the index of known files ----------------------------------------------------------------

Signature = tuple[int, int, int]   # (size, mtime_ns, inode): what a rescan compares


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class FileIndex:
    """The files the watcher believes exist, with the signature each had when last reported (None while
    a change to it is pending), and a directory tree over them so a directory's files are found without
    looking at every file."""

    def __init__(self, files: Mapping[str, Signature | None] | None = None) -> None:
        self._files: dict[str, Signature | None] = {}
        self._children: dict[str, set[str]] = {}      # directory path → names of files and directories in it
        for path, signature in (files or {}).items():
            self.set(path, signature)

    def __contains__(self, path: object) -> bool:
        return path in self._files

    def __len__(self) -> int:
        return len(self._files)

    def paths(self) -> list[str]:
        return list(self._files)

    def signature(self, path: str) -> Signature | None:
        return self._files.get(path)

    def set(self, path: str, signature: Signature | None) -> None:
        if path not in self._files:
            self._link(path)
        self._files[path] = signature

    def discard(self, path: str) -> None:
        if self._files.pop(path, _MISSING) is not _MISSING:
            self._unlink(path)

    def under(self, directory: str) -> list[str]:
        """The known files anywhere below `directory` ("" is the project root)."""
        if not directory:
            return list(self._files)
        found, stack = [], [directory]
        while stack:
            parent = stack.pop()
            for name in self._children.get(parent, ()):
                path = f"{parent}/{name}" if parent else name
                if path in self._files:
                    found.append(path)
                if path in self._children:
                    stack.append(path)
        return found

    def _link(self, path: str) -> None:
        while True:
            parent, _, name = path.rpartition("/")
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.add(name)
                return
            self._children[parent] = {name}
            if not parent:
                return
            path = parent

    def _unlink(self, path: str) -> None:
        while path and path not in self._files and path not in self._children:
            parent, _, name = path.rpartition("/")
            siblings = self._children.get(parent)
            if siblings is None:
                return
            siblings.discard(name)
            if siblings or not parent:
                return
            del self._children[parent]
            path = parent


_MISSING = object()


class _Aborted(Exception):
    """A scan stopped because the watcher is stopping."""


def scan_tree(root: str, rules: IgnoreRules, start: str = "",
              abort: threading.Event | None = None) -> dict[str, Signature]:
    """Every file below `start` (project-relative; "" is the root) that is not ignored, with its
    signature. Symbolic links are files; nothing is followed."""
    files: dict[str, Signature] = {}
    stack = [start]
    while stack:
        if abort is not None and abort.is_set():
            raise _Aborted()
        directory = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, directory))
        except OSError:          # gone, not a directory any more, or unreadable: nothing to report
            continue
        with entries:
            for entry in entries:
                path = f"{directory}/{entry.name}" if directory else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not rules.may_skip_directory(path):
                            stack.append(path)
                    elif reportable(path) and not rules.is_ignored(path):
                        files[path] = signature_of(entry.stat(follow_symlinks=False))
                except OSError:
                    continue
    return files


def reportable(path: str) -> bool:
    """Whether a path can go into an event: a name that is not UTF-8 (kept by Python as surrogates)
    cannot be encoded as JSON text, so such a file is treated as ignored."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


