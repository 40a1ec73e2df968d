"""Pure parts of proxyless mode: the dispatcher without I/O, the private OIP pool, the
settings and the error objects; unit and property tests, no servers."""

from __future__ import annotations

import asyncio
import collections
import threading

import grpc
import pytest
from google.protobuf import descriptor_pool
from hypothesis import HealthCheck, given, settings, strategies as st

from dataplane import oip, wire
from dataplane.dispatch import (
    DispatchError, Dispatcher, PARSE_BELOW_BYTES, _requested_name, apply_deferred, read_metadata,
)
from dataplane.proxyless.errors import ProxylessRpcError, aio_error, sync_error
from dataplane.proxyless.loop_thread import LoopThread
from dataplane.proxyless.settings import ProxylessSettings, settings_from
from dataplane.routing import DeploymentRoute, RoutingTable, Variant
from dataplane.stats import RouterStats

SLUG = "dep_units"


def _route(shares_bp: list[int], shadow: bool = False) -> DeploymentRoute:
    challengers = tuple(Variant(f"ch_{i}", f"mod_{i}", f"127.0.0.1:{9100 + i}", f"model-{i}", str(i), bp)
                        for i, bp in enumerate(shares_bp))
    champion_bp = 10_000 if shadow else 10_000 - sum(shares_bp)
    champion = Variant("champion", "mod_champ", "127.0.0.1:9000", "model-champ", "", champion_bp)
    return DeploymentRoute(SLUG, 5, shadow, champion, challengers)


def _dispatcher(route: DeploymentRoute, deferred=None) -> tuple[Dispatcher, RouterStats]:
    stats = RouterStats()
    table = RoutingTable(1, {route.slug: route})
    return Dispatcher(lambda: table, stats, server_name="t", server_version="1", not_ready_message="not yet",
                      deferred=deferred), stats


def _request(model_name: str = SLUG, **fields) -> bytes:
    request = oip.ModelInferRequest(model_name=model_name, id="r-1", **fields)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([0.25, 0.75])
    return request.SerializeToString()


shares = st.lists(st.integers(1, 2500), max_size=3)


@settings(max_examples=150, deadline=None)
@given(shares=shares, key=st.one_of(st.none(), st.binary(max_size=16)), version=st.text(max_size=5))
def test_the_dispatcher_chooses_as_the_route_does_and_rewrites_only_the_model(shares, key, version):
    route = _route(shares)
    dispatcher, _ = _dispatcher(route)
    metadata = (("x-routing-key", key),) if key is not None else ()
    attempt = dispatcher.begin_infer(_request(model_version=version), metadata + (("x-trace", "t1"),))
    if key:
        assert attempt.variant == route.choose(key)
    assert attempt.variant in route.variants
    sent = oip.ModelInferRequest.FromString(attempt.request)
    assert (sent.model_name, sent.model_version) == (attempt.variant.model_name, attempt.variant.model_version)
    assert sent.id == "r-1" and list(sent.inputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert attempt.forward == (("x-trace", "t1"),)
    assert attempt.response_metadata == (("tsplit-model-id", attempt.variant.model_id),
                                         ("tsplit-variant", attempt.variant.name), ("tsplit-cache-version", "5"))


@settings(max_examples=100, deadline=None)
@given(shares=st.lists(st.integers(1, 2500), min_size=1, max_size=3), codes=st.lists(
    st.sampled_from([None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL]), min_size=1, max_size=30))
def test_deferred_counts_add_up_to_direct_counts(shares, codes):
    """The proxyless client's deferred counting and the router's direct counting agree,
    failovers included (only a challenger's UNAVAILABLE fails over)."""
    route = _route(shares)
    deferred = collections.deque()
    figures = []
    for dispatcher in (_dispatcher(route)[0], _dispatcher(route, deferred)[0]):
        for i, code in enumerate(codes):
            forced = route.variants[i % len(route.variants)].name
            attempt = dispatcher.begin_infer(_request(), (("x-tsplit-variant", forced),))
            if code is None:
                attempt.succeeded(b"")
                continue
            retry = attempt.failover(code)
            assert (retry is not None) == (code == grpc.StatusCode.UNAVAILABLE and forced != "champion")
            if retry is not None:
                assert retry.variant is route.champion
                retry.succeeded(b"")
            else:
                attempt.failed(code, "boom", ())
        figures.append(dispatcher._stats)
    pending = len(deferred)
    assert pending >= len(codes) and apply_deferred(deferred) == pending and not deferred
    keys = ("requests", "ok", "errors", "errors_by_code", "failovers", "forced", "forced_errors")
    direct, applied = (s.snapshot()[SLUG] for s in figures)
    assert {v: {k: row[k] for k in keys} for v, row in direct.items()} == \
        {v: {k: row[k] for k in keys} for v, row in applied.items()}


def test_shadow_attempts_mirror_and_errors_carry_the_variant():
    route = _route([5000, 3000], shadow=True)
    dispatcher, _ = _dispatcher(route)
    attempt = dispatcher.begin_infer(_request(), (("x-routing-key", "k-1"),))
    assert attempt.variant is route.champion and attempt.mirrors() == route.mirrors(b"k-1")
    forced = dispatcher.begin_infer(_request(), (("x-tsplit-variant", "ch_0"),))
    assert forced.mirrors() == ()                        # a forced challenger answers alone
    error = attempt.failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("grpc-status", "8"), ("x-retry", "1")))
    assert (error.code, error.details, error.trailing) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("x-retry", "1"),))
    assert dict(error.initial)["tsplit-variant"] == "champion"


