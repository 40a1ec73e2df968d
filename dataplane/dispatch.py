"""One implementation of a routed call, two transports (the router and the proxyless client).

Dispatcher holds the per-request logic and does no I/O: it reads the deployment from the
request's raw bytes (dataplane.wire), looks up the route, chooses the variant from the
routing key or the forced variant, rewrites the request for the variant's backend (model
name and version appended), decides failover and mirrors, counts the answer and produces
the tsplit-* response metadata. Its errors are DispatchError (a gRPC code and details).

The drivers below do the I/O around it: call_async (grpc.aio channels: the router's
service and the proxyless aio channel) and call_sync (sync grpc channels: the proxyless
sync channel, in the caller's thread). They are the same short sequence: begin, send,
on UNAVAILABLE from a challenger send again to the champion, start mirrors, finish.

Errors: a backend's status (code, details, rich error details) passes through unchanged;
the dispatcher's own are INVALID_ARGUMENT (not a valid message, no model name, unknown
x-tsplit-variant), NOT_FOUND (no such deployment) and UNAVAILABLE (no config yet).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Callable, Iterable, Protocol, Sequence

import grpc
from google.protobuf.message import DecodeError

from dataplane import oip, wire
from dataplane.backends import SERVICE, BackendPool, SyncBackendPool
from dataplane.routing import DeploymentRoute, RoutingTable, UnknownVariant, Variant
from dataplane.stats import RouterStats, VariantStats

ROUTING_KEY_HEADER = "x-routing-key"
FORCED_VARIANT_HEADER = "x-tsplit-variant"
MODEL_ID_HEADER = "tsplit-model-id"
VARIANT_HEADER = "tsplit-variant"
CACHE_VERSION_HEADER = "tsplit-cache-version"

INFER = f"/{SERVICE}/ModelInfer"
MODEL_METADATA = f"/{SERVICE}/ModelMetadata"
SERVER_LIVE = f"/{SERVICE}/ServerLive"
SERVER_READY = f"/{SERVICE}/ServerReady"
SERVER_METADATA = f"/{SERVICE}/ServerMetadata"

log = logging.getLogger(__name__)

# Client metadata that is about this hop, not for the backend; the caller's token and our
# own x-tsplit-* keys are not for it either (SPEC section 5, backends).
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "host", "grpc-timeout", "grpc-encoding",
                          "grpc-accept-encoding", "grpc-message-type", "authorization"})
_OWN_PREFIX = "x-tsplit-"
# grpc's own texts for a backend it could not reach name its address: never for the caller.
_ADDRESS_MARKS = ("ipv4:", "ipv6:", "unix:", "dns:", "failed to connect")

Metadata = tuple[tuple[str, str | bytes], ...]
FAILOVER = "failover"   # a deferred count that is a failover, not an answer
FORCED = "forced"       # a deferred count of a forced request's answer (code: FORCED or FORCED_ERROR)
FORCED_ERROR = "forced-error"
# A cancelled call whose deadline passed this close (s) counts as DEADLINE_EXCEEDED.
_DEADLINE_SLACK_S = 0.005


class DispatchError(Exception):
    """An answer that is an error status: what the transport sends to its caller."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = (), initial: Metadata = ()):
        super().__init__(details)
        self.code, self.details, self.trailing, self.initial = code, details, trailing, initial


class ShadowHandle(Protocol):
    def set(self, raw: bytes | None) -> None: ...


# (deployment slug, variants to mirror to, the client's request) -> the handle to give the
# champion's answer to (None: no copy was sent). MirrorDispatcher.start is one.
StartMirrors = Callable[[str, Sequence[Variant], bytes], "ShadowHandle | None"]


@functools.lru_cache(maxsize=4096)
def _model_ref_suffix(model_name: str, model_version: str) -> bytes:
    return wire.model_ref_suffix(model_name, model_version)


def rewrite(variant: Variant, request: bytes) -> bytes:
    """The request as variant's backend gets it: its model name and version appended."""
    return request + _model_ref_suffix(variant.model_name, variant.model_version)


def read_metadata(items: Iterable[tuple[str, str | bytes]] | None) -> tuple[bytes | None, str | None, Metadata]:
    """(routing key, forced variant, metadata to pass to the backend)."""
    routing_key = forced = None
    forward = []
    for key, value in items or ():
        if key == ROUTING_KEY_HEADER:
            routing_key = value.encode() if isinstance(value, str) else value
        elif key == FORCED_VARIANT_HEADER:
            forced = value if isinstance(value, str) else value.decode(errors="replace")
        elif key not in _HOP_HEADERS and not key.startswith((":", _OWN_PREFIX)):
            forward.append((key, value))
    return routing_key, forced, tuple(forward)


