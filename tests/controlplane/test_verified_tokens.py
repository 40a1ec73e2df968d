"""VerifiedTokens: a token accepted once is answered from memory until its exp, by its
exact text only, within a bounded size; rejected tokens are never remembered."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from controlplane.auth import AuthSettings, TokenVerifier
from controlplane.interceptors import VerifiedTokens
from tsplit.errors import ApiError


class CountingVerifier:
    """The real verifier, counting the full checks it makes."""

    def __init__(self, verifier: TokenVerifier):
        self.verifier, self.calls = verifier, 0

    def verify(self, token: str):
        self.calls += 1
        return self.verifier.verify(token)


@pytest.fixture
def counting(dev_auth) -> CountingVerifier:
    return CountingVerifier(TokenVerifier(AuthSettings(
        public_key_path=str(dev_auth.public_path), issuer=dev_auth.issuer, audience=dev_auth.audience)))


def test_an_accepted_token_is_checked_once_until_it_expires(dev_auth, counting):
    now = [time.time()]
    tokens = VerifiedTokens(counting, clock=lambda: now[0])
    token = dev_auth.token(sub="u-1", org_id="org_9", role="viewer", ttl_s=60)
    first = tokens.verify(token)
    assert (first.sub, first.org_id, first.roles) == ("u-1", "org_9", frozenset({"viewer"}))
    for _ in range(5):
        assert tokens.verify(token) == first
    assert counting.calls == 1
    now[0] += 61  # past exp by the cache's clock: every use is a full check again
    for calls in (2, 3):
        assert tokens.verify(token) == first
        assert counting.calls == calls
    assert len(tokens) == 0


def test_a_changed_byte_is_another_token_and_is_refused(dev_auth, counting):
    tokens = VerifiedTokens(counting)
    token = dev_auth.token()
    tokens.verify(token)
    header, payload, signature = token.split(".")
    tampered = ".".join((header, payload, ("A" if signature[0] != "A" else "B") + signature[1:]))
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            tokens.verify(tampered)
        assert err.value.code == "unauthorized"
    assert counting.calls == 3 and len(tokens) == 1


def test_a_refused_token_is_never_remembered(dev_auth, counting):
    tokens = VerifiedTokens(counting)
    expired = dev_auth.token(ttl_s=-3600)
    for _ in range(3):
        with pytest.raises(ApiError):
            tokens.verify(expired)
    assert counting.calls == 3 and len(tokens) == 0


class StubVerifier:
    """Accepts any token; its principal names the token."""

    def __init__(self):
        self.calls = 0

    def verify(self, token: str):
        self.calls += 1
        return ("principal", token)


def _unsigned(sub: str, exp: float) -> str:
    import base64
    import json
    payload = base64.urlsafe_b64encode(json.dumps({"sub": sub, "exp": exp}).encode()).rstrip(b"=").decode()
    return f"e30.{payload}.sig"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=200), st.integers(1, 12))
def test_memory_stays_bounded_and_answers_stay_right(sequence, bound):
    stub = StubVerifier()
    tokens = VerifiedTokens(stub, max_entries=bound, clock=lambda: 1000.0)
    recent: list[int] = []  # least recently used first, as the cache should keep them
    for n in sequence:
        token = _unsigned(f"user-{n}", 2000.0)
        before = stub.calls
        assert tokens.verify(token) == ("principal", token)
        assert stub.calls == before + (0 if n in recent else 1)
        if n in recent:
            recent.remove(n)
        recent = (recent + [n])[-bound:]
        assert len(tokens) == len(recent) <= bound


def test_at_least_one_entry():
    with pytest.raises(ValueError):
        VerifiedTokens(StubVerifier(), max_entries=0)
