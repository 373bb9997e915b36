"""Verifying and minting JWTs (PyJWT and cryptography, imported only when JWT auth is on or a token is
minted). What the claims mean is in auth.py."""

from __future__ import annotations

import math
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import exceptions as jwt_errors

from .auth import (Claims, TokenError, claims_from_payload, is_finite_number, parse_event_types,
                   parse_projects)


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
        return claims_from_payload(payload)


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
    if not (is_finite_number(ttl_seconds) and ttl_seconds > 0):
        raise ValueError("ttl_seconds must be a positive number")
    if not isinstance(publish, bool):
        raise ValueError("publish must be true or false")
    parse_projects(projects)
    algorithm, key = _prepared_key(secret, private_key, private=True)
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"projects": projects, "publish": publish, "iat": int(issued),
                               "exp": math.ceil(issued + ttl_seconds)}
    if event_types is not None:
        parse_event_types(event_types)
        payload["event_types"] = event_types
    for name, value in (("sub", subject), ("aud", audience), ("iss", issuer)):
        if value is not None:
            payload[name] = value
    return jwt.encode(payload, key, algorithm=algorithm)
