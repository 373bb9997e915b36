"""Fan-out baseline: one server, N subscribers, M events — how fast, and at what server cost, every event
reaches every subscriber.

    python bench/fanout.py [--subscribers 1000] [--events 200] [--transport ws|sse|mixed|both] [--size 200]
                           [--rate R] [--batch 10] [--runs 3] [--clients 2]

The server runs as its own process, started the way users start it, so its CPU and memory are read from
/proc with nothing of the load client in them. The server is a `Target`: ours, or one of the peer
programs in bench/peers/ (compare.py runs those; this command runs ours). The subscribers live in 1-2
client processes (`loadclient.py`) whose own CPU is reported beside the server's, so a reader can see
which side was the limit. Without `--rate` events are published in batches as fast as the server accepts
them (throughput); with `--rate` one event per request at that pace (latency). Each run starts a fresh
server; the table shows medians over `--runs`, and `missing` sums every undelivered event of every run.
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
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import tornado

from loadclient import (EVENT_TYPE, PROJECT_ID, TRANSPORTS, ClientSpec, client_main, cpu_times,
                        raise_open_files_limit)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / "peers"
RESULTS_PATH = BENCH / "results" / "fanout-latest.json"
LATENCY_SAMPLES_MAX = 1_000_000      # beyond this many deliveries, latency is kept for every k-th subscriber
STARTUP_SECONDS = 20.0
CONNECT_SECONDS = 180.0              # for the clients to open all their subscriptions
PRINTED_STDERR_LINES = 3             # per row; the JSON keeps the first 10 of every run
PACE_SHORTFALL = 0.95                # a paced publisher below this share of --rate gets a note
SERVER_BOUND = 90.0                  # % of the window a throughput run's server should be running or runnable
OPEN_FILES = 65_536                  # wanted for this process and its children: one descriptor per connection
WS_STATS = ("/api/v1/dashboard/ws/stats", "websocket_connections")
SSE_STATS = ("/api/v1/sse/stats", "sse_connections")
STATS_PATHS = {"ws": (WS_STATS,), "sse": (SSE_STATS,), "mixed": (WS_STATS, SSE_STATS)}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server under test ---------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A server under test: ours (`python -m autopm_realtime`), or a peer program in bench/peers/.

    Only ours has stats endpoints, a history and replay; a peer is measured purely from outside.
    """

    name: str                      # as tables and `compare.py --only` name it
    transport: str                 # "ws", "sse", or "mixed" (half the subscribers each; ours only)
    peer: str | None = None        # bench/peers/<peer>.py; None for ours
    publish_port: bool = False     # the peer publishes on its own port (`--publish-port`)

    @property
    def ours(self) -> bool:
        return self.peer is None

    def command(self, port: int, publish_port: int, workdir: Path, extra_args: list[str]) -> list[str]:
        if self.peer is None:
            return [sys.executable, "-m", "autopm_realtime", "--port", str(port), "--project",
                    f"{workdir}={PROJECT_ID}", "--log-level", "warning", *extra_args]
        script = (PEERS_DIR / f"{self.peer}.py").relative_to(REPO)   # the server runs in REPO
        command = [sys.executable, str(script), "--port", str(port)]
        if self.publish_port:
            command += ["--publish-port", str(publish_port)]
        return command + extra_args


def ours(transport: str) -> Target:
    return Target(f"ours-{transport}", transport)


class Cpu(NamedTuple):
    running: float    # seconds on a CPU (user + system)
    waiting: float    # seconds runnable but not running: the machine's other processes had the cores
    ticks: float      # utime + stime from /proc/PID/stat, 10 ms resolution


