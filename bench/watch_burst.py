"""File watcher burst: N files written as fast as possible (a big checkout) → one `file_change` per path?

    python bench/watch_burst.py [--files 10000] [--runs 3] [--dir /dev/shm] [--coalesce 0.1]

Each run makes a fresh directory on tmpfs (`/dev/shm` when present), starts a `FileWatcher` on it with a
`MemoryBroker`, waits until it watches, then a separate writer process (as `git checkout` would be)
creates N files in 100 subdirectories, one `open/write/close` each. The watcher's events are counted until
every path has been reported and nothing more arrives for a quiet second. The peer, measured on the same
burst in the same run, is a plain watchdog `Observer` with a handler that only counts, twice: with the
watcher's `event_filter` (the very stream the watcher coalesces: how many raw events became one per path,
and how soon raw events stop arriving, so the difference is the watcher's own cost) and unfiltered (what
the filter saves; this one can overflow the kernel's inotify queue and then loses events, which the
`kernel overflows` column counts).

Columns: `events` received, `distinct paths`, `max/path` (must be 1), `missing` (must be 0), `last write →
last event` (the writer's last close to the last event, both CLOCK_MONOTONIC), `total` (first write to
last event), `write` (how long the writer took). The table shows the median of each column over the
runs (missing: the sum, max/path: the maximum).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import logging  # noqa: E402

from watchdog.events import FileSystemEventHandler  # noqa: E402
from watchdog.observers import Observer  # noqa: E402

from autopm_realtime.brokers.memory import MemoryBroker  # noqa: E402
from autopm_realtime.events import DEFAULT_MAX_EVENT_BYTES, EventTypeRegistry  # noqa: E402
from autopm_realtime.project import Project  # noqa: E402
from autopm_realtime.sources import SourceContext  # noqa: E402
from autopm_realtime.sources.inotify import EVENT_FILTER  # noqa: E402
from autopm_realtime.sources.watcher import FileWatcher, WatcherOptions  # noqa: E402

QUIET_SECONDS = 1.0
DIRECTORIES = 100


def file_names(count: int) -> list[str]:
    return [f"d{i % DIRECTORIES:02d}/f{i:05d}.txt" for i in range(count)]


def write_burst(root: str, count: int, report: "multiprocessing.Queue[tuple[float, float]]") -> None:
    """(writer process) Create the files; report the monotonic times of the first and last write."""
    names = file_names(count)
    first = time.monotonic()
    for name in names:
        with open(os.path.join(root, name), "w") as f:
            f.write("x")
    report.put((first, time.monotonic()))


def start_writer(root: Path, count: int) -> tuple[multiprocessing.Process, "multiprocessing.Queue"]:
    report: multiprocessing.Queue = multiprocessing.Queue()
    writer = multiprocessing.get_context("fork").Process(target=write_burst, args=(str(root), count, report))
    writer.start()
    return writer, report


def fresh_tree(base: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="watch-burst-", dir=base))
    for i in range(DIRECTORIES):
        (root / f"d{i:02d}").mkdir()
    return root


async def run_watcher(base: Path, count: int, coalesce: float) -> dict:
    root = fresh_tree(base)
    broker = MemoryBroker(history_size=10)
    arrivals: list[tuple[float, str]] = []
    broker.add_listener(lambda event: arrivals.append((time.monotonic(), event.data["file_path"])))
    context = SourceContext(Project("bench", root), broker, EventTypeRegistry(), DEFAULT_MAX_EVENT_BYTES)
    watcher = FileWatcher(context, WatcherOptions(coalesce_seconds=coalesce))
    await watcher.start()
    assert await watcher.ready()
    overflows = OverflowCounter().__enter__()
    try:
        writer, report = start_writer(root, count)
        while not report.qsize() and writer.is_alive():
            await asyncio.sleep(0.01)
        first_write, last_write = report.get()
        writer.join()
        expected = set(file_names(count))
        seen: set[str] = set()
        counted, quiet_since = 0, last_write
        while True:                   # until every path came and then nothing more for a quiet second
            new = arrivals[counted:]
            counted += len(new)
            seen.update(path for _, path in new)
            if new:
                quiet_since = new[-1][0]
            if expected <= seen and time.monotonic() - quiet_since > QUIET_SECONDS:
                break
            if time.monotonic() - last_write > 30:
                break
            await asyncio.sleep(0.05)
        stats = watcher.stats()
        kernel_overflows = overflows.count
    finally:
        overflows.__exit__()
        await watcher.stop()
        shutil.rmtree(root, ignore_errors=True)
    per_path = collections.Counter(path for _, path in arrivals)
    last_event = max((t for t, _ in arrivals), default=float("nan"))
    return {"events": len(arrivals), "distinct": len(per_path), "max_per_path": max(per_path.values(), default=0),
            "missing": len(expected - set(per_path)), "after_last_write": last_event - last_write,
            "total": last_event - first_write, "write": last_write - first_write,
            "overflows": kernel_overflows, "rescans": stats["overflows"]}


class OverflowCounter(logging.Handler):
    """watchdog's only sign of a kernel queue overflow is a warning (two, from two of its loggers)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.logger = logging.getLogger("watchdog")

    def emit(self, record: logging.LogRecord) -> None:
        if "filesystem events were lost" in record.getMessage():
            self.count += 1

    def __enter__(self) -> "OverflowCounter":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


