"""Bearer tokens: real PyJWT, real keys made here; every refusal names its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from autopm_realtime.auth import TOKEN_COOKIE, Claims, ScopeError, TokenError, parse_ttl, token_from_request
from autopm_realtime.tokens import TokenVerifier, mint_token

SECRET = "s3cret-" + "x" * 32
OTHER_SECRET = "other-" + "y" * 32
FAR_FUTURE = 4_000_000_000


def private_pem(key: Any, password: bytes | None = None) -> str:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption).decode()


def public_pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys() -> SimpleNamespace:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other_ec_key = ec.generate_private_key(ec.SECP256R1())
    return SimpleNamespace(rsa_private=private_pem(rsa_key), rsa_public=public_pem(rsa_key),
                           ec_private=private_pem(ec_key), ec_public=public_pem(ec_key),
                           other_ec_private=private_pem(other_ec_key))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


def hs256_by_hand(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """HMAC-signed without PyJWT, which (rightly) refuses a PEM as an HMAC secret."""
    signing_input = segment(header) + "." + segment(payload)
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    return caught.value.reason


# --- accepted ----------------------------------------------------------------------------------

def test_hs256_round_trip_carries_every_claim():
    now = time.time()
    token = mint_token(secret=SECRET, projects=["alpha", "beta.2"], event_types=["file_change", "risk_alert"],
                       publish=True, ttl_seconds=3600, subject="ci-bot", audience="hub", issuer="autopm",
                       now=now)
    claims = TokenVerifier(secret=SECRET, audience="hub", issuer="autopm").verify(token)
    assert claims == Claims(subject="ci-bot", projects=frozenset({"alpha", "beta.2"}),
                            event_types=frozenset({"file_change", "risk_alert"}), publish=True,
                            expires_at=float(math.ceil(now + 3600)))


@pytest.mark.parametrize("kind, algorithm", [("rsa", "RS256"), ("ec", "ES256")])
def test_asymmetric_round_trip_picks_the_algorithm_from_the_key(keys, kind, algorithm):
    token = mint_token(private_key=getattr(keys, f"{kind}_private"), ttl_seconds=60)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    verifier = TokenVerifier(public_key=getattr(keys, f"{kind}_public"))
    assert verifier.algorithm == algorithm
    claims = verifier.verify(token)
    assert claims.projects is None and claims.event_types is None and claims.publish is False


def test_minted_defaults_are_all_projects_all_types_no_publish():
    claims = TokenVerifier(secret=SECRET).verify(mint_token(secret=SECRET, ttl_seconds=60))
    assert (claims.subject, claims.projects, claims.event_types, claims.publish) == (None, None, None, False)


def test_missing_projects_grants_no_project():
    claims = TokenVerifier(secret=SECRET).verify(hs256({"exp": FAR_FUTURE}))
    assert claims.projects == frozenset()
    assert not claims.allows_project("alpha")
    assert claims.event_types is None and claims.publish is False


def test_leeway_tolerates_clock_skew():
    token = mint_token(secret=SECRET, ttl_seconds=60, now=time.time() - 65)
    assert refused(TokenVerifier(secret=SECRET), token) == "token expired"
    assert TokenVerifier(secret=SECRET, leeway=30).verify(token).projects is None


# --- refused -----------------------------------------------------------------------------------

def test_forged_with_another_secret():
    token = mint_token(secret=OTHER_SECRET, ttl_seconds=60)
    assert refused(TokenVerifier(secret=SECRET), token) == "bad signature"


def test_forged_with_another_ec_key(keys):
    token = mint_token(private_key=keys.other_ec_private, ttl_seconds=60)
    assert refused(TokenVerifier(public_key=keys.ec_public), token) == "bad signature"


def test_tampered_payload():
    header, _, signature = mint_token(secret=SECRET, projects=["alpha"], ttl_seconds=60).split(".")
    forged = segment({"projects": "*", "publish": True, "exp": FAR_FUTURE})
    assert refused(TokenVerifier(secret=SECRET), f"{header}.{forged}.{signature}") == "bad signature"


def test_expired():
    token = mint_token(secret=SECRET, ttl_seconds=60, now=time.time() - 3600)
    assert refused(TokenVerifier(secret=SECRET), token) == "token expired"


def test_not_yet_valid():
    token = hs256({"exp": FAR_FUTURE, "nbf": int(time.time()) + 600})
    assert refused(TokenVerifier(secret=SECRET), token) == "token not yet valid"


def test_missing_exp():
    assert refused(TokenVerifier(secret=SECRET), hs256({"projects": "*"})) == "missing exp"


@pytest.mark.parametrize("audience, configured, reason", [
    ("other", "hub", "wrong audience"),
    (None, "hub", "missing aud"),
    ("hub", None, "wrong audience"),   # meant for some audience, and we did not say we were it
])
def test_audience(audience, configured, reason):
    token = mint_token(secret=SECRET, ttl_seconds=60, audience=audience)
    assert refused(TokenVerifier(secret=SECRET, audience=configured), token) == reason


def test_audience_list_naming_us_is_accepted():
    token = hs256({"exp": FAR_FUTURE, "aud": ["other", "hub"], "projects": "*"})
    assert TokenVerifier(secret=SECRET, audience="hub").verify(token).projects is None


@pytest.mark.parametrize("issuer, reason", [("someone-else", "wrong issuer"), (None, "missing iss")])
def test_issuer(issuer, reason):
    token = mint_token(secret=SECRET, ttl_seconds=60, issuer=issuer)
    assert refused(TokenVerifier(secret=SECRET, issuer="autopm"), token) == reason


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("kind", ["hs", "rsa", "ec"])
def test_alg_none(keys, kind, alg):
    verifier = (TokenVerifier(secret=SECRET) if kind == "hs"
                else TokenVerifier(public_key=getattr(keys, f"{kind}_public")))
    token = segment({"alg": alg, "typ": "JWT"}) + "." + segment({"projects": "*", "exp": FAR_FUTURE}) + "."
    assert refused(verifier, token) == "unsupported algorithm"


def test_hs_rs_confusion(keys):
    """An HS256 token whose HMAC secret is the server's public key: the attacker knows that key."""
    payload = {"projects": "*", "publish": True, "exp": FAR_FUTURE}
    token = hs256_by_hand({"alg": "HS256", "typ": "JWT"}, payload, keys.rsa_public.encode())
    assert refused(TokenVerifier(public_key=keys.rsa_public), token) == "unsupported algorithm"


