"""A small asyncio client for etcd's v3 API.

It drives the official etcd API stubs that aetcd ships (``aetcd.rpc``) over one grpc.aio
channel. We do not use ``aetcd.Client`` itself: it connects to a single host:port while
``--etcd`` names a whole cluster, and the watch loop (resume from a revision, notice a
compaction or a dead stream) must be ours to test.

The client talks to one member at a time, over a channel to that member's host:port (grpc
resolves the name whenever it reconnects). Every call carries etcd's "hasleader" metadata,
so a member cut off from the quorum answers at once that it has no leader (and cancels its
watches) instead of hanging; on that, or any failure that means "unavailable", the client
moves to the next member for the calls that follow (the failed call still fails: the
caller retries, as it must for a write whose answer was lost).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Sequence

import grpc
from aetcd.rpc import rpc_pb2 as pb
from aetcd.rpc import rpc_pb2_grpc as pb_grpc

from tsplit.settings import parse_host_port_list

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0
_REQUIRE_LEADER = (("hasleader", "true"),)

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,  # "etcdserver: leader changed", "no leader" and friends
}

_CHANNEL_OPTIONS = [
    # Notice a dead member under a long-lived watch stream. etcd's server policy allows a
    # ping every 5 s and only while a stream is open (else GOAWAY too_many_pings).
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 0),
    # etcd restarts take a second or two: reconnect fast instead of grpc's 1..120 s backoff.
    # (No min_reconnect_backoff_ms: grpc also takes it as the least time a connection
    # attempt gets, and a loaded member may take longer than 100 ms to accept.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
]


class EtcdError(Exception):
    """etcd answered with an error that retrying will not fix."""


class EtcdStorageFull(EtcdError):
    """etcd refused a write for lack of space: its NOSPACE alarm is raised ("database space
    exceeded") or the request is over its size limit. Nothing was written."""


class EtcdLeaseNotFound(EtcdError):
    """A put named a lease etcd does not know (expired, revoked, or a wiped etcd); nothing
    of its transaction was written."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer: no member reachable, no leader, or the deadline passed.

    For a write this does not say whether it was applied.
    """


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted away; reload a snapshot."""

    def __init__(self, compact_revision: int):
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    revision: int  # the store revision this batch brings the watcher up to
    events: tuple[Event, ...]

    @property
    def seen_revision(self) -> int:
        """The revision up to which the watcher has seen every change: the last event's
        when there are events (a catch-up batch may stop short of the header revision,
        with the rest to follow), else the header's (a progress notification)."""
        return self.events[-1].mod_revision if self.events else self.revision


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[pb.ResponseOp, ...]


def prefix_range_end(prefix: str) -> bytes:
    """The range_end that selects every key starting with prefix."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


# etcd's own texts (server/etcdserver/api/v3rpc/rpctypes) and grpc's size limits.
_STORAGE_FULL_TEXTS = ("database space exceeded", "request is too large", "message larger than max")


def _map_error(err: grpc.aio.AioRpcError) -> EtcdError:
    details = err.details() or ""
    text = f"{err.code().name}: {details}"
    if any(t in details for t in _STORAGE_FULL_TEXTS):
        return EtcdStorageFull(f"etcd refused the write: {text}")
    if "requested lease not found" in details:
        return EtcdLeaseNotFound(f"etcd error: {text}")
    if err.code() in _UNAVAILABLE_CODES:
        return EtcdUnavailable(f"etcd unavailable: {text}")
    return EtcdError(f"etcd error: {text}")


# Compare and operation builders for Etcd.txn.

def mod_revision_is(key: str, revision: int) -> pb.Compare:
    """True when key was last written at revision (0: the key does not exist)."""
    return pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key.encode(), mod_revision=revision)


def key_missing(key: str) -> pb.Compare:
    return pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=key.encode(), version=0)


def put_op(key: str, value: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value, lease=lease))


def get_op(key: str) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key.encode()))


def delete_op(key: str) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode()))


def _kv(kv) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)


class Etcd:
    """One connection to an etcd cluster. Every call has a deadline."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = DEFAULT_TIMEOUT_S):
        self.endpoints = parse_host_port_list(endpoints)
        self.timeout = timeout
        self.switches = 0  # times the client moved to another member (metrics, tests)
        self._retired: set[asyncio.Task] = set()
        self._open(0)

    @property
    def member(self) -> str:
        """The endpoint the client talks to now."""
        return self.endpoints[self._member]

    def _open(self, index: int) -> None:
        self._member = index % len(self.endpoints)
        self._channel = grpc.aio.insecure_channel(self.member, options=_CHANNEL_OPTIONS)
        self._kv = pb_grpc.KVStub(self._channel)
        self._watch = pb_grpc.WatchStub(self._channel)
        self._lease = pb_grpc.LeaseStub(self._channel)
        self._maintenance = pb_grpc.MaintenanceStub(self._channel)

    def _failed(self, channel: grpc.aio.Channel, error: EtcdError) -> None:
        """A call on channel failed with error: move to the next member (once per channel,
        however many calls saw it fail). The old channel closes once its calls are done."""
        if not isinstance(error, EtcdUnavailable) or channel is not self._channel or len(self.endpoints) == 1:
            return
        failed = self.member
        self._open(self._member + 1)
        self.switches += 1
        log.warning("etcd member %s failed (%s); moving to %s", failed, error, self.member)
        try:
            task = asyncio.get_running_loop().create_task(channel.close(self.timeout))
        except RuntimeError:  # no running loop: nothing is in flight
            return
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await self._channel.close()

    async def __aenter__(self) -> "Etcd":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _unary(self, stub: str, name: str, request, timeout: float | None = None):
        channel = self._channel
        try:
            return await getattr(getattr(self, stub), name)(
                request, timeout=timeout or self.timeout, metadata=_REQUIRE_LEADER)
        except grpc.aio.AioRpcError as err:
            error = _map_error(err)
            self._failed(channel, error)
            raise error from err

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._unary("_kv", "Range", pb.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under prefix, sorted by key, and the store revision of the read."""
        request = pb.RangeRequest(
            key=prefix.encode(), range_end=prefix_range_end(prefix), keys_only=keys_only,
            sort_order=pb.RangeRequest.ASCEND, sort_target=pb.RangeRequest.KEY,
        )
        resp = await self._unary("_kv", "Range", request, timeout=max(self.timeout, 10.0))
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    async def get_range(self, start: str, prefix: str, limit: int) -> tuple[list[KeyValue], bool]:
        """Up to limit keys under prefix from start on, sorted by key, and whether more follow."""
        request = pb.RangeRequest(
            key=start.encode(), range_end=prefix_range_end(prefix), limit=limit,
            sort_order=pb.RangeRequest.ASCEND, sort_target=pb.RangeRequest.KEY,
        )
        resp = await self._unary("_kv", "Range", request, timeout=max(self.timeout, 10.0))
        return [_kv(kv) for kv in resp.kvs], resp.more

    async def alarms(self) -> list[str]:
        """The cluster's raised alarms by name ("NOSPACE", "CORRUPT"), one per member raising it."""
        resp = await self._unary(
            "_maintenance", "Alarm", pb.AlarmRequest(action=pb.AlarmRequest.GET, alarm=pb.NONE))
        return [pb.AlarmType.Name(a.alarm) for a in resp.alarms]

    async def get_prefixes(self, prefixes: Sequence[str]) -> tuple[list[list[KeyValue]], int]:
        """Every key under each prefix, all read at one store revision (one transaction),
        and that revision."""
        ops = [
            pb.RequestOp(request_range=pb.RangeRequest(
                key=prefix.encode(), range_end=prefix_range_end(prefix),
                sort_order=pb.RangeRequest.ASCEND, sort_target=pb.RangeRequest.KEY))
            for prefix in prefixes
        ]
        request = pb.TxnRequest(compare=[], success=ops)
        resp = await self._unary("_kv", "Txn", request, timeout=max(self.timeout, 10.0))
        ranges = [[_kv(kv) for kv in op.response_range.kvs] for op in resp.responses]
        return ranges, resp.header.revision

    async def revision(self) -> int:
        resp = await self._unary("_kv", "Range", pb.RangeRequest(key=b"\0", count_only=True))
        return resp.header.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        resp = await self._unary("_kv", "Put", pb.PutRequest(key=key.encode(), value=value, lease=lease))
        return resp.header.revision

    async def delete(self, key: str) -> int:
        resp = await self._unary("_kv", "DeleteRange", pb.DeleteRangeRequest(key=key.encode()))
        return resp.header.revision

    async def delete_prefix(self, prefix: str) -> int:
        request = pb.DeleteRangeRequest(key=prefix.encode(), range_end=prefix_range_end(prefix))
        resp = await self._unary("_kv", "DeleteRange", request)
        return resp.header.revision

    async def txn(
        self,
        compare: Iterable[pb.Compare],
        success: Iterable[pb.RequestOp],
        failure: Iterable[pb.RequestOp] = (),
    ) -> TxnResult:
        request = pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        resp = await self._unary("_kv", "Txn", request)
        return TxnResult(resp.succeeded, resp.header.revision, tuple(resp.responses))

    async def compact(self, revision: int, physical: bool = True) -> None:
        await self._unary("_kv", "Compact", pb.CompactionRequest(revision=revision, physical=physical), timeout=30)

    async def defragment(self) -> None:
        await self._unary("_maintenance", "Defragment", pb.DefragmentRequest(), timeout=60)

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._unary("_lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl))
        return resp.ID

    async def lease_revoke(self, lease_id: int) -> None:
        await self._unary("_lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; the remaining TTL, 0 when the lease is gone."""
        channel = self._channel
        call = self._lease.LeaseKeepAlive(timeout=self.timeout, metadata=_REQUIRE_LEADER)
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
            await call.done_writing()
        except grpc.aio.AioRpcError as err:
            error = _map_error(err)
            self._failed(channel, error)
            raise error from err
        except asyncio.InvalidStateError as err:  # a write after the stream broke
            error = EtcdUnavailable("lease keepalive stream ended")
            self._failed(channel, error)
            raise error from err
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            error = EtcdUnavailable("lease keepalive stream ended")
            self._failed(channel, error)
            raise error
        return resp.TTL

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes under prefix from start_revision on (see watch_range)."""
        return self.watch_range(prefix, prefix_range_end(prefix), start_revision)

    async def watch_range(self, key: str, range_end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes to keys in [key, range_end) from start_revision on, batch by batch, forever.

        Raises WatchCompacted when start_revision is compacted, EtcdUnavailable when the
        stream breaks (member down, no leader): the caller resumes from the last revision
        it saw + 1. Progress notifications arrive as batches with no events.
        """
        async for _, batch in self.watch_ranges([(key, range_end, start_revision)]):
            yield batch

    async def watch_ranges(
        self, ranges: Sequence[tuple[str, bytes, int]],
    ) -> AsyncIterator[tuple[int, WatchBatch]]:
        """Changes to several key ranges [key, range_end), each from its own start
        revision, on one stream: (index of the range, batch), forever. etcd sends one
        stream's changes in revision order; each range's batches are what watch_range
        would yield for it (resume each from the last revision seen for it + 1)."""
        # "hasleader" makes etcd cancel the watch when its member loses the leader, instead
        # of leaving us on a member that will never see new writes.
        channel = self._channel
        call = self._watch.Watch(metadata=_REQUIRE_LEADER)
        ids: dict[int, int] = {}  # etcd's watch_id -> index in ranges, in creation order
        try:
            for key, range_end, start_revision in ranges:
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=key.encode(), range_end=range_end, start_revision=start_revision, progress_notify=True)))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd watch stream ended")
                if resp.compact_revision:
                    raise WatchCompacted(resp.compact_revision)
                if resp.canceled:
                    raise EtcdUnavailable(f"etcd canceled the watch: {resp.cancel_reason or 'no reason'}")
                if resp.created:
                    ids[resp.watch_id] = len(ids)
                    if not resp.events:
                        continue
                events = tuple(
                    Event("delete" if ev.type == ev.DELETE else "put", ev.kv.key.decode(), ev.kv.value, ev.kv.mod_revision)
                    for ev in resp.events
                )
                if resp.watch_id in ids:
                    yield ids[resp.watch_id], WatchBatch(resp.header.revision, events)
                elif len(ranges) == 1:  # a progress notification of the whole stream (watch_id -1)
                    yield 0, WatchBatch(resp.header.revision, events)
        except grpc.aio.AioRpcError as err:
            error = _map_error(err)
            self._failed(channel, error)
            raise error from err
        except asyncio.InvalidStateError as err:  # a create request written after the stream broke
            error = EtcdUnavailable("etcd watch stream ended")
            self._failed(channel, error)
            raise error from err
        except EtcdUnavailable as err:  # the stream ended or etcd canceled it (no leader)
            self._failed(channel, err)
            raise
        finally:
            call.cancel()


async def wait_until_ready(etcd: Etcd, timeout: float) -> None:
    """Poll until etcd answers a read, or raise EtcdUnavailable after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await etcd.revision()
            return
        except EtcdUnavailable:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)
