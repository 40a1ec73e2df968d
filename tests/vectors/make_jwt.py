"""Writes tests/vectors/jwt.json: the token table (SPEC sections 4 and 5, "Auth") that both
verifiers must agree on: the control plane's (controlplane/auth.py, checked by
tests/controlplane/test_jwt_vectors.py) and the native router's (dataplane/native/src/auth.rs,
cargo test), so the two cannot drift.

Each case names a verifier (its public key PEM or JWKS, issuer and audience), a token, and
the outcome: `{"ok": {"sub", "org_id", "roles"}}` or `{"error": "<words the refusal must
contain>"}`; accepted tokens also say whether a deployment of `deployment_org` is theirs
(`access`: "ok", or "not_found" for another org's). Good tokens expire in 2100, expired
ones in 2023, so the file stays valid. This script checks controlplane/auth.py against the
table before writing.

    .venv/bin/python tests/vectors/make_jwt.py     # rewrites the file (new keys)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import tempfile
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.auth import AuthSettings, TokenVerifier
from tsplit import devkeys
from tsplit.errors import ApiError

OUT = Path(__file__).with_name("jwt.json")
ISSUER, AUDIENCE = "https://idp.example", "tsplit-api"
NOW = 1_764_000_000          # iat/nbf of the good tokens (2025)
FUTURE = 4_102_444_800       # 2100-01-01
PAST = 1_700_000_000         # 2023-11-14
DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes) -> dict:
    base = {"sub": "user-1", "org_id": "org_1", "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
            "iat": NOW, "nbf": NOW, "exp": FUTURE}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def handmade(header: dict, payload: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def hs256(secret: bytes, payload: dict) -> str:
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def jwk_of(public_pem: bytes, kid: str | None, **extra) -> dict:
    public = serialization.load_pem_public_key(public_pem)
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def main() -> int:
    rsa_private, rsa_public = devkeys.generate_key_pair("RS256")
    ec_private, ec_public = devkeys.generate_key_pair("ES256")
    other_private, other_public = devkeys.generate_key_pair("RS256")

    def sign(private: bytes = rsa_private, algorithm: str = "RS256", kid: str | None = None, **changes) -> str:
        return jwt.encode(claims(**changes), private, algorithm=algorithm, headers={"kid": kid} if kid else None)

    good = sign()
    header, payload, signature = good.split(".")
    verifiers = {
        "rsa_pem": {"public_key_pem": rsa_public.decode(), "issuer": ISSUER, "audience": AUDIENCE},
        "ec_pem": {"public_key_pem": ec_public.decode(), "issuer": ISSUER, "audience": AUDIENCE},
        "rsa_open": {"public_key_pem": rsa_public.decode(), "issuer": None, "audience": None},
        "jwks": {"jwks": {"keys": [jwk_of(rsa_public, "k-rsa", alg="RS256", use="sig"), jwk_of(ec_public, "k-ec"),
                                   jwk_of(other_public, "k-enc", use="enc")]},
                 "issuer": ISSUER, "audience": AUDIENCE},
    }
    ok = lambda sub="user-1", org="org_1", roles=("admin",): {"ok": {"sub": sub, "org_id": org, "roles": sorted(roles)}}
    err = lambda words: {"error": words}
    cases = [
        ("good rs256", "rsa_pem", good, ok()),
        ("good es256", "ec_pem", sign(ec_private, "ES256", sub="svc", org_id="org_2", role="owner"), ok("svc", "org_2", ["owner"])),
        ("good via jwks rsa kid", "jwks", sign(kid="k-rsa"), ok()),
        ("good via jwks ec kid", "jwks", sign(ec_private, "ES256", kid="k-ec"), ok()),
        ("roles list", "rsa_pem", sign(role=DROP, roles=["viewer", "owner"]), ok(roles=["owner", "viewer"])),
        ("no role may still infer", "rsa_pem", sign(role=DROP), ok(roles=[])),
        ("audience list containing ours", "rsa_pem", sign(aud=["other", AUDIENCE]), ok()),
        ("issuer and audience not configured", "rsa_open", sign(iss="anyone", aud="anything"), ok()),
        ("small clock skew", "rsa_pem", sign(iat=NOW, nbf=NOW, exp=FUTURE), ok()),
        ("other org", "rsa_pem", sign(org_id="org_other"), ok(org="org_other")),
        ("empty", "rsa_pem", "", err("missing")),
        ("not a jwt", "rsa_pem", "hello", err("malformed")),
        ("three garbage parts", "rsa_pem", "a.b.c", err("malformed")),
        ("header not json", "rsa_pem", f"{b64(b'not json')}.{payload}.{signature}", err("malformed")),
        ("signature cut", "rsa_pem", good[:-6], err("signature")),
        ("payload swapped", "rsa_pem", f"{header}.{b64(json.dumps(claims(org_id='org_victim')).encode())}.{signature}", err("signature")),
        ("wrong key", "rsa_pem", sign(other_private), err("signature")),
        ("expired", "rsa_pem", sign(exp=PAST, iat=PAST - 60, nbf=PAST - 60), err("expired")),
        ("not yet valid", "rsa_pem", sign(nbf=FUTURE - 3600), err("not valid yet")),
        ("issued in the future", "rsa_pem", sign(iat=FUTURE - 3600), err("not valid yet")),
        ("alg none", "rsa_pem", handmade({"alg": "none", "typ": "JWT"}, claims()), err("'none' is not accepted")),
        ("alg None", "rsa_pem", handmade({"alg": "None", "typ": "JWT"}, claims()), err("'None' is not accepted")),
        ("no alg", "rsa_pem", handmade({"typ": "JWT"}, claims(), b"x"), err("is not accepted")),
        ("hs256 keyed with the public key", "rsa_pem", hs256(rsa_public, claims()), err("'HS256' is not accepted")),
        ("hs256 keyed with the ec public key", "ec_pem", hs256(ec_public, claims()), err("'HS256' is not accepted")),
        ("rs512 not pinned", "rsa_pem", sign(algorithm="RS512"), err("'RS512' is not accepted")),
        ("es256 against an rsa key", "rsa_pem", sign(ec_private, "ES256"), err("does not fit")),
        ("rs256 against an ec key", "ec_pem", good, err("does not fit")),
        ("header says es256, rsa signature", "rsa_pem",
         f"{b64(json.dumps({'alg': 'ES256', 'typ': 'JWT'}).encode())}.{payload}.{signature}", err("does not fit")),
        ("missing exp", "rsa_pem", sign(exp=DROP), err("no exp claim")),
        ("exp as a string", "rsa_pem", sign(exp=str(FUTURE)), err("exp claim must be a number")),
        ("wrong issuer", "rsa_pem", sign(iss="https://evil.example"), err("issuer")),
        ("missing issuer", "rsa_pem", sign(iss=DROP), err("no iss claim")),
        ("wrong audience", "rsa_pem", sign(aud="someone-else"), err("audience")),
        ("missing audience", "rsa_pem", sign(aud=DROP), err("no aud claim")),
        ("missing sub", "rsa_pem", sign(sub=DROP), err("no sub claim")),
        ("sub not a string", "rsa_pem", sign(sub=42), err("sub claim")),
        ("empty sub", "rsa_pem", sign(sub=""), err("sub claim")),
        ("missing org_id", "rsa_pem", sign(org_id=DROP), err("no org_id claim")),
        ("empty org_id", "rsa_pem", sign(org_id=""), err("org_id claim must be")),
        ("org_id not a string", "rsa_pem", sign(org_id=["org_1"]), err("org_id claim must be")),
        ("role not a string", "rsa_pem", sign(role=["admin"]), err("role claim must be a string")),
        ("roles of numbers", "rsa_pem", sign(role=DROP, roles=[1]), err("roles claim must be a list")),
        ("too long", "rsa_pem", sign(pad="x" * 20_000), err("too long")),
        ("jwks unknown kid", "jwks", sign(kid="k-unknown"), err("kid is not in the JWKS")),
        ("jwks no kid", "jwks", good, err("no kid")),
        ("jwks rsa token claiming the ec key", "jwks", sign(kid="k-ec"), err("does not fit")),
        ("jwks ec token claiming the rsa key", "jwks", sign(ec_private, "ES256", kid="k-rsa"), err("does not fit")),
        ("jwks key not in the set", "jwks", sign(other_private, kid="k-rsa"), err("signature")),
        ("jwks encryption key never verifies", "jwks", sign(other_private, kid="k-enc"), err("kid is not in the JWKS")),
        ("jwks expired", "jwks", sign(kid="k-rsa", exp=PAST), err("expired")),
    ]
    out_cases = []
    for name, verifier, token, expect in cases:
        case = {"name": name, "verifier": verifier, "token": token, "expect": expect}
        if "ok" in expect:
            case["deployment_org"] = "org_1"
            case["access"] = "ok" if expect["ok"]["org_id"] == "org_1" else "not_found"
        out_cases.append(case)
    document = {"about": "written by tests/vectors/make_jwt.py; see its docstring", "verifiers": verifiers,
                "cases": out_cases}
    problems = check(document)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {len(out_cases)} cases to {OUT}")
    return 0


def control_plane_verifiers(document: dict, directory: Path) -> dict[str, TokenVerifier]:
    out = {}
    for name, spec in document["verifiers"].items():
        path = directory / name
        if "public_key_pem" in spec:
            path.write_text(spec["public_key_pem"])
            settings = AuthSettings(public_key_path=str(path), issuer=spec["issuer"], audience=spec["audience"])
        else:
            path.write_text(json.dumps(spec["jwks"]))
            settings = AuthSettings(jwks_path=str(path), issuer=spec["issuer"], audience=spec["audience"])
        out[name] = TokenVerifier(settings)
    return out


def outcome(verifier: TokenVerifier, case: dict) -> str | None:
    """None when the control plane agrees with the case, else what differs."""
    try:
        principal = verifier.verify(case["token"])
    except ApiError as caught:
        words = case["expect"].get("error")
        if caught.code == "unauthorized" and words is not None and words in caught.message:
            return None
        return f"{case['name']}: refused with {caught.message!r}, expected {case['expect']}"
    expected = case["expect"].get("ok")
    got = {"sub": principal.sub, "org_id": principal.org_id, "roles": sorted(principal.roles)}
    if expected != got:
        return f"{case['name']}: accepted as {got}, expected {case['expect']}"
    access = "ok" if principal.org_id == case["deployment_org"] else "not_found"
    return None if access == case["access"] else f"{case['name']}: access {access}, expected {case['access']}"


def check(document: dict) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        verifiers = control_plane_verifiers(document, Path(directory))
        return [p for c in document["cases"] if (p := outcome(verifiers[c["verifier"]], c))]


if __name__ == "__main__":
    sys.exit(main())