def test_rs256_token_to_hs256_verifier(keys):
    token = mint_token(private_key=keys.rsa_private, ttl_seconds=60)
    assert refused(TokenVerifier(secret=SECRET), token) == "unsupported algorithm"


def test_es256_token_to_rs256_verifier(keys):
    token = mint_token(private_key=keys.ec_private, ttl_seconds=60)
    assert refused(TokenVerifier(public_key=keys.rsa_public), token) == "unsupported algorithm"


def test_hs256_token_to_rs256_verifier(keys):
    assert refused(TokenVerifier(public_key=keys.rsa_public),
                   mint_token(secret=SECRET, ttl_seconds=60)) == "unsupported algorithm"


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c", "not a token", "....", secrets.token_urlsafe(64),
    "é.é.é", segment({"alg": "HS256"}) + ".!!!.sig",
    b64(b"[" * 50_000 + b"]" * 50_000) + ".e30.sig",   # a header nested past the recursion limit
])
def test_malformed(token):
    assert refused(TokenVerifier(secret=SECRET), token) == "malformed token"


@pytest.mark.parametrize("claims, reason", [
    ({"projects": 5}, "invalid claim 'projects'"),
    ({"projects": ["bad id!"]}, "invalid claim 'projects'"),
    ({"projects": "alpha"}, "invalid claim 'projects'"),
    ({"projects": None}, "invalid claim 'projects'"),
    ({"projects": ["alpha", 7]}, "invalid claim 'projects'"),
    ({"projects": ["\ud800"]}, "invalid claim 'projects'"),
    ({"publish": "yes"}, "invalid claim 'publish'"),
    ({"publish": 1}, "invalid claim 'publish'"),
    ({"event_types": "x"}, "invalid claim 'event_types'"),
    ({"event_types": [1]}, "invalid claim 'event_types'"),
    ({"event_types": None}, "invalid claim 'event_types'"),
    ({"event_types": ["File Change"]}, "invalid claim 'event_types'"),
    ({"sub": 5}, "invalid claim 'sub'"),
    ({"sub": "\ud800"}, "invalid claim 'sub'"),
    ({"exp": "4000000000"}, "invalid claim 'exp'"),
    ({"exp": 10 ** 400}, "invalid claim 'exp'"),
    ({"exp": "tomorrow"}, "malformed token"),
])
def test_bad_claim_shapes(claims, reason):
    token = hs256({"exp": FAR_FUTURE, "projects": "*", **claims})
    assert refused(TokenVerifier(secret=SECRET), token) == reason


# --- keys and configuration --------------------------------------------------------------------

def test_verifier_needs_exactly_one_key(keys):
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier()
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(secret=SECRET, public_key=keys.rsa_public)


