"""`tail` and `publish` against a real `serve --jwt-secret ... --publish-token ...`, with tokens minted by
`python -m autopm_realtime token`: every credential a server may ask for, from the flag or the
environment, and refusals that say why, exit non-zero and never show a secret."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from typing import Any, Iterator

import pytest

from support import WAIT, command, environment, file_change, free_port, serve_quietly
from test_cli import get_json, start_tail

pytestmark = pytest.mark.timeout(60)

SECRET = "cli-auth-secret-" + "s" * 32
PUBLISH_TOKEN = "cli-publish-token-" + "p" * 16


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=WAIT,
                          env=environment(**env))


def mint(*args: str) -> str:
    """A JWT from the `token` command, as a user mints one."""
    done = run("token", "--secret", SECRET, "--ttl", "10m", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def reader() -> str:
    return mint("--project", "my-project")


@pytest.fixture(scope="module")
def publisher() -> str:
    return mint("--project", "my-project", "--publish")


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    """`serve` with both kinds of credentials on: reading needs a JWT, publishing a JWT that allows it
    or the publish token. Yields its base URL."""
    process, port = serve_quietly("--project", f"{tmp_path}=my-project", "--no-watch", "--jwt-secret", SECRET,
                                  "--publish-token", PUBLISH_TOKEN)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.stop()


def published_id(server: str, token: str, body: Any) -> str:
    request = urllib.request.Request(server + "api/v1/events", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.load(response)["id"]


def history(server: str, token: str) -> list[dict[str, Any]]:
    return get_json(server + "api/v1/events", token)["events"]


# --- tail ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", [[], ["--sse"]], ids=["websocket", "sse"])
@pytest.mark.parametrize("way", ["flag", "environment"])
def test_tail_with_a_token_receives_events(server, reader, publisher, transport, way):
    # The flag beats a refused token in the environment; without the flag the environment is used.
    given = (["--token", reader], {"AUTOPM_TOKEN": "refused-" + reader}) if way == "flag" else \
        ([], {"AUTOPM_TOKEN": reader})
    tail = start_tail(server, "--json", *given[0], *transport, token=reader, env=given[1])
    try:
        event_id = published_id(server, publisher, file_change("src/secret.py"))
        event = json.loads(tail.stdout_line())
        assert (event["id"], event["data"]["file_path"]) == (event_id, "src/secret.py")
    finally:
        tail.stop()


@pytest.mark.parametrize("transport", [[], ["--sse"]], ids=["websocket", "sse"])
def test_tail_without_a_token_exits_1_with_the_servers_reason(server, transport):
    result = run("tail", "--url", server, *transport)   # 100 retries by default: it must not try them
    assert result.returncode == 1
    assert result.stderr.startswith(f"autopm-realtime tail: {server} refused the connection (HTTP 401: "
                                    "a token is required"), result.stderr
    assert "--token or AUTOPM_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("transport", [[], ["--sse"]], ids=["websocket", "sse"])
def test_tail_with_a_refused_token_exits_1_and_never_shows_it(server, reader, transport):
    forged = mint("--project", "my-project")[:-4] + "AAAA"   # its signature broken
    bad = run("tail", "--url", server, "--token", forged, *transport)
    beyond = run("tail", "--url", server, "--project-id", "elsewhere", *transport, AUTOPM_TOKEN=reader)
    assert (bad.returncode, beyond.returncode) == (1, 1)
    assert bad.stderr.startswith(f"autopm-realtime tail: {server} refused the token (HTTP 401: "), bad.stderr
    assert beyond.stderr == (f"autopm-realtime tail: {server} refused the token (HTTP 403: token does not "
                             "grant project 'elsewhere')\n")
    assert forged not in bad.stderr + bad.stdout and reader not in beyond.stderr + beyond.stdout


@pytest.mark.parametrize("transport", [[], ["--sse"]], ids=["websocket", "sse"])
def test_tail_exits_1_once_its_token_expires(server, reader, transport):
    """The server ends the connection when the token expires; the reconnect is refused and tail stops."""
    short_lived = mint("--project", "my-project", "--ttl", "3s")
    tail = start_tail(server, "--token", short_lived, *transport, token=reader)
    try:
        assert tail.popen.wait(timeout=WAIT) == 1
        assert tail.remaining_stderr()[-1] == (f"autopm-realtime tail: {server} refused the token "
                                               "(HTTP 401: token expired)")
    finally:
        tail.stop()


# --- publish -------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, env", [
    (["--token", "{publisher}"], {}),                       # a JWT that allows publishing
    ([], {"AUTOPM_TOKEN": "{publisher}"}),
    (["--publish-token", "{publish_token}"], {}),           # the server's publish token
    ([], {"AUTOPM_PUBLISH_TOKEN": "{publish_token}"}),
    (["--token", "{publish_token}"], {}),                   # what --token meant before: still works
    (["--token", "{reader}", "--publish-token", "{publish_token}"], {}),           # the JWT may not publish
    (["--token", "{publisher}"], {"AUTOPM_PUBLISH_TOKEN": "wrong-publish-token"}),  # a stale publish token
], ids=["jwt", "jwt-env", "publish-token", "publish-token-env", "token-as-publish-token",
        "reader-jwt-and-publish-token", "stale-publish-token-and-jwt"])
def test_publish_with_the_credential_the_server_takes(server, reader, publisher, flags, env):
    values = {"publisher": publisher, "reader": reader, "publish_token": PUBLISH_TOKEN}
    result = run("publish", "--url", server, "--type", "file_change", "--project-id", "my-project",
                 "--data", '{"file_path": "src/published.py", "change_type": "created"}',
                 *(flag.format(**values) for flag in flags),
                 **{name: value.format(**values) for name, value in env.items()})
    assert result.returncode == 0, result.stderr
    [event] = history(server, reader)
    assert (event["id"], event["data"]["file_path"]) == (result.stdout.strip(), "src/published.py")


def test_publish_without_a_credential_exits_1_and_says_what_to_give(server, reader):
    result = run("publish", "--url", server, "--type", "file_change", "--project-id", "my-project",
                 "--data", '{"file_path": "a.py", "change_type": "created"}')
    assert result.returncode == 1
    assert result.stderr.startswith(f"autopm-realtime publish: {server} refused to publish (HTTP 401: ")
    assert "--token or --publish-token" in result.stderr
    assert history(server, reader) == []


def test_publish_names_each_refused_credential_and_never_shows_them(server, reader):
    wrong = "wrong-publish-token-" + "w" * 16
    result = run("publish", "--url", server, "--type", "file_change", "--project-id", "my-project",
                 "--data", '{"file_path": "a.py", "change_type": "created"}', "--token", reader,
                 AUTOPM_PUBLISH_TOKEN=wrong)
    assert result.returncode == 1
    assert result.stderr.startswith(f"autopm-realtime publish: {server} refused to publish: the publish "
                                    "token: HTTP 401: "), result.stderr
    assert result.stderr.endswith("; the token: HTTP 403: this token does not allow publishing\n")
    assert wrong not in result.stderr and reader not in result.stderr
    assert history(server, reader) == []


# --- secrets in what is typed --------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["publish", "--type", "file_change", "--project-id", "p", "--token", "first-half\nsecret-half"],
    ["tail", "--max-retries", "0", "--token", "first-half\nsecret-half"],
    ["publish", "--type", "file_change", "--project-id", "p",
     "--url", "http://me:secret-half@127.0.0.1:{port}/"],
    ["tail", "--max-retries", "0", "--url", "http://me:secret-half@127.0.0.1:{port}/"],
    ["tail", "--max-retries", "0", "--url", "http://127.0.0.1:{port}/?token=secret-half"],
], ids=["publish-token-with-a-line-break", "tail-token-with-a-line-break", "publish-password-in-url",
        "tail-password-in-url", "tail-token-in-url"])
def test_a_credential_the_cli_cannot_send_is_refused_without_showing_it(args):
    port = str(free_port())
    result = run(*(arg.replace("{port}", port) for arg in args))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"autopm-realtime {args[0]}: "), result.stderr
    assert "secret-half" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