class Server:
    """A target's server on free loopback ports, and what /proc says about it.

    `port` is where subscribers connect; `publish_port` takes the POSTs and the health check (the same
    port, except for a peer that cannot take a POST on its WebSocket server).
    """

    def __init__(self, target: Target, workdir: Path, extra_args: list[str]) -> None:
        self.target = target
        self.port = free_port()
        self.publish_port = self.port
        while target.publish_port and self.publish_port == self.port:
            self.publish_port = free_port()
        self.command = target.command(self.port, self.publish_port, workdir, extra_args)
        self.stderr_path = workdir / "server.stderr"
        raise_open_files_limit(OPEN_FILES)   # inherited: 10,000 subscribers are 10,000 of its descriptors
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
        connection = http.client.HTTPConnection("127.0.0.1", self.publish_port, timeout=10)
        try:
            connection.request("GET", path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stats(self) -> dict[str, Any] | None:
        """Our stats endpoints, summed over the target's transports: how many connections the server
        counts, and its counters (hub-wide, so read once). None for a peer, which has no such endpoint."""
        if not self.target.ours:
            return None
        bodies = [(self.get_json(path), key) for path, key in STATS_PATHS[self.target.transport]]
        return {"connections": sum(body[key] for body, key in bodies), "counters": bodies[0][0]["counters"]}

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
        self.port = port
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
        try:
            self._post([{"type": EVENT_TYPE, "project_id": PROJECT_ID,
                         "data": self._data(seq, sent_ns, self.padding)} for seq in seqs])
        except (OSError, RuntimeError, http.client.HTTPException) as error:
            self.errors.append(f"events {seqs.start}-{seqs.stop - 1}: {error}")
            self.unpublished += len(seqs)
            self.connection.close()   # http.client reconnects on the next request

    def publish_marker(self) -> str:
        """One event without `bench_seq`, published before the counted ones; its id (from the 202 reply)
        is where a resume starts. Should a server replay it too, the subscriber counts it as malformed."""
        data = {"progress_percentage": 0, "completed_tasks": 0, "total_tasks": 2}
        return self._post([{"type": EVENT_TYPE, "project_id": PROJECT_ID, "data": data}])["ids"][0]

    def _post(self, events: list[dict[str, Any]]) -> Any:
        """One POST; the 202 reply's JSON, or an exception."""
        self.connection.request("POST", "/api/v1/events", compact(events),
                                {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        reply = response.read()
        if response.status != 202:
            raise RuntimeError(f"{response.status}: {reply[:300]!r}")
        return json.loads(reply) if reply else None

    def run(self, events: int, batch: int, rate: float | None) -> float:
        """Publish every event; returns the publish rate achieved (events/s)."""
        started = time.monotonic()
        if rate is None:
            for start in range(0, events, batch):
                self.publish(range(start, min(start + batch, events)))
        else:
            self._run_paced(events, rate, started)
        return events / max(time.monotonic() - started, 1e-9)

    def _run_paced(self, events: int, rate: float, started: float) -> None:
        """One event per request, each sent at its time whether or not the server has answered the ones
        before: HTTP/1.1 pipelining on one connection, so the server still sees them in order. Waiting
        for each reply first would let a busy server slow the publisher down, and the run would measure
        a lower rate than asked for."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            replies = threading.Thread(target=self._read_replies, args=(sock, events), daemon=True)
            replies.start()
            for seq in range(events):
                delay = started + seq / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body = compact([{"type": EVENT_TYPE, "project_id": PROJECT_ID,
                                 "data": self._data(seq, time.monotonic_ns(), self.padding)}])
                sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            replies.join(60)

    def _read_replies(self, sock: socket.socket, count: int) -> None:
        """Count the pipelined replies; anything but 202 is an error for the table's notes."""
        stream = sock.makefile("rb")
        for seq in range(count):
            status_line = stream.readline()
            if not status_line:
                self.errors.append(f"connection closed after {seq} replies")
                self.unpublished += count - seq
                return
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = stream.read(length)
            if status_line.split()[1] != b"202":
                self.errors.append(f"event {seq}: {status_line.strip().decode()} {body[:200]!r}")
                self.unpublished += 1


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- one run -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Everything a run needs from the command line."""

    target: Target
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
        server = Server(plan.target, Path(workdir), list(plan.server_args))
        processes: list[multiprocessing.process.BaseProcess] = []
        try:
            seen["memory_idle"] = server.memory()
            pipes, processes = start_clients(plan, server.port)
            seen["readies"] = [receive(pipe, CONNECT_SECONDS, "connecting") for pipe in pipes]
            seen["stats_before"] = server.stats()
            seen["memory_connected"] = server.memory()
            publisher = Publisher(server.publish_port, plan.size, plan.events)

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
            seen["stats_after"] = server.stats()
            seen["publisher"] = publisher
        finally:
            stderr = server.stop()
            stop_clients(processes)
    result = measure(plan, seen)
    before, after = seen["stats_before"] or {}, seen["stats_after"] or {}
    result["server"] = {"command": shlex.join(server.command),
                        "connections_seen": before.get("connections"),
                        "counters_before": before.get("counters"),
                        "counters_after": after.get("counters"),
                        "stderr": problem_lines(stderr)}
    result["wall_seconds"] = time.monotonic() - wall_started
    return result


def start_clients(plan: Plan, port: int) -> tuple[list[Any], list[multiprocessing.process.BaseProcess]]:
    """Split the subscribers over `plan.clients` processes."""
    stride = max(1, -(-plan.subscribers * plan.events // LATENCY_SAMPLES_MAX))
    pipes, processes = [], []
    for k in range(plan.clients):
        first = plan.subscribers * k // plan.clients
        count = plan.subscribers * (k + 1) // plan.clients - first
        pipe, process = spawn_client(ClientSpec(plan.target.transport, port, first, count, plan.events,
                                                stride, plan.stall_seconds))
        pipes.append(pipe)
        processes.append(process)
    return pipes, processes


def spawn_client(spec: ClientSpec) -> tuple[Any, multiprocessing.process.BaseProcess]:
    """One load-client process (spawned: no inherited sockets or state) and the pipe to talk to it."""
    context = multiprocessing.get_context("spawn")
    ours_end, theirs = context.Pipe()
    process = context.Process(target=client_main, args=(theirs, spec), daemon=True)
    process.start()
    return ours_end, process


def stop_clients(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """They exit by themselves after reporting; one that does not (the run failed) is killed."""
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


def receive(pipe: Any, timeout: float, doing: str) -> dict[str, Any]:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a load client said nothing for {timeout:.0f}s while {doing}")
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError(f"a load client died while {doing} (its traceback is above)") from None


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
    return {
        "target": plan.target.name,
        "transport": plan.target.transport,
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
        "client_busy_percent": [100 * (r["cpu_seconds"] + r["waiting_seconds"]) / window for r in reports],
        "publisher_cpu_percent": 100 * seen["publisher_cpu"] / window,
        "machine_busy_percent": 100 * seen["machine_busy"],
        "publish_rate": seen["publish_rate"],
        "latency_ms": {"p50": quantile_ms(0.50), "p99": quantile_ms(0.99), "max": quantile_ms(1.0),
                       "samples": len(ordered)},
        "event_bytes": next((r["event_bytes"] for r in reports if r["event_bytes"]), None),
        "server_rss_mib": seen["memory_end"]["rss"] / 2**20,
        "server_peak_rss_mib": seen["memory_end"]["peak"] / 2**20,
        "rss_kib_per_subscriber": (seen["memory_connected"]["rss"] - seen["memory_idle"]["rss"])
                                  / 1024 / plan.subscribers,
        "publish_errors": publisher.errors,
        "unpublished_events": publisher.unpublished,
        "clients": [{**ready, **report} for ready, report in zip(seen["readies"], reports)],
    }


def problem_lines(stderr: str, keep: int = 10) -> dict[str, Any]:
    """The server's warnings and errors (ours runs at `--log-level warning`, so that is all it prints)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"lines": len(lines), "first": lines[:keep]}


# --- replay ------------------------------------------------------------------------------------

REPLAY_BATCH = 100   # events per POST while filling the history


@dataclass(frozen=True)
class ReplayPlan:
    """One resume of one subscriber on our server (peers keep no history)."""

    transport: str   # "ws" (`subscribe` with `last_event_id`) or "sse" (the `Last-Event-ID` header)
    events: int
    size: int
    stall_seconds: float
    server_args: tuple[str, ...]


def replay_once(plan: ReplayPlan) -> dict[str, Any]:
    """A fresh server holds `events` events and has no subscribers; then one subscriber resumes from the
    id just before them. The client times it, from its subscription request to the last replayed event,
    and checks that every event came exactly once and in order."""
    with tempfile.TemporaryDirectory(prefix="replay-") as workdir:
        server = Server(ours(plan.transport), Path(workdir), list(plan.server_args))
        processes: list[multiprocessing.process.BaseProcess] = []
        try:
            publisher = Publisher(server.publish_port, plan.size, plan.events)
            resume_after = publisher.publish_marker()
            publisher.run(plan.events, REPLAY_BATCH, None)
            pipe, process = spawn_client(ClientSpec(plan.transport, server.port, 0, 1, plan.events, 1,
                                                    plan.stall_seconds, last_event_id=resume_after))
            processes.append(process)
            ready = receive(pipe, CONNECT_SECONDS, "connecting")
            pipe.send("published")   # everything was, before it connected
            report = receive(pipe, plan.stall_seconds + 300, "replaying")
        finally:
            stderr = server.stop()
            stop_clients(processes)
    report.pop("latencies_ns")
    replayed = report["deliveries"] > 0
    return {"transport": plan.transport, "events": plan.events, "resumed_after": resume_after,
            "replay_ms": (report["last_delivery_ns"] - report["subscribed_ns"]) / 1e6 if replayed else None,
            "deliveries": report["deliveries"], "missing": report["missing"],
            "publish_errors": publisher.errors, "clients": [{**ready, **report}],
            "server": {"command": shlex.join(server.command), "stderr": problem_lines(stderr)}}


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


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(plan: Plan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; `missing` and the anomalies are summed, never medianed away."""
    return {
        "label": plan.target.name, "target": plan.target.name, "transport": plan.target.transport,
        "subscribers": plan.subscribers, "events": plan.events, "rate": plan.rate,
        "runs": len(runs), "expected": sum(run["expected"] for run in runs),
        **{key: median([run[key] for run in runs]) for key in (
            "event_bytes", "deliveries_per_second", "server_us_per_delivery", "server_rss_mib",
            "rss_kib_per_subscriber", "server_cpu_percent", "server_waiting_percent",
            "machine_busy_percent", "window_seconds", "publish_rate")},
        "latency_p50_ms": median([run["latency_ms"]["p50"] for run in runs]),
        "latency_p99_ms": median([run["latency_ms"]["p99"] for run in runs]),
        "client_cpu_percent_max": median([max(run["client_cpu_percent"]) for run in runs]),
        "client_busy_percent_max": median([max(run["client_busy_percent"]) for run in runs]),
        "server_busy_percent": median([run["server_cpu_percent"] + run["server_waiting_percent"]
                                       for run in runs]),
        "missing": sum(run["missing"] for run in runs),
        "anomalies": {
            **client_anomalies(runs),
            "slow_consumer_closes": sum(counter_growth(run, "slow_consumer_closes") for run in runs),
            "connections_the_server_did_not_count": sum(
                plan.subscribers - run["server"]["connections_seen"] for run in runs
                if run["server"]["connections_seen"] is not None),
        },
        "server_stderr": [line for run in runs for line in run["server"]["stderr"]["first"]],
    }


def summarize_replay(plan: ReplayPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median resume time; every miss, repeat and reordering of any run, summed."""
    times = [run["replay_ms"] for run in runs]
    return {"label": f"ours-{plan.transport} replay", "target": f"ours-{plan.transport}",
            "transport": plan.transport, "subscribers": 1, "events": plan.events, "runs": len(runs),
            "expected": plan.events * len(runs), "replay_ms": median(times),
            "event_bytes": median([run["clients"][0]["event_bytes"] for run in runs]),
            "replay_ms_min": min((t for t in times if t is not None), default=None),
            "replay_ms_max": max((t for t in times if t is not None), default=None),
            "missing": sum(run["missing"] for run in runs),
            "anomalies": client_anomalies(runs),
            "server_stderr": [line for run in runs for line in run["server"]["stderr"]["first"]]}


def client_anomalies(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the subscribers and the publisher saw go wrong, summed over the runs."""
    clients = [c for run in runs for c in run["clients"]]
    return {
        "duplicates": sum(c["duplicates"] for c in clients),
        "out_of_order": sum(c["out_of_order"] for c in clients),
        "malformed": sum(c["malformed"] for c in clients),
        "ended_early": sum(c["ended_early"] for c in clients),
        "endings": merge_counts(c["endings"] for c in clients),
        "connect_failures": merge_counts(c["connect_failures"] for c in clients),
        "error_messages": sum(c["controls"].get("error", 0) for c in clients),
        "resets": sum(c["controls"].get("reset", 0) for c in clients),
        "publish_errors": [e for run in runs for e in run["publish_errors"]],
    }


def counter_growth(run: dict[str, Any], name: str) -> int:
    """How much one of our hub's counters grew over a run; 0 for a peer, which has none."""
    before, after = run["server"]["counters_before"], run["server"]["counters_after"]
    return after[name] - before[name] if before and after else 0


def merge_counts(counts: Any) -> dict[str, int]:
    return dict(sum((Counter(count) for count in counts), Counter()))


def markdown_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = ["" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def anomaly_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line for everything that went wrong, so a clean table cannot hide a broken run."""
    notes = []
    for row in rows:
        label = row["label"]
        notes.extend(f"- {label}: {note}" for note in pace_notes(row))
        if row["missing"]:
            notes.append(f"- {label}: {row['missing']:,} of {row['expected']:,} deliveries "
                         f"missing over {row['runs']} run(s)")
        for name, value in row["anomalies"].items():
            if value:
                notes.append(f"- {label}: {name}: {value}")
        notes.extend(f"- {label}: server stderr: {line}"
                     for line in row["server_stderr"][:PRINTED_STDERR_LINES])
    return notes


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Leave the run's JSON behind (the README's figures are read from these files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def faulty(rows: list[dict[str, Any]]) -> bool:
    """Whether any delivery went wrong in any row (missing, repeated, reordered, malformed, a failed run
    or connection...): the exit status then says the figures are not to be trusted."""
    return any(row["missing"] or any(row["anomalies"].values()) for row in rows)


def pace_notes(row: dict[str, Any]) -> list[str]:
    """When something other than intended set a run's pace: in throughput mode the server should be busy
    the whole window; in paced mode the publisher should keep `--rate`."""
    notes = []
    busy, client = row.get("server_busy_percent"), row.get("client_busy_percent_max")
    if row.get("rate") is None and busy is not None and busy < SERVER_BOUND:
        notes.append(f"the server was running or runnable for only {busy:.0f}% of the window (busiest load "
                     f"client: {client:.0f}% CPU + waiting for a core): something besides the server's CPU "
                     "set the pace")
    if pace_shortfall(row):
        notes.append(f"the publisher reached only {row['publish_rate']:.0f} of {row['rate']:g} events/s (its "
                     "pipelined requests queued in the socket: the server did not read them at that pace)")
    return notes


def pace_shortfall(row: dict[str, Any]) -> bool:
    """A paced row whose publisher fell behind: its latency was measured at a lower rate than asked."""
    rate, achieved = row.get("rate"), row.get("publish_rate")
    return bool(rate and achieved is not None and achieved < PACE_SHORTFALL * rate)


def small_size_note(rows: list[dict[str, Any]], size: int) -> str | None:
    """`--size` below the smallest event this benchmark can send adds no padding: say so."""
    smallest = min((row["event_bytes"] for row in rows if row.get("event_bytes")), default=size)
    if smallest <= size * 1.05:
        return None
    return (f"note: --size {size} is below the smallest event this benchmark sends ({smallest:.0f} B: the "
            "envelope, the progress fields, bench_seq and sent_ns), so no padding was added")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "tornado": tornado.version,
            "platform": platform.platform(), "load_average": os.getloadavg()}


# --- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000, help="subscribers per run")
    parser.add_argument("--events", type=int, default=200, help="events published per run")
    parser.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="both",
                        help="both: ws and sse, interleaved; mixed: half the subscribers each, in one run")
    add_load_arguments(parser)
    parser.add_argument("--rate", type=float, help="paced mode: events/s, one per request; without it, "
                        "throughput mode: batches back to back")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where the JSON results go")
    args = parser.parse_args(argv)
    if min(args.subscribers, args.events, args.runs, args.batch) < 1 or args.size < 1:
        parser.error("--subscribers, --events, --runs, --batch and --size must be positive")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this command shares with compare.py."""
    parser.add_argument("--size", type=int, default=200, help="encoded size of one event envelope, bytes")
    parser.add_argument("--batch", type=int, default=10, help="events per request in throughput mode "
                        "(the server accepts up to 1,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the table shows medians")
    parser.add_argument("--clients", type=int, default=2, choices=(1, 2), help="load client processes")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without a delivery after the "
                        "last publish before the rest is reported missing")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for our server, e.g. --server-arg=--queue-max-messages=5000")


def main() -> int:
    args = parse_args()
    command = shlex.join(sys.orig_argv)
    print(f"$ {command}\n", flush=True)
    transports = ("ws", "sse") if args.transport == "both" else (args.transport,)
    plans = {t: Plan(ours(t), args.subscribers, args.events, args.size, args.rate, args.batch, args.clients,
                     args.stall, tuple(args.server_arg)) for t in transports}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    started, machine_before = time.monotonic(), machine()
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
    notes = anomaly_notes(rows)
    size_note = small_size_note(rows, args.size)
    if size_note:
        print("\n" + size_note)
    print("\n" + ("\n".join(notes) if notes
                  else "no anomalies: every subscriber got every event once, in order"))
    print(f"\nserver: {runs[transports[0]][0]['server']['command']}")
    write_results(args.output, {"command": command, "mode": mode, "wall_seconds": wall, "machine": machine_before,
                                "arguments": vars(args), "summary": rows, "runs": runs})
    return 1 if faulty(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
