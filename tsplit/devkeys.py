"""Development keys and tokens for the local stack and tests.

Production tokens come from the user's identity provider; the control plane only ever
needs its public key (PEM) or JWKS. `tsplit up` and `tsplit token` use these helpers.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEV_ISSUER = "tsplit-dev"
DEV_AUDIENCE = "tsplit"


def generate_key_pair(algorithm: str = "RS256") -> tuple[bytes, bytes]:
    """(private PEM, public PEM) for RS256 (RSA 2048) or ES256 (P-256)."""
    if algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported algorithm {algorithm}")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_key_pair(directory: Path, algorithm: str = "RS256") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    private, public = generate_key_pair(algorithm)
    private_path, public_path = directory / "dev-private.pem", directory / "dev-public.pem"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(private)
    public_path.write_bytes(public)
    return private_path, public_path


def mint_token(
    private_key_pem: bytes,
    *,
    sub: str,
    org_id: str,
    role: str | None = "admin",
    roles: list[str] | None = None,
    ttl_s: int = 3600,
    issuer: str | None = DEV_ISSUER,
    audience: str | None = DEV_AUDIENCE,
    algorithm: str = "RS256",
    kid: str | None = None,
    extra: dict | None = None,
) -> str:
    now = int(time.time())
    claims: dict = {"sub": sub, "org_id": org_id, "iat": now, "nbf": now, "exp": now + ttl_s, "jti": uuid.uuid4().hex}
    if role is not None:
        claims["role"] = role
    if roles is not None:
        claims["roles"] = roles
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra or {})
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key_pem, algorithm=algorithm, headers=headers)
