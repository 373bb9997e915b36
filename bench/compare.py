"""The whole comparison in one command: our hub against the peer servers in bench/peers/, one table.

    python bench/compare.py [--quick] [--runs 3] [--only ours-ws,tornado_ws] [--sections 1k,10k,paced,replay]

Every row is measured by fanout.py's machinery (a fresh server per run, raw-socket load clients in their
own processes, server CPU from the server's own /proc accounting), so ours and the peers see the same
load client on the same machine. Within a section the runs interleave: round by round every target runs
once, and the order rotates from round to round, so machine noise and warm-up fall on all of them alike.
The table shows medians; the ratios compare server CPU per delivery within the same section of the same
invocation, never across invocations.
"""

from __future__ import annotations

import argparse
import operator
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from fanout import COLUMNS as FANOUT_COLUMNS
from fanout import (BENCH, Plan, ReplayPlan, Target, add_load_arguments, anomaly_notes, faulty, machine,
                    markdown_table, ours, pace_shortfall, replay_once, run_once, small_size_note,
                    summarize, summarize_replay, write_results)

RESULTS_PATH = BENCH / "results" / "compare-latest.json"
TARGETS: dict[str, Target] = {target.name: target for target in (
    ours("ws"),
    Target("tornado_ws", "ws", peer="tornado_ws"),
    Target("websockets_broadcast", "ws", peer="websockets_broadcast", publish_port=True),
    ours("sse"),
    Target("tornado_sse", "sse", peer="tornado_sse"),
    Target("starlette_sse", "sse", peer="starlette_sse"),
    ours("mixed"),
)}
FANOUT_TARGETS = tuple(name for name in TARGETS if name != "ours-mixed")
PACED_TARGETS = ("ours-ws", "ours-sse")
PACED_PEERS = ("tornado_ws", "tornado_sse")   # with --paced-peers: they cannot keep the pace (see README)
REPLAY_TRANSPORTS = ("ws", "sse")
# The ratio columns: which peer's server CPU per delivery a row is divided into, by the row's transport.
RATIO_BASELINES = {"vs_tornado": {"ws": "tornado_ws", "sse": "tornado_sse"},
                   "vs_websockets": {"ws": "websockets_broadcast"}}

_SHARED = {key: (header, key, fmt) for header, key, fmt in FANOUT_COLUMNS}
COLUMNS: tuple[tuple[str, str, str], ...] = (   # (header, key in the row, format); fanout.py's where shared
    ("load", "load", "{}"),
    ("target", "target", "{}"),
    *(_SHARED[key] for key in ("subscribers", "events", "event_bytes", "deliveries_per_second",
                               "server_us_per_delivery")),
    ("× tornado", "vs_tornado", "{:.2f}x"),
    ("× websockets", "vs_websockets", "{:.2f}x"),
    *(_SHARED[key] for key in ("latency_p50_ms", "latency_p99_ms")),
    ("replay ms", "replay_ms", "{:.1f}"),
    _SHARED["server_rss_mib"],
    ("RSS KiB/conn", "rss_kib_per_subscriber", "{:.1f}"),
    ("server CPU+wait %", "server_busy_percent", "{:.0f}"),
    *(_SHARED[key] for key in ("client_cpu_percent_max", "missing")),
)


@dataclass(frozen=True)
class Section:
    """One block of rows: the same load on several targets, their runs interleaved."""

    key: str                   # as `--sections` names it
    load: str                  # the table's "load" cell
    targets: tuple[str, ...]
    subscribers: int
    events: int
    rate: float | None = None  # paced mode; None: throughput


@dataclass(frozen=True)
class Goal:
    """A target from the issue, checked against one cell of this run's table."""

    what: str
    section: str
    target: str
    key: str
    holds: Callable[[float, float], bool]
    relation: str
    bound: float
    unit: str


