"""The v2 REST API of the native router (SPEC section 5, "REST" and "Auth"): a real httpx
client through dataplane._native to demo models on both REST paths (a model with an
http_endpoint is forwarded as REST, one without is translated to ModelInfer), every error
path's status and v2 error object, malformed HTTP, and `--auth jwt` on REST and gRPC with the
shared token table (tests/vectors/jwt.json); shadow copies over REST in every form pair; every
v2 datatype, BYTES and parameters through a real echo backend."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import grpc
import httpx
import pytest

from dataplane import _native
from dataplane.demo_server import DemoModel, start_demo_rest_server, start_demo_server_in_thread
from tsplit.etcd_server import free_port
from tsplit.inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "jwt.json").read_text())
MODEL_A = DemoModel("linear-a", weights=((1.0, 0.0), (0.0, 1.0)), bias=(0.0, 0.0))
MODEL_B = DemoModel("linear-b", weights=((0.0, 1.0), (1.0, 0.0)), bias=(0.0, 0.0))
LIMIT = 1 << 20  # the test routers' body limit
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [[0.1, 0.9]]}]}


@pytest.fixture(scope="module")
def backends():
    grpc_server = start_demo_server_in_thread([MODEL_A, MODEL_B])
    rest_server = start_demo_rest_server([MODEL_A, MODEL_B])
    yield grpc_server.address, rest_server.address
    rest_server.stop()
    grpc_server.stop()


def variant(name, model_id, endpoint, model_name, http_endpoint=""):
    return {"name": name, "model_id": model_id, "endpoint": endpoint, "model_name": model_name,
            "model_version": "", "http_endpoint": http_endpoint}


def route(slug, variants, allocation, org="org_1", version=3):
    return {"slug": slug, "cache_version": version, "shadow_mode": False, "org_id": org, "variants": variants,
            "allocation": [{"variant": v, "start": a, "end": b} for v, a, b in allocation]}


def snapshot(grpc_address, rest_address):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    a = variant("champion", "mod_a", grpc_address, "linear-a")
    a_http = variant("champion", "mod_ah", grpc_address, "linear-a", rest_address)
    b_http = variant("ch_b", "mod_b", grpc_address, "linear-b", rest_address)
    return {"revision": 1, "routes": [
        route("dep_grpc", [a], [("champion", 0, 10000)]),
        route("dep_http", [a_http], [("champion", 0, 10000)]),
        route("dep_split", [a, b_http], [("champion", 0, 5000), ("ch_b", 5000, 10000)]),
        route("dep_failover", [a, variant("ch_dead", "mod_dead", dead, "x", dead)], [("ch_dead", 0, 10000)]),
        route("dep_deadchamp", [variant("champion", "mod_dead", dead, "x")], [("champion", 0, 10000)]),
        route("dep_badname", [variant("champion", "mod_bad", grpc_address, "nope", rest_address)],
              [("champion", 0, 10000)]),
        route("dep_other", [a], [("champion", 0, 10000)], org="org_2"),
    ]}


def start_router(auth=None, table=None):
    config = {"host": "127.0.0.1", "port": 0, "threads": 2, "server_name": "tsplit-router",
              "server_version": "test", "max_message_bytes": LIMIT, "request_timeout_s": 10.0}
    if auth is not None:
        config["auth"] = auth
    router = _native.start(json.dumps(config))
    if table is not None:
        assert router.swap_table(json.dumps(table)) == []
    return router


@pytest.fixture(scope="module")
def router(backends):
    r = start_router(table=snapshot(*backends))
    yield r
    r.stop(0.5)


@pytest.fixture(scope="module")
def client(router):
    with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as c:
        yield c


def v2_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def counters(router, slug):
    return json.loads(router.counters()).get(slug, {})


# --- the two infer paths --------------------------------------------------------------------

def test_a_model_without_http_endpoint_is_translated_to_model_infer(client):
    response = client.post("/v2/models/dep_grpc/infer", json={**ROW, "id": "r1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "linear-a" and body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [1]}
    assert outputs["probabilities"]["shape"] == [1, 2] and outputs["probabilities"]["datatype"] == "FP32"
    assert sum(outputs["probabilities"]["data"]) == pytest.approx(1.0, abs=1e-6)
    assert response.headers["tsplit-model-id"] == "mod_a"
    assert response.headers["tsplit-variant"] == "champion"
    assert response.headers["tsplit-cache-version"] == "3"


def test_a_model_with_http_endpoint_is_forwarded_as_rest_unparsed(client, backends):
    response = client.post("/v2/models/dep_http/infer", json=ROW)
    assert response.status_code == 200, response.text
    # Exactly what the backend's own REST port answers (the body passed through).
    direct = httpx.post(f"http://{backends[1]}/v2/models/linear-a/infer", json=ROW)
    assert response.json() == direct.json()
    assert response.headers["tsplit-model-id"] == "mod_ah"


def test_the_backends_own_http_error_passes_through(client):
    response = client.post("/v2/models/dep_badname/infer", json=ROW)
    assert "'nope'" in v2_error(response, 404)  # the demo REST server's words, not the router's


def test_a_backend_grpc_error_becomes_its_http_status(client):
    bad_shape = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert "shape" in v2_error(client.post("/v2/models/dep_grpc/infer", json=bad_shape), 400)


def test_http2_clients_get_the_same_answers(router):
    with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", http1=False, http2=True, timeout=10) as h2:
        for slug in ("dep_grpc", "dep_http"):
            response = h2.post(f"/v2/models/{slug}/infer", json=ROW)
            assert response.http_version == "HTTP/2" and response.status_code == 200, response.text
            assert {o["name"] for o in response.json()["outputs"]} == {"probabilities", "label"}


def test_a_v2_rest_client_library_works_unmodified_through_the_router(router):
    """open-inference-openapi (the Open Inference Protocol's generated REST client) against
    the router: health, server and model metadata, readiness, infer on both REST paths, and
    the router's errors as the library's (with the v2 error object as their body)."""
    from open_inference.openapi.client import ApiError, BadRequestError, InferenceRequest, OpenInferenceClient

    client = OpenInferenceClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10)
    client.check_server_liveness()
    client.check_server_readiness()
    assert client.read_server_metadata().name == "tsplit-router"
    request = InferenceRequest.parse_obj({**ROW, "id": "lib-1"})
    for slug in ("dep_grpc", "dep_http"):
        client.check_model_readiness(slug)
        meta = client.read_model_metadata(slug)
        assert meta.name == slug and meta.inputs[0].name == "input"
        answer = client.model_infer(slug, request=request)
        outputs = {o.name: o for o in answer.outputs}
        assert answer.model_name == "linear-a" and answer.id == "lib-1"
        assert outputs["label"].datatype == "INT64" and outputs["label"].data.__root__ == [1]  # (as floats)
    answer = client.model_version_infer("dep_grpc", "7", request=request)  # the caller's version is ignored
    assert answer.model_name == "linear-a"
    with pytest.raises(ApiError) as missing:
        client.model_infer("dep_missing", request=request)
    assert missing.value.status_code == 404 and "no such deployment" in missing.value.body["error"]
    bad = InferenceRequest.parse_obj({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                                                  "data": [1, 2]}]})
    with pytest.raises(BadRequestError) as refused:
        client.model_infer("dep_grpc", request=bad)
    assert "3 values" in refused.value.body["error"]


# --- split, sticky, forced, failover, counters ----------------------------------------------

def test_sticky_keys_keep_their_variant_and_both_variants_answer(client):
    seen = {}
    for i in range(40):
        key = f"user-{i}"
        first = client.post("/v2/models/dep_split/infer", json=ROW, headers={"x-routing-key": key})
        again = client.post("/v2/models/dep_split/infer", json=ROW, headers={"x-routing-key": key})
        assert first.status_code == again.status_code == 200
        assert first.headers["tsplit-variant"] == again.headers["tsplit-variant"]
        seen[key] = first.headers["tsplit-variant"]
    assert set(seen.values()) == {"champion", "ch_b"}


def test_a_forced_variant_answers_and_an_unknown_one_is_400(client, router):
    before = counters(router, "dep_split").get("ch_b", {}).get("forced", 0)
    response = client.post("/v2/models/dep_split/infer", json=ROW, headers={"x-tsplit-variant": "ch_b"})
    assert response.status_code == 200 and response.headers["tsplit-variant"] == "ch_b"
    assert response.json()["model_name"] == "linear-b"
    assert counters(router, "dep_split")["ch_b"]["forced"] == before + 1
    assert "ch_nope" in v2_error(client.post("/v2/models/dep_split/infer", json=ROW,
                                             headers={"x-tsplit-variant": "ch_nope"}), 400)


def test_an_unreachable_challenger_fails_over_to_the_champion(client, router):
    response = client.post("/v2/models/dep_failover/infer", json=ROW)
    assert response.status_code == 200 and response.headers["tsplit-variant"] == "champion"
    stats = counters(router, "dep_failover")
    assert stats["ch_dead"]["failovers"] >= 1 and stats["champion"]["ok"] >= 1


def test_rest_answers_are_counted_with_grpc_ones(client, router):
    before = counters(router, "dep_grpc")["champion"]
    client.post("/v2/models/dep_grpc/infer", json=ROW)
    client.post("/v2/models/dep_grpc/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                               "shape": [1, 3], "data": [1, 2, 3]}]})
    after = counters(router, "dep_grpc")["champion"]
    assert after["requests"] == before["requests"] + 2
    assert after["ok"] == before["ok"] + 1 and after["errors"] == before["errors"] + 1
    assert sum(after["latency_buckets"]) == sum(before["latency_buckets"]) + 2


# --- shadow copies over REST ------------------------------------------------------------------

SLOW = DemoModel("slow-b", weights=((0.0, 1.0), (1.0, 0.0)), bias=(0.0, 0.0), latency_ms=4000)
FORMS = ("forwarded", "translated")
SHADOW_ALLOCATION = [("champion", 0, 2000), ("ch_same", 2000, 6000), ("ch_b", 6000, 10000)]


@pytest.fixture(scope="module")
def shadow_router(backends):
    grpc_address, rest_address = backends
    slow_grpc = start_demo_server_in_thread([SLOW])
    slow_rest = start_demo_rest_server([SLOW])

    def v(name, model_name, form, grpc_at=grpc_address, rest_at=rest_address):
        return variant(name, f"mod_{name}", grpc_at, model_name, rest_at if form == "forwarded" else "")

    routes = []
    for champion in FORMS:
        for challenger in FORMS:
            r = route(f"dep_sh_{champion[0]}{challenger[0]}", [
                v("champion", "linear-a", champion), v("ch_same", "linear-a", challenger),
                v("ch_b", "linear-b", challenger)], SHADOW_ALLOCATION)
            routes.append({**r, "shadow_mode": True})
    for form in FORMS:
        slow = route(f"dep_sh_slow_{form[0]}", [
            v("champion", "linear-a", form),
            v("ch_slow", "slow-b", form, slow_grpc.address, slow_rest.address)], [("ch_slow", 0, 10000)])
        routes.append({**slow, "shadow_mode": True})
    config = {"host": "127.0.0.1", "port": 0, "threads": 2, "max_message_bytes": LIMIT, "request_timeout_s": 10.0,
              "max_inflight_mirrors": 2, "mirror_timeout_s": 10.0}
    r = _native.start(json.dumps(config))
    assert r.swap_table(json.dumps({"revision": 1, "routes": routes})) == []
    yield r
    r.stop(0.5)
    slow_rest.stop()
    slow_grpc.stop()


def settled(router, slug, variants, timeout=20.0):
    """The deployment's counters once every copy sent has been scored or failed."""
    deadline = time.monotonic() + timeout
    while True:
        stats = counters(router, slug)
        rows = [stats.get(v, {}) for v in variants]
        done = all(r.get("mirrored", 0) == r.get("compared", 0) + r.get("mirror_errors", 0) for r in rows)
        if (done and router.mirrors_inflight() == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def _rows(n: int):
    # The demo's REST and gRPC servers agree bit for bit on this row (not on every row: the
    # REST one computes in float64, the gRPC one in float32).
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 2], "data": [[0.1, 0.9]] * n}]}


