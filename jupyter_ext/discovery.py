"""Where a notebook finds the event hub, so that nobody copies URLs and tokens into cells.

`resolve_server(url=None, token=None)` decides, each setting on its own, in this order:

1. the arguments: `url` is the hub's base URL — a standalone server's root (`http://127.0.0.1:8000/`) or
   a Jupyter server's URL plus `autopm/` (`http://127.0.0.1:8888/autopm/`); `token` is sent as
   `Authorization: Bearer <token>`, where a standalone server reads its JWT (`--jwt-secret`) and its
   publish token, and Jupyter Server its own token;
2. the environment: `AUTOPM_URL` and `AUTOPM_TOKEN`;
3. discovery: the running Jupyter server that owns this kernel — the kernel's id comes from ipykernel's
   connection file (`kernel-<id>.json`), and each server that `list_running_servers()` reports is asked
   for its `/api/kernels` with its own token; when none of them has the kernel (or this is not a kernel)
   the only running server is taken. Its URL plus `autopm/` and its token are used.

When nothing is found, `ServerNotFound` says what was tried and how to give a URL instead.
`start_standalone_server()` runs a standalone server in a subprocess (a `ServerProcess`), and
`find_or_start_server()` starts one only when nothing was given or found: what the example notebooks do.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from autopm_realtime.client import bearer_authorization, server_url

ENV_URL = "AUTOPM_URL"
ENV_TOKEN = "AUTOPM_TOKEN"
EXTENSION_PATH = "autopm/"      # where the server extension mounts the hub under Jupyter's base URL
PROBE_TIMEOUT = 2.0             # seconds for each running server to answer /api/kernels
START_TIMEOUT = 20.0            # seconds for a standalone server to log its URL
LOG_LINES = 200                 # a standalone server's last log lines kept, for error messages
SERVING = re.compile(r"autopm-realtime serving (https?://\S+/)")
CONNECTION_FILE = re.compile(r"kernel-(.+)\.json")


class ServerNotFound(LookupError):
    """No URL was given and none could be discovered, or a URL has no hub behind it (HTTP 404)."""


@dataclass(frozen=True)
class ServerInfo:
    """The hub to talk to: its base URL (ending in `/`), the token if any, and where the URL came from:
    `source` is "argument", "environment", "jupyter" (discovered) or "standalone" (started here)."""

    url: str
    token: str | None = field(default=None, repr=False)
    source: str = "argument"

    def headers(self) -> dict[str, str]:
        """The HTTP headers every request to this server carries."""
        return bearer_authorization(self.token)


def normalize_url(url: str) -> str:
    """An http(s) base URL with a host and no credentials, ending in `/`; ValueError otherwise."""
    try:
        return server_url(url.strip())
    except ValueError as error:
        raise ValueError(f"{error}, e.g. http://127.0.0.1:8000/ or http://127.0.0.1:8888/autopm/") from None


def resolve_server(url: str | None = None, token: str | None = None, *,
                   environ: Mapping[str, str] | None = None, runtime_dir: str | None = None,
                   kernel_id: str | None = None, timeout: float = PROBE_TIMEOUT) -> ServerInfo:
    """The hub to use: arguments first, then `AUTOPM_URL`/`AUTOPM_TOKEN`, then the Jupyter server that
    owns this kernel (see the module's docstring). A token given (argument, then `AUTOPM_TOKEN`) wins
    over a discovered one.

    `environ`, `runtime_dir` (Jupyter's runtime directory) and `kernel_id` replace what this process
    would look at; they exist for tests and tools, a notebook leaves them out.
    """
    environ = os.environ if environ is None else environ
    token = token if token is not None else (environ.get(ENV_TOKEN) or None)
    if url:
        return ServerInfo(normalize_url(url), token, "argument")
    if environ.get(ENV_URL):
        return ServerInfo(normalize_url(environ[ENV_URL]), token, "environment")
    info = find_jupyter_server(kernel_id, runtime_dir=runtime_dir, timeout=timeout)
    base = normalize_url(info["url"])
    return ServerInfo(base + EXTENSION_PATH, token if token is not None else (info.get("token") or None),
                      "jupyter")


# --- Jupyter servers ---------------------------------------------------------------------------------

def current_kernel_id() -> str | None:
    """This kernel's id, from ipykernel's connection file; None outside a kernel or for a kernel that
    was not started by a Jupyter server (its connection file is not named `kernel-<id>.json`)."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")   # imported by every running ipykernel
    if kernelapp is None or not kernelapp.IPKernelApp.initialized():
        return None
    match = CONNECTION_FILE.fullmatch(os.path.basename(kernelapp.IPKernelApp.instance().connection_file))
    return match.group(1) if match else None


def running_servers(runtime_dir: str | None = None) -> list[dict[str, Any]]:
    """The running Jupyter servers' info (url, token, pid, root_dir, ...) that can be reached over TCP."""
    from jupyter_server.serverapp import list_running_servers

    return [info for info in list_running_servers(runtime_dir)
            if isinstance(info.get("url"), str) and info["url"].startswith(("http://", "https://"))]


def kernel_ids(info: Mapping[str, Any], timeout: float = PROBE_TIMEOUT) -> set[str]:
    """The ids of the kernels a running server has (`GET /api/kernels` with its token); empty when it
    does not answer or refuses."""
    request = urllib.request.Request(normalize_url(info["url"]) + "api/kernels",
                                     headers=bearer_authorization(info.get("token")))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kernels = json.load(response)
    except (OSError, ValueError):   # URLError and HTTPError are OSErrors; bad JSON is a ValueError
        return set()
    return {k["id"] for k in kernels if isinstance(k, dict) and isinstance(k.get("id"), str)} \
        if isinstance(kernels, list) else set()


def server_for_kernel(kernel_id: str, servers: Iterable[Mapping[str, Any]] | None = None, *,
                      runtime_dir: str | None = None,
                      timeout: float = PROBE_TIMEOUT) -> dict[str, Any] | None:
    """The running server that has the kernel `kernel_id`, or None."""
    for info in running_servers(runtime_dir) if servers is None else servers:
        if kernel_id in kernel_ids(info, timeout):
            return dict(info)
    return None


def find_jupyter_server(kernel_id: str | None = None, *, runtime_dir: str | None = None,
                        timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """The server owning `kernel_id` (default: this kernel's), else the only running server."""
    kernel_id = kernel_id or current_kernel_id()
    servers = running_servers(runtime_dir)
    if kernel_id is not None:
        owner = server_for_kernel(kernel_id, servers, timeout=timeout)
        if owner is not None:
            return owner
    if len(servers) == 1:
        return dict(servers[0])
    how = (f"pass url= (and token=), or set {ENV_URL} (and {ENV_TOKEN}): a standalone server's URL such as "
           f"http://127.0.0.1:8000/, or a Jupyter server's URL followed by {EXTENSION_PATH}")
    if not servers:
        from jupyter_core.paths import jupyter_runtime_dir

        raise ServerNotFound(f"no running Jupyter server found in {runtime_dir or jupyter_runtime_dir()}; "
                             + how)
    owner_note = f"none of them has kernel {kernel_id}" if kernel_id else "this is not a Jupyter kernel"
    listed = ", ".join(sorted(str(info["url"]) for info in servers))
    raise ServerNotFound(f"{len(servers)} Jupyter servers are running ({listed}) and {owner_note}; " + how)


# --- checking a server, and a standalone server when there is none ---------------------------------

def hub_problem(server: ServerInfo, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when `GET api/v1/health` answers as the hub does (200, or 503 while its broker is down);
    else what is wrong. PermissionError when the server refuses the token."""
    request = urllib.request.Request(server.url + "api/v1/health", headers=server.headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise PermissionError(f"{server.url} refused the request (HTTP {error.code}): "
                                  + ("check the token" if server.token else "it needs a token")) from None
        if error.code == 503:
            return None
        return f"{server.url}api/v1/health answered HTTP {error.code}" + (
            " (is the jupyter_ext server extension enabled?)" if server.source == "jupyter" else "")
    except OSError as error:
        return f"cannot reach {server.url}: {error}"


def find_or_start_server(url: str | None = None, token: str | None = None, *,
                         args: Iterable[str] = ("--no-watch", "--auto-commit", "off"),
                         timeout: float = START_TIMEOUT) -> tuple[ServerInfo, ServerProcess | None]:
    """`resolve_server(url, token)`, or a standalone server started for this notebook when neither an
    argument nor the environment names one and no Jupyter server with the hub is found.

    Returns the server and the `ServerProcess` started (None when an existing server is used); stop it
    when done. A URL that was given is used as it is, even when it does not answer yet. The standalone
    server serves an empty temporary directory as project `demo` with the `serve` flags `args`; its
    `reason` says why it was started.
    """
    try:
        server = resolve_server(url, token)
    except ServerNotFound as error:
        reason = str(error)
    else:
        reason = hub_problem(server) if server.source == "jupyter" else None
        if reason is None:
            return server, None
    directory = tempfile.mkdtemp(prefix="autopm-notebook-")
    process = ServerProcess(["--project", f"{directory}=demo", *args], timeout=timeout, cleanup=directory)
    process.reason = reason
    return process.server, process


class ServerProcess:
    """`python -m autopm_realtime serve --port 0 ...` running in a subprocess.

    Its log (stderr) is read by a thread for the whole life of the process, so the pipe never fills up;
    the last `LOG_LINES` lines are kept in `log`. `url` is the URL it logged and `server` the matching
    `ServerInfo`; `stop()` ends it (also at interpreter exit, in case a notebook is closed before its last
    cell runs) and removes the directory `cleanup` if one was given.
    """

    reason: str | None = None   # why it was started, when find_or_start_server started it

    def __init__(self, args: Iterable[str], *, timeout: float = START_TIMEOUT,
                 env: Mapping[str, str] | None = None, cleanup: str | None = None) -> None:
        command = [sys.executable, "-m", "autopm_realtime", "serve", "--port", "0", *args]
        self.cleanup = cleanup
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=_importable(env))
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        found: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_log, args=(found,), daemon=True)
        self._reader.start()
        atexit.register(self.stop)
        try:
            url = found.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            self.stop()
            raise RuntimeError(f"the server did not start within {timeout:g} s: "
                               + " | ".join(self.log)[-2000:])
        self.url = url
        self.server = ServerInfo(url, None, "standalone")

    def _read_log(self, found: queue.Queue[str | None]) -> None:
        assert self.process.stderr is not None
        announced = False
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            match = None if announced else SERVING.search(line)
            if match:
                announced = True
                found.put(match.group(1))
        self.process.stderr.close()
        found.put(None)   # the process exited (before announcing, if nothing was put yet)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the server and wait for it; its exit code."""
        atexit.unregister(self.stop)
        code = terminate(self.process, timeout)
        self._reader.join(timeout)   # it has read the last of the log and closed the pipe
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def start_standalone_server(*projects: tuple[str | os.PathLike[str], str] | str | os.PathLike[str],
                            args: Iterable[str] = (), timeout: float = START_TIMEOUT) -> ServerProcess:
    """Start a standalone server on a free port serving `projects` (each a path, or `(path, id)`), with
    any further `serve` flags in `args`; returns once it logs its URL."""
    flags: list[str] = []
    for project in projects:
        path, project_id = project if isinstance(project, tuple) else (project, None)
        flags += ["--project", f"{Path(path)}={project_id}" if project_id else str(Path(path))]
    return ServerProcess([*flags, *args], timeout=timeout)


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if the process is still there after `timeout` seconds; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _importable(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment for the subprocess, able to import `autopm_realtime` from where we import it
    (a source checkout need not be installed)."""
    import autopm_realtime

    environment = dict(os.environ if env is None else env)
    root = str(Path(autopm_realtime.__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return environment
