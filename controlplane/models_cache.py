"""Every registered model, kept in the control plane's memory and brought up to date from
etcd by changes only: a refresh asks for the model keys modified since the last one (one
range with min_mod_revision, which also answers how many keys there are in all), and only
when that count disagrees (a key was deleted behind our back) reads them all again.

Models never change once registered (a second registration of an id is already_exists),
so a model found here is final; a model NOT found may be newer than the last refresh, and
the caller refreshes before it trusts "not registered".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping

from aetcd.rpc import rpc_pb2 as etcd_pb

from tsplit.etcd import Etcd, KeyValue, prefix_range_end
from tsplit.layout import Layout
from tsplit.resources import Model, loads

log = logging.getLogger(__name__)


def _model_of(key: str, value: bytes) -> Model | None:
    try:
        return Model.from_json(loads(value))
    except (ValueError, KeyError, TypeError):
        log.warning("model record %s is not a model; ignored", key)
        return None


class ModelsCache:
    def __init__(self, etcd: Etcd, layout: Layout):
        self._etcd, self._prefix = etcd, layout.models
        self._by_key: dict[str, Model | None] = {}  # every key under the prefix (None: not a model)
        self._by_id: dict[str, Model] = {}
        self._revision = 0  # the store revision the table is complete up to; 0: never loaded
        self._lock = asyncio.Lock()

    @property
    def by_id(self) -> Mapping[str, Model]:
        """Every model known, of every org, by model_id (check org_id before use)."""
        return self._by_id

    async def refresh(self) -> None:
        async with self._lock:
            if self._revision and await self._apply_changes():
                return
            kvs, revision = await self._etcd.get_prefix(self._prefix)
            self._by_key, self._by_id = {}, {}
            self._add(kvs)
            self._revision = revision

    async def _apply_changes(self) -> bool:
        """Apply the keys changed since the last refresh; False when a full read is needed."""
        request = etcd_pb.RangeRequest(
            key=self._prefix.encode(), range_end=prefix_range_end(self._prefix), min_mod_revision=self._revision + 1)
        result = await self._etcd.txn([], [etcd_pb.RequestOp(request_range=request)])
        answer = result.responses[0].response_range
        self._add([KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)
                   for kv in answer.kvs])
        if answer.count != len(self._by_key):
            return False
        self._revision = result.revision
        return True

    def _add(self, kvs: list[KeyValue]) -> None:
        for kv in kvs:
            model = _model_of(kv.key, kv.value)
            self._by_key[kv.key] = model
            if model is not None:
                self._by_id[model.model_id] = model