@pytest.mark.parametrize("champion", FORMS)
@pytest.mark.parametrize("challenger", FORMS)
def test_rest_shadow_copies_go_to_the_slots_challenger_in_its_own_form_and_are_compared(
        shadow_router, champion, challenger):
    """Champion and challengers each forwarded (http_endpoint: the REST call mirrored) or
    translated (the ModelInfer mirrored); the champion answers every call; each pair is
    scored: the same model matches exactly and agrees on every label, the opposite one on
    none. One call of 3,000 rows (answers compared off the runtime threads)."""
    from tsplit.allocation import slot_of

    slug = f"dep_sh_{champion[0]}{challenger[0]}"
    base = f"http://127.0.0.1:{shadow_router.port}/v2/models/{slug}/infer"
    owners = {"ch_same": 0, "ch_b": 0}
    with httpx.Client(timeout=10) as http:
        for i in range(30):
            key = f"user-{i}"
            slot = slot_of(slug, key)
            owner = next(name for name, start, end in SHADOW_ALLOCATION if start <= slot < end)
            # Sequential calls: never more than the router's two copies in flight.
            settled(shadow_router, slug, ("ch_same", "ch_b"))
            response = http.post(base, json=ROW, headers={"x-routing-key": key})
            assert response.status_code == 200, response.text
            assert response.headers["tsplit-variant"] == "champion"
            assert response.json()["model_name"] == "linear-a"
            if owner != "champion":
                owners[owner] += 1
        settled(shadow_router, slug, ("ch_same", "ch_b"))
        big = http.post(base, json=_rows(3000), headers={"x-routing-key": next(
            f"big-{i}" for i in range(1000) if 2000 <= slot_of(slug, f"big-{i}") < 6000)})
        assert big.status_code == 200 and len(big.content) > 16 * 1024
        owners["ch_same"] += 1
    stats = settled(shadow_router, slug, ("ch_same", "ch_b"))
    same, other = stats["ch_same"], stats["ch_b"]
    assert min(owners.values()) > 0, owners
    for row, n in ((same, owners["ch_same"]), (other, owners["ch_b"])):
        assert (row["mirrored"], row["compared"], row["mirror_errors"], row["mirror_dropped"]) == (n, n, 0, 0), row
        assert row["requests"] == 0  # copies are not answers
    assert same["exact_matches"] == owners["ch_same"] and same["label_agree"] == same["label_total"] > 0
    assert other["exact_matches"] == 0 and other["label_agree"] == 0 < other["label_total"]
    assert other["abs_diff_count"] > 0
    assert stats["champion"]["ok"] == 31 and stats["champion"]["requests"] == 31


