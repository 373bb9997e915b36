"""Fan-out baseline: one server, N subscribers, M events — how fast, and at what server cost, every event
reaches every subscriber.

    python bench/fanout.py [--subscribers 1000] [--events 200] [--transport ws|sse|both] [--size 200]
                           [--rate R] [--batch 10] [--runs 3] [--clients 2]

The server runs as its own process, started the way users start it, so its CPU and memory are read from
/proc with nothing of the load client in them. The subscribers live in 1-2 client processes
(`loadclient.py`) whose own CPU is reported beside the server's, so a reader can see which side was the
limit. Without `--rate` events are published in batches as fast as the server accepts them (throughput);
with `--rate` one event per request at that pace (latency). Each run starts a fresh server; the table shows
medians over `--runs`, and `missing` sums every undelivered event of every run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import tornado

from loadclient import EVENT_TYPE, PROJECT_ID, ClientSpec, client_main, cpu_times

REPO = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "fanout-latest.json"
LATENCY_SAMPLES_MAX = 1_000_000      # beyond this many deliveries, latency is kept for every k-th subscriber
STARTUP_SECONDS = 20.0
PRINTED_STDERR_LINES = 3             # per transport; the JSON keeps the first 10 of every run
STATS_PATHS = {"ws": ("/api/v1/dashboard/ws/stats", "websocket_connections"),
               "sse": ("/api/v1/sse/stats", "sse_connections")}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server under test ---------------------------------------------------------------------

class Cpu(NamedTuple):
    running: float    # seconds on a CPU (user + system)
    waiting: float    # seconds runnable but not running: the machine's other processes had the cores
    ticks: float      # utime + stime from /proc/PID/stat, 10 ms resolution


class Server:
    """`python -m autopm_realtime` on a free loopback port, and what /proc says about it."""

    def __init__(self, workdir: Path, extra_args: list[str]) -> None:
        self.port = free_port()
        self.command = [sys.executable, "-m", "autopm_realtime", "--port", str(self.port),
                        "--project", f"{workdir}={PROJECT_ID}", "--log-level", "warning", *extra_args]
        self.stderr_path = workdir / "server.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        """`--log-level warning` hides the "serving" line, so poll the health endpoint instead."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.stderr_text()}")
            try:
                self.get_json("/api/v1/health")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {STARTUP_SECONDS}s: {self.stderr_text()}")

    def get_json(self, path: str) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def cpu(self) -> Cpu:
        """CPU time of the server so far. /proc/PID/stat's utime + stime count 10 ms ticks, too coarse for
        a short run, so the time on a CPU and the time spent runnable but waiting for one come from each
        thread's /proc/PID/task/TID/schedstat, in nanoseconds; the ticks are kept as a cross-check."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        running = waiting = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                on_cpu, runnable, _ = (task / "schedstat").read_text().split()
            except (FileNotFoundError, ValueError):   # a thread that just ended; no schedstat
                continue
            running, waiting = running + int(on_cpu), waiting + int(runnable)
        return Cpu(running / 1e9 or ticks, waiting / 1e9, ticks)

    def memory(self) -> dict[str, int]:
        """Resident and peak resident bytes (VmRSS, VmHWM)."""
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text()
                      .splitlines() if ":" in line)
        return {"rss": int(status["VmRSS"].split()[0]) * 1024, "peak": int(status["VmHWM"].split()[0]) * 1024}

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> str:
        """SIGTERM, as a user's Ctrl-C would; returns what the server wrote to stderr."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.stderr_text()


def machine_cpu() -> tuple[int, int]:
    """Busy and total jiffies of all cores together, from the first line of /proc/stat."""
    fields = Path("/proc/stat").read_text().split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields)
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the publisher -----------------------------------------------------------------------------