def passable(trailing) -> Metadata:
    """A backend's trailing metadata that can be sent on (grpc's own keys are set by grpc;
    the rich error details are the backend's and pass)."""
    return tuple((k, v) for k, v in (trailing or ())
                 if not k.startswith("grpc-") or k == "grpc-status-details-bin")


# ModelInferRequests up to this size are checked and read by protobuf's C parser (about
# 1 us for a small one, against 6-8 us for dataplane.wire's scan in Python); larger ones
# by the scan, which never copies or decodes their tensors (the parser copies them all).
PARSE_BELOW_BYTES = 8 * 1024
_parse_infer_request = oip.ModelInferRequest.FromString


def _requested_name(request: bytes, schema: wire.Schema) -> str:
    """The deployment a request names; DispatchError when it is not a valid message.
    Both ways accept and refuse the same bytes: the scan follows protobuf's rules."""
    try:
        if schema is wire.INFER_REQUEST and len(request) < PARSE_BELOW_BYTES:
            return _parse_infer_request(request).model_name
        return wire.scan_model_ref(request, schema).name
    except (wire.MalformedMessage, DecodeError) as err:
        raise DispatchError(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {err}") from None


class Attempt:
    """One request on its way to one variant (a failover makes a second Attempt)."""

    __slots__ = ("_dispatcher", "route", "variant", "original", "request", "forward", "routing_key",
                 "row", "started", "_rename", "forced")

    def __init__(self, dispatcher: "Dispatcher", route: DeploymentRoute, variant: Variant, original: bytes,
                 forward: Metadata, routing_key: bytes | None, row: VariantStats | None, started: float,
                 rename: bool = False, forced: bool = False) -> None:
        self._dispatcher = dispatcher
        self.route, self.variant, self.original = route, variant, original
        self.request = rewrite(variant, original)
        self.forward, self.routing_key, self.row, self.started = forward, routing_key, row, started
        self._rename = rename
        # x-tsplit-variant chose the variant: counted in `forced` only, never mirrored (the
        # guardrails' tests read only randomized requests).
        self.forced = forced

    @property
    def response_metadata(self) -> Metadata:
        return ((MODEL_ID_HEADER, self.variant.model_id), (VARIANT_HEADER, self.variant.name),
                (CACHE_VERSION_HEADER, str(self.route.cache_version)))

    def mirrors(self) -> tuple[Variant, ...]:
        """The challengers that get a copy of this request (shadow mode, champion answering)."""
        route = self.route
        if self.row is None or self.forced or not route.shadow_mode or self.variant is not route.champion:
            return ()
        return route.mirrors(self.routing_key)

    def failover(self, code: grpc.StatusCode) -> "Attempt | None":
        """After an error from the backend: the attempt on the champion when a challenger
        gave no answer (UNAVAILABLE), else None (the error is the answer)."""
        route = self.route
        if self.row is None or code != grpc.StatusCode.UNAVAILABLE or self.variant is route.champion:
            return None
        if not self.forced:
            self._dispatcher.failed_over(self.row)
        champion = route.champion
        return Attempt(self._dispatcher, route, champion, self.original, self.forward, self.routing_key,
                       self._dispatcher.row(route, champion), self.started, forced=self.forced)

    def succeeded(self, answer: bytes) -> bytes:
        """Count the answer; the bytes the caller gets."""
        if self.row is not None:
            self._dispatcher.answered(self.row, self.started, None, self.forced)
        if self._rename:
            # ModelMetadata: named after the deployment (a client that checks the name it
            # asked for sees its own).
            return answer + wire.encode_string_field(wire.NAME_FIELD, self.route.slug)
        return answer

    def failed(self, code: grpc.StatusCode, details: str | None, trailing) -> DispatchError:
        """Count the backend's error; the error the caller gets (passed through unchanged)."""
        if self.row is not None:
            self._dispatcher.answered(self.row, self.started, code.name, self.forced)
        variant = self.variant
        if details and (variant.endpoint in details or any(mark in details for mark in _ADDRESS_MARKS)):
            # grpc made this error up about the backend's address: it stays in the log.
            log.warning("%s %s (model %s) at %s: %s %s", self.route.slug, variant.name, variant.model_id,
                        variant.endpoint, code.name, details)
            details = (f"the backend of variant {variant.name} (model {variant.model_id}) of "
                       f"{self.route.slug} could not be reached ({code.name})")
        return DispatchError(code, details or "", passable(trailing), self.response_metadata)

    def cancelled(self, deadline: float | None) -> None:
        """The caller went away, or its deadline (perf_counter time) passed."""
        if self.row is not None:
            passed = deadline is not None and time.perf_counter() >= deadline - _DEADLINE_SLACK_S
            self._dispatcher.answered(self.row, self.started, "DEADLINE_EXCEEDED" if passed else "CANCELLED",
                                      self.forced)


class Dispatcher:
    """The per-request logic over the current RoutingTable (`table()`, None before the
    first snapshot), counting into `stats`.

    With `deferred` (a deque), counts are not applied here but appended to it, one
    (row, latency_ms, code) entry per event, for one consumer to apply (apply_deferred):
    the proxyless client's callers run on many threads, and a deque's append is atomic
    where `row.requests += 1` is not, with no lock for callers to queue on. The router's
    callers share one event loop and count directly."""

    def __init__(self, table: Callable[[], RoutingTable | None], stats: RouterStats, *, server_name: str,
                 server_version: str, not_ready_message: str, deferred: collections.deque | None = None) -> None:
        self._table = table
        self._stats = stats
        self._deferred = deferred
        self._not_ready_message = not_ready_message
        self._server_metadata = oip.ServerMetadataResponse(name=server_name, version=server_version).SerializeToString()
        self._live = oip.ServerLiveResponse(live=True).SerializeToString()

    # ---- counters ---------------------------------------------------------------------

    def row(self, route: DeploymentRoute, variant: Variant) -> VariantStats:
        return self._stats.variant(route.slug, variant.name, variant.model_id)

    def answered(self, row: VariantStats, started: float, code: str | None, forced: bool = False) -> None:
        if forced:
            if self._deferred is None:
                row.forced_answered(code)
            else:
                self._deferred.append((row, None, FORCED if code is None else FORCED_ERROR))
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self._deferred is None:
            row.answered(latency_ms, code)
        else:
            self._deferred.append((row, latency_ms, code))

    def failed_over(self, row: VariantStats) -> None:
        if self._deferred is None:
            row.failovers += 1
        else:
            self._deferred.append((row, None, FAILOVER))

    # ---- requests ---------------------------------------------------------------------

    def route(self, request: bytes, schema: wire.Schema) -> DeploymentRoute:
        """The deployment the request names (its model_name, or name)."""
        name = _requested_name(request, schema)
        name_field = "model_name" if schema is wire.INFER_REQUEST else "name"
        if not name:
            raise DispatchError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{name_field} is required: set it to a deployment id (dep_...)")
        table = self._table()
        if table is None:
            raise DispatchError(grpc.StatusCode.UNAVAILABLE, self._not_ready_message)
        route = table.lookup(name)
        if route is None:
            raise DispatchError(grpc.StatusCode.NOT_FOUND, f"{name_field} {name!r}: no such deployment")
        return route

    def begin_infer(self, request: bytes, metadata) -> Attempt:
        """A ModelInfer request: the variant chosen, the request rewritten for it."""
        started = time.perf_counter()
        route = self.route(request, wire.INFER_REQUEST)
        routing_key, forced, forward = read_metadata(metadata)
        try:
            variant = route.choose(routing_key, forced)
        except UnknownVariant as err:
            raise DispatchError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        return Attempt(self, route, variant, request, forward, routing_key, self.row(route, variant), started,
                       forced=bool(forced))

    def begin_champion(self, path: str, request: bytes, metadata) -> Attempt:
        """Any other unary method whose request names the deployment in field 1
        (ModelReady, ModelMetadata, ...): the deployment's champion answers; not counted."""
        route = self.route(request, wire.MODEL_REQUEST)
        _, _, forward = read_metadata(metadata)
        return Attempt(self, route, route.champion, request, forward, None, None, time.perf_counter(),
                       rename=path == MODEL_METADATA)

    def local_answer(self, path: str) -> bytes | None:
        """The answer to a method about the router (or client) itself; None for the rest."""
        if path == SERVER_LIVE:
            return self._live
        if path == SERVER_READY:
            return oip.ServerReadyResponse(ready=self._table() is not None).SerializeToString()
        if path == SERVER_METADATA:
            return self._server_metadata
        return None


def apply_deferred(deferred: collections.deque) -> int:
    """Apply the counts a Dispatcher deferred (one consumer at a time); how many."""
    applied = 0
    pop = deferred.popleft
    while True:
        try:
            row, latency_ms, code = pop()
        except IndexError:
            return applied
        if code == FAILOVER:
            row.failovers += 1
        elif code == FORCED or code == FORCED_ERROR:
            row.forced_answered(None if code == FORCED else code)
        else:
            row.answered(latency_ms, code)
        applied += 1


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.perf_counter() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.perf_counter())


