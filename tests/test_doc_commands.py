"""Every shell command the docs show works: the ones that can run offline are run, the others have every
flag checked against the real program's `--help`, so the docs cannot drift from the command line again.

Commands are read from README.md, docs/, bench/README.md and CHANGELOG.md: each line of a ```bash block,
each `$ ` line (and line starting with a known program) of other blocks, and each inline `code span` that
starts with a known program. A program this test does not know how to check fails it: teach it here.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from support import ROOT, environment

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
             ROOT / "CHANGELOG.md"]
OURS = ("python", "python3", "autopm-realtime", "pip", "bash", "npm")
# Programs that are not ours: the docs may show them, and their flags are theirs to keep.
THEIRS = ("git", "jupyter", "apt-get", "redis-server", "redis-cli", "curl", "open")
SEPARATORS = {"&&", "||", ";", "&"}   # not "|": the docs write alternatives as `enable|disable`
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PROMPT = re.compile(r"^\s*[\w.-]*\$ ")
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FLAG = re.compile(r"^--[\w-]+")
SECRETS = {"AUTOPM_SECRET": "a-secret-of-at-least-32-bytes-for-hs256", "SECRET": "another-secret-of-32-bytes-or-more"}


@dataclass(frozen=True)
class Command:
    where: str          # file:line
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def split_commands(text: str, where: str) -> list[Command]:
    """The simple commands of one shell line: words split on `&&`, `||`, `;` and `&`, comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [Command(where, tuple(argv)) for argv in commands if argv]


def is_program(line: str) -> bool:
    return line.split(maxsplit=1)[0] in (*OURS, *THEIRS) if line.strip() else False


def shell_lines(document: Path) -> list[tuple[str, int, bool]]:
    """(line, line number, from a bash block) for each command line, continuations joined."""
    text = document.read_text()
    found: list[tuple[str, int, bool]] = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(2)) + 1
        is_shell = block[1] in ("bash", "sh", "shell")
        pending = ""
        for offset, raw in enumerate(block[2].splitlines()):
            line = pending + raw
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            prompt = PROMPT.match(line)
            line = line[prompt.end():] if prompt else line.strip()
            if is_shell and line and not line.startswith("#") or (prompt or not is_shell) and is_program(line):
                found.append((line, first + offset, is_shell))
    prose = FENCE.sub(lambda block: "\n" * block[0].count("\n"), text)
    for span in SPAN.finditer(prose):
        if is_program(span[1]) and " " in span[1]:
            found.append((span[1], prose.count("\n", 0, span.start()) + 1, False))
    return found


def documented_commands() -> list[Command]:
    commands = []
    for document in DOCUMENTS:
        for line, number, _ in shell_lines(document):
            commands += split_commands(line, f"{document.relative_to(ROOT)}:{number}")
    return commands


@functools.cache
def help_text(*program: str) -> str:
    result = subprocess.run([*program, "--help"], cwd=ROOT, env=environment(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{shlex.join(program)} --help failed: {result.stderr[-500:]}"
    return result.stdout


def subcommands(help_output: str) -> set[str]:
    """The `{a,b,c}` choices argparse lists in a usage line."""
    match = re.search(r"\{([\w,-]+)\}", help_output)
    return set(match[1].split(",")) if match else set()


def check_our_program(base: tuple[str, ...], args: tuple[str, ...]) -> None:
    """Every flag and every positional word naming a subcommand or a choice appears in the real help."""
    program = base
    if args and not args[0].startswith("-") and args[0] in subcommands(help_text(*base)):
        program = (*base, args[0])
    documented = help_text(*program)
    for arg in args[len(program) - len(base):]:
        flag = FLAG.match(arg)
        if flag:
            assert re.search(rf"(?<![\w-]){re.escape(flag[0])}(?![\w-])", documented), \
                f"{shlex.join(program)} has no {flag[0]} (its --help does not list it)"


def run_token_command(argv: tuple[str, ...], tmp_path: Path) -> None:
    """`token` works offline: run it as documented, with its secret or key file made up here."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    expanded = [re.sub(r"\$(\w+)", lambda variable: SECRETS[variable[1]], arg) for arg in argv]
    result = subprocess.run(expanded, cwd=tmp_path, env=environment(**SECRETS), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+\n", result.stdout), result.stdout


def check_pip(args: tuple[str, ...]) -> None:
    """`pip install` of this project names only extras setup.py declares."""
    assert args[:1] == ("install",), f"pip {shlex.join(args)}: only `pip install` is documented"
    extras = set(metadata.metadata("autopm-realtime").get_all("Provides-Extra") or [])
    for requirement in args[1:]:
        ours = re.fullmatch(r"(?:\.|autopm-realtime)(?:\[([\w,-]+)\])?", requirement)
        if ours and ours[1]:
            assert set(ours[1].split(",")) <= extras, f"setup.py has no extra among {ours[1]} ({extras})"


def check(command: Command, tmp_path: Path) -> None:
    program, *rest = command.argv
    args = tuple(rest)
    if program in THEIRS:
        return
    if program == "autopm-realtime":
        program, args = "python", ("-m", "autopm_realtime", *args)
    if program in ("python", "python3") and args[:2] == ("-m", "autopm_realtime"):
        if args[2:3] == ("token",):
            return run_token_command((sys.executable, *args), tmp_path)
        return check_our_program((sys.executable, "-m", "autopm_realtime"), args[2:])
    if program in ("python", "python3") and args[:1] == ("-m",) and args[1] in ("jupyter_ext", "pytest"):
        return check_our_program((sys.executable, "-m", args[1]), args[2:])
    if program in ("python", "python3") and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
        return check_our_program((sys.executable, str(ROOT / args[0])), args[1:])
    if program == "pip":
        return check_pip(args)
    if program == "bash":
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
        return None
    if program == "npm":
        prefix = args[args.index("--prefix") + 1]
        assert args[0] == "ci" and (ROOT / prefix / "package-lock.json").is_file(), command
        return None
    raise AssertionError(f"this test does not know how to check {program!r}: teach tests/test_doc_commands.py")


COMMANDS = documented_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_the_documented_command_works(command, tmp_path):
    check(command, tmp_path)


def test_the_commands_are_found_in_every_kind_of_place():
    """The reader must find the commands, or the test above would pass on nothing."""
    found = {" ".join(command.argv) for command in COMMANDS}
    assert "pip install -e .[test]" in found and "python -m pytest" in found   # README command 2
    assert any(c.argv[:4] == ("python", "-m", "autopm_realtime", "token") for c in COMMANDS)   # a block
    assert any(c.where.startswith("docs/") for c in COMMANDS)
    assert any(c.where.startswith("bench/") for c in COMMANDS)
    assert len(COMMANDS) >= 40, len(COMMANDS)


@pytest.mark.parametrize("line, complaint", [
    ("python -m autopm_realtime tail --no-such-flag", "has no --no-such-flag"),
    ("python -m autopm_realtime --no-such-flag 1", "has no --no-such-flag"),
    ("python bench/compare.py --no-such-flag", "has no --no-such-flag"),
    ("pip install -e '.[no-such-extra]'", "no extra"),
    ("python -m autopm_realtime token --secret s --no-such-flag", "unrecognized arguments"),
    ("frobnicate --now", "does not know how to check"),
])
def test_a_command_that_drifted_from_the_program_fails(line, complaint, tmp_path):
    [command] = split_commands(line, "example:1")
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check(command, tmp_path)
