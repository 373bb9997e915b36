"""Task sources: Markdown checklists, the JSON task file, their errors, globs and weighted progress."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

import pytest

from autopm_realtime.sources.tasks import (Task, TaskFile, TaskFileError, TaskGlobs, TaskSources,
                                           measure, parse_due, parse_json, parse_markdown)


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=timezone.utc).timestamp()


def summary(tasks: list[Task]) -> list[tuple[str, str, float]]:
    return [(t.title, t.status, t.weight) for t in tasks]


# --- Markdown ------------------------------------------------------------------------------------

def test_every_bullet_style_and_mark_is_a_task():
    text = "\n".join(["- [ ] dash", "* [x] star", "+ [X] plus", "1. [ ] dot", "2) [x] paren",
                      "10. [ ] ten"])
    assert summary(parse_markdown(text, "TODO.md")) == [
        ("dash", "todo", 1.0), ("star", "done", 1.0), ("plus", "done", 1.0), ("dot", "todo", 1.0),
        ("paren", "done", 1.0), ("ten", "todo", 1.0)]


def test_what_is_not_a_task():
    text = "\n".join(["- [ ]", "- [y] other mark", "-[ ] no space", "- [ ]no space after",
                      "[ ] no bullet", "- plain item", "text - [ ] inline", "> - [ ] quoted"])
    assert parse_markdown(text, "TODO.md") == []


def test_checkboxes_inside_fenced_code_are_ignored():
    text = "\n".join([
        "- [ ] before",
        "```markdown", "- [ ] in backticks", "~~~", "- [ ] still in backticks", "```",
        "  ~~~~", "  - [x] in an indented tilde fence", "  ~~~", "  - [x] shorter fence does not close",
        "  ~~~~~", "- [x] after"])
    assert summary(parse_markdown(text, "TODO.md")) == [("before", "todo", 1.0), ("after", "done", 1.0)]


def test_nested_items_are_tasks_each_and_identity_follows_the_parents():
    text = "\n".join([
        "- [ ] Release",
        "  - [x] Build",
        "    - [ ] Sign",
        "\t- [ ] Tag (a tab is four columns)",
        "- Backend",
        "  - [ ] Tests",
        "- Frontend",
        "  1. [x] Tests",
        "  2. [ ]   tests  ",
        "# Later",
        "  - [ ] Tests",
    ])
    tasks = parse_markdown(text, "TODO.md")
    assert [(t.key, t.line) for t in tasks] == [
        ("TODO.md#release", 1),
        ("TODO.md#release > build", 2),
        ("TODO.md#release > build > sign", 3),
        ("TODO.md#release > build > tag (a tab is four columns)", 4),
        ("TODO.md#backend > tests", 6),
        ("TODO.md#frontend > tests", 8),
        ("TODO.md#frontend > tests #2", 9),      # same text, same parents: told apart by order
        ("TODO.md#tests", 11),                   # a heading ends the lists above it
    ]
    assert (measure(tasks).completed, measure(tasks).total) == (2, 8)   # each checkbox counts once


def test_weights_and_due_dates_in_markdown():
    text = "\n".join([
        "- [ ] Write docs (weight: 3, due: 2026-12-01)",
        "- [x] Ship it weight: 2.5.",
        "- [ ] Review due: 2026-12-01T17:30:00Z, with the team",
        "- [ ] Plan (Due: 2026-12-01T10:00+02:00; Weight: 0.5)",
        "- [ ] Fix weight: the scale shows kilograms",
    ])
    tasks = parse_markdown(text, "TODO.md")
    assert [(t.title, t.weight, t.due, t.deadline) for t in tasks] == [
        ("Write docs", 3.0, "2026-12-01", utc(2026, 12, 2)),
        ("Ship it", 2.5, None, None),
        ("Review with the team", 1.0, "2026-12-01T17:30:00Z", utc(2026, 12, 1, 17, 30)),
        ("Plan", 0.5, "2026-12-01T10:00+02:00", utc(2026, 12, 1, 8)),
        ("Fix weight: the scale shows kilograms", 1.0, None, None),   # not a number: just text
    ]
    assert tasks[0].key == "TODO.md#write docs"   # the metadata is not part of the identity


@pytest.mark.parametrize("line, message", [
    ("- [ ] a (weight: x)", "TODO.md:3: weight must be a positive number up to 1000000, got 'x'"),
    ("- [ ] a weight: 0", "TODO.md:3: weight must be a positive number up to 1000000, got '0'"),
    ("- [ ] a (weight: 2000000)",
     "TODO.md:3: weight must be a positive number up to 1000000, got '2000000'"),
    ("- [ ] a due: 2026-13-01", "TODO.md:3: due must be an ISO date (2026-12-01) or date and time "
                                "(2026-12-01T17:00:00Z), got '2026-13-01'"),
    ("- [ ] a (due: soon)", "TODO.md:3: due must be an ISO date (2026-12-01) or date and time "
                            "(2026-12-01T17:00:00Z), got 'soon'"),
    ("- [ ] a (weight: 2, due 3)", "TODO.md:3: cannot read '(weight: 2, due 3)': write (weight: 3, "
                                   "due: 2026-12-01)"),
    ("- [ ] a weight: 2 (weight: 3)", "TODO.md:3: weight is given twice"),
    ("- [x] (weight: 2)", "TODO.md:3: a task needs a title besides its weight and due date"),
])
def test_markdown_errors_name_the_file_and_line(line, message):
    with pytest.raises(TaskFileError) as raised:
        parse_markdown(f"# Tasks\n\n{line}\n- [ ] fine", "TODO.md")
    assert str(raised.value) == message
    assert (raised.value.path, raised.value.line) == ("TODO.md", 3)


def test_markdown_task_limit():
    assert len(parse_markdown("- [ ] a\n- [ ] b", "T.md", max_tasks=2)) == 2
    with pytest.raises(TaskFileError, match=r"^T\.md:3: more than 2 tasks \(max_tasks_per_file\)$"):
        parse_markdown("- [ ] a\n- [ ] b\n- [ ] c", "T.md", max_tasks=2)


# --- JSON ----------------------------------------------------------------------------------------

def test_json_tasks_as_a_list_or_under_tasks():
    entries = [{"id": "a", "title": "A", "status": "todo"},
               {"id": "b", "title": "  B   two ", "status": "in_progress", "weight": 2},
               {"id": "c", "title": "C", "status": "done", "weight": 0.5, "due": "2026-12-01",
                "assignee": "ann"},
               {"id": "d", "title": "D", "status": "todo", "weight": None, "due": None}]
    as_list = parse_json(json.dumps(entries), ".autopm/tasks.json")
    as_object = parse_json(json.dumps({"version": 1, "tasks": entries}), ".autopm/tasks.json")
    assert as_list == as_object
    assert [(t.key, t.title, t.status, t.weight, t.due) for t in as_list] == [
        (".autopm/tasks.json#a", "A", "todo", 1.0, None),
        (".autopm/tasks.json#b", "B two", "in_progress", 2.0, None),
        (".autopm/tasks.json#c", "C", "done", 0.5, "2026-12-01"),
        (".autopm/tasks.json#d", "D", "todo", 1.0, None),
    ]
    assert [t.done for t in as_list] == [False, False, True, False]


def _task_lines(*entries: str) -> str:
    return '{"tasks": [\n  ' + ",\n  ".join(entries) + "\n]}\n"


GOOD = '{"id": "ok", "title": "Fine", "status": "done"}'


@pytest.mark.parametrize("entry, message", [
    ('{"title": "A", "status": "todo"}', "t.json:3: tasks[1].id: is required"),
    ('{"id": 7, "title": "A", "status": "todo"}', "t.json:3: tasks[1].id: must be a non-empty string, got 7"),
    ('{"id": "a", "title": " ", "status": "todo"}',
     "t.json:3: tasks[1].title: must be a non-empty string, got ' '"),
    ('{"id": "a", "title": "A"}', "t.json:3: tasks[1].status: is required"),
    ('{"id": "a", "title": "A", "status": "finished"}',
     "t.json:3: tasks[1].status: must be one of todo, in_progress, done, got 'finished'"),
    ('{"id": "a", "title": "A", "status": "todo", "weight": 0}',
     "t.json:3: tasks[1].weight: must be a positive number up to 1000000, got 0"),
    ('{"id": "a", "title": "A", "status": "todo", "weight": true}',
     "t.json:3: tasks[1].weight: must be a positive number up to 1000000, got True"),
    ('{"id": "a", "title": "A", "status": "todo", "weight": "3"}',
     "t.json:3: tasks[1].weight: must be a positive number up to 1000000, got '3'"),
    ('{"id": "a", "title": "A", "status": "todo", "due": "next week"}',
     "t.json:3: tasks[1].due: must be an ISO date (2026-12-01) or date and time (2026-12-01T17:00:00Z), "
     "got 'next week'"),
    ('{"id": "a", "title": "A", "status": "todo", "due": 20261201}',
     "t.json:3: tasks[1].due: must be an ISO date (2026-12-01) or date and time (2026-12-01T17:00:00Z), "
     "got 20261201"),
    ('"just a title"',
     "t.json:3: tasks[1]: must be an object with id, title and status, got 'just a title'"),
    ('{"id": "ok", "title": "Again", "status": "todo"}',
     "t.json:3: tasks[1].id: 'ok' is also the id of tasks[0]"),
])
def test_json_schema_errors_name_the_file_line_index_and_field(entry, message):
    with pytest.raises(TaskFileError) as raised:
        parse_json(_task_lines(GOOD, entry), "t.json")
    assert str(raised.value) == message


@pytest.mark.parametrize("text, line", [
    ('{"tasks": [\n  {"id": "a",}\n]}', 2),
    ('[\n  {"id": "a"}\n  {"id": "b"}\n]', 3),
    ("", 1),
])
def test_json_syntax_errors_name_the_file_line_and_column(text, line):
    """We promise `file:line:column: invalid JSON: <reason>`; the reason and the exact column are the
    interpreter's (CPython 3.13 reworded several and moved the trailing-comma column by one)."""
    with pytest.raises(TaskFileError) as raised:
        parse_json(text, "t.json")
    match = re.fullmatch(r"t\.json:(\d+):(\d+): invalid JSON: \S.*", str(raised.value))
    assert match, str(raised.value)
    assert int(match[1]) == line
    assert 1 <= int(match[2]) <= len(text.split("\n")[line - 1]) + 1