@pytest.mark.parametrize("request_bytes, metadata, code, says", [
    (_request("dep_other"), (), grpc.StatusCode.NOT_FOUND, "model_name 'dep_other': no such deployment"),
    (_request(""), (), grpc.StatusCode.INVALID_ARGUMENT, "model_name is required"),
    (b"\xff\xff\xff", (), grpc.StatusCode.INVALID_ARGUMENT, "not a valid message"),
    (_request(), (("x-tsplit-variant", "ch_9"),), grpc.StatusCode.INVALID_ARGUMENT, "x-tsplit-variant 'ch_9'"),
])
def test_dispatch_errors_name_the_field(request_bytes, metadata, code, says):
    dispatcher, _ = _dispatcher(_route([1000]))
    with pytest.raises(DispatchError) as err:
        dispatcher.begin_infer(request_bytes, metadata)
    assert err.value.code == code and says in err.value.details


def test_before_any_table_the_dispatcher_is_unavailable():
    dispatcher = Dispatcher(lambda: None, RouterStats(), server_name="t", server_version="1",
                            not_ready_message="proxyless client has no config yet")
    with pytest.raises(DispatchError) as err:
        dispatcher.begin_infer(_request(), ())
    assert (err.value.code, err.value.details) == (grpc.StatusCode.UNAVAILABLE, "proxyless client has no config yet")
    assert oip.ServerReadyResponse.FromString(dispatcher.local_answer(
        "/inference.GRPCInferenceService/ServerReady")).ready is False


base = _request()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    st.binary(max_size=64),
    st.tuples(st.integers(0, len(base)), st.binary(max_size=6), st.integers(0, 6)).map(
        lambda t: base[:t[0]] + t[1] + base[t[0] + t[2]:])))
def test_the_parser_and_the_scan_accept_and_read_the_same_bytes(raw):
    """Small requests are read by protobuf's parser, large ones by dataplane.wire's scan:
    both must refuse the same bytes and read the same model name."""
    assert len(raw) < PARSE_BELOW_BYTES
    try:
        parsed = ("ok", _requested_name(raw, wire.INFER_REQUEST))
    except DispatchError:
        parsed = ("refused",)
    try:
        scanned = ("ok", wire.scan_model_ref(raw, wire.INFER_REQUEST).name)
    except wire.MalformedMessage:
        scanned = ("refused",)
    assert parsed == scanned