# ---- grpc.aio ---------------------------------------------------------------------------

async def infer_async(dispatcher: Dispatcher, backends: BackendPool, start_mirrors: StartMirrors,
                      request: bytes, metadata, timeout: float | None) -> tuple[bytes, Metadata]:
    """ModelInfer over grpc.aio: (the answer, response metadata); raises DispatchError."""
    deadline = _deadline(timeout)
    attempt = dispatcher.begin_infer(request, metadata)
    # Mirrors start before the champion's call is awaited; they never hold it up.
    mirrors = attempt.mirrors()
    shadow = start_mirrors(attempt.route.slug, mirrors, request) if mirrors else None
    answer = None
    try:
        try:
            answer = await backends.get(attempt.variant.endpoint).call_infer(attempt.request, timeout, attempt.forward)
        except grpc.aio.AioRpcError as err:
            retry = attempt.failover(err.code())
            if retry is None:
                raise
            attempt = retry
            answer = await backends.get(attempt.variant.endpoint).call_infer(
                attempt.request, _remaining(deadline), attempt.forward)
    except grpc.aio.AioRpcError as err:
        raise attempt.failed(err.code(), err.details(), err.trailing_metadata()) from None
    except asyncio.CancelledError:
        # The caller went away or its deadline passed; the backend call is cancelled too.
        attempt.cancelled(deadline)
        raise
    finally:
        if shadow is not None:
            shadow.set(answer)
    return attempt.succeeded(answer), attempt.response_metadata


