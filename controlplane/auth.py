"""JWT auth for the control plane and the gateway (SPEC section 4, "Auth").

Tokens are signed RS256 or ES256 (the pinned list) and checked against one public key
(PEM) or a JWKS file, both loaded once at start. The algorithm always comes from our pinned
list and the key's own type, never from the token alone: `alg: none` and HS256 signed with
the public key's bytes fail before any signature check. `exp` is required; issuer and
audience are enforced when configured. Every failure is ApiError("unauthorized") with a
short reason; PyJWT's own texts and the token's contents are never echoed at length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, ed448, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tsplit.errors import ApiError

MUTATION_ROLES = frozenset({"owner", "admin"})
MAX_LEEWAY_S = 30
MAX_TOKEN_LENGTH = 16 * 1024

# Asymmetric algorithms only: an HS* secret would have to be shared with every verifier.
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED_ALGORITHMS = frozenset((*_RSA_ALGORITHMS, *_EC_ALGORITHMS_BY_CURVE.values(), "EdDSA"))


@dataclass(frozen=True)
class AuthSettings:
    public_key_path: str | None = None
    jwks_path: str | None = None
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: int = 30


@dataclass(frozen=True)
class Principal:
    sub: str
    org_id: str
    roles: frozenset[str]

    @property
    def can_mutate(self) -> bool:
        return bool(self.roles & MUTATION_ROLES)


@dataclass(frozen=True)
class _VerificationKey:
    kid: str | None
    algorithms: frozenset[str]  # the pinned algorithms this key can verify
    key: Any  # a cryptography public key


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(_RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS_BY_CURVE.get(key.curve.name)
        return frozenset({algorithm} if algorithm else ())
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"})
    return frozenset()


def _check_settings(settings: AuthSettings) -> None:
    if (settings.public_key_path is None) == (settings.jwks_path is None):
        raise ValueError("auth needs exactly one of a public key file (--jwt-public-key) or a JWKS file (--jwks)")
    unsupported = [a for a in settings.algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported or not settings.algorithms:
        raise ValueError(f"JWT algorithms {list(settings.algorithms)} must be asymmetric ones from "
                         f"{sorted(SUPPORTED_ALGORITHMS)}; 'none' and HS* are never accepted")
    if not 0 <= settings.leeway_s <= MAX_LEEWAY_S:
        raise ValueError(f"JWT leeway must be 0 to {MAX_LEEWAY_S} s, got {settings.leeway_s}")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None


def _load_pem(path: str, pinned: frozenset[str]) -> list[_VerificationKey]:
    data = _read(path)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key or certificate") from None
    algorithms = _algorithms_for(key) & pinned
    if not algorithms:
        raise ValueError(f"the {type(key).__name__} in {path} fits none of the pinned algorithms {sorted(pinned)}")
    return [_VerificationKey(None, algorithms, key)]


def _load_jwk(jwk: Any, path: str, pinned: frozenset[str]) -> _VerificationKey | None:
    """One JWKS entry as a verification key; None for keys not meant for signatures."""
    if not isinstance(jwk, Mapping):
        raise ValueError(f"{path}: every entry of 'keys' must be an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"{path}: kid {kid!r} must be a string")
    if jwk.get("kty") == "oct" or "d" in jwk:
        raise ValueError(f"{path}: key {kid!r} is a secret or private key; a JWKS for verifiers holds public keys only")
    if jwk.get("use", "sig") != "sig" or ("alg" in jwk and jwk["alg"] not in SUPPORTED_ALGORITHMS):
        return None  # an encryption key, or one for an algorithm we never accept
    try:
        key = jwt.PyJWK(dict(jwk)).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: key {kid!r} cannot be loaded ({err})") from None
    algorithms = _algorithms_for(key) & pinned
    if "alg" in jwk:
        algorithms &= {jwk["alg"]}
    return _VerificationKey(kid, frozenset(algorithms), key) if algorithms else None


def _load_jwks(path: str, pinned: frozenset[str]) -> list[_VerificationKey]:
    data = _read(path)
    try:
        document = json.loads(data)
    except ValueError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{path} is not a JWKS: expected {{\"keys\": [...]}}")
    keys = [k for k in (_load_jwk(jwk, path, pinned) for jwk in document["keys"]) if k is not None]
    if not keys:
        raise ValueError(f"{path} has no signature key for the pinned algorithms {sorted(pinned)}")
    kids = [k.kid for k in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise ValueError(f"{path}: with several keys, each needs its own kid")
    return keys


def _unauthorized(reason: str) -> ApiError:
    return ApiError("unauthorized", reason)


def _reason(err: jwt.PyJWTError) -> str:
    """Our words for PyJWT's failures (its texts are not part of our API)."""
    if isinstance(err, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(err, jwt.ImmatureSignatureError):
        return "token is not valid yet (nbf or iat in the future)"
    if isinstance(err, jwt.InvalidSignatureError):
        return "token signature is invalid"
    if isinstance(err, jwt.InvalidAudienceError):
        return "token audience is not accepted"
    if isinstance(err, jwt.InvalidIssuerError):
        return "token issuer is not accepted"
    if isinstance(err, jwt.MissingRequiredClaimError):
        return f"token has no {err.claim} claim"
    if isinstance(err, jwt.InvalidAlgorithmError):
        return "token algorithm is not accepted"
    if isinstance(err, jwt.exceptions.InvalidSubjectError):
        return "token sub claim must be a non-empty string"
    return "token is malformed or invalid"


def _text_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise _unauthorized(f"token has no {name} claim")
    if not isinstance(value, str) or not value:
        raise _unauthorized(f"token {name} claim must be a non-empty string")
    return value


def _roles(claims: Mapping[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    if "role" in claims:
        if not isinstance(claims["role"], str):
            raise _unauthorized("token role claim must be a string")
        roles.add(claims["role"])
    if "roles" in claims:
        listed = claims["roles"]
        if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
            raise _unauthorized("token roles claim must be a list of strings")
        roles.update(listed)
    return frozenset(roles)


def _check_time_claims(claims: Mapping[str, Any]) -> None:
    # PyJWT takes int("123") for a time; the JWT spec wants a number.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _unauthorized(f"token {name} claim must be a number (seconds since the epoch)")


class TokenVerifier:
    """Verifies bearer tokens against the configured key(s); cheap to call, thread-safe."""

    def __init__(self, settings: AuthSettings):
        _check_settings(settings)
        self.settings = settings
        pinned = frozenset(settings.algorithms)
        if settings.public_key_path is not None:
            self._keys = _load_pem(settings.public_key_path, pinned)
        else:
            assert settings.jwks_path is not None
            self._keys = _load_jwks(settings.jwks_path, pinned)
        self._from_jwks = settings.jwks_path is not None

    def _key_for(self, header: Mapping[str, Any], algorithm: str) -> _VerificationKey:
        if self._from_jwks:
            kid = header.get("kid")
            if kid is None:
                if len(self._keys) > 1:
                    raise _unauthorized("token has no kid; the JWKS has several keys")
                key = self._keys[0]
            else:
                key = next((k for k in self._keys if k.kid == kid), None)
                if key is None:
                    raise _unauthorized("token kid is not in the JWKS")
        else:
            key = self._keys[0]
        if algorithm not in key.algorithms:
            raise _unauthorized(f"token algorithm {algorithm} does not fit the verification key")
        return key

    def verify(self, token: str) -> Principal:
        if not isinstance(token, str) or not token:
            raise _unauthorized("missing token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized("token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("token is malformed") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.algorithms:
            shown = algorithm[:16] if isinstance(algorithm, str) else type(algorithm).__name__
            raise _unauthorized(f"token algorithm {shown!r} is not accepted "
                                f"(accepted: {', '.join(self.settings.algorithms)})")
        key = self._key_for(header, algorithm)
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm],
                issuer=self.settings.issuer, audience=self.settings.audience, leeway=self.settings.leeway_s,
                options={"require": ["exp"], "verify_aud": self.settings.audience is not None},
            )
        except jwt.PyJWTError as err:
            raise _unauthorized(_reason(err)) from None
        except (ValueError, TypeError):  # a payload PyJWT did not foresee
            raise _unauthorized("token is malformed or invalid") from None
        _check_time_claims(claims)
        return Principal(sub=_text_claim(claims, "sub"), org_id=_text_claim(claims, "org_id"), roles=_roles(claims))


def bearer_token(authorization: str | None) -> str:
    """The token of an `authorization: Bearer <jwt>` header (scheme case-insensitive)."""
    if not authorization:
        raise _unauthorized("missing bearer token: send the header authorization: Bearer <jwt>")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise _unauthorized("the authorization header must be: Bearer <jwt>")
    return token


def require_mutation_role(principal: Principal) -> None:
    if not principal.can_mutate:
        held = ", ".join(sorted(principal.roles)) or "none"
        raise ApiError("forbidden", f"this change needs role owner or admin; the token's roles: {held}")
