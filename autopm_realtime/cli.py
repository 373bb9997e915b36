"""The command line: `serve` (the default), `tail` and `publish`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Sequence

from . import __version__
from .client import AccessRefused, ClientGaveUp, bearer_authorization, server_url, subscribe
from .config import ConfigError, add_serve_arguments, settings_from

log = logging.getLogger("autopm_realtime")

EXIT_USAGE = 2
EXIT_FAILURE = 1
TOKEN_ENV = "AUTOPM_TOKEN"
PUBLISH_TOKEN_ENV = "AUTOPM_PUBLISH_TOKEN"   # the name `serve` reads its --publish-token from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopm-realtime",
        description="Real-time event hub for a software project (WebSocket + SSE). "
                    "With no command, serves the current directory on 127.0.0.1:8000.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,tail,publish,token}")

    serve = commands.add_parser("serve", help="run the server (the default command)")
    add_serve_arguments(serve)
    # `autopm-realtime --port 9000` means `serve --port 9000`, so the top-level help shows serve's flags.
    serve_help = serve.format_help()
    parser.epilog = "serve flags (the command may be left out):\n" + serve_help[serve_help.index("  --"):]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter

    tail = commands.add_parser("tail", help="print events as they arrive, reconnecting on its own")
    tail.add_argument("--url", default="http://127.0.0.1:8000", help="server URL [default: %(default)s]")
    tail.add_argument("--event-types", help="comma-separated event types [default: all]")
    tail.add_argument("--project-id", help="only this project's events [default: all]")
    tail.add_argument("--last-event-id", help="resume after this event id [default: live events only]")
    tail.add_argument("--sse", action="store_true",
                      help="use Server-Sent Events only [default: WebSocket, SSE if it is refused]")
    tail.add_argument("--json", action="store_true",
                      help="print each event as one JSON line [default: one human-readable line]")
    tail.add_argument("--max-retries", type=int, default=100,
                      help="consecutive failed reconnects before giving up [default: %(default)s]")
    add_token_argument(tail, "--token", TOKEN_ENV,
                       "a JWT, for a server started with --jwt-secret or --jwt-public-key (see the token "
                       "command), sent as 'Authorization: Bearer' on every connection")

    publish = commands.add_parser("publish", help="publish one event and print its id")
    publish.add_argument("--url", default="http://127.0.0.1:8000", help="server URL [default: %(default)s]")
    publish.add_argument("--type", required=True, help="event type, e.g. progress_update (required)")
    publish.add_argument("--project-id", required=True,
                         help="the project the event belongs to (required)")
    publish.add_argument("--data", default="{}", help="the event's data as a JSON object [default: {}]")
    add_token_argument(publish, "--token", TOKEN_ENV,
                       "a JWT that allows publishing (token --publish), or, as this flag meant before "
                       "--publish-token existed, the server's publish token")
    add_token_argument(publish, "--publish-token", PUBLISH_TOKEN_ENV,
                       "the server's --publish-token; tried first, then --token if the server refuses it")

    token = commands.add_parser("token", help="mint a JWT for a user, a dashboard or a test")
    key = token.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret", help="the server's --jwt-secret (HS256)")
    key.add_argument("--private-key", metavar="PEM_FILE",
                     help="the private key whose public half is the server's --jwt-public-key")
    token.add_argument("--project", action="append", default=None,
                       help="a project the token may see (repeatable; '*' for all) [default: *]")
    token.add_argument("--event-type", action="append", default=None,
                       help="an event type the token may see (repeatable) [default: all]")
    token.add_argument("--publish", action="store_true", help="allow publishing [default: no]")
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 2d [default: %(default)s]")
    token.add_argument("--subject", help="the token's 'sub' (rate limits count per subject)")
    token.add_argument("--audience", help="the 'aud' claim (the server's --jwt-audience)")
    token.add_argument("--issuer", help="the 'iss' claim (the server's --jwt-issuer)")
    return parser


def add_token_argument(parser: argparse.ArgumentParser, flag: str, env: str, meaning: str) -> None:
    """A credential flag. Its environment variable is read when the command runs, not here, so that
    `--help` cannot show its value as a default."""
    parser.add_argument(flag, metavar="TOKEN", help=f"{meaning} [default: none; env {env}]")


def given(flag_value: str | None, env: str) -> str | None:
    """The flag's value, else the environment's; None when blank. A flag wins, so `--token ''` sends no
    token whatever the environment holds."""
    value = flag_value if flag_value is not None else os.environ.get(env)
    return (value or "").strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    if args.command == "tail":
        return run_tail(args)
    if args.command == "publish":
        return run_publish(args)
    if args.command == "token":
        return run_token(args)
    return run_serve(args)


# --- serve -----------------------------------------------------------------------------------

def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ConfigError as error:
        print(f"autopm-realtime: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        from .workers import run_workers, serve_one_worker

        return run_workers(settings, serve_one_worker)
    from .server import serve

    try:
        asyncio.run(serve(settings, install_signal_handlers=True))
    except OSError as error:
        print(f"autopm-realtime: cannot listen on {settings.host}:{settings.port}: {error.strerror}",
              file=sys.stderr)
        return EXIT_FAILURE
    return 0


# --- token ------------------------------------------------------------------------------------

def run_token(args: argparse.Namespace) -> int:
    """Print a signed token; every refusal (bad TTL, key or project id) is a message and exit 2."""
    from .auth import parse_ttl
    from .tokens import mint_token

    projects = args.project or ["*"]
    try:
        private_key = None
        if args.private_key:
            with open(args.private_key, encoding="utf-8") as pem:
                private_key = pem.read()
        print(mint_token(secret=args.secret, private_key=private_key,
                         projects="*" if "*" in projects else projects, event_types=args.event_type,
                         publish=args.publish, ttl_seconds=parse_ttl(args.ttl), subject=args.subject,
                         audience=args.audience, issuer=args.issuer))
    except (ValueError, OSError) as error:
        print(f"autopm-realtime token: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


# --- publish ---------------------------------------------------------------------------------

def run_publish(args: argparse.Namespace) -> int:
    """Publish with each credential given in turn, the publish token first, until the server takes one.

    A server may take a JWT that allows publishing, its publish token, or either (when it has both), and
    reads each from the same `Authorization: Bearer` header, so one request carries one of them. A
    refusal (401 or 403) publishes nothing, which makes trying the next one safe.
    """
    try:
        data = json.loads(args.data)
    except ValueError as error:
        print(f"autopm-realtime publish: --data is not valid JSON: {error}", file=sys.stderr)
        return EXIT_USAGE
    credentials = (("the publish token", given(args.publish_token, PUBLISH_TOKEN_ENV)),
                   ("the token", given(args.token, TOKEN_ENV)))
    try:
        target = server_url(args.url) + "api/v1/events"
        attempts = [(label, bearer_authorization(value)) for label, value in credentials if value] \
            or [("", {})]
    except ValueError as error:   # a URL or a token that must not be sent, named without its secret
        print(f"autopm-realtime publish: {error}", file=sys.stderr)
        return EXIT_USAGE
    body = json.dumps({"type": args.type, "project_id": args.project_id, "data": data}).encode()
    return _post_until_accepted(args.url, target, body, attempts)


def _post_until_accepted(url: str, target: str, body: bytes,
                         attempts: list[tuple[str, dict[str, str]]]) -> int:
    """POST `body` with each `(label, Authorization header)` in turn until one is accepted (its id is
    printed); any answer but 401 and 403 ends the tries. The exit status."""
    refusals: list[tuple[str, str]] = []
    for label, authorization in attempts:
        request = urllib.request.Request(target, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **authorization})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                print(json.load(response)["id"])
                return 0
        except urllib.error.HTTPError as error:
            if error.code not in (401, 403):
                print(f"autopm-realtime publish: {error.code}: {_reason(error)}", file=sys.stderr)
                return EXIT_FAILURE
            refusals.append((label, f"HTTP {error.code}: {_reason(error)}"))
        except (urllib.error.URLError, OSError) as error:
            print(f"autopm-realtime publish: cannot reach {url}: {getattr(error, 'reason', error)}",
                  file=sys.stderr)
            return EXIT_FAILURE
    print(f"autopm-realtime publish: {url} {_refused_publish(refusals)}", file=sys.stderr)
    return EXIT_FAILURE


def _refused_publish(refusals: list[tuple[str, str]]) -> str:
    """Each credential tried, with the server's reason for refusing it; or, when none was given, which
    ones there are."""
    if refusals[0][0]:
        return "refused to publish: " + "; ".join(f"{label}: {reason}" for label, reason in refusals)
    return (f"refused to publish ({refusals[0][1]}); pass --token or --publish-token (or set {TOKEN_ENV} or "
            f"{PUBLISH_TOKEN_ENV})")


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return json.load(error)["error"]["reason"]
    except (ValueError, KeyError, TypeError):
        return error.reason


# --- tail ------------------------------------------------------------------------------------

def run_tail(args: argparse.Namespace) -> int:
    """Follow events until interrupted. A refused token ends it at once (exit 1) with the server's reason:
    reconnecting with the same token could only be refused again."""
    token = given(args.token, TOKEN_ENV)
    event_types = [t.strip() for t in args.event_types.split(",") if t.strip()] if args.event_types else None

    async def follow() -> None:
        async for message in subscribe(args.url, event_types=event_types, project_id=args.project_id,
                                       last_event_id=args.last_event_id,
                                       transport="sse" if args.sse else "auto",
                                       max_retries=args.max_retries, token=token):
            print(json.dumps(message) if args.json else describe(message), flush=True)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        return 0
    except ClientGaveUp as error:
        print(f"autopm-realtime tail: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except AccessRefused as error:
        if token:
            print(f"autopm-realtime tail: {args.url} refused the token ({error})", file=sys.stderr)
        else:
            print(f"autopm-realtime tail: {args.url} refused the connection ({error}); pass a token with "
                  f"--token or {TOKEN_ENV}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as error:   # a URL or token not to send, or a subscription refused as invalid
        print(f"autopm-realtime tail: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def describe(message: dict[str, Any]) -> str:
    """One human line per event: time, project, type and the fields that matter for that type."""
    data = message.get("data", {})
    kind = message.get("type")
    if kind == "reset":
        return f"-- position lost: {message.get('reason', '')}; following live events from here"
    detail = {
        "file_change": lambda: f"{data.get('change_type')} {data.get('file_path')}"
                               + (f" (from {data['old_path']})" if data.get("old_path") else ""),
        "auto_commit": lambda: f"{data.get('event')} changes={data.get('changes_count')}"
                               + (f" sha={str(data['sha'])[:12]}" if data.get("sha") else "")
                               + (f" reason={data['reason']}" if data.get("reason") else ""),
        "progress_update": lambda: f"{data.get('progress_percentage')}% "
                                   f"({data.get('completed_tasks')}/{data.get('total_tasks')})",
        "risk_alert": lambda: f"[{data.get('severity')}] {data.get('message')}",
    }.get(kind, lambda: json.dumps(data))()
    return f"{message.get('timestamp', '')} {message.get('project_id', '')} {kind}: {detail}"