@pytest.mark.parametrize("text, message", [
    ('[{"id": "a", "title": "A", "status": "todo", "weight": NaN}]',
     "t.json: invalid JSON: NaN is not valid JSON"),
    ('\n{"task": []}', 't.json:2: expected a list of tasks, or an object whose "tasks" is that list'),
    ('{"tasks": {"a": {}}}', 't.json:1: expected a list of tasks, or an object whose "tasks" is that list'),
])
def test_json_constant_and_shape_errors(text, message):
    with pytest.raises(TaskFileError) as raised:
        parse_json(text, "t.json")
    assert str(raised.value) == message


def test_json_task_limit():
    entries = json.dumps([{"id": str(i), "title": "T", "status": "todo"} for i in range(3)], indent=1)
    with pytest.raises(TaskFileError, match=r"^t\.json:12: tasks\[2\]: more than 2 tasks"):
        parse_json(entries, "t.json", max_tasks=2)


def test_due_dates():
    assert parse_due("2026-12-01") == utc(2026, 12, 2)                # the end of that day, UTC
    assert parse_due("2026-12-01T10:00:00") == utc(2026, 12, 1, 10)   # no offset: UTC
    assert parse_due("2026-12-01 10:00Z") == utc(2026, 12, 1, 10)
    for bad in ("2026-12", "20261201", "2026-02-30", "tomorrow", "2026-12-01T25:00"):
        with pytest.raises(ValueError):
            parse_due(bad)
    task = Task("k", "t", "todo", "f", None, deadline=100.0)
    assert not task.overdue(99.9) and task.overdue(100.0)
    assert not Task("k", "t", "done", "f", None, deadline=100.0).overdue(200.0)