def test_rest_and_grpc_shadow_copies_are_counted_together(shadow_router):
    slug = "dep_sh_tt"
    from tsplit.allocation import slot_of

    key = next(f"k-{i}" for i in range(1000) if 6000 <= slot_of(slug, f"k-{i}"))
    before = settled(shadow_router, slug, ("ch_b",))["ch_b"]
    assert httpx.post(f"http://127.0.0.1:{shadow_router.port}/v2/models/{slug}/infer", json=ROW,
                      headers={"x-routing-key": key}, timeout=10).status_code == 200
    settled(shadow_router, slug, ("ch_b",))
    with grpc.insecure_channel(f"127.0.0.1:{shadow_router.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_grpc_request(slug), metadata=[("x-routing-key", key)], timeout=10)
    after = settled(shadow_router, slug, ("ch_b",))["ch_b"]
    assert after["mirrored"] == before["mirrored"] + 2 and after["compared"] == before["compared"] + 2
    assert after["label_total"] > before["label_total"] and after["label_agree"] == before["label_agree"]


@pytest.mark.parametrize("challenger", FORMS)
def test_a_body_the_router_refuses_has_no_shadow_copy(shadow_router, challenger):
    """A translated champion's 400 (the JSON is not an inference request) is the router's
    own refusal: no copy, as for a gRPC request that is not a valid message."""
    from tsplit.allocation import slot_of

    slug = f"dep_sh_t{challenger[0]}"
    key = next(f"bad-{i}" for i in range(1000) if 6000 <= slot_of(slug, f"bad-{i}"))
    before = settled(shadow_router, slug, ("ch_b",))["ch_b"]
    refused = httpx.post(f"http://127.0.0.1:{shadow_router.port}/v2/models/{slug}/infer", json={"x": 1},
                         headers={"x-routing-key": key}, timeout=10)
    assert "inputs" in v2_error(refused, 400)
    after = settled(shadow_router, slug, ("ch_b",))["ch_b"]
    assert (after["mirrored"], after["mirror_errors"]) == (before["mirrored"], before["mirror_errors"])


@pytest.mark.parametrize("form", FORMS)
def test_rest_copies_past_the_bound_are_dropped_and_never_delay_the_champion(shadow_router, form):
    """The challenger takes 4 s; the router holds two copies in flight: of six calls at
    once, two are mirrored and four dropped (counted), and every champion answer comes
    long before any copy's (this machine may be loaded: seconds, not milliseconds)."""
    from concurrent.futures import ThreadPoolExecutor

    slug = f"dep_sh_slow_{form[0]}"
    url = f"http://127.0.0.1:{shadow_router.port}/v2/models/{slug}/infer"
    settled(shadow_router, slug, ("ch_slow",))

    def call(_):
        started = time.monotonic()
        response = httpx.post(url, json=ROW, timeout=10)
        return response.status_code, response.headers.get("tsplit-variant"), time.monotonic() - started

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(6)))
    assert all(status == 200 and variant == "champion" for status, variant, _ in answers), answers
    assert max(elapsed for _, _, elapsed in answers) < 3.0, answers
    stats = settled(shadow_router, slug, ("ch_slow",))["ch_slow"]
    assert (stats["mirrored"], stats["mirror_dropped"], stats["compared"]) == (2, 4, 2), stats
    assert stats["mirror_latency_ms_sum"] >= 2 * 4000


