"""The gateway's one connection to the control plane, and what a failed call means to users."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tsplit.errors import ERROR_METADATA_KEY, ApiError, api_error_from_rpc_error
from tsplit.v1 import controlplane_pb2_grpc

# The control plane's health service name that is SERVING only while it reaches etcd.
READY_SERVICE = "tsplit.v1.ControlPlane.Ready"

# Reconnect quickly after a control-plane restart: grpc's default backoff grows to two
# minutes, during which every request would fail although the control plane is back.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# Without the control plane's own code, these mean the request may have reached it.
_ANSWER_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass(frozen=True)
class CallTimeouts:
    """connect_s bounds reads and the wait for a connection: an unreachable control plane
    answers 503 unavailable within it (the SPEC allows 5 s). mutation_s bounds a write once
    sent and exceeds the control plane's own deadlines (10 s of retrying lost races, then
    up to 5 s to learn whether a write whose answer was lost committed)."""
    connect_s: float = 4.0
    mutation_s: float = 20.0


def _carries_code(err: grpc.RpcError) -> bool:
    return any(key == ERROR_METADATA_KEY for key, _ in (err.trailing_metadata() or ()))


class ControlPlaneClient:
    def __init__(self, target: str, timeouts: CallTimeouts = CallTimeouts()):
        self.target = target
        self.timeouts = timeouts
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = controlplane_pb2_grpc.ControlPlaneStub(self._channel)

    async def read(self, method: str, request: Any, authorization: str) -> Any:
        """A call that changes nothing: waits for a connection at most connect_s in all."""
        try:
            return await getattr(self._stub, method)(
                request, metadata=(("authorization", authorization),),
                timeout=self.timeouts.connect_s, wait_for_ready=True)
        except grpc.RpcError as err:
            raise api_error_from_rpc_error(err) from err

    async def mutate(self, method: str, request: Any, authorization: str, request_id: str) -> Any:
        """A call that may write. It is sent only once connected, so that a 503 unavailable
        still means nothing was written; an answer lost after sending is commit_unknown."""
        await self._wait_connected()
        try:
            return await getattr(self._stub, method)(
                request, metadata=(("authorization", authorization),),
                timeout=self.timeouts.mutation_s, wait_for_ready=False)
        except grpc.RpcError as err:
            if _carries_code(err) or err.code() not in _ANSWER_LOST:
                raise api_error_from_rpc_error(err) from err
            raise ApiError(
                "commit_unknown",
                "the control plane's answer was lost, so whether the change was applied is unknown; "
                f"retry with the header Idempotency-Key: {request_id} to learn the outcome") from err

    async def ready(self) -> str | None:
        """None when the control plane answers and reaches etcd, else why not."""
        try:
            answer = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=READY_SERVICE), timeout=self.timeouts.connect_s,
                wait_for_ready=True)
        except grpc.RpcError as err:
            return f"the control plane is unreachable ({err.code().name.lower()})"
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return "the control plane cannot reach etcd"
        return None

    async def _wait_connected(self) -> None:
        if self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self.timeouts.connect_s)
        except asyncio.TimeoutError:
            raise ApiError("unavailable", "the control plane is unreachable; nothing was changed") from None

    async def close(self) -> None:
        await self._channel.close()