# --- progress ------------------------------------------------------------------------------------

def tasks_with(*pairs: tuple[float, bool]) -> list[Task]:
    return [Task(str(i), "t", "done" if done else "todo", "f", None, weight)
            for i, (weight, done) in enumerate(pairs)]


@pytest.mark.parametrize("pairs, expected", [
    ((), (0.0, 0, 0)),
    (((1, False),), (0.0, 0, 1)),
    (((1, True), (1, False), (1, False)), (33.3, 1, 3)),
    (((1, True), (1, True), (1, False)), (66.7, 2, 3)),
    (((3, True), (1, False)), (75.0, 1, 2)),             # weighted: 3 of 4
    (((1, True), (3, False)), (25.0, 1, 2)),
    (((1, True), (399, False)), (0.3, 1, 2)),            # 0.25 rounds half up (round() would say 0.2)
    (((0.5, True), (0.25, True), (0.25, False)), (75.0, 2, 3)),
    (((2499, True), (1, False)), (99.9, 1, 2)),          # 99.96 is not 100 while a task is open
    (((1, True), (2, True)), (100.0, 2, 2)),
])
def test_weighted_progress_and_rounding(pairs, expected):
    progress = measure(tasks_with(*pairs))
    assert (progress.percentage, progress.completed, progress.total) == expected


# --- which files ---------------------------------------------------------------------------------

