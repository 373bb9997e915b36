"""What a bearer token (JWT) lets its holder see, and where a request carries it.

No Tornado and no cryptography here (tokens.py verifies and signs, and is imported only when JWT auth is
on): handlers pass in the header, query parameter and cookie, and turn `TokenError` into 401 and
`ScopeError` into 403.

A token's claims, beyond the registered ones:

- `projects`: `"*"` (every project) or a list of project ids. **Missing means no project**: a token grants
  only what it names, so a token minted by some other tool for some other purpose sees nothing here.
- `event_types`: a list of event type names; missing means every type.
- `publish`: true to allow publishing (within the same projects and types); missing means false.

`exp` is required: a leaked token must stop working on its own. Mint long-lived tokens with a long TTL
rather than none at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .events import EVENT_TYPE_PATTERN, PROJECT_ID_PATTERN

TOKEN_COOKIE = "autopm_token"
TOKEN_QUERY_ARGUMENT = "token"


class TokenError(Exception):
    """The token is not acceptable (HTTP 401). `reason` is short and safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScopeError(Exception):
    """A valid token asked for more than it grants (HTTP 403). `reason` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants. `projects` / `event_types` None means all; an empty set means none."""

    subject: str | None = None
    projects: frozenset[str] | None = frozenset()
    event_types: frozenset[str] | None = None
    publish: bool = False
    expires_at: float | None = None

    def allows_project(self, project_id: str) -> bool:
        return self.projects is None or project_id in self.projects

    def check_project(self, project_id: str | None) -> None:
        """Refuse a subscription to a project outside the token. None ("every project I may see") passes:
        the caller must then still drop events of projects the token does not name (`allows_project`)."""
        if project_id is not None and not self.allows_project(project_id):
            raise ScopeError(f"token does not grant project {project_id!r}")

    def narrow_types(self, requested: frozenset[str] | None) -> frozenset[str] | None:
        """The types to subscribe to: `requested` (None: all the token allows) if the token allows them all.
        Asking beyond the token is refused rather than silently trimmed, so a client learns why."""
        if self.event_types is None:
            return requested
        if requested is None:
            return self.event_types
        beyond = requested - self.event_types
        if beyond:
            raise ScopeError("token does not grant event type(s) " + ", ".join(sorted(beyond)))
        return requested

    def check_publish(self, project_id: str, event_type: str) -> None:
        """Publishing needs `publish: true`, and stays within the token's projects and types."""
        if not self.publish:
            raise ScopeError("token does not grant publishing")
        self.check_project(project_id)
        self.narrow_types(frozenset((event_type,)))


def claims_from_payload(payload: dict[str, Any]) -> Claims:
    """The claims, shapes checked strictly: a token we cannot read exactly grants nothing."""
    exp = payload["exp"]
    if not is_finite_number(exp):
        raise TokenError("invalid claim 'exp'")
    subject = payload.get("sub")   # PyJWT has checked that it is a string
    if subject is not None and not _is_utf8(subject):
        raise TokenError("invalid claim 'sub'")
    publish = payload.get("publish", False)
    if not isinstance(publish, bool):
        raise TokenError("invalid claim 'publish'")
    try:
        projects = parse_projects(payload.get("projects", []))
    except ValueError:
        raise TokenError("invalid claim 'projects'") from None
    event_types = None
    if "event_types" in payload:
        try:
            event_types = parse_event_types(payload["event_types"])
        except ValueError:
            raise TokenError("invalid claim 'event_types'") from None
    return Claims(subject=subject, projects=projects, event_types=event_types, publish=publish,
                  expires_at=float(exp))


def is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:   # an int beyond any float
        return False


def _is_utf8(text: str) -> bool:
    """False for lone surrogates, which JSON can carry but our encoder (events.dumps) cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_projects(value: Any) -> frozenset[str] | None:
    if value == "*":
        return None
    if not isinstance(value, list) or not all(
            isinstance(item, str) and PROJECT_ID_PATTERN.match(item) for item in value):
        raise ValueError("projects must be '*' or a list of project ids (letters, digits, '.', '_', '-')")
    return frozenset(value)


def parse_event_types(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(
            isinstance(item, str) and EVENT_TYPE_PATTERN.match(item) for item in value):
        raise ValueError("event_types must be a list of event type names")
    return frozenset(value)


_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """Seconds from `45s`, `30m`, `1h`, `2d` or a bare number of seconds (the CLI's `--ttl`)."""
    match = _TTL.fullmatch(text.strip().lower())
    seconds = float(match[1]) * _TTL_UNITS[match[2]] if match else 0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"invalid TTL {text!r}: a positive number of seconds, or with s, m, h or d "
                         "(e.g. 30m, 1h, 2d)")
    return seconds


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_from_request(authorization_header: str | None, query_token: str | None,
                       cookie_token: str | None) -> str | None:
    """The token a request carries: an `Authorization: Bearer` header first; then the `token` query
    argument and the `autopm_token` cookie, for browsers' EventSource and WebSocket, which cannot set
    headers."""
    for candidate in (bearer_token(authorization_header), query_token, cookie_token):
        if candidate and candidate.strip():
            return candidate.strip()
    return None