GOALS = (
    Goal("WebSocket deliveries per server-CPU-second vs plain Tornado write_message", "1k", "ours-ws",
         "vs_tornado", operator.ge, "≥", 4.0, "x"),
    Goal("SSE deliveries per server-CPU-second vs plain Tornado SSE", "1k", "ours-sse", "vs_tornado",
         operator.ge, "≥", 3.0, "x"),
    Goal("WebSocket deliveries per server-CPU-second vs websockets.broadcast", "1k", "ours-ws",
         "vs_websockets", operator.gt, ">", 1.0, "x"),
    Goal("server RSS, mixed WebSocket and SSE connections", "10k", "ours-mixed", "server_rss_mib",
         operator.le, "≤", 200.0, " MiB"),
    Goal("p99 publish-to-receive latency at 200 events/s, WebSocket", "paced", "ours-ws", "latency_p99_ms",
         operator.lt, "<", 50.0, " ms"),
    Goal("p99 publish-to-receive latency at 200 events/s, SSE", "paced", "ours-sse", "latency_p99_ms",
         operator.lt, "<", 50.0, " ms"),
    Goal("replay of the missed events to one reconnecting WebSocket", "replay", "ours-ws", "replay_ms",
         operator.lt, "<", 100.0, " ms"),
    Goal("replay of the missed events to one reconnecting SSE stream (Last-Event-ID)", "replay", "ours-sse",
         "replay_ms", operator.lt, "<", 100.0, " ms"),
)


def sections(args: argparse.Namespace) -> list[Section]:
    """The loads, as the issue asks for them; `--quick` shrinks them to a smoke check."""
    small, large = (100, 1000) if args.quick else (args.subscribers, args.large_subscribers)
    events, large_events, paced_events = (50, 10, 100) if args.quick else (args.events, args.large_events,
                                                                            args.paced_events)
    paced = PACED_TARGETS + (PACED_PEERS if args.paced_peers else ())
    return [Section("1k", "throughput", FANOUT_TARGETS, small, events),
            Section("10k", "throughput", (*FANOUT_TARGETS, "ours-mixed"), large, large_events),
            Section("paced", f"paced {args.rate:g}/s", paced, small, paced_events, args.rate),
            Section("replay", "replay", tuple(f"ours-{t}" for t in REPLAY_TRANSPORTS), 1, args.replay_events)]


# --- running -----------------------------------------------------------------------------------

