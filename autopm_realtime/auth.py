"""Bearer tokens (JWT): verifying them, minting them, and what a verified token lets its holder see.

No Tornado here: handlers pass in the header, query parameter and cookie, and turn `TokenError` into 401
and `ScopeError` into 403.

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
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import exceptions as jwt_errors

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


class TokenVerifier:
    """Checks tokens against one key: a shared `secret` (HS256) or a `public_key` PEM (RS256 for RSA, ES256
    for EC P-256, chosen from the key). Only that one algorithm is accepted, which refuses `alg: none` and
    HS/RS confusion (an HS256 token whose HMAC secret is our public key).

    `exp` is required. With `audience` set the token's `aud` must name it; without, a token that carries an
    `aud` is refused (it was meant for someone else). With `issuer` set, `iss` must equal it. `leeway`
    (seconds) tolerates clock skew for `exp`, `nbf` and `iat`.
    """

    def __init__(self, secret: str | None = None, public_key: str | None = None, audience: str | None = None,
                 issuer: str | None = None, leeway: float = 0) -> None:
        self.algorithm, self._key = _prepared_key(secret, public_key, private=False)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token: str) -> Claims:
        try:
            payload = jwt.decode(token, self._key, algorithms=[self.algorithm], audience=self.audience,
                                 issuer=self.issuer, leeway=self.leeway, options={"require": ["exp"]})
        except jwt_errors.PyJWTError as error:
            raise TokenError(_reason(error)) from None
        return _claims(payload)


# Most specific first: InvalidSignatureError is a DecodeError, and all are PyJWTErrors.
_REASONS: tuple[tuple[type[jwt_errors.PyJWTError], str], ...] = (
    (jwt_errors.ExpiredSignatureError, "token expired"),
    (jwt_errors.ImmatureSignatureError, "token not yet valid"),
    (jwt_errors.InvalidAudienceError, "wrong audience"),
    (jwt_errors.InvalidIssuerError, "wrong issuer"),
    (jwt_errors.InvalidAlgorithmError, "unsupported algorithm"),
    (jwt_errors.InvalidSignatureError, "bad signature"),
    (jwt_errors.InvalidIssuedAtError, "invalid claim 'iat'"),
    (jwt_errors.InvalidSubjectError, "invalid claim 'sub'"),
    (jwt_errors.InvalidJTIError, "invalid claim 'jti'"),
    (jwt_errors.DecodeError, "malformed token"),
)


def _reason(error: jwt_errors.PyJWTError) -> str:
    if isinstance(error, jwt_errors.MissingRequiredClaimError):
        return f"missing {error.claim}"
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid token"


def _claims(payload: dict[str, Any]) -> Claims:
    """The claims, shapes checked strictly: a token we cannot read exactly grants nothing."""
    exp = payload["exp"]
    if not _is_number(exp):
        raise TokenError("invalid claim 'exp'")
    subject = payload.get("sub")   # PyJWT has checked that it is a string
    if subject is not None and not _is_utf8(subject):
        raise TokenError("invalid claim 'sub'")
    publish = payload.get("publish", False)
    if not isinstance(publish, bool):
        raise TokenError("invalid claim 'publish'")
    try:
        projects = _projects(payload.get("projects", []))
    except ValueError:
        raise TokenError("invalid claim 'projects'") from None
    event_types = None
    if "event_types" in payload:
        try:
            event_types = _event_types(payload["event_types"])
        except ValueError:
            raise TokenError("invalid claim 'event_types'") from None
    return Claims(subject=subject, projects=projects, event_types=event_types, publish=publish,
                  expires_at=float(exp))


def _is_number(value: Any) -> bool:
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


def _projects(value: Any) -> frozenset[str] | None:
    if value == "*":
        return None
    if not isinstance(value, list) or not all(
            isinstance(item, str) and PROJECT_ID_PATTERN.match(item) for item in value):
        raise ValueError("projects must be '*' or a list of project ids (letters, digits, '.', '_', '-')")
    return frozenset(value)


def _event_types(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(
            isinstance(item, str) and EVENT_TYPE_PATTERN.match(item) for item in value):
        raise ValueError("event_types must be a list of event type names")
    return frozenset(value)


def _prepared_key(secret: str | None, pem: str | None, *, private: bool) -> tuple[str, Any]:
    """The algorithm and the key ready for PyJWT. Checked once here, so a weak or wrong key fails at
    startup with ValueError rather than as a warning or a refusal on every request."""
    which = "private_key" if private else "public_key"
    if (secret is None) == (pem is None):
        raise ValueError(f"give exactly one of secret (HS256) or {which} (PEM)")
    if pem is None:
        algorithm, key = "HS256", secret
    else:
        key = _load_pem(pem, private=private)
        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            algorithm = "RS256"
        elif isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
                and isinstance(key.curve, ec.SECP256R1):
            algorithm = "ES256"
        else:
            raise ValueError(f"{which} must be an RSA key (RS256) or an EC P-256 key (ES256), "
                             f"not {type(key).__name__}")
    handler = jwt.get_algorithm_by_name(algorithm)
    try:
        prepared = handler.prepare_key(key)
    except jwt_errors.InvalidKeyError as error:   # e.g. a PEM given as the HMAC secret
        raise ValueError(f"unusable {algorithm} key: {error}") from None
    weakness = handler.check_key_length(prepared)
    if weakness:
        raise ValueError(weakness)
    return algorithm, prepared


def _load_pem(pem: str, *, private: bool) -> Any:
    try:
        if private:
            return serialization.load_pem_private_key(pem.encode(), password=None)
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as error:   # TypeError: an encrypted private key
        kind = "an unencrypted PEM private key" if private else "a PEM public key (BEGIN PUBLIC KEY)"
        raise ValueError(f"not {kind}: {error}") from None


def mint_token(*, secret: str | None = None, private_key: str | None = None, projects: list[str] | str = "*",
               event_types: list[str] | None = None, publish: bool = False, ttl_seconds: float,
               subject: str | None = None, audience: str | None = None, issuer: str | None = None,
               now: float | None = None) -> str:
    """A signed token: HS256 with `secret`, RS256/ES256 with a `private_key` PEM (chosen from the key).
    `projects`, `event_types` and `publish` are checked as `TokenVerifier` checks them, so a minted token
    is never refused for its shape."""
    if not (_is_number(ttl_seconds) and ttl_seconds > 0):
        raise ValueError("ttl_seconds must be a positive number")
    if not isinstance(publish, bool):
        raise ValueError("publish must be true or false")
    _projects(projects)
    algorithm, key = _prepared_key(secret, private_key, private=True)
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"projects": projects, "publish": publish, "iat": int(issued),
                               "exp": math.ceil(issued + ttl_seconds)}
    if event_types is not None:
        _event_types(event_types)
        payload["event_types"] = event_types
    for name, value in (("sub", subject), ("aud", audience), ("iss", issuer)):
        if value is not None:
            payload[name] = value
    return jwt.encode(payload, key, algorithm=algorithm)


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
