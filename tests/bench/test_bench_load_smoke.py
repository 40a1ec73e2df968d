"""One real h2load run against a real bench backend: the error accounting sees grpc errors
that h2load alone reports as 2xx successes; the backend's REST side answers h2load --h1 and
counts in the same counters; large requests run beside a row."""

from __future__ import annotations

import shutil

import pytest

from bench import loadrows, probe
from bench.frames import grpc_frame
from bench.h2load import LoadSettings
from bench.procs import start_backend

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")


@pytest.fixture
def backend_child(tmp_path):
    child, address = start_backend(tmp_path, "smoke")
    yield child, address
    child.stop()


@pytest.fixture
def backend(backend_child):
    return backend_child[1]


async def test_answers_are_counted_by_the_backend(backend, tmp_path):
    target = loadrows.LoadTarget("smoke", backend, "linear-a", (backend,),
                                 load=LoadSettings(clients=2, streams=4, duration_s=0, requests=400, timeout_s=5))
    result = await loadrows.run_once(target, tmp_path)
    assert result["status_2xx"] == 400 and result["backend_answered"] == 400
    assert result["errors"] == 0 and result["by_model"] == {"linear-a": 400}
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["steal_s"] >= 0  # what the hypervisor took during the run, recorded with it
    sample = await probe.sample_answers(backend, "linear-a", 5)
    assert sample.ok == 5 and sample.codes == {"OK": 5}


async def test_grpc_errors_inside_2xx_answers_count_as_errors(backend, tmp_path):
    target = loadrows.LoadTarget("garbage", backend, "garbage", (backend,),
                                 load=LoadSettings(clients=1, streams=2, duration_s=0, requests=50, timeout_s=5))
    # bytes that are no ModelInferRequest: the backend answers a grpc error in HTTP 200
    target.body_path(tmp_path).write_bytes(grpc_frame(b"\xff\xff\xff"))
    result = await loadrows.run_once(target, tmp_path)
    assert result["status_2xx"] == 50 and result["backend_answered"] == 0
    assert result["unanswered_2xx"] == 50 and result["errors"] == 50


async def test_rest_side_answers_h2load_h1_and_counts_with_the_grpc_side(backend_child, tmp_path):
    child, grpc_address = backend_child
    target = loadrows.LoadTarget("rest", child.http_address, "linear-a", (grpc_address,), rest=True,
                                 load=LoadSettings(clients=4, streams=1, duration_s=0, requests=300, timeout_s=5))
    result = await loadrows.run_once(target, tmp_path)
    assert result["status_2xx"] == 300 and result["backend_answered"] == 300 and result["errors"] == 0
    assert result["by_model"] == {"linear-a": 300}
    sample = await probe.sample_rest(child.http_address, "linear-b", 3)
    assert sample.ok == 3 and sample.codes == {"200": 3}


def test_rest_side_reads_chunked_bodies_and_refuses_a_bad_request_line():
    from bench.backend import dechunk, parse_head
    assert dechunk(b"4\r\nabcd\r\n2;x=1\r\nef\r\n0\r\n\r\nNEXT") == (b"abcdef", 25)
    assert dechunk(b"4\r\nabcd\r\n") is None
    method, target, headers = parse_head(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 5")
    assert (method, target, headers) == (b"POST", b"/v2/models/m/infer", {b"content-length": b"5"})
    with pytest.raises(ValueError, match="request line"):
        parse_head(b"GARBAGE")


async def test_large_requests_beside_a_row_are_counted_apart(backend, tmp_path):
    target = loadrows.LoadTarget("small", backend, "linear-a", (backend,), large_mib=1, large_rps=2,
                                 load=LoadSettings(clients=1, streams=1, rps=50, duration_s=2, warmup_s=0, timeout_s=5))
    result = await loadrows.run_once(target, tmp_path)
    assert result["large_2xx"] >= 2 and result["large_errors"] == 0
    assert result["errors"] == 0 and result["backend_answered"] >= result["status_2xx"] + result["large_2xx"]