def interleave(names: tuple[str, ...], rounds: int, measure: Callable[[str], dict[str, Any]],
               describe: Callable[[dict[str, Any]], str], tag: str
               ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Run every name once per round, the order rotated each round. A run that raises is recorded as a
    failure and the comparison goes on: one broken peer must not hide the other rows."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failures: dict[str, list[str]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.monotonic()
            try:
                result = measure(name)
            except Exception as error:   # noqa: BLE001 - reported below the table, with the run's number
                failures[name].append(f"run {index + 1}: {type(error).__name__}: {error}")
                print(f"[{tag} {index + 1}/{rounds}] {name}: FAILED: {error}", flush=True)
                continue
            results[name].append(result)
            print(f"[{tag} {index + 1}/{rounds}] {name}: {describe(result)}, "
                  f"{time.monotonic() - started:.1f}s", flush=True)
    return results, failures


def run_fanout_section(section: Section, args: argparse.Namespace
                       ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The section's rows (medians, ratios) and every run's raw result."""
    plans = {name: Plan(TARGETS[name], section.subscribers, section.events, args.size, section.rate,
                        args.batch, args.clients, args.stall, server_args(TARGETS[name], args))
             for name in section.targets}
    runs, failures = interleave(section.targets, args.runs, lambda name: run_once(plans[name]),
                                lambda r: f"{r['deliveries_per_second']:,.0f} deliveries/s, "
                                          f"{r['server_us_per_delivery'] or 0:.2f} µs/delivery, "
                                          f"{r['missing']:,} missing", section.key)
    rows = []
    for name in section.targets:
        rows.append(finish_row(summarize(plans[name], runs[name]), section, failures[name]))
    add_ratios(rows)
    return rows, runs


def run_replay_section(section: Section, args: argparse.Namespace
                       ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    plans = {name: ReplayPlan(TARGETS[name].transport, section.events, args.size, args.stall,
                              tuple(args.server_arg)) for name in section.targets}
    runs, failures = interleave(section.targets, args.runs, lambda name: replay_once(plans[name]),
                                lambda r: f"{r['replay_ms'] or 0:.1f} ms, {r['missing']:,} missing",
                                section.key)
    rows = [finish_row(summarize_replay(plans[name], runs[name]), section, failures[name])
            for name in section.targets]
    return rows, runs


def server_args(target: Target, args: argparse.Namespace) -> tuple[str, ...]:
    """`--server-arg` is for our server; a peer takes only its ports."""
    return tuple(args.server_arg) if target.ours else ()


def finish_row(row: dict[str, Any], section: Section, failures: list[str]) -> dict[str, Any]:
    """Place a summary in the table: its section, its label in the notes, and any failed runs."""
    row.update(section=section.key, load=section.load,
               label=f"{row['target']} ({section.load}, {section.subscribers:,} subscribers)")
    row["anomalies"]["failed_runs"] = failures
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Deliveries per server-CPU-second relative to a peer of the same transport in the same section:
    the peer's median µs/delivery divided by this row's (so > 1 means cheaper than the peer)."""
    cost = {row["target"]: row["server_us_per_delivery"] for row in rows}
    for row in rows:
        for column, baselines in RATIO_BASELINES.items():
            peer_cost = cost.get(baselines.get(row["transport"], ""))
            own = row["server_us_per_delivery"]
            row[column] = peer_cost / own if peer_cost and own else None


# --- the report --------------------------------------------------------------------------------

def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each goal of the issue against this run's figure: met, NOT met, or not measured."""
    cells = {(row["section"], row["target"]): row for row in rows}
    lines = []
    for goal in GOALS:
        row = cells.get((goal.section, goal.target))
        value = None if row is None else row.get(goal.key)
        if value is None:
            verdict = "not measured"
        else:
            verdict = f"{value:,.2f}{goal.unit}: {verdict_word(goal, value, row)}{scale_caveat(goal, row)}"
        lines.append(f"- {goal.what} ({goal.target}, {goal.section}), goal {goal.relation} "
                     f"{goal.bound:g}{goal.unit}: {verdict}")
    return lines


def verdict_word(goal: Goal, value: float, row: dict[str, Any]) -> str:
    """A latency below the bound proves nothing if the publisher fell behind: the load was lighter."""
    if not goal.holds(value, goal.bound):
        return "NOT met"
    return "met only at a lower pace" if pace_shortfall(row) else "met"


def scale_caveat(goal: Goal, row: dict[str, Any]) -> str:
    """The goals are stated at 1,000 subscribers, 10,000 connections, 1,000 replayed events and a pace
    of 200 events/s; a run that measured less (`--quick`, a publisher that fell behind) says so."""
    key, number = {"1k": ("subscribers", 1000), "paced": ("subscribers", 1000),
                   "10k": ("subscribers", 10000), "replay": ("events", 1000)}[goal.section]
    caveat = "" if row[key] == number else f" (at {row[key]:,} {key}, not {number:,})"
    if pace_shortfall(row):
        caveat += f" (published at {row['publish_rate']:.0f} events/s, not {row['rate']:g})"
    return caveat


def section_lines(chosen: list[Section], args: argparse.Namespace) -> list[str]:
    """What each section's load was, in words, above the table."""
    lines = []
    for section in chosen:
        if section.key == "replay":
            lines.append(f"- replay: {section.events:,} events published to a fresh server of ours with no "
                         "subscribers, then one subscriber resumes from the id before them; timed from its "
                         "request (WebSocket `subscribe`, SSE GET with Last-Event-ID) to the last event")
        elif section.rate:
            lines.append(f"- {section.key}: {section.subscribers:,} subscribers x {section.events:,} events, "
                         f"one per POST at {section.rate:g} events/s")
        else:
            lines.append(f"- {section.key}: {section.subscribers:,} subscribers x {section.events:,} events, "
                         f"throughput (batches of {args.batch} back to back)")
    return lines


def print_report(rows: list[dict[str, Any]], runs: dict[str, dict[str, list[dict[str, Any]]]],
                 chosen: list[Section], args: argparse.Namespace, wall: float) -> None:
    print(f"\nmedians of {args.runs} run(s) per row, runs interleaved, order rotated per round; "
          f"{os.cpu_count()} CPUs; wall {wall / 60:.1f} min ({wall:.0f}s)")
    print("\n".join(section_lines(chosen, args)) + "\n")
    print(markdown_table(rows, COLUMNS))
    print("\n× tornado / × websockets: deliveries per server-CPU-second relative to that peer (plain Tornado "
          "of the row's transport; websockets.broadcast), from the medians of the same section")
    print("\ngoals:\n" + "\n".join(goal_lines(rows)))
    notes = anomaly_notes(rows)
    size_note = small_size_note(rows, args.size)
    print("\n" + ("\n".join(notes) if notes
                  else "no anomalies: every subscriber got every event once, in order"))
    if size_note:
        print(size_note)
    print("\nservers (ports vary per run):\n" + "\n".join(f"- {name}: {command}"
                                                        for name, command in commands(runs).items()))


def commands(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, str]:
    """Each target's server command line, as its first run started it."""
    found: dict[str, str] = {}
    for section_runs in runs.values():
        for name, results in section_runs.items():
            if results and name not in found:
                found[name] = results[0]["server"]["command"]
    return found


# --- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke check: 100 and 1,000 subscribers, "
                        "few events, 1 run")
    parser.add_argument("--only", help="comma-separated targets: " + ", ".join(TARGETS))
    parser.add_argument("--sections", default="1k,10k,paced,replay", help="comma-separated: 1k, 10k, "
                        "paced, replay")
    parser.add_argument("--subscribers", type=int, default=1000, help="the 1k and paced sections")
    parser.add_argument("--events", type=int, default=200, help="events per run, 1k section")
    parser.add_argument("--large-subscribers", type=int, default=10000, help="the 10k section")
    parser.add_argument("--large-events", type=int, default=10, help="events per run, 10k section (few: "
                        "the slowest peers deliver 6,000-9,000 a second at 10,000 subscribers)")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s, paced section")
    parser.add_argument("--paced-events", type=int, default=400, help="events per run, paced section")
    parser.add_argument("--paced-peers", action="store_true", help="also pace the plain Tornado peers (slow: "
                        "they cannot deliver 200,000 events/s, so each run takes about 40 s)")
    parser.add_argument("--replay-events", type=int, default=1000, help="events replayed, replay section")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where the JSON results go")
    add_load_arguments(parser)
    parser.set_defaults(runs=None)
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    for name in ("subscribers", "events", "large_subscribers", "large_events", "paced_events",
                 "replay_events", "runs", "batch", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    unknown = set(names(args.only)) - set(TARGETS) if args.only else set()
    unknown_sections = set(names(args.sections)) - {"1k", "10k", "paced", "replay"}
    if unknown or unknown_sections:
        parser.error(f"unknown targets or sections: {', '.join(sorted(unknown | unknown_sections))}")
    return args


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def chosen_sections(args: argparse.Namespace) -> list[Section]:
    """The sections asked for, each with only the targets `--only` keeps; empty ones dropped."""
    keep = set(names(args.only)) if args.only else set(TARGETS)
    chosen = []
    for section in sections(args):
        targets = tuple(name for name in section.targets if name in keep)
        if section.key in names(args.sections) and targets:
            chosen.append(Section(section.key, section.load, targets, section.subscribers, section.events,
                                  section.rate))
    return chosen


def main() -> int:
    args = parse_args()
    command = shlex.join(sys.orig_argv)
    print(f"$ {command}\n", flush=True)
    chosen = chosen_sections(args)
    started, machine_before = time.monotonic(), machine()
    rows: list[dict[str, Any]] = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for section in chosen:
        run_section = run_replay_section if section.key == "replay" else run_fanout_section
        section_rows, runs[section.key] = run_section(section, args)
        rows.extend(section_rows)
    wall = time.monotonic() - started
    print_report(rows, runs, chosen, args, wall)
    write_results(args.output, {
        "command": command, "wall_seconds": wall, "machine": machine_before, "arguments": vars(args),
        "sections": [asdict(section) for section in chosen], "goals": goal_lines(rows), "rows": rows,
        "runs": runs})
    return 1 if faulty(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