# --- every datatype, BYTES, parameters: through a real echo backend -----------------------------

class EchoModel(pb_grpc.GRPCInferenceServiceServicer):
    """A v2 gRPC backend that answers each input as an output of the same name, datatype,
    shape, contents and parameters (and the request's parameters), and keeps what it got."""

    def __init__(self):
        self.seen: list[pb.ModelInferRequest] = []
        self.metadata: list[dict[str, str]] = []

    def ModelInfer(self, request, context):
        self.seen.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for key, value in request.parameters.items():
            response.parameters[key].CopyFrom(value)
        for tensor in request.inputs:
            out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            if tensor.HasField("contents"):
                out.contents.CopyFrom(tensor.contents)
            for key, value in tensor.parameters.items():
                out.parameters[key].CopyFrom(value)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


@pytest.fixture(scope="module")
def echo():
    from concurrent.futures import ThreadPoolExecutor

    model = EchoModel()
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    router = start_router(table={"revision": 1, "routes": [
        route("dep_echo", [variant("champion", "mod_echo", f"127.0.0.1:{port}", "echo")], [("champion", 0, 10000)])]})
    yield router, model
    router.stop(0.5)
    server.stop(0)


TYPED = [  # (datatype, shape, data sent, the ModelInferRequest field it must land in)
    ("BOOL", [3], [True, False, True], "bool_contents"),
    ("UINT8", [2], [0, 255], "uint_contents"),
    ("UINT16", [2], [0, 65535], "uint_contents"),
    ("UINT32", [2], [0, 4294967295], "uint_contents"),
    ("UINT64", [2], [0, 18446744073709551615], "uint64_contents"),
    ("INT8", [2], [-128, 127], "int_contents"),
    ("INT16", [2], [-32768, 32767], "int_contents"),
    ("INT32", [2], [-2147483648, 2147483647], "int_contents"),
    ("INT64", [2], [-9223372036854775808, 9223372036854775807], "int64_contents"),
    ("FP32", [2, 2], [0.5, -1.25, 3.0, 1e-3], "fp32_contents"),
    ("FP64", [2], [1e300, -0.1], "fp64_contents"),
    ("BYTES", [2], ["hello", "w\u00f6rld \U0001f600"], "bytes_contents"),
]