async def forward_async(dispatcher: Dispatcher, backends: BackendPool, path: str, request: bytes, metadata,
                        timeout: float | None) -> tuple[bytes, Metadata]:
    """Another unary method to the deployment's champion; raises DispatchError."""
    attempt = dispatcher.begin_champion(path, request, metadata)
    try:
        answer = await backends.get(attempt.variant.endpoint).method(path)(
            attempt.request, timeout=timeout, metadata=attempt.forward)
    except grpc.aio.AioRpcError as err:
        raise attempt.failed(err.code(), err.details(), err.trailing_metadata()) from None
    return attempt.succeeded(answer), attempt.response_metadata


async def call_async(dispatcher: Dispatcher, backends: BackendPool, start_mirrors: StartMirrors, path: str,
                     request: bytes, metadata, timeout: float | None) -> tuple[bytes, Metadata]:
    """Any unary method of any service, by its path."""
    if path == INFER:
        return await infer_async(dispatcher, backends, start_mirrors, request, metadata, timeout)
    local = dispatcher.local_answer(path)
    if local is not None:
        return local, ()
    return await forward_async(dispatcher, backends, path, request, metadata, timeout)


# ---- sync grpc --------------------------------------------------------------------------

def infer_sync(dispatcher: Dispatcher, backends: SyncBackendPool, start_mirrors: StartMirrors,
               request: bytes, metadata, timeout: float | None) -> tuple[bytes, Metadata]:
    """ModelInfer over sync grpc in the caller's thread; raises DispatchError."""
    deadline = _deadline(timeout)
    attempt = dispatcher.begin_infer(request, metadata)
    # A sync call blocks, so the copies are handed to the mirrors' loop first; they go out
    # alongside the champion's call and never hold it up.
    mirrors = attempt.mirrors()
    shadow = start_mirrors(attempt.route.slug, mirrors, request) if mirrors else None
    answer = None
    try:
        try:
            answer = backends.get(attempt.variant.endpoint).infer(
                attempt.request, timeout=timeout, metadata=attempt.forward)
        except grpc.RpcError as err:
            retry = attempt.failover(err.code())
            if retry is None:
                raise
            attempt = retry
            answer = backends.get(attempt.variant.endpoint).infer(
                attempt.request, timeout=_remaining(deadline), metadata=attempt.forward)
    except grpc.RpcError as err:
        raise attempt.failed(err.code(), err.details(), err.trailing_metadata()) from None
    finally:
        if shadow is not None:
            shadow.set(answer)
    return attempt.succeeded(answer), attempt.response_metadata


def forward_sync(dispatcher: Dispatcher, backends: SyncBackendPool, path: str, request: bytes, metadata,
                 timeout: float | None) -> tuple[bytes, Metadata]:
    attempt = dispatcher.begin_champion(path, request, metadata)
    try:
        answer = backends.get(attempt.variant.endpoint).method(path)(
            attempt.request, timeout=timeout, metadata=attempt.forward)
    except grpc.RpcError as err:
        raise attempt.failed(err.code(), err.details(), err.trailing_metadata()) from None
    return attempt.succeeded(answer), attempt.response_metadata


def call_sync(dispatcher: Dispatcher, backends: SyncBackendPool, start_mirrors: StartMirrors, path: str,
              request: bytes, metadata, timeout: float | None) -> tuple[bytes, Metadata]:
    if path == INFER:
        return infer_sync(dispatcher, backends, start_mirrors, request, metadata, timeout)
    local = dispatcher.local_answer(path)
    if local is not None:
        return local, ()
    return forward_sync(dispatcher, backends, path, request, metadata, timeout)
