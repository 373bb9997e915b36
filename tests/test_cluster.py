"""Several real server processes on one Redis broker: cross-process delivery and resume, a Redis that
restarts under them, `serve --workers` (sharing a port, crashed workers, SIGTERM), source ownership by
the Redis lock, and a server that is killed and restarted. Every server is `python -m autopm_realtime
serve` in a subprocess; clients use real sockets. Last, the Redis tasks' shutdown in-process."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
from tornado.httpclient import AsyncHTTPClient

from support import (SCRATCH_REDIS_PASSWORD, SERVING, WAIT, Process, ScratchRedis, SseClient, WsClient,
                     command, environment, eventually, free_port, publish, redis_answers, require)

try:
    import redis
except ImportError:   # the [redis] extra brings redis-py; require() below turns this into a skip/failure
    redis = None

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]   # several server processes and redis-servers

REDIS_URL = os.environ.get("AUTOPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROJECT = "cluster"
PASSWORD = SCRATCH_REDIS_PASSWORD
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
FILE_CHANGES = "?event_types=file_change"


def change(n: int | str) -> dict[str, Any]:
    return {"type": "file_change", "project_id": PROJECT,
            "data": {"file_path": f"src/{n}.py", "change_type": "modified"}}


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_url() -> str:
    require(redis is not None, "the Redis broker needs redis-py: pip install -e '.[redis]'")
    require(redis_answers(REDIS_URL), f"no Redis answers at {REDIS_URL} (set AUTOPM_TEST_REDIS_URL)")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards (never a FLUSHDB)."""
    name = f"autopm-cluster-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def sse_readers_end(io_loop) -> Iterator[None]:
    """Close this test's SSE clients and let their reader tasks finish while the loop still runs (no
    in-process server turns the loop after the test here)."""
    yield
    readers = [client for client in SseClient.opened]
    for client in readers:
        client.close()

    async def ended() -> None:
        await asyncio.wait([asyncio.shield(client.ended) for client in readers], timeout=WAIT)

    if readers:
        io_loop.run_sync(ended)


@pytest.fixture
def http() -> Iterator[AsyncHTTPClient]:
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


class Server:
    """One `serve` subprocess that has logged its URL."""

    def __init__(self, process: Process, url: str) -> None:
        self.process = process
        self.url = url
        self.port = int(re.search(r":(\d+)/$", url).group(1))

    def kill(self) -> None:
        """SIGKILL: a crash, nothing runs on the way down."""
        self.process.popen.kill()
        self.process.popen.wait(WAIT)


class Cluster:
    """Starts servers on one broker and prefix; every process is stopped after the test."""

    def __init__(self, project: Path, broker: str, prefix: str) -> None:
        self.project = project
        self.broker = broker
        self.prefix = prefix
        self.processes: list[Process] = []
        self.extra_pids: list[int] = []   # workers of `--workers` parents, in case a parent dies first

    def spawn(self, *args: str, broker: str | None = None) -> Process:
        process = Process("serve", "--port", "0", "--broker", broker or self.broker,
                          "--redis-prefix", self.prefix, "--project", f"{self.project}={PROJECT}",
                          "--log-level", "info", *args)
        self.processes.append(process)
        return process

    @staticmethod
    def ready(process: Process) -> Server:
        return Server(process, process.stderr_match(SERVING).group(1))

    def start(self, *args: str, broker: str | None = None, count: int = 1) -> list[Server]:
        """`count` servers started at once (so their start-ups overlap), each once it serves."""
        spawned = [self.spawn(*args, broker=broker) for _ in range(count)]
        return [self.ready(process) for process in spawned]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        for pid in self.extra_pids:   # only if the pid is still one of ours (not reused since)
            try:
                ours = self.prefix.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if ours:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cluster(tmp_path, prefix, redis_url) -> Iterator[Cluster]:
    project = tmp_path / "project"
    project.mkdir()
    servers = Cluster(project, redis_url, prefix)
    yield servers
    servers.stop()


