"""Body, Content-Type, If-Match and Idempotency-Key parsing: unit and property tests."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, strategies as st
from starlette.datastructures import Headers

from controlplane.gateway.request_input import (
    MAX_JSON_DEPTH, check_media_type, expected_version, idempotency_key, parse_json_object, read_limited)
from tsplit.errors import ApiError


def _code(fn, *args) -> str | None:
    try:
        fn(*args)
    except ApiError as err:
        return err.code
    return None


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
    'application/json; charset="utf-8"'])
def test_json_media_types_pass(content_type):
    check_media_type(Headers({"content-type": content_type}))


@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "application/x-www-form-urlencoded", "application/json-patch+json",
    "application/json; charset=latin-1", "multipart/form-data; boundary=x"])
def test_other_media_types_are_415(content_type):
    headers = Headers({} if content_type is None else {"content-type": content_type})
    assert _code(check_media_type, headers) == "unsupported_media_type"


@pytest.mark.parametrize("body, shown", [
    (b"[]", "an array"), (b'"x"', "a string"), (b"3", "a number"), (b"null", "null"), (b"true", "a boolean")])
def test_non_objects_are_invalid_json_naming_what_they_are(body, shown):
    with pytest.raises(ApiError) as err:
        parse_json_object(body)
    assert err.value.code == "invalid_json" and shown in err.value.message


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe{}", b'{"a": tru}'])
def test_broken_bodies_are_invalid_json(body):
    assert _code(parse_json_object, body) == "invalid_json"


def test_nan_and_infinity_literals_are_accepted():
    value = parse_json_object(b'{"traffic_pct": NaN, "x": Infinity, "y": -Infinity}')
    assert math.isnan(value["traffic_pct"]) and value["x"] == math.inf and value["y"] == -math.inf


def test_depth_limit_and_no_recursion_error_on_deep_nesting():
    ok = b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 2) + b"]" * (MAX_JSON_DEPTH - 2) + b"}"
    assert parse_json_object(ok)
    too_deep = b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    assert _code(parse_json_object, too_deep) == "invalid_json"
    # Deeper than Python's recursion limit: still a clean invalid_json, never a 500.
    abyss = b'{"a": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    assert _code(parse_json_object, abyss) == "invalid_json"


@given(st.binary(max_size=200))
def test_any_bytes_give_an_object_or_invalid_json(raw):
    try:
        assert isinstance(parse_json_object(raw), dict)
    except ApiError as err:
        assert err.code == "invalid_json"


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.booleans(), max_size=6))
def test_every_json_object_parses_back(obj):
    assert parse_json_object(json.dumps(obj).encode()) == obj


async def _chunks(parts):
    for part in parts:
        yield part


async def test_read_limited_allows_exactly_the_limit_and_stops_past_it():
    assert await read_limited(_chunks([b"ab", b"cd"]), None, 4) == b"abcd"

    consumed = []

    async def endless():
        for _ in range(1000):
            consumed.append(1)
            yield b"x" * 3

    with pytest.raises(ApiError) as err:
        await read_limited(endless(), None, 4)
    assert err.value.code == "payload_too_large" and "4 bytes" in err.value.message
    assert len(consumed) == 2  # stopped as soon as the limit was passed


async def test_declared_length_over_the_limit_is_413_before_reading():
    with pytest.raises(ApiError) as err:
        await read_limited(_chunks([b"never read"]), "5", 4)
    assert err.value.code == "payload_too_large"


@pytest.mark.parametrize("raw, version", [("4", 4), ('"4"', 4), (" 17 ", 17), ("*", None), (None, None)])
def test_if_match_forms(raw, version):
    assert expected_version(Headers({} if raw is None else {"if-match": raw})) == version


@pytest.mark.parametrize("raw", ["abc", "-1", "4.0", '"4", "5"', 'W/"4"', "99999999999999999999", ""])
def test_bad_if_match_is_422_invalid_request_naming_the_header(raw):
    with pytest.raises(ApiError) as err:
        expected_version(Headers({"if-match": raw}))
    assert err.value.code == "invalid_request" and "If-Match" in err.value.message


def test_idempotency_key_is_kept_or_made_up():
    assert idempotency_key(Headers({"idempotency-key": "retry-1"})) == "retry-1"
    made = {idempotency_key(Headers({})) for _ in range(3)}
    assert len(made) == 3 and all(len(k) == 32 for k in made)
    for bad in ("", "a b", "x" * 129, "caf\u00e9"):
        with pytest.raises(ApiError) as err:
            idempotency_key(Headers(raw=[(b"idempotency-key", bad.encode("utf-8"))]))
        assert err.value.code == "invalid_request" and "Idempotency-Key" in err.value.message
