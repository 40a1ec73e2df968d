"""The shared token table (tests/vectors/jwt.json) against the control plane's verifier; the
native router's verifier (dataplane/native/src/auth.rs) checks the same file in cargo test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vectors.make_jwt import control_plane_verifiers, outcome

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "jwt.json").read_text())


@pytest.fixture(scope="module")
def verifiers(tmp_path_factory):
    return control_plane_verifiers(VECTORS, tmp_path_factory.mktemp("jwt-vectors"))


def test_the_table_covers_every_attack_the_issue_names():
    names = {c["name"] for c in VECTORS["cases"]}
    assert {"expired", "alg none", "hs256 keyed with the public key", "rs512 not pinned", "wrong issuer",
            "wrong audience", "other org", "good rs256", "good es256"} <= names


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_the_control_plane_gives_each_vectors_outcome(verifiers, case):
    assert outcome(verifiers[case["verifier"]], case) is None