class Publisher:
    """POSTs `progress_update` events over one keep-alive connection.

    Each event carries `bench_seq` (so subscribers can tell which ones they missed) and `sent_ns`, the
    publisher's CLOCK_MONOTONIC just before its request is sent: that clock is shared by every process on
    the machine, so a subscriber's arrival time minus `sent_ns` is the publish-to-receive latency.
    """

    def __init__(self, port: int, size: int, events: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.padding = "x" * max(0, size - len(self._envelope_as_sent(events - 1, "")))
        self.errors: list[str] = []
        self.unpublished = 0

    @staticmethod
    def _data(seq: int, sent_ns: int, padding: str) -> dict[str, Any]:
        return {"progress_percentage": 50, "completed_tasks": 1, "total_tasks": 2,
                "bench_seq": seq, "sent_ns": sent_ns, "padding": padding}

    def _envelope_as_sent(self, seq: int, padding: str) -> bytes:
        """What the server will send for this event (its id and timestamps filled in), to size the padding."""
        stamp = "2024-01-15T10:30:00.000Z"
        data = {**self._data(seq, time.monotonic_ns(), padding), "project_id": PROJECT_ID, "timestamp": stamp}
        return compact({"type": EVENT_TYPE, "id": f"0123abcd-{seq + 1}", "project_id": PROJECT_ID,
                        "timestamp": stamp, "data": data})

    def publish(self, seqs: range) -> None:
        sent_ns = time.monotonic_ns()
        body = compact([{"type": EVENT_TYPE, "project_id": PROJECT_ID,
                         "data": self._data(seq, sent_ns, self.padding)} for seq in seqs])
        try:
            self.connection.request("POST", "/api/v1/events", body, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            reply = response.read()
            if response.status != 202:
                raise RuntimeError(f"{response.status}: {reply[:300]!r}")
        except (OSError, RuntimeError, http.client.HTTPException) as error:
            self.errors.append(f"events {seqs.start}-{seqs.stop - 1}: {error}")
            self.unpublished += len(seqs)
            self.connection.close()   # http.client reconnects on the next request

    def run(self, events: int, batch: int, rate: float | None) -> float:
        """Publish every event; returns the publish rate achieved (events/s)."""
        started = time.monotonic()
        if rate is None:
            for start in range(0, events, batch):
                self.publish(range(start, min(start + batch, events)))
        else:
            for seq in range(events):
                delay = started + seq / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.publish(range(seq, seq + 1))
        return events / max(time.monotonic() - started, 1e-9)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- one run -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Everything a run needs from the command line."""

    transport: str
    subscribers: int
    events: int
    size: int
    rate: float | None
    batch: int
    clients: int
    stall_seconds: float
    server_args: tuple[str, ...]


def run_once(plan: Plan) -> dict[str, Any]:
    """A fresh server, the subscribers, the events; what arrived, how fast, and what it cost."""
    wall_started = time.monotonic()
    seen: dict[str, Any] = {}   # raw observations, turned into the table's numbers by `measure`
    with tempfile.TemporaryDirectory(prefix="fanout-") as workdir:
        server = Server(Path(workdir), list(plan.server_args))
        processes: list[multiprocessing.process.BaseProcess] = []
        stats_path, connections_key = STATS_PATHS[plan.transport]
        try:
            seen["memory_idle"] = server.memory()
            pipes, processes = start_clients(plan, server.port)
            seen["readies"] = [receive(pipe, 120, "connecting") for pipe in pipes]
            seen["stats_before"] = server.get_json(stats_path)
            seen["memory_connected"] = server.memory()
            publisher = Publisher(server.port, plan.size, plan.events)

            cpu_before, own_cpu_before, machine_before = server.cpu(), sum(cpu_times()), machine_cpu()
            seen["first_publish_ns"] = time.monotonic_ns()
            seen["publish_rate"] = publisher.run(plan.events, plan.batch, plan.rate)
            seen["publisher_cpu"] = sum(cpu_times()) - own_cpu_before
            for pipe in pipes:
                pipe.send("published")
            seen["reports"] = [receive(pipe, plan.stall_seconds + 300, "delivering") for pipe in pipes]
            seen["reported_ns"] = time.monotonic_ns()
            seen["server_cpu"] = Cpu(*(after - before for after, before in zip(server.cpu(), cpu_before)))
            busy, total = (after - before for after, before in zip(machine_cpu(), machine_before))
            seen["machine_busy"] = busy / max(total, 1)
            seen["memory_end"] = server.memory()
            seen["stats_after"] = server.get_json(stats_path)
            seen["sample_event"] = server.get_json(f"/api/v1/events?project_id={PROJECT_ID}&limit=1")[
                "events"]
            seen["publisher"] = publisher
        finally:
            stderr = server.stop()
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
    result = measure(plan, seen)
    result["server"] = {"command": shlex.join(server.command),
                        "connections_seen": seen["stats_before"].get(connections_key),
                        "counters_before": seen["stats_before"].get("counters"),
                        "counters_after": seen["stats_after"].get("counters"),
                        "stderr": problem_lines(stderr)}
    result["wall_seconds"] = time.monotonic() - wall_started
    return result


def start_clients(plan: Plan, port: int) -> tuple[list[Any], list[multiprocessing.process.BaseProcess]]:
    """Split the subscribers over `plan.clients` processes (spawned: no inherited sockets or state)."""
    context = multiprocessing.get_context("spawn")
    stride = max(1, -(-plan.subscribers * plan.events // LATENCY_SAMPLES_MAX))
    pipes, processes = [], []
    for k in range(plan.clients):
        first = plan.subscribers * k // plan.clients
        count = plan.subscribers * (k + 1) // plan.clients - first
        ours, theirs = context.Pipe()
        spec = ClientSpec(plan.transport, port, first, count, plan.events, stride, plan.stall_seconds)
        process = context.Process(target=client_main, args=(theirs, spec), daemon=True)
        process.start()
        pipes.append(ours)
        processes.append(process)
    return pipes, processes


def receive(pipe: Any, timeout: float, doing: str) -> dict[str, Any]:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a load client said nothing for {timeout:.0f}s while {doing}")
    return pipe.recv()


def measure(plan: Plan, seen: dict[str, Any]) -> dict[str, Any]:
    """Turn the raw observations into the table's numbers; keep the clients' raw counts beside them."""
    reports: list[dict[str, Any]] = seen["reports"]
    deliveries = sum(r["deliveries"] for r in reports)
    # The window runs from the first publish to the last delivery (if nothing arrived, to the reports).
    window_end_ns = max(r["last_delivery_ns"] for r in reports) or seen["reported_ns"]
    window = (window_end_ns - seen["first_publish_ns"]) / 1e9
    latencies = array("q")
    for report in reports:
        latencies.frombytes(report.pop("latencies_ns"))
    ordered = sorted(latencies)

    def quantile_ms(q: float) -> float | None:
        return ordered[round(q * (len(ordered) - 1))] / 1e6 if ordered else None

    server_cpu: Cpu = seen["server_cpu"]
    publisher: Publisher = seen["publisher"]
    sample = seen["sample_event"]
    return {
        "transport": plan.transport,
        "deliveries": deliveries,
        "expected": plan.subscribers * plan.events,
        "missing": sum(r["missing"] for r in reports),
        "deliveries_per_second": deliveries / window,
        "window_seconds": window,
        "server_cpu_seconds": server_cpu.running,
        "server_cpu_seconds_from_ticks": server_cpu.ticks,
        "server_us_per_delivery": server_cpu.running * 1e6 / deliveries if deliveries else None,
        "server_cpu_percent": 100 * server_cpu.running / window,
        "server_waiting_percent": 100 * server_cpu.waiting / window,
        "client_cpu_percent": [100 * r["cpu_seconds"] / window for r in reports],
        "publisher_cpu_percent": 100 * seen["publisher_cpu"] / window,
        "machine_busy_percent": 100 * seen["machine_busy"],
        "publish_rate": seen["publish_rate"],
        "latency_ms": {"p50": quantile_ms(0.50), "p99": quantile_ms(0.99), "max": quantile_ms(1.0),
                       "samples": len(ordered)},
        "event_bytes": len(compact(sample[0])) if sample else None,
        "server_rss_mib": seen["memory_end"]["rss"] / 2**20,
        "server_peak_rss_mib": seen["memory_end"]["peak"] / 2**20,
        "rss_kib_per_subscriber": (seen["memory_connected"]["rss"] - seen["memory_idle"]["rss"])
                                  / 1024 / plan.subscribers,
        "publish_errors": publisher.errors,
        "unpublished_events": publisher.unpublished,
        "clients": [{**ready, **report} for ready, report in zip(seen["readies"], reports)],
    }


def problem_lines(stderr: str, keep: int = 10) -> dict[str, Any]:
    """The server's warnings and errors (it runs at `--log-level warning`, so that is all it prints)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"lines": len(lines), "first": lines[:keep]}


# --- summary -----------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (   # (header, key in the summary, format)
    ("transport", "transport", "{}"),
    ("subscribers", "subscribers", "{:,}"),
    ("events", "events", "{:,}"),
    ("event B", "event_bytes", "{:.0f}"),
    ("deliveries/s", "deliveries_per_second", "{:,.0f}"),
    ("server µs/delivery", "server_us_per_delivery", "{:.2f}"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
    ("server RSS MiB", "server_rss_mib", "{:.1f}"),
    ("RSS KiB/sub", "rss_kib_per_subscriber", "{:.1f}"),
    ("server CPU %", "server_cpu_percent", "{:.0f}"),
    ("server waiting %", "server_waiting_percent", "{:.0f}"),
    ("client CPU % (max)", "client_cpu_percent_max", "{:.0f}"),
    ("machine busy %", "machine_busy_percent", "{:.0f}"),
    ("missing", "missing", "{:,}"),
)


def summarize(plan: Plan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; `missing` and the anomalies are summed, never medianed away."""
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    clients = [c for run in runs for c in run["clients"]]
    return {
        "transport": plan.transport, "subscribers": plan.subscribers, "events": plan.events,
        "runs": len(runs), "expected": sum(run["expected"] for run in runs),
        **{key: median([run[key] for run in runs]) for key in (
            "event_bytes", "deliveries_per_second", "server_us_per_delivery", "server_rss_mib",
            "rss_kib_per_subscriber", "server_cpu_percent", "server_waiting_percent",
            "machine_busy_percent", "window_seconds", "publish_rate")},
        "latency_p50_ms": median([run["latency_ms"]["p50"] for run in runs]),
        "latency_p99_ms": median([run["latency_ms"]["p99"] for run in runs]),
        "client_cpu_percent_max": median([max(run["client_cpu_percent"]) for run in runs]),
        "missing": sum(run["missing"] for run in runs),
        "anomalies": {
            "duplicates": sum(c["duplicates"] for c in clients),
            "out_of_order": sum(c["out_of_order"] for c in clients),
            "malformed": sum(c["malformed"] for c in clients),
            "ended_early": sum(c["ended_early"] for c in clients),
            "endings": merge_counts(c["endings"] for c in clients),
            "connect_failures": merge_counts(c["connect_failures"] for c in clients),
            "error_messages": sum(c["controls"].get("error", 0) for c in clients),
            "publish_errors": [e for run in runs for e in run["publish_errors"]],
            "slow_consumer_closes": sum(run["server"]["counters_after"]["slow_consumer_closes"]
                                        - run["server"]["counters_before"]["slow_consumer_closes"]
                                        for run in runs),
            "server_stderr_lines": sum(run["server"]["stderr"]["lines"] for run in runs),
            "connections_the_server_did_not_count": sum(
                plan.subscribers - (run["server"]["connections_seen"] or 0) for run in runs),
        },
    }


def merge_counts(counts: Any) -> dict[str, int]:
    return dict(sum((Counter(count) for count in counts), Counter()))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"]
    for row in rows:
        cells = ["n/a" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def anomaly_notes(rows: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line for everything that went wrong, so a clean table cannot hide a broken run."""
    notes = []
    for row in rows:
        if row["missing"]:
            notes.append(f"- {row['transport']}: {row['missing']:,} of {row['expected']:,} deliveries "
                         f"missing over {row['runs']} run(s)")
        for name, value in row["anomalies"].items():
            if value:
                notes.append(f"- {row['transport']}: {name}: {value}")
        stderr = [line for run in runs[row["transport"]] for line in run["server"]["stderr"]["first"]]
        notes.extend(f"- {row['transport']}: server stderr: {line}" for line in stderr[:PRINTED_STDERR_LINES])
    return notes


# --- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000, help="subscribers per run")
    parser.add_argument("--events", type=int, default=200, help="events published per run")
    parser.add_argument("--transport", choices=("ws", "sse", "both"), default="both")
    parser.add_argument("--size", type=int, default=200, help="encoded size of one event envelope, bytes")
    parser.add_argument("--rate", type=float, help="paced mode: events/s, one per request; without it, "
                        "throughput mode: batches back to back")
    parser.add_argument("--batch", type=int, default=10, help="events per request in throughput mode "
                        "(the server accepts up to 1,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per transport; the table shows medians")
    parser.add_argument("--clients", type=int, default=2, choices=(1, 2), help="load client processes")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without a delivery after the "
                        "last publish before the rest is reported missing")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the server, e.g. --server-arg=--queue-max-messages=5000")
    args = parser.parse_args(argv)
    if min(args.subscribers, args.events, args.runs, args.batch) < 1 or args.size < 1:
        parser.error("--subscribers, --events, --runs, --batch and --size must be positive")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def main() -> int:
    args = parse_args()
    command = shlex.join(sys.orig_argv)
    print(f"$ {command}\n", flush=True)
    transports = ("ws", "sse") if args.transport == "both" else (args.transport,)
    plans = {t: Plan(t, args.subscribers, args.events, args.size, args.rate, args.batch, args.clients,
                     args.stall, tuple(args.server_arg)) for t in transports}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    started, load_before = time.monotonic(), os.getloadavg()
    for index in range(args.runs):   # transports interleaved, so machine noise falls on both alike
        for transport in transports:
            result = run_once(plans[transport])
            runs[transport].append(result)
            print(f"run {index + 1}/{args.runs} {transport}: {result['deliveries_per_second']:,.0f} "
                  f"deliveries/s, {result['missing']:,} missing, {result['wall_seconds']:.1f}s", flush=True)
    rows = [summarize(plans[t], runs[t]) for t in transports]
    wall = time.monotonic() - started
    mode = f"paced at {args.rate:g} events/s" if args.rate else f"throughput, {args.batch} events/request"
    print(f"\n{mode}; medians of {args.runs} run(s); {os.cpu_count()} CPUs; wall {wall:.1f}s\n")
    print(markdown_table(rows))
    notes = anomaly_notes(rows, runs)
    smallest = min((row["event_bytes"] for row in rows if row["event_bytes"]), default=args.size)
    if smallest > args.size * 1.05:
        print(f"\nnote: --size {args.size} is below the smallest event this benchmark sends "
              f"({smallest:.0f} B: the envelope, the progress fields, bench_seq and sent_ns), "
              "so no padding was added")
    print("\n" + ("\n".join(notes) if notes
                  else "no anomalies: every subscriber got every event once, in order"))
    print(f"\nserver: {runs[transports[0]][0]['server']['command']}")
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({
        "command": command, "mode": mode, "wall_seconds": wall,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "tornado": tornado.version,
                    "platform": platform.platform(), "load_average_before": load_before},
        "arguments": vars(args), "summary": rows, "runs": runs}, indent=2) + "\n")
    print(f"\nwrote {RESULTS_PATH.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