@pytest.mark.parametrize("make_pem, match", [
    (lambda keys: "not a key", "PEM public key"),
    (lambda keys: keys.rsa_private, "PEM public key"),
    (lambda keys: public_pem(ed25519.Ed25519PrivateKey.generate()), "RSA key .* or an EC P-256 key"),
    (lambda keys: public_pem(ec.generate_private_key(ec.SECP384R1())), "RSA key .* or an EC P-256 key"),
    (lambda keys: public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024 bits"),
])
def test_verifier_refuses_unusable_public_keys(keys, make_pem, match):
    with pytest.raises(ValueError, match=match):
        TokenVerifier(public_key=make_pem(keys))


@pytest.mark.parametrize("secret, match", [("short", "5 bytes"), ("", "empty")])
def test_verifier_refuses_weak_secrets(secret, match):
    with pytest.raises(ValueError, match=match):
        TokenVerifier(secret=secret)


def test_a_pem_is_not_an_hmac_secret(keys):
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(secret=keys.rsa_public)


@pytest.mark.parametrize("arguments, match", [
    ({"ttl_seconds": 0}, "ttl_seconds"),
    ({"ttl_seconds": -5}, "ttl_seconds"),
    ({"ttl_seconds": math.inf}, "ttl_seconds"),
    ({"ttl_seconds": 60, "projects": "alpha"}, "projects"),
    ({"ttl_seconds": 60, "projects": ["bad id!"]}, "projects"),
    ({"ttl_seconds": 60, "event_types": ["Bad"]}, "event_types"),
    ({"ttl_seconds": 60, "publish": "yes"}, "publish"),
])
def test_mint_refuses_what_the_verifier_would(arguments, match):
    with pytest.raises(ValueError, match=match):
        mint_token(secret=SECRET, **arguments)


def test_mint_refuses_unusable_private_keys(keys):
    encrypted = private_pem(ec.generate_private_key(ec.SECP256R1()), password=b"pw")
    for pem in (keys.rsa_public, encrypted, "garbage"):
        with pytest.raises(ValueError, match="unencrypted PEM private key"):
            mint_token(private_key=pem, ttl_seconds=60)
    with pytest.raises(ValueError, match="exactly one"):
        mint_token(secret=SECRET, private_key=keys.ec_private, ttl_seconds=60)


# --- scope -------------------------------------------------------------------------------------

def test_project_scope():
    claims = Claims(projects=frozenset({"alpha", "beta"}))
    assert claims.allows_project("alpha") and not claims.allows_project("gamma")
    claims.check_project(None)
    claims.check_project("beta")
    with pytest.raises(ScopeError, match="'gamma'"):
        claims.check_project("gamma")
    everything = Claims(projects=None)
    assert everything.allows_project("gamma")
    everything.check_project("gamma")


def test_default_claims_grant_no_project():
    with pytest.raises(ScopeError):
        Claims().check_project("alpha")


def test_narrow_types():
    unrestricted = Claims(event_types=None)
    assert unrestricted.narrow_types(None) is None
    assert unrestricted.narrow_types(frozenset({"risk_alert"})) == {"risk_alert"}
    limited = Claims(event_types=frozenset({"file_change", "risk_alert"}))
    assert limited.narrow_types(None) == {"file_change", "risk_alert"}
    assert limited.narrow_types(frozenset({"risk_alert"})) == {"risk_alert"}
    with pytest.raises(ScopeError) as caught:
        limited.narrow_types(frozenset({"risk_alert", "progress_update", "auto_commit"}))
    assert caught.value.reason == "token does not grant event type(s) auto_commit, progress_update"


def test_check_publish():
    claims = Claims(projects=frozenset({"alpha"}), event_types=frozenset({"progress_update"}), publish=True)
    claims.check_publish("alpha", "progress_update")
    with pytest.raises(ScopeError, match="project 'beta'"):
        claims.check_publish("beta", "progress_update")
    with pytest.raises(ScopeError, match="risk_alert"):
        claims.check_publish("alpha", "risk_alert")
    with pytest.raises(ScopeError, match="publishing"):
        Claims(projects=None, publish=False).check_publish("alpha", "progress_update")


# --- helpers for the CLI and the handlers ------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("1h", 3600), ("30m", 1800), ("45s", 45), ("2d", 172800), ("3600", 3600), (" 1H ", 3600), ("1.5h", 5400),
])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-5", "0", "0s", "1 h", "1hh", "inf", "nan", "1e3", "h1", "9" * 400])
def test_parse_ttl_refuses_garbage(text):
    with pytest.raises(ValueError, match="invalid TTL"):
        parse_ttl(text)


def test_token_from_request_precedence():
    assert TOKEN_COOKIE == "autopm_token"
    assert token_from_request("Bearer header-token", "query-token", "cookie-token") == "header-token"
    assert token_from_request("bearer  header-token ", None, None) == "header-token"
    assert token_from_request("Basic dXNlcjpwdw==", "query-token", "cookie-token") == "query-token"
    assert token_from_request("Bearer ", "query-token", "cookie-token") == "query-token"
    assert token_from_request(None, "query-token", "cookie-token") == "query-token"
    assert token_from_request(None, "", "cookie-token") == "cookie-token"
    assert token_from_request(None, None, "cookie-token") == "cookie-token"
    assert token_from_request(None, None, None) is None
    assert token_from_request("", " ", "") is None
