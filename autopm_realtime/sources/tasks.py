"""Task sources: the files in a project that list its tasks, read into `Task`s, and progress from them.

Two formats (docs/tasks.md is the reference): Markdown checklists (`- [ ] title`, `- [x] title`) and a JSON
task file (`.autopm/tasks.json`). Which files count is decided by globs relative to the project root;
`.json` files are read as JSON task files and every other match as Markdown.

Everything here is synchronous and free of the IOLoop: `TaskSources.collect` does the file system work
and may run in an executor thread (it reads only its arguments and immutable settings), while
`TaskSources.apply` and the queries run on the loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..events import loads

log = logging.getLogger(__name__)

DEFAULT_TASK_GLOBS = ("TODO.md", "TASKS.md", ".autopm/tasks.json")
DEFAULT_MAX_TASK_FILES = 100
DEFAULT_MAX_TASKS_PER_FILE = 10_000
DEFAULT_MAX_FILE_BYTES = 1024 * 1024

STATUSES = ("todo", "in_progress", "done")
MAX_WEIGHT = 1_000_000
NEVER_SEARCHED = frozenset({".git"})   # directories a `**` glob does not descend into


class TaskFileError(ValueError):
    """A task file cannot be read. `str()` is `path[:line[:column]]: [field: ]reason`."""

    def __init__(self, path: str, reason: str, *, line: int | None = None, column: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.reason, self.line, self.column, self.field = path, reason, line, column, field
        where = path + "".join(f":{n}" for n in (line, column) if n is not None)
        super().__init__(f"{where}: {field + ': ' if field else ''}{reason}")


@dataclass(frozen=True)
class Task:
    """One task. `key` is its identity across reads: `<file>#<id>` for JSON tasks, `<file>#<normalised
    text of its ancestors and itself>` for Markdown items (see docs/tasks.md)."""

    key: str
    title: str
    status: str                     # one of STATUSES
    file: str
    line: int | None                # Markdown: the item's line; JSON: None
    weight: float = 1.0
    due: str | None = None          # as written
    deadline: float | None = None   # epoch seconds from which the task is overdue when not done

    @property
    def done(self) -> bool:
        return self.status == "done"

    def overdue(self, now: float) -> bool:
        return not self.done and self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class Progress:
    percentage: float
    completed: int
    total: int

    @property
    def open(self) -> int:
        return self.total - self.completed


def measure(tasks: Iterable[Task]) -> Progress:
    """Weighted completion: 100 × done weight / total weight, rounded half up to 0.1 — but never 100.0
    while some weight is still open, so 100 always means finished. No tasks: 0.0."""
    done_weight = total_weight = Fraction(0)
    completed = total = 0
    for task in tasks:
        total += 1
        total_weight += Fraction(task.weight)
        if task.done:
            completed += 1
            done_weight += Fraction(task.weight)
    if not total_weight:
        return Progress(0.0, completed, total)
    tenths = math.floor(done_weight * 1000 / total_weight + Fraction(1, 2))
    if tenths == 1000 and done_weight < total_weight:
        tenths = 999
    return Progress(tenths / 10, completed, total)


# --- values shared by both formats -----------------------------------------------------------------

_WILD = re.compile(r"[*?\[]")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_due(text: Any) -> float:
    """The epoch second from which a task due `text` is overdue: a date alone means the end of that day
    in UTC; a date and time without an offset is UTC. Raises ValueError with the reason."""
    try:
        if isinstance(text, str) and _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() + 86400
        if isinstance(text, str) and _DATETIME.match(text):
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment.timestamp()
    except ValueError:
        pass
    raise ValueError(f"must be an ISO date (2026-12-01) or date and time (2026-12-01T17:00:00Z), "
                     f"got {_shown(text)}")


WEIGHT_RULE = f"must be a positive number up to {MAX_WEIGHT}"


def valid_weight(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 < value <= MAX_WEIGHT)


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- Markdown ------------------------------------------------------------------------------------

_BULLET = r"(?P<indent>[ \t]*)(?:[-*+]|\d{1,9}[.)])[ \t]+"
_CHECKBOX = re.compile(_BULLET + r"\[(?P<mark>[ xX])\][ \t]+(?P<text>\S.*)$")
_LIST_ITEM = re.compile(_BULLET + r"(?P<text>\S.*)$")
_FENCE = re.compile(r"[ \t]*(?P<fence>`{3,}|~{3,})(?P<rest>.*)$")
_META_GROUP = re.compile(r"\((?P<body>\s*(?:weight|due)\s*:[^()]*)\)", re.IGNORECASE)
_META_PAIR = re.compile(r"\s*(?P<key>weight|due)\s*:\s*(?P<value>\S+)\s*$", re.IGNORECASE)
_META_BARE = re.compile(r"(?<![\w(])(?P<key>weight|due):[ \t]*(?P<value>\d[^\s,;()]*?)(?:[.,;]?(?=\s|$))",
                        re.IGNORECASE)


def normalise(text: str) -> str:
    """Task text as identity sees it: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _item_metadata(text: str, path: str, line: int) -> tuple[str, dict[str, str]]:
    """Split `(weight: 3, due: 2026-12-01)` groups and bare `weight: 3` / `due: 2026-12-01` tokens off
    an item's text; returns the remaining title and the values as written."""
    found: dict[str, str] = {}

    def take(key: str, value: str) -> None:
        key = key.lower()
        if key in found:
            raise TaskFileError(path, f"{key} is given twice", line=line)
        found[key] = value

    def group(match: re.Match[str]) -> str:
        for part in re.split(r"[,;]", match["body"]):
            pair = _META_PAIR.fullmatch(part)
            if pair is None:
                raise TaskFileError(path, f"cannot read {_shown(match[0])}: write (weight: 3, "
                                          "due: 2026-12-01)", line=line)
            take(pair["key"], pair["value"])
        return " "

    def bare(match: re.Match[str]) -> str:
        take(match["key"], match["value"])
        return " "

    title = _META_BARE.sub(bare, _META_GROUP.sub(group, text))
    return " ".join(title.split()), found


