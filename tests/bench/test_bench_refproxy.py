"""The reference pass-through proxies forward a ModelInfer to their backend and its answer
back, in each mode (the aio one as the router runs by default, and --plain)."""

from __future__ import annotations

import sys

import pytest

from bench import probe
from bench.procs import Child, start_backend, wait_for_listen
from tsplit.etcd_server import free_port


@pytest.fixture
def backend(tmp_path):
    child, address = start_backend(tmp_path, "refproxy-backend")
    yield address
    child.stop()


@pytest.mark.parametrize("mode", ["aio", "sync", "aio --plain"])
async def test_the_proxy_passes_answers_through(backend, tmp_path, mode):
    port = free_port()
    child = Child(f"refproxy {mode}", [sys.executable, "-m", "bench.refproxy", "--mode", *mode.split(),
                                       "--listen", f"127.0.0.1:{port}", "--backend", backend],
                  tmp_path / "refproxy.log").start()
    address = f"127.0.0.1:{port}"
    try:
        wait_for_listen(child, port, 15)
        sample = await probe.sample_answers(address, "linear-a", 5)
        stats = await probe.backend_stats(backend)
    finally:
        child.stop()
    assert sample.ok == 5 and sample.codes == {"OK": 5}
    assert stats["by_model"].get("linear-a", 0) >= 5