class Counting(FileSystemEventHandler):
    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def dispatch(self, event) -> None:
        with self.lock:
            self.count += 1
            self.last = time.monotonic()


def run_peer(base: Path, count: int, event_filter: list | None) -> dict:
    root = fresh_tree(base)
    handler = Counting()
    observer = Observer()
    observer.schedule(handler, str(root), recursive=True, event_filter=event_filter)
    observer.start()
    overflows = OverflowCounter()
    try:
        overflows.__enter__()
        writer, report = start_writer(root, count)
        first_write, last_write = report.get()
        writer.join()
        while True:
            before = handler.count
            time.sleep(QUIET_SECONDS)
            if handler.count == before:
                break
    finally:
        overflows.__exit__()
        observer.stop()
        observer.join()
        shutil.rmtree(root, ignore_errors=True)
    return {"events": handler.count, "after_last_write": handler.last - last_write,
            "total": handler.last - first_write, "write": last_write - first_write,
            "overflows": overflows.count}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def timing_cells(runs: list[dict]) -> str:
    return (f"| {median(runs, 'after_last_write') * 1000:.0f} ms | {median(runs, 'total'):.2f} s "
            f"| {median(runs, 'write'):.2f} s | {sum(r['overflows'] for r in runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    parser.add_argument("--coalesce", type=float, default=WatcherOptions.coalesce_seconds)
    args = parser.parse_args()
    base = Path(args.dir)

    watcher_runs, filtered_runs, raw_runs = [], [], []
    for _ in range(args.runs):           # interleaved, so machine noise hits all alike
        watcher_runs.append(asyncio.run(run_watcher(base, args.files, args.coalesce)))
        filtered_runs.append(run_peer(base, args.files, EVENT_FILTER))
        raw_runs.append(run_peer(base, args.files, None))

    command = "python bench/watch_burst.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"`{command.strip()}` — {args.files:,} files in {DIRECTORIES} directories on {base}, "
          f"{args.runs} run(s), coalesce {args.coalesce:g} s\n")
    print("| | events | distinct paths | max/path | missing | last write → last event | total | write "
          "| kernel overflows |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| FileWatcher | {median(watcher_runs, 'events'):,.0f} | {median(watcher_runs, 'distinct'):,.0f} "
          f"| {max(r['max_per_path'] for r in watcher_runs)} | {sum(r['missing'] for r in watcher_runs)} "
          + timing_cells(watcher_runs))
    for label, runs in (("watchdog, same event_filter (peer)", filtered_runs),
                        ("watchdog, unfiltered (peer)", raw_runs)):
        print(f"| {label} | {median(runs, 'events'):,.0f} | | | " + timing_cells(runs))
    ratio = median(filtered_runs, "events") / median(watcher_runs, "events")
    extra = (median(watcher_runs, "after_last_write") - median(filtered_runs, "after_last_write")) * 1000
    print(f"\nraw events (same filter) per published event: {ratio:.1f}; the watcher's last event came "
          f"{extra:.0f} ms after the peer's last raw event (the coalescing window is "
          f"{args.coalesce * 1000:.0f} ms); watcher rescans after lost events: "
          f"{sum(r['rescans'] for r in watcher_runs)}")
    bad = [r for r in watcher_runs if r["missing"] or r["max_per_path"] != 1]
    if bad:
        print(f"\nFAILED: {len(bad)} run(s) lost a path or reported one twice: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
