"""JWT auth: the attack table against real RS256 and ES256 keys, PEM and JWKS verifiers."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controlplane.auth import AuthSettings, Principal, TokenVerifier, bearer_token, require_mutation_role
from tsplit import devkeys
from tsplit.errors import ApiError

ISSUER, AUDIENCE = "https://idp.example", "tsplit-api"


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes
    public_path: str


@dataclass(frozen=True)
class Keys:
    rsa: KeyPair
    ec: KeyPair
    other_rsa: KeyPair  # a key the verifiers do not know
    directory: Path


def _pair(directory: Path, name: str, algorithm: str) -> KeyPair:
    private, public = devkeys.generate_key_pair(algorithm)
    path = directory / f"{name}-public.pem"
    path.write_bytes(public)
    return KeyPair(private, public, str(path))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    directory = tmp_path_factory.mktemp("auth-keys")
    return Keys(_pair(directory, "rsa", "RS256"), _pair(directory, "ec", "ES256"),
                _pair(directory, "other", "RS256"), directory)


def claims(**changes) -> dict:
    now = int(time.time())
    base = {"sub": "user-1", "org_id": "org_1", "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def sign(pair: KeyPair, algorithm: str = "RS256", kid: str | None = None, **changes) -> str:
    return jwt.encode(claims(**changes), pair.private, algorithm=algorithm, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict, payload: dict, signature: bytes = b"") -> str:
    """A token PyJWT would refuse to make: alg none, HS256 keyed with a public key, ..."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(signature)}"


def hs256_with_key_bytes(secret: bytes, payload: dict) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def rsa_verifier(keys) -> TokenVerifier:
    return TokenVerifier(AuthSettings(public_key_path=keys.rsa.public_path, issuer=ISSUER, audience=AUDIENCE))


@pytest.fixture(scope="module")
def ec_verifier(keys) -> TokenVerifier:
    return TokenVerifier(AuthSettings(public_key_path=keys.ec.public_path, issuer=ISSUER, audience=AUDIENCE))


def jwk_of(pair: KeyPair, kid: str | None, **extra) -> dict:
    public = serialization.load_pem_public_key(pair.public)
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def write_jwks(directory: Path, name: str, entries: list) -> str:
    path = directory / f"{name}.jwks.json"
    path.write_text(json.dumps({"keys": entries}))
    return str(path)


@pytest.fixture(scope="module")
def jwks_verifier(keys) -> TokenVerifier:
    path = write_jwks(keys.directory, "main", [
        jwk_of(keys.rsa, "k-rsa", alg="RS256", use="sig"),
        jwk_of(keys.ec, "k-ec"),  # no alg: taken from the key type and curve
        jwk_of(keys.other_rsa, "k-enc", use="enc"),  # an encryption key is never used to verify
    ])
    return TokenVerifier(AuthSettings(jwks_path=path, issuer=ISSUER, audience=AUDIENCE))