def test_globs():
    globs = TaskGlobs(["TODO.md", "docs/*.md", "**/TASKS.md", "plan/**", "notes/task[0-9].md"])
    for path in ("TODO.md", "docs/a.md", "TASKS.md", "x/y/TASKS.md", "plan/a/b.txt", "notes/task1.md"):
        assert globs.matches(path), path
    for path in ("sub/TODO.md", "docs/a/b.md", "xTASKS.md", "plan", "notes/taskx.md", "todo.md"):
        assert not globs.matches(path), path
    root_only = TaskGlobs(["TODO.md", ".autopm/tasks.json"])
    assert [root_only.may_hold(d) for d in ("", ".autopm", "src", "src/.autopm")] == \
        [True, True, False, False]
    assert TaskGlobs(["**/TODO.md"]).may_hold("a/b") and not TaskGlobs(["**/TODO.md"]).may_hold("a/.git")
    for bad in ("/etc/TODO.md", "../TODO.md", "a//b.md", "a/./b.md"):
        with pytest.raises(ValueError, match="relative to the project root"):
            TaskGlobs([bad])


def test_finding_and_reading_files(tmp_path, caplog):
    (tmp_path / "TODO.md").write_text("- [x] a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "TODO.md").write_text("- [ ] deeper\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "TODO.md").write_text("- [ ] never\n")
    (tmp_path / "TASKS.md").mkdir()                                # a directory is not a task file
    assert TaskSources(tmp_path).find("") == ["TODO.md"]           # the defaults: the root only
    everywhere = TaskSources(tmp_path, ["**/TODO.md"], max_files=5)
    assert everywhere.find("") == ["TODO.md", "sub/TODO.md"]
    limited = TaskSources(tmp_path, ["**/TODO.md"], max_files=1)
    with caplog.at_level(logging.WARNING, logger="autopm_realtime.sources.tasks"):
        assert list(limited.collect(None, known=()).read) == ["TODO.md"]
        limited.collect(None, known=())
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: more than 1 task files match **/TODO.md; sub/TODO.md is ignored, and so are the "
        "files after it (max_task_files)"]

    update = everywhere.collect(None, known={"gone.md"})
    assert update.gone == {"gone.md"} and sorted(update.read) == ["TODO.md", "sub/TODO.md"]
    everywhere.apply(update)
    assert [t.title for t in everywhere.tasks()] == ["a", "deeper"]

    (tmp_path / "sub" / "TODO.md").unlink()
    everywhere.apply(everywhere.collect({"sub"}, known=everywhere.files))   # the directory changed
    assert [t.title for t in everywhere.tasks()] == ["a"]


def test_a_file_that_turns_invalid_keeps_its_last_tasks(tmp_path):
    sources = TaskSources(tmp_path)
    (tmp_path / "TODO.md").write_text("- [x] a\n- [ ] b\n")
    sources.apply(sources.collect(None, known=()))
    (tmp_path / "TODO.md").write_text("- [x] a\n- [ ] b (weight: -1)\n")
    sources.apply(sources.collect({"TODO.md"}, known=sources.files))
    assert [t.title for t in sources.tasks()] == ["a", "b"]
    assert {p: str(e) for p, e in sources.errors().items()} == {
        "TODO.md": "TODO.md:2: weight must be a positive number up to 1000000, got '-1'"}


def test_unreadable_files(tmp_path):
    sources = TaskSources(tmp_path, ["*.md", "*.json"], max_bytes=20)
    (tmp_path / "big.md").write_text("- [ ] 0123456789 0123456789")
    (tmp_path / "bad.md").write_bytes(b"- [ ] a\n- [ ] \xff\n")
    (tmp_path / "ok.json").write_text("[]")
    update = sources.collect(None, known=())
    assert {path: str(result) for path, result in update.read.items()} == {
        "bad.md": "bad.md:2: not valid UTF-8",
        "big.md": "big.md: larger than 20 bytes (max_file_bytes)",
        "ok.json": "[]",
    }
    assert sources.read("missing.md") is None


def test_event_paths(tmp_path):
    sources = TaskSources(tmp_path)
    sources.files["TODO.md"] = sources.files[".autopm/tasks.json"] = TaskFile()   # known files
    assert sources.relative(str(tmp_path / "TODO.md")) == "TODO.md"
    assert sources.relative("./a/../TODO.md") == "TODO.md"
    assert sources.relative("/elsewhere/TODO.md") is None
    assert sources.relative("../TODO.md") is None
    changed = [
        ({"file_path": "TODO.md", "change_type": "modified"}, {"TODO.md"}),
        ({"file_path": "src/main.py", "change_type": "modified"}, set()),
        ({"file_path": "sub/TODO.md", "change_type": "created"}, set()),
        ({"file_path": ".autopm", "change_type": "deleted"}, {".autopm"}),       # holds a known file
        ({"file_path": ".autopm", "change_type": "created"}, {".autopm"}),       # may hold one
        ({"file_path": "DONE.md", "change_type": "moved", "old_path": "TODO.md"}, {"TODO.md"}),
        ({"file_path": "TODO.md", "change_type": "moved", "old_path": "draft.md"}, {"TODO.md"}),
    ]
    for data, expected in changed:
        assert sources.affected(data) == expected, data
