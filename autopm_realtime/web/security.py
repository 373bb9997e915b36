"""Who may talk to the server: the cross-origin policy and the publish token."""

from __future__ import annotations

import functools
import hmac
from typing import Iterable
from urllib.parse import urlsplit


class OriginPolicy:
    """Origins allowed cross-origin access, for HTTP (CORS headers) and WebSocket handshakes alike.

    Same-origin requests never need to be listed. With nothing listed, nothing cross-origin is allowed.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        allowed = [origin.strip().rstrip("/").lower() for origin in allowed]
        self.allow_any = "*" in allowed
        self.allowed = frozenset(origin for origin in allowed if origin != "*")

    def allows(self, origin: str) -> bool:
        return self.allow_any or origin.rstrip("/").lower() in self.allowed

    @staticmethod
    def is_same_origin(origin: str, host: str | None) -> bool:
        """The browser's origin names the host the request was sent to (as tornado's check does)."""
        return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


@functools.lru_cache(maxsize=8)
def origin_policy(allowed: tuple[str, ...]) -> OriginPolicy:
    """One shared policy per setting, not one per request: a server may hold 10,000 connections."""
    return OriginPolicy(allowed)


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so response timing does not reveal the token a byte at a time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