def unauthorized(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(ApiError) as caught:
        verifier.verify(token)
    assert caught.value.code == "unauthorized" and caught.value.kind.http_status == 401
    return caught.value.message


# --- good tokens ---------------------------------------------------------------------------

def test_a_good_rs256_token_gives_the_principal(rsa_verifier, keys):
    assert rsa_verifier.verify(sign(keys.rsa)) == Principal("user-1", "org_1", frozenset({"admin"}))


def test_a_good_es256_token_gives_the_principal(ec_verifier, keys):
    principal = ec_verifier.verify(sign(keys.ec, "ES256", sub="svc", org_id="org_2", role="owner"))
    assert principal == Principal("svc", "org_2", frozenset({"owner"})) and principal.can_mutate


def test_tokens_from_the_dev_mint_verify(keys):
    verifier = TokenVerifier(AuthSettings(public_key_path=keys.rsa.public_path,
                                          issuer=devkeys.DEV_ISSUER, audience=devkeys.DEV_AUDIENCE))
    token = devkeys.mint_token(keys.rsa.private, sub="u", org_id="o", role="viewer")
    assert verifier.verify(token) == Principal("u", "o", frozenset({"viewer"}))


@pytest.mark.parametrize("changes,roles,can_mutate", [
    ({"role": "admin"}, {"admin"}, True),
    ({"role": "owner"}, {"owner"}, True),
    ({"role": "viewer"}, {"viewer"}, False),
    ({"role": DROP, "roles": ["viewer", "owner"]}, {"viewer", "owner"}, True),
    ({"role": "viewer", "roles": ["admin"]}, {"viewer", "admin"}, True),
    ({"role": DROP}, set(), False),
    ({"role": DROP, "roles": []}, set(), False),
])
def test_roles_and_the_mutation_check(rsa_verifier, keys, changes, roles, can_mutate):
    principal = rsa_verifier.verify(sign(keys.rsa, **changes))
    assert principal.roles == frozenset(roles) and principal.can_mutate is can_mutate
    if can_mutate:
        require_mutation_role(principal)
    else:
        with pytest.raises(ApiError) as caught:
            require_mutation_role(principal)
        assert caught.value.code == "forbidden" and caught.value.kind.http_status == 403
        assert "owner or admin" in caught.value.message


def test_small_clock_skew_is_tolerated(rsa_verifier, keys):
    now = int(time.time())
    assert rsa_verifier.verify(sign(keys.rsa, exp=now - 10)).sub == "user-1"
    assert rsa_verifier.verify(sign(keys.rsa, nbf=now + 10, iat=now + 10)).sub == "user-1"


def test_an_audience_list_containing_ours_is_accepted(rsa_verifier, keys):
    assert rsa_verifier.verify(sign(keys.rsa, aud=["other", AUDIENCE])).org_id == "org_1"


def test_issuer_and_audience_are_not_checked_when_not_configured(keys):
    verifier = TokenVerifier(AuthSettings(public_key_path=keys.rsa.public_path))
    assert verifier.verify(sign(keys.rsa, iss="anyone", aud="anything")).sub == "user-1"
    assert verifier.verify(sign(keys.rsa, iss=DROP, aud=DROP)).sub == "user-1"


# --- the attack table ----------------------------------------------------------------------

def _now() -> int:
    return int(time.time())


def _good_parts(k: Keys) -> list[str]:
    return sign(k.rsa).split(".")


def _with_header(k: Keys, header: dict) -> str:
    _, payload, signature = _good_parts(k)
    return f"{b64(json.dumps(header).encode())}.{payload}.{signature}"


def _with_payload(k: Keys, payload: bytes) -> str:
    header, _, signature = _good_parts(k)
    return f"{header}.{b64(payload)}.{signature}"


ATTACKS = [
    # (name, token made from the keys, words the message must contain)
    ("empty", lambda k: "", "missing"),
    ("not a jwt", lambda k: "hello", "malformed"),
    ("three garbage parts", lambda k: "a.b.c", "malformed"),
    ("header not json", lambda k: "{}.{}.{}".format(b64(b"not json"), *_good_parts(k)[1:]), "malformed"),
    ("signature cut", lambda k: ".".join(_good_parts(k))[:-6], "signature"),
    ("payload swapped", lambda k: _with_payload(k, json.dumps(claims(org_id="org_victim")).encode()), "signature"),
    ("payload not json", lambda k: _with_payload(k, b"[1,2"), "invalid"),
    ("expired", lambda k: sign(k.rsa, exp=_now() - 60, iat=_now() - 120, nbf=_now() - 120), "expired"),
    ("not yet valid", lambda k: sign(k.rsa, nbf=_now() + 120), "not valid yet"),
    ("issued in the future", lambda k: sign(k.rsa, iat=_now() + 120), "not valid yet"),
    ("wrong key", lambda k: sign(k.other_rsa), "signature"),
    ("alg none", lambda k: handmade({"alg": "none", "typ": "JWT"}, claims()), "'none' is not accepted"),
    ("alg None", lambda k: handmade({"alg": "None", "typ": "JWT"}, claims()), "not accepted"),
    ("no alg", lambda k: handmade({"typ": "JWT"}, claims(), b"x"), "not accepted"),
    ("hs256 keyed with the public key", lambda k: hs256_with_key_bytes(k.rsa.public, claims()),
     "'HS256' is not accepted"),
    ("rs512 not pinned", lambda k: sign(k.rsa, "RS512"), "'RS512' is not accepted"),
    ("ps256 not pinned", lambda k: sign(k.rsa, "PS256"), "'PS256' is not accepted"),
    ("es256 against an rsa key", lambda k: sign(k.ec, "ES256"), "does not fit"),
    ("header says es256, rsa signature", lambda k: _with_header(k, {"alg": "ES256", "typ": "JWT"}), "does not fit"),
    ("missing exp", lambda k: sign(k.rsa, exp=DROP), "no exp claim"),
    ("exp as a string", lambda k: sign(k.rsa, exp=str(_now() + 600)), "exp claim must be a number"),
    ("exp as a boolean", lambda k: sign(k.rsa, exp=True), "exp"),
    ("wrong issuer", lambda k: sign(k.rsa, iss="https://evil.example"), "issuer"),
    ("missing issuer", lambda k: sign(k.rsa, iss=DROP), "no iss claim"),
    ("wrong audience", lambda k: sign(k.rsa, aud="someone-else"), "audience"),
    ("missing audience", lambda k: sign(k.rsa, aud=DROP), "no aud claim"),
    ("missing sub", lambda k: sign(k.rsa, sub=DROP), "no sub claim"),
    ("sub not a string", lambda k: sign(k.rsa, sub=42), "sub claim"),
    ("empty sub", lambda k: sign(k.rsa, sub=""), "sub claim"),
    ("missing org_id", lambda k: sign(k.rsa, org_id=DROP), "no org_id claim"),
    ("org_id not a string", lambda k: sign(k.rsa, org_id=["org_1"]), "org_id claim must be"),
    ("empty org_id", lambda k: sign(k.rsa, org_id=""), "org_id claim must be"),
    ("role not a string", lambda k: sign(k.rsa, role=["admin"]), "role claim must be a string"),
    ("roles not a list", lambda k: sign(k.rsa, role=DROP, roles="admin"), "roles claim must be a list"),
    ("roles of numbers", lambda k: sign(k.rsa, role=DROP, roles=[1]), "roles claim must be a list"),
    ("too long", lambda k: sign(k.rsa, pad="x" * 20_000), "too long"),
    ("huge alg", lambda k: handmade({"alg": "A" * 5000}, claims()), "not accepted"),
]


@pytest.mark.parametrize("token_of,words", [pytest.param(t, w, id=n) for n, t, w in ATTACKS])
def test_attack_table_pem_rs256(rsa_verifier, keys, token_of, words):
    message = unauthorized(rsa_verifier, token_of(keys))
    assert words in message
    assert len(message) < 120  # our words, never the token echoed back


@pytest.mark.parametrize("token_of", [
    lambda k: sign(k.rsa, "RS256"),                                   # right alg family, wrong key type
    lambda k: sign(k.other_rsa, "RS256"),
    lambda k: hs256_with_key_bytes(k.ec.public, claims()),
    lambda k: handmade({"alg": "none"}, claims()),
    lambda k: sign(k.ec, "ES256", exp=int(time.time()) - 60),
    lambda k: jwt.encode(claims(), serialization.load_pem_private_key(devkeys.generate_key_pair("ES256")[0], None),
                         algorithm="ES256"),                          # another EC key
])
def test_attack_table_pem_es256(ec_verifier, keys, token_of):
    unauthorized(ec_verifier, token_of(keys))


# --- JWKS ----------------------------------------------------------------------------------

def test_jwks_picks_the_key_by_kid(jwks_verifier, keys):
    assert jwks_verifier.verify(sign(keys.rsa, kid="k-rsa")).sub == "user-1"
    assert jwks_verifier.verify(sign(keys.ec, "ES256", kid="k-ec", sub="u2")).sub == "u2"


@pytest.mark.parametrize("token_of,words", [
    (lambda k: sign(k.rsa, kid="k-unknown"), "kid is not in the JWKS"),
    (lambda k: sign(k.rsa), "no kid"),
    (lambda k: sign(k.rsa, kid="k-ec"), "does not fit"),               # an RSA token claiming the EC key
    (lambda k: sign(k.ec, "ES256", kid="k-rsa"), "does not fit"),
    (lambda k: sign(k.other_rsa, kid="k-rsa"), "signature"),           # signed by a key not in the set
    (lambda k: sign(k.other_rsa, kid="k-enc"), "kid is not in the JWKS"),  # use=enc is not a verification key
    (lambda k: sign(k.rsa, "RS384", kid="k-rsa"), "not accepted"),
    (lambda k: handmade({"alg": "none", "kid": "k-rsa"}, claims()), "not accepted"),
    (lambda k: hs256_with_key_bytes(k.rsa.public, claims()), "not accepted"),
    (lambda k: sign(k.rsa, kid="k-rsa", exp=int(time.time()) - 60), "expired"),
    (lambda k: sign(k.rsa, kid="k-rsa", iss="https://evil.example"), "issuer"),
])
def test_jwks_attacks(jwks_verifier, keys, token_of, words):
    assert words in unauthorized(jwks_verifier, token_of(keys))


def test_a_single_key_jwks_accepts_tokens_without_kid(keys):
    path = write_jwks(keys.directory, "single", [jwk_of(keys.ec, None, alg="ES256")])
    verifier = TokenVerifier(AuthSettings(jwks_path=path))
    assert verifier.verify(sign(keys.ec, "ES256")).sub == "user-1"
    assert "signature" in unauthorized(verifier, jwt.encode(
        claims(), serialization.load_pem_private_key(devkeys.generate_key_pair("ES256")[0], None), algorithm="ES256"))


def test_a_certificate_pem_is_accepted_as_the_public_key(keys):
    private = serialization.load_pem_private_key(keys.rsa.private, None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(private, hashes.SHA256()))
    path = keys.directory / "idp-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verifier = TokenVerifier(AuthSettings(public_key_path=str(path)))
    assert verifier.verify(sign(keys.rsa)).org_id == "org_1"


# --- bad configuration fails at start, naming the file -------------------------------------

def _bad_configs(keys: Keys) -> list[tuple[AuthSettings, str]]:
    d = keys.directory
    (d / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    (d / "bad.json").write_text("{not json")
    (d / "private.pem").write_bytes(keys.rsa.private)
    return [
        (AuthSettings(), "exactly one"),
        (AuthSettings(public_key_path=keys.rsa.public_path, jwks_path=str(d / "x.json")), "exactly one"),
        (AuthSettings(public_key_path=str(d / "missing.pem")), "missing.pem"),
        (AuthSettings(public_key_path=str(d / "garbage.pem")), "garbage.pem"),
        (AuthSettings(public_key_path=str(d / "bad.json")), "bad.json"),
        (AuthSettings(public_key_path=str(d / "private.pem")), "private.pem"),  # the private key by mistake
        (AuthSettings(public_key_path=keys.rsa.public_path, algorithms=("HS256",)), "HS"),
        (AuthSettings(public_key_path=keys.rsa.public_path, algorithms=("none",)), "none"),
        (AuthSettings(public_key_path=keys.rsa.public_path, algorithms=()), "algorithms"),
        (AuthSettings(public_key_path=keys.rsa.public_path, leeway_s=31), "leeway"),
        (AuthSettings(public_key_path=keys.rsa.public_path, leeway_s=-1), "leeway"),
        (AuthSettings(public_key_path=keys.ec.public_path, algorithms=("RS256",)), keys.ec.public_path),
        (AuthSettings(jwks_path=str(d / "missing.json")), "missing.json"),
        (AuthSettings(jwks_path=str(d / "bad.json")), "bad.json"),
        (AuthSettings(jwks_path=write_jwks(d, "empty", [])), "empty.jwks.json"),
        (AuthSettings(jwks_path=write_jwks(d, "oct", [{"kty": "oct", "k": b64(keys.rsa.public), "kid": "s"}])),
         "secret or private"),
        (AuthSettings(jwks_path=write_jwks(d, "private", [{**jwk_of(keys.rsa, "p"), "d": "AQAB"}])), "private"),
        (AuthSettings(jwks_path=write_jwks(d, "enc-only", [jwk_of(keys.rsa, "e", use="enc")])), "no signature key"),
        (AuthSettings(jwks_path=write_jwks(d, "dup", [jwk_of(keys.rsa, "k"), jwk_of(keys.ec, "k")])), "own kid"),
        (AuthSettings(jwks_path=write_jwks(d, "broken", [{"kty": "RSA", "kid": "b"}])), "broken.jwks.json"),
    ]


def test_bad_configurations_fail_clearly_at_start(keys):
    for settings, words in _bad_configs(keys):
        with pytest.raises(ValueError) as caught:
            TokenVerifier(settings)
        assert words in str(caught.value), (settings, str(caught.value))


# --- the authorization header --------------------------------------------------------------

@pytest.mark.parametrize("header,token", [
    ("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer abc.def.ghi", "abc.def.ghi"),
    ("BEARER  abc.def.ghi ", "abc.def.ghi"),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "abc.def.ghi",
                                    "Bearer a b", "Token abc"])
def test_bad_authorization_headers_are_401(header):
    with pytest.raises(ApiError) as caught:
        bearer_token(header)
    assert caught.value.code == "unauthorized" and "Bearer" in caught.value.message
