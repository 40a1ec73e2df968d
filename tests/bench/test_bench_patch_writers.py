"""Target 4's writer processes (bench.patch_writers, bench.writes.run_writers): the pure
parts, and a real run of 2 processes against a small HTTP/1.1 server that keeps the
shares, so the merged tally can be checked against what the server actually applied."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, strategies as st

from bench import patch_writers, writes


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=8))
def test_split_slots_deals_every_slot_once_into_balanced_groups(slots, processes):
    groups = patch_writers.split_slots(slots, processes)
    assert sorted(x for g in groups for x in g) == sorted(slots)
    assert len(groups) <= processes and all(groups)
    if groups:
        assert max(map(len, groups)) - min(map(len, groups)) <= 1


@given(st.sampled_from([1, 2]))
def test_flip_alternates_between_one_and_two(pct):
    assert patch_writers.flip(pct) in (1, 2) and patch_writers.flip(pct) != pct
    assert patch_writers.flip(patch_writers.flip(pct)) == pct


def test_failure_key_names_the_gateway_error_code_or_just_the_status():
    assert patch_writers.failure_key(409, b'{"error": "CONFLICT", "message": "x"}') == "409 CONFLICT"
    assert patch_writers.failure_key(502, b"<html>bad gateway</html>") == "502 "
    assert patch_writers.failure_key(500, b"") == "500 "


def test_tallies_survive_json_and_merge_adds_them_up():
    a = patch_writers.Tally(Counter({"d1": 3}), Counter({"409 CONFLICT": 1}), [1.0, 2.0], {"c1": 2}, 2, 6.1, 0.5)
    b = patch_writers.Tally(Counter({"d1": 4, "d2": 1}), Counter(), [3.0], {"c2": 1}, 5, 6.3, 0.25)
    a2 = patch_writers.Tally.from_json(a.to_json())
    assert a2 == a
    total = patch_writers.merge([a2, b])
    assert total.ok_by_slug == {"d1": 7, "d2": 1} and total.failures == {"409 CONFLICT": 1}
    assert sorted(total.latencies_ms) == [1.0, 2.0, 3.0] and total.last_written == {"c1": 2, "c2": 1}
    assert total.ok_timed == 7 and total.elapsed_s == 6.3 and total.cpu_s == 0.75


class ShareServer(ThreadingHTTPServer):
    """Keeps each challenger's share, counts applied PATCHes per deployment and the client
    connections; challenger "refused" always gets a 409 with the gateway's error shape."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ShareHandler)
        self.lock = threading.Lock()
        self.shares: dict[str, int] = {}
        self.applied: Counter = Counter()
        self.peers: set = set()


class ShareHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        slug = self.path.split("/")[3]
        server: ShareServer = self.server
        with server.lock:
            server.peers.add(self.client_address)
            ok = body["challenger_id"] != "refused" and self.headers.get("Authorization") == "Bearer t"
            if ok:
                server.shares[body["challenger_id"]] = body["traffic_pct"]
                server.applied[slug] += 1
        answer = json.dumps({"challenger": {"id": body["challenger_id"]}} if ok else
                            {"error": "CONFLICT", "message": "no"}).encode()
        self.send_response(200 if ok else 409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def share_server():
    server = ShareServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_processes_tally_exactly_what_the_server_applied(share_server):
    slots = [("dep-a", "c1"), ("dep-a", "c2"), ("dep-b", "c3"), ("dep-b", "refused"), ("dep-c", "c5")]
    url = f"http://127.0.0.1:{share_server.server_address[1]}"
    tally = await writes.run_writers(url, {"Authorization": "Bearer t"}, slots, duration_s=0.4, warmup_s=0.2,
                                     processes=2)
    assert tally.ok_by_slug == share_server.applied and sum(tally.ok_by_slug.values()) > 0
    assert tally.last_written == share_server.shares  # each client's last 200 is what the server holds
    assert set(tally.last_written) == {"c1", "c2", "c3", "c5"}
    assert tally.failures["409 CONFLICT"] > 0 and set(tally.failures) == {"409 CONFLICT"}
    assert len(share_server.peers) == len(slots)  # one keep-alive connection per client
    assert 0 < tally.ok_timed <= sum(tally.ok_by_slug.values()) and tally.elapsed_s >= 0.4
    assert len(tally.latencies_ms) > 0 and tally.cpu_s > 0