def test_every_typed_datatype_bytes_as_strings_and_parameters_cross_both_ways(echo):
    router, model = echo
    inputs = [{"name": f"in_{dt.lower()}", "datatype": dt, "shape": shape, "data": data,
               "parameters": {"tag": dt}} for dt, shape, data, _ in TYPED]
    body = {"id": "r-7", "parameters": {"flag": True, "count": 3, "ratio": 0.25, "note": "n"},
            "inputs": inputs, "outputs": [{"name": "in_fp32", "parameters": {"binary_data": False}}]}
    response = httpx.post(f"http://127.0.0.1:{router.port}/v2/models/dep_echo/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    # What the backend got: each datatype in its typed field, BYTES as bytes, parameters typed.
    got = model.seen[-1]
    assert got.model_name == "echo" and got.id == "r-7" and not got.raw_input_contents
    params = {k: (v.WhichOneof("parameter_choice"), getattr(v, v.WhichOneof("parameter_choice")))
              for k, v in got.parameters.items()}
    assert params == {"flag": ("bool_param", True), "count": ("int64_param", 3),
                      "ratio": ("double_param", 0.25), "note": ("string_param", "n")}
    for tensor, (dt, shape, data, field) in zip(got.inputs, TYPED):
        assert (tensor.datatype, list(tensor.shape)) == (dt, shape)
        assert tensor.parameters["tag"].string_param == dt
        values = list(getattr(tensor.contents, field))
        if dt == "BYTES":
            assert values == [d.encode() for d in data]
        elif dt == "FP32":
            assert values == pytest.approx(data, rel=1e-7)
        else:
            assert values == data
    assert [o.name for o in got.outputs] == ["in_fp32"] and got.outputs[0].parameters["binary_data"].bool_param is False
    # And back: the same values as JSON, BYTES as strings, parameters kept.
    answer = response.json()
    assert answer["id"] == "r-7" and answer["parameters"] == body["parameters"]
    for out, (dt, shape, data, _) in zip(answer["outputs"], TYPED):
        assert (out["name"], out["datatype"], out["shape"]) == (f"in_{dt.lower()}", dt, shape)
        assert out["parameters"] == {"tag": dt}
        assert out["data"] == (pytest.approx(data, rel=1e-7) if dt == "FP32" else data)


def test_fp16_and_bf16_go_raw_with_every_other_input_and_come_back_as_numbers(echo):
    router, model = echo
    inputs = [{"name": "half", "datatype": "FP16", "shape": [3], "data": [0.5, -1.5, 65504.0]},
              {"name": "brain", "datatype": "BF16", "shape": [2], "data": [1.0, -2.0]},
              {"name": "ints", "datatype": "INT32", "shape": [2], "data": [7, -7]},
              {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]
    response = httpx.post(f"http://127.0.0.1:{router.port}/v2/models/dep_echo/infer", json={"inputs": inputs},
                          timeout=10)
    assert response.status_code == 200, response.text
    got = model.seen[-1]
    assert len(got.raw_input_contents) == 4 and not any(t.HasField("contents") for t in got.inputs)
    import struct

    assert got.raw_input_contents[0] == struct.pack("<3e", 0.5, -1.5, 65504.0)
    assert got.raw_input_contents[2] == struct.pack("<2i", 7, -7)
    assert got.raw_input_contents[3] == struct.pack("<I", 2) + b"ok"  # BYTES raw: length-prefixed
    assert [(o["datatype"], o["data"]) for o in response.json()["outputs"]] == [
        ("FP16", [0.5, -1.5, 65504.0]), ("BF16", [1.0, -2.0]), ("INT32", [7, -7]), ("BYTES", ["ok"])]


CALLER_HEADERS = {"authorization": "Bearer t", "x-tsplit-variant": "champion", "x-tsplit-other": "1",
                  "x-routing-key": "user-1", "x-request-id": "req-9", "x-user": "ada"}


def test_caller_headers_reach_the_backends_without_the_token_or_tsplits_own(echo):
    """SPEC 5: request metadata goes to the backend except `authorization` and `x-tsplit-*`
    (and hop-by-hop headers): as gRPC metadata on the translated path, as HTTP headers on
    the forwarded one (where the routing key, the router's, stays behind too)."""
    import http.server
    import threading

    router, model = echo
    response = httpx.post(f"http://127.0.0.1:{router.port}/v2/models/dep_echo/infer", json=ROW,
                          headers=CALLER_HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    got = model.metadata[-1]
    assert got["x-request-id"] == "req-9" and got["x-user"] == "ada" and got["x-routing-key"] == "user-1"
    assert not {"authorization", "x-tsplit-variant", "x-tsplit-other"} & set(got)

    seen: list[dict[str, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            answer = json.dumps({"model_name": "rec", "outputs": []}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    forwarding = start_router(table={"revision": 1, "routes": [route(
        "dep_rec", [variant("champion", "mod_rec", address, "rec", address)], [("champion", 0, 10000)])]})
    try:
        response = httpx.post(f"http://127.0.0.1:{forwarding.port}/v2/models/dep_rec/infer", json=ROW,
                              headers=CALLER_HEADERS, timeout=10)
        assert response.status_code == 200, response.text
    finally:
        forwarding.stop(0.5)
        server.shutdown()
    assert seen[-1]["x-request-id"] == "req-9" and seen[-1]["x-user"] == "ada"
    assert seen[-1]["content-type"] == "application/json"
    assert not {"authorization", "x-tsplit-variant", "x-tsplit-other", "x-routing-key"} & set(seen[-1])


# --- metadata, health -----------------------------------------------------------------------

def test_health_server_and_model_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "tsplit-router"
    for slug in ("dep_grpc", "dep_http"):
        meta = client.get(f"/v2/models/{slug}")
        assert meta.status_code == 200, meta.text
        assert meta.json()["name"] == slug and meta.json()["inputs"][0]["name"] == "input"
        ready = client.get(f"/v2/models/{slug}/ready")
        assert ready.status_code == 200, ready.text


# --- errors ---------------------------------------------------------------------------------

def test_every_router_error_is_the_v2_error_object(client):
    post = lambda path, **kw: client.post(path, **kw)  # noqa: E731
    assert "not JSON" in v2_error(post("/v2/models/dep_grpc/infer", content=b"{nope",
                                       headers={"content-type": "application/json"}), 400)
    assert "inputs" in v2_error(post("/v2/models/dep_grpc/infer", json={"x": 1}), 400)
    assert "needs 2 values" in v2_error(post("/v2/models/dep_grpc/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1]}]}), 400)
    assert "application/json" in v2_error(post("/v2/models/dep_grpc/infer", content=b"a=1",
                                               headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    assert "limit" in v2_error(post("/v2/models/dep_grpc/infer", content=b" " * (LIMIT + 1),
                                    headers={"content-type": "application/json"}), 413)
    assert "no such deployment" in v2_error(post("/v2/models/dep_missing/infer", json=ROW), 404)
    assert "unreachable" in v2_error(post("/v2/models/dep_deadchamp/infer", json=ROW), 503)
    assert "POST" in v2_error(client.get("/v2/models/dep_grpc/infer"), 405)
    assert v2_error(client.get("/v2/repository/index"), 404)
    # The router's own errors never show a backend's address.
    message = v2_error(post("/v2/models/dep_deadchamp/infer", json=ROW), 503)
    assert "127.0.0.1" not in message


def test_before_the_first_snapshot_calls_are_503():
    empty = start_router()
    try:
        base = f"http://127.0.0.1:{empty.port}"
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        assert "configuration" in v2_error(httpx.post(f"{base}/v2/models/dep_grpc/infer", json=ROW), 503)
    finally:
        empty.stop(0.5)


def _raw_http(port: int, request: bytes, close_write: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        chunks, deadline = [], time.monotonic() + 10
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_a_truncated_chunked_body_is_400(router):
    body = json.dumps(ROW).encode()
    request = (b"POST /v2/models/dep_grpc/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body) + 50:x}\r\n".encode() + body)
    answer = _raw_http(router.port, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"error"' in answer and b"not received whole" in answer


def test_a_body_over_the_limit_without_a_length_is_413_on_both_paths(router):
    """Chunked (no Content-Length: the limit is met while reading) and over HTTP/2, on the
    translated and the forwarded path alike."""
    chunk = b" " * 65536
    chunks = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(LIMIT // len(chunk) + 1))
    for slug in ("dep_grpc", "dep_http"):
        request = (f"POST /v2/models/{slug}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
        answer = _raw_http(router.port, request)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'{"error":' in answer and b"limit" in answer
    for slug in ("dep_grpc", "dep_http"):
        status, headers, body = _h2_post(router.port, f"/v2/models/{slug}/infer", chunk, LIMIT // len(chunk) + 1)
        assert status == 413 and headers["content-type"] == "application/json", (status, body[:200])
        assert "limit" in json.loads(body)["error"]


def _h2_post(port: int, path: str, chunk: bytes, count: int) -> tuple[int, dict[str, str], bytes]:
    """POST `count` DATA frames of `chunk` over HTTP/2 (no content-length), reading the
    answer as it comes (a client that could not read before it has sent all, like httpx,
    cannot see an early answer): (status, headers, body)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    status, headers, body, sent = 0, {}, b"", 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x"),
                              ("content-type", "application/json")])
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            while sent < count and conn.local_flow_control_window(1) >= len(chunk) and not status:
                conn.send_data(1, chunk, end_stream=sent == count - 1)
                sent += 1
            sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                    status = int(headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and status:
                    return status, headers, body
            sock.sendall(conn.data_to_send())
    return status, headers, body


@pytest.mark.parametrize("request_bytes,status,words", [
    (b"GARBAGE\r\n\r\n", 400, b"not valid HTTP/1.1"),
    (b"POST /v2/models/dep_grpc/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     b"not valid HTTP/1.1"),
    (b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n", 431,
     b"headers are over"),
], ids=["request line", "content-length", "too many headers"])
def test_http_the_server_cannot_parse_is_answered_with_the_v2_error_object(router, request_bytes, status, words):
    answer = _raw_http(router.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"content-type: application/json" in head and b"connection: close" in head
    assert set(json.loads(body)) == {"error"} and words in body
    assert f"content-length: {len(body)}".encode() in head


def test_a_short_content_length_body_is_400(router):
    request = (b"POST /v2/models/dep_grpc/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 500\r\n\r\n{\"inputs\": [")
    answer = _raw_http(router.port, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# --- auth -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jwt_router(backends, tmp_path_factory):
    spec = VECTORS["verifiers"]["rsa_pem"]
    key = tmp_path_factory.mktemp("router-jwt") / "public.pem"
    key.write_text(spec["public_key_pem"])
    r = start_router({"public_key_path": str(key), "issuer": spec["issuer"], "audience": spec["audience"]},
                     snapshot(*backends))
    yield r
    r.stop(0.5)


RSA_CASES = [c for c in VECTORS["cases"] if c["verifier"] == "rsa_pem"]


def _expected(case) -> str:
    if "error" in case["expect"]:
        return "unauthenticated"
    return case["access"]  # "ok", or "not_found" for another org's deployment


@pytest.mark.parametrize("case", RSA_CASES, ids=[c["name"] for c in RSA_CASES])
def test_the_token_table_over_rest(jwt_router, case):
    headers = {"authorization": f"Bearer {case['token']}"} if case["token"] else {}
    response = httpx.post(f"http://127.0.0.1:{jwt_router.port}/v2/models/dep_grpc/infer", json=ROW,
                          headers=headers, timeout=10)
    expected = _expected(case)
    if expected == "ok":
        assert response.status_code == 200, response.text
    elif expected == "not_found":
        assert "no such deployment" in v2_error(response, 404)
    else:
        message = v2_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert case["expect"]["error"] in message or not case["token"]


@pytest.fixture(scope="module")
def jwt_stub(jwt_router):
    channel = grpc.insecure_channel(f"127.0.0.1:{jwt_router.port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _grpc_request(slug: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=slug)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([0.1, 0.9])
    return request


@pytest.mark.parametrize("case", RSA_CASES, ids=[c["name"] for c in RSA_CASES])
def test_the_token_table_over_grpc(jwt_stub, case):
    metadata = [("authorization", f"Bearer {case['token']}")] if case["token"] else []
    expected = _expected(case)
    try:
        jwt_stub.ModelInfer(_grpc_request("dep_grpc"), metadata=metadata, timeout=10)
        outcome = "ok"
    except grpc.RpcError as err:
        outcome = {grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
                   grpc.StatusCode.NOT_FOUND: "not_found"}.get(err.code(), err.code().name)
        if outcome == "unauthenticated" and case["token"]:
            assert case["expect"]["error"] in err.details()
    if case["name"] == "too long" and outcome != "unauthenticated":
        # Over HTTP/2's header list limit (16 KiB), refused by the transport before auth.
        assert outcome in ("UNKNOWN", "INTERNAL", "RESOURCE_EXHAUSTED"), outcome
        return
    assert outcome == expected


def test_another_orgs_deployment_reads_exactly_like_a_missing_one(jwt_router):
    good = next(c["token"] for c in RSA_CASES if c["name"] == "good rs256")
    base, headers = f"http://127.0.0.1:{jwt_router.port}", {"authorization": f"Bearer {good}"}
    other = httpx.post(f"{base}/v2/models/dep_other/infer", json=ROW, headers=headers)
    missing = httpx.post(f"{base}/v2/models/dep_nope/infer", json=ROW, headers=headers)
    assert v2_error(other, 404) == v2_error(missing, 404).replace("dep_nope", "dep_other")
    assert httpx.get(f"{base}/v2/models/dep_other", headers=headers).status_code == 404


def test_health_and_server_metadata_need_no_token_but_models_do(jwt_router):
    base = f"http://127.0.0.1:{jwt_router.port}"
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.get(f"{base}/v2").status_code == 200
    assert v2_error(httpx.get(f"{base}/v2/models/dep_grpc"), 401)
    assert v2_error(httpx.get(f"{base}/v2/models/dep_grpc/ready"), 401)


# --- tsplit-router's auth flags ----------------------------------------------------------------

def test_router_auth_flags_build_the_cores_auth_config(tmp_path):
    from dataplane.settings import parse_settings

    key = tmp_path / "public.pem"
    key.write_text(VECTORS["verifiers"]["rsa_pem"]["public_key_pem"])
    settings = parse_settings(["--auth", "jwt", "--jwt-public-key", str(key),
                               "--jwt-issuer", "iss", "--jwt-audience", "aud"], env={})
    assert settings.auth_config() == {"public_key_path": str(key), "jwks_path": None, "issuer": "iss",
                                      "audience": "aud"}
    # The shared variables of the control plane's flags work here too.
    from_env = parse_settings(["--auth", "jwt"], env={"TSPLIT_JWT_PUBLIC_KEY": str(key)})
    assert from_env.auth_config()["public_key_path"] == str(key)
    assert parse_settings([], env={}).auth_config() is None


@pytest.mark.parametrize("argv,words", [
    (["--auth", "jwt"], "exactly one"),
    (["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"], "no such file"),
    (["--auth", "basic"], "--auth must be one of"),
    (["--jwt-public-key", __file__], "--auth jwt"),
])
def test_bad_router_auth_flags_are_refused(argv, words, capsys):
    from dataplane.settings import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(argv, env={})
    assert words in capsys.readouterr().err


def test_a_bad_key_file_fails_the_core_at_start(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(OSError, match="bad.pem"):
        start_router({"public_key_path": str(bad)})