def test_read_metadata_keeps_what_the_backend_needs_and_not_the_token_or_x_tsplit_keys():
    key, forced, forward = read_metadata([
        ("x-routing-key", "user-7"), ("x-tsplit-variant", b"ch_1"), ("user-agent", "grpc-python"),
        ("authorization", "Bearer t"), (":authority", "x"), ("grpc-timeout", "1S"), ("x-trace-bin", b"\x01"),
        ("x-tsplit-debug", "1"), ("x-request-id", "r-1")])
    assert (key, forced) == (b"user-7", "ch_1")
    assert forward == (("x-trace-bin", b"\x01"), ("x-request-id", "r-1"))


def test_the_private_pool_holds_the_generated_descriptor_not_the_default_pool():
    from tsplit.inference import grpc_predict_v2_pb2 as pb
    assert oip.serialized_file_descriptor() == pb.DESCRIPTOR.serialized_pb
    private = oip.ModelInferResponse.DESCRIPTOR
    assert private.full_name == "inference.ModelInferResponse" and private.file.pool is oip.POOL
    assert oip.POOL is not descriptor_pool.Default()
    ours = pb.ModelInferResponse(model_name="m", outputs=[pb.ModelInferResponse.InferOutputTensor(name="o")])
    assert oip.ModelInferResponse.FromString(ours.SerializeToString()).outputs[0].name == "o"


def test_settings_are_validated_with_the_field_named():
    assert ProxylessSettings(etcd=" 10.0.0.1:2379, 10.0.0.2:2379").etcd == "10.0.0.1:2379,10.0.0.2:2379"
    for bad, says in [({"etcd": "nohost"}, "not host:port"), ({"client_id": "a/b"}, "client_id"),
                      ({"wait_ready_s": -1}, "wait_ready_s"), ({"max_inflight_mirrors": 0}, "max_inflight_mirrors"),
                      ({"mirror_timeout_s": 0}, "mirror_timeout_s"), ({"default_timeout_s": 0}, "default_timeout_s")]:
        with pytest.raises(ValueError, match=says):
            ProxylessSettings(**bad)


def test_settings_come_from_arguments_then_environment_then_defaults():
    env = {"TSPLIT_ETCD": "10.1.1.1:2379", "TSPLIT_ETCD_PREFIX": "/prod"}
    assert (settings_from(None, None, env).etcd, settings_from(None, None, env).etcd_prefix) == ("10.1.1.1:2379", "/prod")
    chosen = settings_from(["10.2.2.2:2379", "10.3.3.3:2379"], "/mine", env, client_id="svc-1")
    assert (chosen.etcd, chosen.etcd_prefix, chosen.client_id) == ("10.2.2.2:2379,10.3.3.3:2379", "/mine", "svc-1")
    assert settings_from(None, None, {}).etcd == "127.0.0.1:2379"


def test_error_objects_are_what_grpc_callers_catch():
    err = sync_error(DispatchError(grpc.StatusCode.NOT_FOUND, "model_name 'x': no such deployment",
                                   (("x-t", "1"),), (("tsplit-variant", "champion"),)))
    assert isinstance(err, grpc.RpcError) and isinstance(err, grpc.Call) and isinstance(err, ProxylessRpcError)
    assert (err.code(), err.details(), err.trailing_metadata(), err.initial_metadata()) == (
        grpc.StatusCode.NOT_FOUND, "model_name 'x': no such deployment", (("x-t", "1"),),
        (("tsplit-variant", "champion"),))
    aio = aio_error(DispatchError(grpc.StatusCode.UNAVAILABLE, "not yet"))
    assert isinstance(aio, grpc.aio.AioRpcError) and aio.code() == grpc.StatusCode.UNAVAILABLE


def test_the_loop_thread_refuses_to_wait_on_itself_and_stops_cleanly():
    loop = LoopThread("tsplit-proxyless-unit")

    async def nested():
        inner = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="own thread"):
            loop.run(inner, 1)
        return threading.current_thread().name

    assert loop.run(nested(), 5) == "tsplit-proxyless-unit"
    loop.stop(5)
    assert loop.loop.is_closed()
    assert not any(t.name == "tsplit-proxyless-unit" for t in threading.enumerate())
