"""Shadow snapshot against its peer: how long auto-commit takes to record a working tree with 100 changed
files out of 5,000, next to `git add -A && git commit` on the same repository.

    python bench/snapshot.py [--files 5000] [--changes 100] [--runs 5] [--keep]

The peer runs on a copy of the user's index (`GIT_INDEX_FILE`), so the user's index is untouched, and the
branch it moves is put back after each run (not timed). Before every timed operation the same `--changes`
files get new content, so each one records exactly that many changes. The operations interleave (their
order rotates from run to run) so machine noise hits all alike; the table shows medians.

Rows: `shadow, cold` is a new `Snapshotter` (empty blob-id cache; the index's stat data still vouches for
tracked files, as it does for git); `shadow, warm` keeps its cache between runs; `shadow, no stat caches`
reads and hashes every file (both caches switched off), to show what they save; `shadow, nothing changed`
is a warm snapshot of an unchanged tree, the cost of a trigger that finds nothing to commit. Our code runs
in-process; the peer pays for starting two git processes, as it would in any use.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autopm_realtime.sources import snapshot  # noqa: E402
from autopm_realtime.sources.snapshot import Signature, Snapshotter  # noqa: E402

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
PEER = "GIT_INDEX_FILE=<copy of .git/index> git add -A && git -c gc.auto=0 commit -q -m ..."
LONG_AGO = 1_600_000_000     # the untouched files are old, as in a real project


def git(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True,
                          env={**GIT_ENV, **(env or {})}).stdout.strip()


def make_repository(path: Path, files: int) -> list[Path]:
    """`files` files of about 1 KiB in 50 packages x 10 modules, committed and packed."""
    git(path, "init", "-q", "-b", "main")
    made = []
    for i in range(files):
        file = path / f"pkg{i % 50:02d}" / f"mod{i // 50 % 10}" / f"file{i:05d}.py"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"# file {i}\n" + "value = 'x' * 64  # padding to about one KiB\n" * 20)
        os.utime(file, (LONG_AGO, LONG_AGO))
        made.append(file)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    git(path, "gc", "-q")
    return made


def change(files: list[Path], tag: str) -> None:
    for file in files:
        file.write_text(f"# changed: {tag}\n" + file.name * 40)


def shadow(snapshotter: Snapshotter) -> snapshot.Outcome:
    return snapshotter.shadow(lambda count, branch: f"bench: {count} change(s)",
                              Signature.now("bench <bench@localhost>", time.time()))


def timed_shadow(make: Callable[[], Snapshotter], changes: int) -> float:
    started = time.perf_counter()
    outcome = shadow(make())
    elapsed = time.perf_counter() - started
    if outcome.changes_count != changes:
        raise SystemExit(f"expected {changes} changes, got {outcome}")
    return elapsed


def timed_peer(path: Path, scratch: Path, head: str) -> float:
    """`git add -A && git commit` on a copy of the index; the branch is put back afterwards (not timed)."""
    index = scratch / "peer-index"
    shutil.copy2(path / ".git" / "index", index)
    env = {"GIT_INDEX_FILE": str(index)}
    started = time.perf_counter()
    git(path, "add", "-A", env=env)
    git(path, "-c", "gc.auto=0", "commit", "-q", "-m", "bench", env=env)
    elapsed = time.perf_counter() - started
    git(path, "update-ref", "refs/heads/main", head)
    index.unlink()
    return elapsed


def without_stat_caches(path: Path, changes: int) -> float:
    """A cold snapshot that reads and hashes every file: the index may not vouch for any."""
    vouches = snapshot._index_vouches
    snapshot._index_vouches = lambda *args: False
    try:
        return timed_shadow(lambda: Snapshotter(path), changes)
    finally:
        snapshot._index_vouches = vouches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the repository and print its path")
    args = parser.parse_args()
    if args.runs < 3 or not 0 < args.changes <= args.files:
        parser.error("--runs must be at least 3 and --changes from 1 to --files")

    scratch = Path(tempfile.mkdtemp(prefix="autopm-bench-snapshot-"))
    path = scratch / "repo"
    path.mkdir()
    try:
        files = make_repository(path, args.files)
        changed = files[:: len(files) // args.changes][: args.changes]
        index_before = (path / ".git" / "index").read_bytes()
        warm = Snapshotter(path)
        change(changed, "prime")
        shadow(warm)                                   # fills the warm cache (not timed)
        head = git(path, "rev-parse", "HEAD")
        n = len(changed)
        operations: dict[str, Callable[[], float]] = {
            "shadow, cold": lambda: timed_shadow(lambda: Snapshotter(path), n),
            "shadow, warm": lambda: timed_shadow(lambda: warm, n),
            "shadow, no stat caches": lambda: without_stat_caches(path, n),
            "git add -A && git commit": lambda: timed_peer(path, scratch, head),
        }
        times: dict[str, list[float]] = {label: [] for label in (*operations, "shadow, nothing changed")}
        labels = list(operations)
        for run in range(args.runs):
            for label in labels[run % len(labels):] + labels[:run % len(labels)]:
                change(changed, f"{run}-{label}")
                times[label].append(operations[label]())
            shadow(warm)                               # catch up with the peer's change (not timed)
            times["shadow, nothing changed"].append(timed_shadow(lambda: warm, 0))

        # the snapshot is what `git add -A` records
        index = scratch / "check-index"
        shutil.copy2(path / ".git" / "index", index)
        git(path, "add", "-A", env={"GIT_INDEX_FILE": str(index)})
        expected = git(path, "write-tree", env={"GIT_INDEX_FILE": str(index)})
        assert git(path, "rev-parse", "refs/autopm/autosave/main^{tree}") == expected, "trees differ"
        assert (path / ".git" / "index").read_bytes() == index_before, "the user's index changed"
        git(path, "fsck", "--no-dangling")

        peer_median = statistics.median(times["git add -A && git commit"])
        print(f"shadow snapshot, {args.files:,} files, {args.changes} changed, medians of {args.runs} runs "
              f"(Python {platform.python_version()}, {git(path, 'version')}, {os.cpu_count()} cores)\n")
        print("| operation | median ms | min ms | max ms | vs git |")
        print("|---|---:|---:|---:|---:|")
        for label, values in times.items():
            median = statistics.median(values)
            print(f"| {label} | {median * 1000:.1f} | {min(values) * 1000:.1f} | {max(values) * 1000:.1f} | "
                  f"{median / peer_median:.2f}x |")
        print(f"\npeer: `{PEER}`")
        print(f"command: `python bench/snapshot.py --files {args.files} --changes {args.changes} "
              f"--runs {args.runs}`")
        if args.keep:
            print(f"repository kept at {path}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