@pytest.fixture
def scratch_redis(tmp_path, redis_url) -> Iterator[ScratchRedis]:
    require(shutil.which("redis-server") is not None, "redis-server is not on PATH")
    server = ScratchRedis(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.kill()


# --- helpers -------------------------------------------------------------------------------------

async def until(probe: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll an async probe until it returns something true; that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def health(http: AsyncHTTPClient, port: int) -> tuple[int, dict[str, Any]]:
    response = await http.fetch(f"http://127.0.0.1:{port}/api/v1/health", raise_error=False,
                                request_timeout=5)
    return response.code, json.loads(response.body)


async def accepted(http: AsyncHTTPClient, port: int, body: Any) -> str:
    """Publish; must be accepted. Its id."""
    response = await publish(http, port, body)
    assert response.code == 202, (response.code, response.body)
    return json.loads(response.body)["id"]


async def ws_subscriber(port: int, **fields: Any) -> tuple[WsClient, dict[str, Any]]:
    client, _ = await WsClient.connected(port)
    confirmed = await client.subscribe(event_types=["file_change"], **fields)
    return client, confirmed


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


def sse_ids(messages: list[dict[str, Any]]) -> list[str]:
    assert all(m["event"] is None for m in messages), messages   # no reset, no other control message
    assert all(m["id"] == m["data"]["id"] for m in messages), messages
    return [m["id"] for m in messages]


def rest_of_stderr(process: Process) -> list[str]:
    """Every stderr line of an exited process (those read so far and the rest)."""
    lines = list(process.seen)
    while True:
        try:
            line = process.stderr.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("stderr did not end") from None
        if line is None:
            return lines
        lines.append(line)


async def ws_until_closed(client: WsClient) -> list[dict[str, Any]]:
    """The events a WebSocket received before its server went away."""
    received = []
    while True:
        raw = await client.receive_raw()
        if raw is None:
            return received
        message = json.loads(raw)
        if message["type"] != "heartbeat":
            received.append(message)


async def sse_until_ended(client: SseClient) -> list[dict[str, Any]]:
    await client.end_of_stream()
    received = []
    while not client.messages.empty():
        message = client.messages.get_nowait()
        if message["event"] != "heartbeat":
            received.append(message)
    return received


# --- 1. two servers, one stream --------------------------------------------------------------------

async def test_an_event_published_on_one_server_reaches_clients_of_the_other(cluster, http):
    a, b = cluster.start("--no-watch", count=2)
    ws_a, _ = await ws_subscriber(a.port)
    ws_b, _ = await ws_subscriber(b.port)
    sse_a, _ = await SseClient.connected(a.port, FILE_CHANGES)
    sse_b, _ = await SseClient.connected(b.port, FILE_CHANGES)
    published = [await accepted(http, a.port, change("on-a")), await accepted(http, b.port, change("on-b"))]
    for ws in (ws_a, ws_b):
        received = await ws.events(2)
        assert ids(received) == published
        assert [m["data"]["file_path"] for m in received] == ["src/on-a.py", "src/on-b.py"]
    for sse in (sse_a, sse_b):
        assert sse_ids(await sse.events(2)) == published
    await ws_a.expect_silence(0.2)
    await ws_b.expect_silence(0.2)


# --- 2. resume on another server -------------------------------------------------------------------

async def test_a_client_resumes_on_another_server_with_exactly_what_it_missed(cluster, http):
    a, b = cluster.start("--no-watch", count=2)
    ws, _ = await ws_subscriber(a.port)
    sse, _ = await SseClient.connected(a.port, FILE_CHANGES)
    first = await accepted(http, a.port, change(0))
    [seen_ws] = await ws.events(1)
    [seen_sse] = await sse.events(1)
    assert seen_ws["id"] == seen_sse["id"] == first
    ws.close()
    sse.close()
    missed = [await accepted(http, a.port, change(1)), await accepted(http, b.port, change(2)),
              await accepted(http, a.port, change(3))]

    ws, confirmed = await ws_subscriber(b.port, last_event_id=seen_ws["id"])
    assert confirmed["recovered"] is True and confirmed["replayed"] == 3, confirmed
    assert ids(await ws.events(3)) == missed
    sse, _ = await SseClient.connected(b.port, FILE_CHANGES, headers={"Last-Event-ID": seen_sse["id"]})
    assert sse_ids(await sse.events(3)) == missed
    await ws.expect_silence(0.2)

    live = await accepted(http, a.port, change(4))   # then live, once
    assert ids(await ws.events(1)) == [live]
    assert sse_ids(await sse.events(1)) == [live]
    await ws.expect_silence(0.2)


# --- 3. Redis restarts under the servers ---------------------------------------------------------

async def test_redis_restart_loses_nothing_accepted_and_delivers_nothing_refused(cluster, scratch_redis,
                                                                                 http):
    await scratch_redis.ready()
    a, b = cluster.start("--no-watch", broker=scratch_redis.url, count=2)
    ws_clients = [(await ws_subscriber(server.port))[0] for server in (a, b)]
    sse_clients = [(await SseClient.connected(server.port, FILE_CHANGES))[0] for server in (a, b)]
    published = [await accepted(http, server.port, change(n)) for n, server in enumerate((a, b, a))]
    for ws in ws_clients:
        assert ids(await ws.events(3)) == published
    for sse in sse_clients:
        assert sse_ids(await sse.events(3)) == published

    scratch_redis.kill()
    for server in (a, b):
        started = time.monotonic()
        response = await asyncio.wait_for(publish(http, server.port, change(f"refused-{server.port}")), 5)
        assert time.monotonic() - started < 3.0   # the broker's socket timeout (2 s) bounds it
        assert response.code == 503, (response.code, response.body)
        reason = json.loads(response.body)["error"]["reason"]
        assert "broker" in reason and f"127.0.0.1:{scratch_redis.port}" in reason, reason
        assert PASSWORD not in response.body.decode()
        code, body = await until(lambda: health(http, server.port), 5, "health degraded")
        assert code == 503 and body["status"] == "degraded", body
        assert body["broker"]["state"] == "degraded" and body["broker"]["connected"] is False, body
        assert PASSWORD not in json.dumps(body)

    scratch_redis.start()
    await scratch_redis.ready()
    for server in (a, b):
        await until(lambda: _health_ok(http, server.port), 10, "health back to 200")
    published += [await accepted(http, server.port, change(n)) for n, server in enumerate((b, a, b), 3)]
    for ws in ws_clients:
        received = await ws.events(3)
        assert ids(received) == published[3:]
        assert all("refused" not in m["data"]["file_path"] for m in received)
        await ws.expect_silence(0.3)
    for sse in sse_clients:
        assert sse_ids(await sse.events(3)) == published[3:]
    code, body = await health(http, a.port)
    assert code == 200 and body["broker"]["reconnects"] >= 1, body
    # What a late subscriber reads back from the restarted Redis: every accepted event, in order.
    response = await http.fetch(f"http://127.0.0.1:{b.port}/api/v1/events?limit=100")
    assert ids(json.loads(response.body)["events"]) == published


async def _health_ok(http: AsyncHTTPClient, port: int) -> bool:
    code, body = await health(http, port)
    return code == 200 and body["broker"]["state"] == "ok"


# --- 4. serve --workers ----------------------------------------------------------------------------

WORKER_STARTING = re.compile(r"worker (\d+) \(pid (\d+)\) starting")


def worker_pids(parent: Process) -> list[int]:
    """The workers started so far, oldest first (from the lines read so far)."""
    return [int(m.group(2)) for m in map(WORKER_STARTING.search, parent.seen) if m]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_workers_share_one_port_and_stop_cleanly_on_sigterm(cluster, http):
    parent = cluster.spawn("--no-watch", "--workers", "2")
    first = cluster.ready(parent)
    second = cluster.ready(parent)   # both workers listen
    assert first.port == second.port
    port = first.port
    pids = set(worker_pids(parent))
    cluster.extra_pids += pids
    assert len(pids) == 2 and parent.popen.pid not in pids, parent.seen
    assert any(f"2 workers serving port {port}" in line for line in parent.seen), parent.seen

    for _ in range(4):
        code, body = await health(http, port)
        assert code == 200 and body["broker"]["kind"] == "redis", body
    clients = await asyncio.gather(*(WsClient.connected(port) for _ in range(20)))
    # Each worker numbers its own connections from 1, so a repeated id means two workers answered.
    connection_ids = [established["connection_id"] for _, established in clients]
    assert len(set(connection_ids)) < len(connection_ids), connection_ids
    subscribers = [client for client, _ in clients]
    for client in subscribers:
        await client.subscribe(event_types=["file_change"])
    published = [await accepted(http, port, change(n)) for n in range(6)]   # a connection each
    for client in subscribers:
        assert ids(await client.events(6)) == published

    parent.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert parent.popen.wait(WAIT) == 0
    stopped_in = time.monotonic() - started
    assert stopped_in < 5.0, stopped_in
    for client in subscribers:
        code, reason = await client.closed()
        assert code == 1001, (code, reason)

    await eventually(lambda: all(map(gone, pids)))
    lines = rest_of_stderr(parent)
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert not any("Traceback" in line or " ERROR " in line or " CRITICAL " in line for line in lines), lines
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as sock:   # nothing holds the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


async def test_a_crashed_worker_is_replaced_until_the_restarts_run_out(cluster, http):
    parent = cluster.spawn("--no-watch", "--workers", "2", "--worker-restarts", "1")
    port = cluster.ready(parent).port
    cluster.ready(parent)
    first = worker_pids(parent)
    cluster.extra_pids += first
    os.kill(first[0], signal.SIGKILL)
    parent.stderr_match(re.compile(rf"worker \d \(pid {first[0]}\) exited with -9"))
    cluster.ready(parent)   # its replacement listens
    [replacement] = set(worker_pids(parent)) - set(first)
    cluster.extra_pids.append(replacement)
    clients = await asyncio.gather(*(WsClient.connected(port) for _ in range(12)))
    connection_ids = [established["connection_id"] for _, established in clients]
    assert len(set(connection_ids)) < len(connection_ids), connection_ids   # both workers answer
    for client, _ in clients:
        await client.subscribe(event_types=["file_change"])
    published = await accepted(http, port, change("after-restart"))
    for client, _ in clients:
        assert ids(await client.events(1)) == [published]

    os.kill(replacement, signal.SIGKILL)   # a second crash: the one restart allowed is used up
    assert parent.popen.wait(WAIT) == 1
    await eventually(lambda: all(map(gone, first + [replacement])))
    lines = rest_of_stderr(parent)
    assert any("worker restarts exhausted (--worker-restarts 1)" in line for line in lines), lines
    assert all(LOG_LINE.match(line) for line in lines) and not any("Traceback" in l for l in lines), lines


async def test_sigterm_during_a_workers_restart_delay_stops_everything(cluster):
    """The parent waits a second before replacing a crashed worker; a SIGTERM in that second must stop
    the server, not be followed by a new worker that nobody stops (the parent would wait for it)."""
    parent = cluster.spawn("--no-watch", "--workers", "2")
    cluster.ready(parent)
    cluster.ready(parent)
    first = worker_pids(parent)
    cluster.extra_pids += first
    os.kill(first[0], signal.SIGKILL)
    parent.stderr_match(re.compile(rf"worker \d \(pid {first[0]}\) exited with -9"))
    parent.popen.send_signal(signal.SIGTERM)   # well within the restart delay (1 s)
    started = time.monotonic()
    try:
        code = parent.popen.wait(5)
    except subprocess.TimeoutExpired:
        code = None
    lines = rest_of_stderr(parent) if code is not None else list(parent.seen)
    later = [int(m.group(2)) for m in map(WORKER_STARTING.search, lines) if m]
    cluster.extra_pids += later
    assert code == 0, f"the parent did not exit within 5 s of SIGTERM: {lines}"
    assert time.monotonic() - started < 5.0
    assert set(later) == set(first), lines   # no worker started after the SIGTERM
    await eventually(lambda: all(map(gone, first)))


def test_workers_without_a_redis_broker_exit_2_naming_broker(tmp_path):
    result = subprocess.run(command("serve", "--workers", "2", "--port", "0", "--project", str(tmp_path)),
                            capture_output=True, text=True, timeout=WAIT, env=environment())
    assert result.returncode == 2, result
    assert "--broker" in result.stderr and "--workers 2" in result.stderr, result.stderr


# --- 5. source ownership ----------------------------------------------------------------------------

OWNER_TTL = 2.0


async def owners(http: AsyncHTTPClient, servers: list[Server]) -> list[Server]:
    found = []
    for server in servers:
        _, body = await health(http, server.port)
        if body["sources"][PROJECT]:
            found.append(server)
    return found


async def changes_of(client: WsClient, name: str, quiet: float) -> list[dict[str, Any]]:
    """The file_change events whose path contains `name`, until nothing has come for `quiet` seconds."""
    found = []
    try:
        while True:
            message = await client.receive(quiet)
            if message["type"] == "file_change" and name in message["data"]["file_path"]:
                found.append(message)
    except asyncio.TimeoutError:
        return found


async def watching(directory: Path, client: WsClient, tag: str, timeout: float = 10.0) -> None:
    """The owner's watcher starts in the background after it takes the lock: write probe files until
    one is reported, then let the probes' events pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for n in range(1000):
        assert loop.time() < deadline, "no watcher reported a probe file"
        (directory / f"probe-{tag}-{n}.txt").write_text("probe")
        try:
            message = await client.receive(0.3)
        except asyncio.TimeoutError:
            continue
        if message["type"] == "file_change":
            break
    await changes_of(client, "probe-", quiet=0.5)


async def test_exactly_one_server_runs_a_projects_sources_and_another_takes_over(cluster, http):
    servers = cluster.start("--auto-commit", "off", "--owner-ttl", str(OWNER_TTL), count=2)
    [owner] = await until(lambda: owners(http, servers), 5, "one owner")
    await asyncio.sleep(OWNER_TTL / 2)   # a renewal or two: the other must still not own it
    assert await owners(http, servers) == [owner]
    [other] = [server for server in servers if server is not owner]
    clients = [(await ws_subscriber(server.port))[0] for server in servers]
    await watching(cluster.project, clients[0], "first")
    for client in clients[1:]:
        await changes_of(client, "probe-", quiet=0.2)

    (cluster.project / "written.txt").write_text("hello")
    for seen in await asyncio.gather(*(changes_of(client, "written.txt", quiet=0.7) for client in clients)):
        [event] = seen   # one, not one per server
        assert event["data"]["change_type"] == "created", event

    owner.kill()
    killed_at = time.monotonic()
    await until(lambda: owners(http, [other]), 2 * OWNER_TTL + 1, "takeover")
    took_over_in = time.monotonic() - killed_at
    assert took_over_in < 2 * OWNER_TTL + 0.5, took_over_in
    [survivor] = [client for client, server in zip(clients, servers) if server is other]
    await watching(cluster.project, survivor, "second")
    (cluster.project / "after.txt").write_text("again")
    [event] = await changes_of(survivor, "after.txt", quiet=0.7)
    assert event["data"]["change_type"] == "created", event


# --- 6. a server killed and restarted ----------------------------------------------------------------

async def test_a_client_resumes_on_a_restarted_server_with_nothing_lost(cluster, http):
    port = free_port()
    a = cluster.start("--no-watch", "--port", str(port))[0]
    [b] = cluster.start("--no-watch")
    ws, _ = await ws_subscriber(a.port)
    sse, _ = await SseClient.connected(a.port, FILE_CHANGES)
    published = [await accepted(http, a.port, change(0))]
    assert ids(await ws.events(1)) == published
    assert sse_ids(await sse.events(1)) == published

    published.append(await accepted(http, a.port, change(1)))   # right before the crash
    a.kill()
    published += [await accepted(http, b.port, change(n)) for n in (2, 3)]   # while it is down
    ws_seen = published[:1] + ids(await ws_until_closed(ws))
    sse_seen = published[:1] + sse_ids(await sse_until_ended(sse))
    assert ws_seen == published[:len(ws_seen)] and sse_seen == published[:len(sse_seen)]

    [restarted] = cluster.start("--no-watch", "--port", str(port))
    assert restarted.port == port
    ws, confirmed = await ws_subscriber(port, last_event_id=ws_seen[-1])
    assert confirmed["recovered"] is True and confirmed["replayed"] == len(published) - len(ws_seen)
    assert ws_seen + ids(await ws.events(len(published) - len(ws_seen))) == published
    sse, _ = await SseClient.connected(port, FILE_CHANGES, headers={"Last-Event-ID": sse_seen[-1]})
    assert sse_seen + sse_ids(await sse.events(len(published) - len(sse_seen))) == published
    await ws.expect_silence(0.2)

    live = await accepted(http, b.port, change(4))
    assert ids(await ws.events(1)) == [live]
    assert sse_ids(await sse.events(1)) == [live]


# --- shutting down while a Redis command is in flight ----------------------------------------------

async def test_stop_ends_the_redis_tasks_wherever_their_cancel_lands(redis_url, prefix):
    """`stop()` cancels the lock's and the broker reader's looping tasks. On Python 3.11 a cancel that
    lands just as one of redis-py's socket writes completes is lost (`asyncio.wait_for`, CPython
    gh-86296), and a task that loops would then never end: `stop()` must still return. Stops at every
    point of the first commands' exchange (connection handshake included)."""
    import redis.asyncio as aioredis

    from autopm_realtime.brokers.redis import RedisBroker
    from autopm_realtime.ownership import SourceOwnership

    async def nothing() -> None:
        pass

    hung = []
    for turns in range(40):
        client = aioredis.from_url(redis_url, socket_timeout=2.5, socket_connect_timeout=2.5)
        ownership = SourceOwnership(client, f"{prefix}:owner:p{turns}", 10.0, nothing, nothing)
        broker = RedisBroker(redis_url, history_size=10, prefix=prefix)
        await broker.start()
        ownership.start()
        for _ in range(turns):
            await asyncio.sleep(0)
        for name, stop in (("ownership", ownership.stop), ("broker", broker.stop)):
            started = time.monotonic()
            try:   # (a stop that wait_for cancels may still return normally: it swallows the cancel)
                await asyncio.wait_for(stop(), 1.0)
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - started >= 1.0:
                hung.append((name, turns))
        for task in (ownership._task, broker._reader):   # what a hung stop left behind
            if task is not None:
                for _ in range(20):
                    if task.done():
                        break
                    task.cancel()
                    await asyncio.wait([task], timeout=0.1)
        await client.aclose()
    assert not hung, f"stop() did not return (which task, after how many loop turns): {hung}"
