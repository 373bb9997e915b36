"""Is this path ignored? — the one question the file watcher asks before it reports a change.

A path of the project (relative, POSIX, no leading slash) is ignored when any of these says so, in this
order:

1. it is inside a `.git` directory (the repository's own, or a nested repository's);
2. it matches an editor temporary (`EDITOR_TEMPORARIES`) or one of the extra globs given with `--ignore`
   (gitignore syntax; the temporaries come last, so `--ignore '!*.swp'` cannot bring swap files back);
3. git would ignore it: `.gitignore` files at every level and `.git/info/exclude`, with git's precedence
   (a deeper `.gitignore` overrides a shallower one, the last matching line of a file wins, `!` re-includes,
   `dir/` matches directories only, a leading `/` anchors to the file's directory, `**` spans
   directories, and nothing below an excluded directory can be re-included).

The matching itself is dulwich's (`dulwich.ignore`), which follows git's rules; the user's global
`core.excludesFile` is deliberately not read, so what the server reports does not depend on whose
account runs it. A rules object reads each rule file once, lazily; when one changes, the watcher takes a
fresh object from `reloaded()` (rule objects are never changed in place, so a scan running in another
thread keeps a consistent view).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dulwich.ignore import IgnoreFilter, IgnoreFilterManager, read_ignore_patterns

EDITOR_TEMPORARIES = (
    "*.swp", "*.swo", "*.swx",   # vim swap files
    "*~",                        # vim/emacs/gedit backups
    ".#*",                       # emacs lock files
    "4913",                      # vim's "can I write here?" probe
)
RULE_FILE_NAME = ".gitignore"
EXCLUDE_FILE = ".git/info/exclude"

_CACHE_LIMIT = 100_000   # decisions remembered per rules object before the cache starts over


def is_git_internal(path: str) -> bool:
    """True for `.git` itself and everything below any `.git` directory."""
    return path == ".git" or path.startswith(".git/") or "/.git/" in path or path.endswith("/.git")


def is_rule_file(path: str) -> bool:
    """True when a change to `path` can change what is ignored."""
    return path == EXCLUDE_FILE or path == RULE_FILE_NAME or path.endswith("/" + RULE_FILE_NAME)


class _WorkTreeRules(IgnoreFilterManager):
    """dulwich's manager for a work tree, told whether a path is a directory instead of asking the disk:
    callers always mark directories with a trailing slash, as dulwich's documentation asks, so a path
    without one is a file (also when it has just been deleted)."""

    def _is_dir(self, path: str) -> bool:
        return path.endswith("/")


class IgnoreRules:
    """The ignore rules of one project directory at one moment."""

    def __init__(self, root: str | os.PathLike[str], extra: Iterable[str] = ()) -> None:
        self.root = os.fspath(root)
        self.extra = tuple(extra)
        self._always = IgnoreFilter([p.encode() for p in (*self.extra, *EDITOR_TEMPORARIES)],
                                    path="--ignore and editor temporaries")
        self._git = _WorkTreeRules(self.root, self._exclude_filters(), False)
        self._cache: dict[str, bool] = {}

    def _exclude_filters(self) -> list[IgnoreFilter]:
        exclude = Path(self.root, EXCLUDE_FILE)
        try:
            with exclude.open("rb") as f:
                return [IgnoreFilter(read_ignore_patterns(f), path=str(exclude))]
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return []

    def reloaded(self) -> IgnoreRules:
        """The same rules read afresh from disk (after a `.gitignore` or the exclude file changed)."""
        return IgnoreRules(self.root, self.extra)

    def is_ignored(self, path: str, is_dir: bool = False) -> bool:
        """Whether the file (or, with `is_dir`, the directory) at project-relative `path` is ignored."""
        key = path + "/" if is_dir else path
        decided = self._cache.get(key)
        if decided is None:
            decided = (is_git_internal(path) or self._always.is_ignored(key) is True
                       or self._git.is_ignored(key) is True)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decided
        return decided

    def may_skip_directory(self, path: str) -> bool:
        """Whether a scan can skip directory `path` without missing a file that is not ignored.

        Stricter than `is_ignored(path, is_dir=True)`: `dir/*` with `!dir/keep` ignores the directory's
        contents but not `dir/keep`, so the scan must still enter `dir`."""
        return (is_git_internal(path) or self._always.may_prune_directory(path + "/")
                or self._git.may_prune_directory(path + "/"))