def _markdown_task(path: str, line: int, text: str, done: bool, ancestors: list[str]) -> Task:
    title, meta = _item_metadata(text, path, line)
    if not title:
        raise TaskFileError(path, "a task needs a title besides its weight and due date", line=line)
    weight = _number(meta.get("weight", "1"))
    if not valid_weight(weight):
        raise TaskFileError(path, f"weight {WEIGHT_RULE}, got {_shown(meta['weight'])}", line=line)
    due = meta.get("due")
    try:
        deadline = parse_due(due) if due is not None else None
    except ValueError as error:
        raise TaskFileError(path, f"due {error}", line=line) from None
    key = path + "#" + " > ".join([*ancestors, normalise(title)])
    return Task(key, title, "done" if done else "todo", path, line, weight, due, deadline)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_markdown(text: str, path: str, max_tasks: int = DEFAULT_MAX_TASKS_PER_FILE) -> list[Task]:
    """Every checkbox item outside fenced code is a task; nesting (by indentation) only shapes identity."""
    tasks: list[Task] = []
    keys: dict[str, int] = {}
    stack: list[tuple[int, str]] = []   # open list items: (indent, normalised text)
    fence: str | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r").expandtabs(4)
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening["fence"][0] == fence[0] and len(opening["fence"]) >= len(fence) \
                    and not opening["rest"].strip():
                fence = None
            continue
        if opening:
            fence = opening["fence"]
            continue
        checkbox = _CHECKBOX.match(line)
        item = checkbox or _LIST_ITEM.match(line)
        if item is None:
            if line.strip() and not line[0].isspace():
                stack.clear()   # a heading or paragraph ends every open list
            continue
        indent = len(item["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        ancestors = [parent for _, parent in stack]
        if checkbox:
            if len(tasks) == max_tasks:
                raise TaskFileError(path, f"more than {max_tasks} tasks (max_tasks_per_file)", line=number)
            task = _markdown_task(path, number, item["text"], item["mark"] != " ", ancestors)
            seen = keys[task.key] = keys.get(task.key, 0) + 1
            if seen > 1:   # the same text under the same parents: tell them apart by order
                task = dataclasses.replace(task, key=f"{task.key} #{seen}")
            tasks.append(task)
            stack.append((indent, normalise(task.title)))
        else:
            stack.append((indent, normalise(item["text"])))
    return tasks


# --- JSON ----------------------------------------------------------------------------------------

def parse_json(text: str, path: str, max_tasks: int = DEFAULT_MAX_TASKS_PER_FILE) -> list[Task]:
    """A list of task objects, or an object whose `tasks` is that list (other top-level keys ignored)."""
    try:
        document = loads(text)
    except json.JSONDecodeError as error:
        raise TaskFileError(path, f"invalid JSON: {error.msg}", line=error.lineno,
                            column=error.colno) from None
    except ValueError as error:
        raise TaskFileError(path, f"invalid JSON: {error}") from None
    entries = document.get("tasks") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise TaskFileError(path, 'expected a list of tasks, or an object whose "tasks" is that list',
                            line=text.count("\n", 0, len(text) - len(text.lstrip())) + 1)
    tasks: list[Task] = []
    ids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"tasks[{index}]"
        try:
            if index == max_tasks:
                raise _FieldError(where, f"more than {max_tasks} tasks (max_tasks_per_file)")
            task = _json_task(entry, where, path)
            if task.key in ids:
                raise _FieldError(f"{where}.id", f"{_shown(entry['id'])} is also the id of "
                                                 f"tasks[{ids[task.key]}]")
        except _FieldError as error:
            raise TaskFileError(path, error.reason, field=error.field,
                                line=_line_of_entry(text, index)) from None
        ids[task.key] = index
        tasks.append(task)
    return tasks


class _FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason


def _json_task(entry: Any, where: str, path: str) -> Task:
    if not isinstance(entry, dict):
        raise _FieldError(where, f"must be an object with id, title and status, got {_shown(entry)}")

    def required(name: str, valid: Callable[[Any], bool], rule: str) -> Any:
        if name not in entry:
            raise _FieldError(f"{where}.{name}", "is required")
        if not valid(entry[name]):
            raise _FieldError(f"{where}.{name}", f"{rule}, got {_shown(entry[name])}")
        return entry[name]

    def text(value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    task_id = required("id", text, "must be a non-empty string")
    title = required("title", text, "must be a non-empty string")
    status = required("status", STATUSES.__contains__, "must be one of " + ", ".join(STATUSES))
    weight, due, deadline = entry.get("weight"), entry.get("due"), None
    if weight is None:
        weight = 1.0
    elif not valid_weight(weight):
        raise _FieldError(f"{where}.weight", f"{WEIGHT_RULE}, got {_shown(weight)}")
    if due is not None:
        try:
            deadline = parse_due(due)
        except ValueError as error:
            raise _FieldError(f"{where}.due", str(error)) from None
    return Task(f"{path}#{task_id}", " ".join(title.split()), status, path, None, float(weight), due,
                deadline)


def _line_of_entry(text: str, index: int) -> int | None:
    """The line where task `index` starts. Only on the error path: re-parse with the pure-Python
    scanner, whose array parser we wrap to note where each element starts."""
    starts: dict[int, list[int]] = {}

    def parse_array(s_and_end: tuple[str, int], scan_once: Any) -> tuple[list[Any], int]:
        positions: list[int] = []

        def element(string: str, position: int) -> Any:
            positions.append(position)
            return scan_once(string, position)
        values, end = json.decoder.JSONArray(s_and_end, element)
        starts[id(values)] = positions
        return values, end

    decoder = json.JSONDecoder()
    decoder.parse_array = parse_array
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        parsed = decoder.decode(text)
    except (ValueError, RecursionError):
        return None
    entries = parsed.get("tasks") if isinstance(parsed, dict) else parsed
    return text.count("\n", 0, starts[id(entries)][index]) + 1


# --- which files -------------------------------------------------------------------------------

def _segment_regex(segment: str) -> str:
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        close = segment.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif close != -1:
            body = segment[i + 1:close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


class TaskGlobs:
    """Globs relative to the project root, `/`-separated: `*` and `?` stay within one path segment,
    `**` (a whole segment) matches any number of segments, `[abc]` a character class."""

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs = tuple(globs)
        if not self.globs:
            raise ValueError("at least one task glob is needed")
        regexes = []
        self._directories: list[tuple[str, bool]] = []   # (literal leading directories, deeper?)
        for glob in self.globs:
            segments = glob.removeprefix("./").split("/")
            if glob.startswith("/") or any(s in ("", ".", "..") for s in segments):
                raise ValueError(f"task glob {glob!r} must be relative to the project root, without "
                                 "'.', '..' or empty segments")
            regex = ""
            for index, segment in enumerate(segments):
                last = index == len(segments) - 1
                if segment == "**":
                    regex += "(?:[^/]+/)*[^/]+" if last else "(?:[^/]+/)*"
                else:
                    regex += _segment_regex(segment) + ("" if last else "/")
            regexes.append(regex)
            literal = list(itertools.takewhile(lambda s: not _WILD.search(s), segments[:-1]))
            deep = len(literal) < len(segments) - 1 or segments[-1] == "**"
            self._directories.append(("/".join(literal), deep))
        self._regex = re.compile("|".join(f"(?:{r})" for r in regexes))

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None

    def may_hold(self, directory: str) -> bool:
        """Whether a match may lie under `directory` ("" = the root); may answer yes wrongly, never no."""
        if not NEVER_SEARCHED.isdisjoint(directory.split("/")):
            return False
        for literal, deep in self._directories:
            if not directory or directory == literal or literal.startswith(directory + "/"):
                return True
            if deep and (not literal or directory.startswith(literal + "/")):
                return True
        return False


# --- the task sources of one project ---------------------------------------------------------------

@dataclass
class TaskFile:
    """What one file holds: the tasks of its last valid read, and the error of the latest read if any
    (a file that turns invalid keeps counting what it last held, so an edit in progress moves nothing)."""

    tasks: tuple[Task, ...] = ()
    error: TaskFileError | None = None


@dataclass
class Update:
    """The outcome of `collect`: files read (tasks or the error) and files gone."""

    read: dict[str, list[Task] | TaskFileError] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)


class TaskSources:
    def __init__(self, root: Path, globs: Iterable[str] = DEFAULT_TASK_GLOBS, *,
                 max_files: int = DEFAULT_MAX_TASK_FILES, max_tasks: int = DEFAULT_MAX_TASKS_PER_FILE,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = Path(root)
        self.globs = TaskGlobs(globs)
        self.max_files, self.max_tasks, self.max_bytes = max_files, max_tasks, max_bytes
        self.files: dict[str, TaskFile] = {}
        self._over_limit_logged = False

    # on the loop

    def relative(self, raw: Any) -> str | None:
        """A watcher's path (relative to the root or absolute inside it) as a clean relative path."""
        if not isinstance(raw, str) or not raw:
            return None
        path = raw.replace("\\", "/")
        if os.path.isabs(path):
            try:
                path = Path(path).relative_to(self.root).as_posix()
            except ValueError:
                return None
        path = posixpath.normpath(path)
        return None if path in (".", "") or path.startswith("../") or path == ".." else path

    def affected(self, data: Mapping[str, Any]) -> set[str]:
        """Paths of a `file_change` event's data that may change what the task files hold."""
        appearing = data.get("change_type") in ("created", "moved")
        found = set()
        for name in ("file_path", "old_path"):
            path = self.relative(data.get(name))
            if path is None:
                continue
            if (self.globs.matches(path) or any(k.startswith(path + "/") for k in self.files)
                    or (appearing and name == "file_path" and self.globs.may_hold(path))):
                found.add(path)
        return found

    def apply(self, update: Update) -> None:
        for path in update.gone:
            self.files.pop(path, None)
        for path, result in sorted(update.read.items()):
            if path not in self.files and len(self.files) >= self.max_files:
                self._too_many(path)
                continue
            previous = self.files.get(path, TaskFile())
            if isinstance(result, TaskFileError):
                self.files[path] = TaskFile(previous.tasks, result)
            else:
                self.files[path] = TaskFile(tuple(result))

    def _too_many(self, path: str) -> None:
        if not self._over_limit_logged:   # once: a tree with too many matches would log on every change
            log.warning("%s: more than %d task files match %s; %s is ignored, and so are the files after "
                        "it (max_task_files)", self.root, self.max_files, ", ".join(self.globs.globs), path)
            self._over_limit_logged = True

    def tasks(self) -> list[Task]:
        return [task for path in sorted(self.files) for task in self.files[path].tasks]

    def errors(self) -> dict[str, TaskFileError]:
        return {path: f.error for path, f in sorted(self.files.items()) if f.error is not None}

    # anywhere (reads only its arguments and settings)

    def collect(self, targets: Iterable[str] | None, known: Iterable[str]) -> Update:
        """Read the task files: all of them (`targets` None), or those at or under the given paths.
        `known` is the files held now, so files that vanished are reported gone."""
        known = set(known)
        update = Update()
        if targets is None:
            found = self.find("")
            if len(found) > self.max_files:
                self._too_many(found[self.max_files])
                found = found[:self.max_files]
            update.gone = known - set(found)
        else:
            found = set()
            for target in targets:
                here = self.find(target) if (self.root / target).is_dir() else (
                    [target] if self.globs.matches(target) else [])
                update.gone |= {k for k in known if k == target or k.startswith(target + "/")} - set(here)
                found.update(here)
        for path in sorted(found):
            result = self.read(path)
            if result is None:
                update.gone.add(path)
            else:
                update.read[path] = result
        return update

    def find(self, under: str) -> list[str]:
        """Matching regular files under a directory ("" = the root), sorted. Never descends into
        `.git` or follows links to directories."""
        if not self.globs.may_hold(under):
            return []
        matches = []
        for directory, subdirs, files in os.walk(self.root / under):
            relative_dir = Path(directory).relative_to(self.root).as_posix()
            prefix = "" if relative_dir == "." else relative_dir + "/"
            subdirs[:] = sorted(d for d in subdirs if self.globs.may_hold(prefix + d))
            matches += [prefix + name for name in files if self.globs.matches(prefix + name)
                        and os.path.isfile(os.path.join(directory, name))]
        return sorted(matches)

    def read(self, path: str) -> list[Task] | TaskFileError | None:
        """One file's tasks, or why it cannot be read, or None when it is not (or no longer) a file."""
        full = self.root / path
        try:
            if not full.is_file():
                return None
            with open(full, "rb") as stream:
                raw = stream.read(self.max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            return TaskFileError(path, f"cannot read: {error.strerror or error}")
        if len(raw) > self.max_bytes:
            return TaskFileError(path, f"larger than {self.max_bytes} bytes (max_file_bytes)")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return TaskFileError(path, "not valid UTF-8", line=raw.count(b"\n", 0, error.start) + 1)
        parse = parse_json if path.endswith(".json") else parse_markdown
        try:
            return parse(text, path, self.max_tasks)
        except TaskFileError as error:
            return error

