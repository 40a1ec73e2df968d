"""One real h2load run against a real bench backend: the error accounting sees grpc errors
that h2load alone reports as 2xx successes."""

from __future__ import annotations

import shutil

import pytest

from bench import loadrows, probe
from bench.frames import grpc_frame
from bench.h2load import LoadSettings
from bench.procs import start_backend

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")


@pytest.fixture
def backend(tmp_path):
    child, address = start_backend(tmp_path, "smoke")
    yield address
    child.stop()


async def test_answers_are_counted_by_the_backend(backend, tmp_path):
    target = loadrows.LoadTarget("smoke", backend, "linear-a", (backend,),
                                 load=LoadSettings(clients=2, streams=4, duration_s=0, requests=400, timeout_s=5))
    result = await loadrows.run_once(target, tmp_path)
    assert result["status_2xx"] == 400 and result["backend_answered"] == 400
    assert result["errors"] == 0 and result["by_model"] == {"linear-a": 400}
    assert 0 < result["p50_ms"] <= result["p99_ms"]
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
