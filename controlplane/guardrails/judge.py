"""The guardrail judge (SPEC 5a): every tick it reads the routers' records, forms each
deployment's per-interval counts and judges every active challenger of every deployment
with a policy; a rollback or a step is an ordinary change through the store.

DeploymentWatch is the pure part (counts in, at most one Decision out per tick) and Judge
the I/O around it. Only the replica holding the leader key runs a Judge (election.py).

What the tests compare, per interval (summed over routers):
- split mode: a challenger's requests are the ones its slots drew (answers plus failovers),
  its errors its error answers plus its failovers; the champion's are its answers minus the
  failovers it took over (those were the challengers' draws).
- shadow mode: a challenger's requests are its copies answered (mirror_answers), its errors
  the copies that failed, its latencies the copies'; the champion's are its answers.
Forced requests (x-tsplit-variant) are in none of these (the routers count them apart).

A challenger's tests start when the judge first sees it active under the policy, and run
through weight changes (each interval is conditioned on its own counts, so no pooling):
only a change of the policy or of the mode starts them again. Its step counter
(requests_since_change) restarts with every change of its traffic_pct. A new leader starts
every test afresh (valid: an always-valid test may start at any time; it only loses the
evidence gathered before). The SRM test goes on across the judge's own steps (a new
segment per allocation) and starts again with an operator's change of the weights; the
first intervals after any change are skipped (routers apply it at slightly different times).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from controlplane.actions import TrafficAction, apply_traffic_action
from controlplane.guardrails.deltas import CounterDeltas, VariantDelta
from controlplane.guardrails.stats import ErrorRateTest, Interval, LatencyTest, SrmTest
from tsplit.errors import ApiError
from tsplit.etcd import Etcd, EtcdError, delete_op, put_op
from tsplit.layout import Layout
from tsplit.resources import BASIS_POINTS, Deployment, GuardrailPolicy, dumps, loads, pct_to_json
from tsplit.router_record import parse_records
from tsplit.status import CHAMPION, LATENCY_BUCKETS_MS

log = logging.getLogger(__name__)

ACTOR = "guardrail"
ROLLBACK, STEP = "guardrail_rollback", "guardrail_step"
MAX_CHALLENGERS_BP = BASIS_POINTS // 2
SRM_ALPHA = 0.001
MAX_EVIDENCE_SERIES = 20_000  # rows of ~20 bytes: a history entry stays far below etcd's request limit


@dataclass(frozen=True)
class JudgeSettings:
    interval_s: float = 1.0
    srm_warmup_intervals: int = 2  # skipped after a change of weights
    write_timeout_s: float = 5.0


@dataclass(frozen=True)
class Decision:
    action: str  # ROLLBACK or STEP
    challenger_id: str
    traffic_bp: int  # the challenger's share after the decision (0 for a rollback)
    basis_version: int  # the cache_version judged: the change applies to exactly that config
    evidence: dict[str, Any]

    @property
    def request_id(self) -> str:
        """Deterministic: the same decision on the same config is one change, whoever writes it."""
        return f"guardrail-{self.action}-{self.challenger_id}-v{self.basis_version}"

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"challenger_id": self.challenger_id}
        if self.action == STEP:
            body["traffic_pct"] = pct_to_json(self.traffic_bp)
        return body


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain_json(value: Any) -> Any:
    """value with numpy scalars and tuples made plain JSON, non-finite numbers null (the
    stored JSON allows no NaN or Infinity)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class ChallengerWatch:
    """One active challenger's tests and counts since the judge started watching it."""

    challenger_id: str
    basis: tuple  # (shadow_mode, policy): a change starts the tests again
    policy: GuardrailPolicy
    traffic_bp: int
    started_at: str
    error: ErrorRateTest | None = None
    latency: LatencyTest | None = None
    requests_since_change: int = 0

    def __post_init__(self) -> None:
        if self.policy.error_rate:
            self.error = ErrorRateTest(self.policy.alpha)
        if self.policy.latency_quantile is not None:
            # The test fixes its threshold from the champion's first answers (its warm-up).
            self.latency = LatencyTest(self.policy.alpha, self.policy.latency_quantile,
                                       bucket_edges_ms=LATENCY_BUCKETS_MS)

    def observe(self, challenger: "Counts", champion: "Counts") -> None:
        if self.error is not None and (challenger.requests or champion.requests):
            self.error.update(Interval(challenger.requests, champion.requests, challenger.errors, champion.errors))
        if self.latency is not None and (sum(challenger.buckets) or sum(champion.buckets)):
            self.latency.update(list(challenger.buckets), list(champion.buckets))
        self.requests_since_change += challenger.requests

    def alarm(self) -> ErrorRateTest | LatencyTest | None:
        for test in (self.error, self.latency):
            if test is not None and test.rejected:
                return test
        return None

    def evidence(self, test: ErrorRateTest | LatencyTest) -> dict[str, Any]:
        """Enough to replay the decision (controlplane.guardrails.stats.replay_evidence): the
        test, both variants' counts, statistic, threshold, alpha, confidence interval and the
        per-interval series it used."""
        if len(test.series) > MAX_EVIDENCE_SERIES:  # a history entry must stay far below etcd's limit
            return {**test.to_json(), "series_omitted": len(test.series), "since": self.started_at}
        return {**test.to_json(include_series=True), "since": self.started_at}

    def state(self, srm_flagged: bool) -> dict[str, Any]:
        """The challenger's `guardrail` object of the status (SPEC 4)."""
        error, latency = self.error, self.latency
        return {
            "state": "srm" if srm_flagged else ("rolled_back" if self.alarm() else "watching"),
            "error_ratio": None if error is None else {
                "estimate": error.estimate, "confidence_interval": list(error.confidence_interval)},
            "p_value": None if error is None else error.p_value,
            "latency_exceedance": None if latency is None else {
                "estimate": latency.estimate, "confidence_interval": list(latency.confidence_interval),
                "p_value": latency.p_value, "threshold_ms": latency.latency_threshold_ms,
                "quantile": latency.quantile},
            "requests_since_change": self.requests_since_change,
            "since": self.started_at,
        }


@dataclass(frozen=True)
class Counts:
    requests: int
    errors: int
    buckets: tuple[int, ...]


def _champion_counts(champion: VariantDelta, taken_over: int) -> Counts:
    requests = max(champion.requests - taken_over, 0)
    return Counts(requests, min(champion.errors, requests), tuple(champion.latency_buckets))


def _challenger_counts(delta: VariantDelta, shadow: bool) -> Counts:
    if shadow:
        return Counts(delta.mirror_answers, delta.mirror_errors, tuple(delta.mirror_latency_buckets))
    return Counts(delta.requests + delta.failovers, delta.errors + delta.failovers, tuple(delta.latency_buckets))


class DeploymentWatch:
    """One deployment's tests; observe() once a tick."""

    def __init__(self, slug: str, settings: JudgeSettings = JudgeSettings(), clock: Callable[[], str] = _utc_now):
        self.slug, self.settings, self.clock = slug, settings, clock
        self.challengers: dict[str, ChallengerWatch] = {}
        self.weights: tuple | None = None
        self.srm: SrmTest | None = None
        self.srm_skip = 0
        self.srm_flagged = False
        self.cache_version = 0

    def observe(self, deployment: Deployment, deltas: dict[str, VariantDelta]) -> Decision | None:
        policy = deployment.guardrails
        assert policy is not None
        self.cache_version = deployment.cache_version
        shadow = deployment.shadow_mode
        active = deployment.active_challengers
        empty = VariantDelta()
        champion_delta = deltas.get(CHAMPION, empty)
        taken_over = 0 if shadow else sum(deltas.get(c.id, empty).failovers for c in active)
        champion = _champion_counts(champion_delta, taken_over)
        self._observe_srm(deployment, policy, deltas, champion.requests)

        basis = (shadow, policy)
        for c in active:
            watch = self.challengers.get(c.id)
            if watch is None or watch.basis != basis:
                watch = self.challengers[c.id] = ChallengerWatch(c.id, basis, policy, c.traffic_bp, self.clock())
            if watch.traffic_bp != c.traffic_bp:
                watch.traffic_bp, watch.requests_since_change = c.traffic_bp, 0
            watch.observe(_challenger_counts(deltas.get(c.id, empty), shadow), champion)
        active_ids = {c.id for c in active}
        for gone in [cid for cid in self.challengers if cid not in active_ids]:
            del self.challengers[gone]
        return self._decide(deployment, policy)

    def _observe_srm(self, deployment: Deployment, policy: GuardrailPolicy, deltas: dict[str, VariantDelta],
                     champion_requests: int) -> None:
        active = deployment.active_challengers
        weights = (deployment.shadow_mode, policy.srm, tuple((c.id, c.traffic_bp) for c in active))
        if weights != self.weights:
            shares = [deployment.champion_bp] + [c.traffic_bp for c in active]
            same_variants = self.weights is not None and [v for v, _ in self.weights[2]] == [c.id for c in active]
            if (self.srm is not None and same_variants and deployment.updated_by == ACTOR
                    and weights[:2] == self.weights[:2]):
                self.srm.new_segment(shares)  # our own step: the evidence goes on, a new segment
            else:  # an operator's change (or the first look) starts a new test
                self.srm = SrmTest(shares, alpha=SRM_ALPHA) if policy.srm and active else None
                self.srm_flagged = False
            self.weights = weights
            self.srm_skip = self.settings.srm_warmup_intervals
        if self.srm is None:
            return
        if self.srm_skip > 0:
            self.srm_skip -= 1
            return
        empty = VariantDelta()
        if deployment.shadow_mode:
            chosen = [deltas.get(c.id, empty).mirrored + deltas.get(c.id, empty).mirror_dropped for c in active]
            counts = [max(deltas.get(CHAMPION, empty).requests - sum(chosen), 0)] + chosen
        else:
            counts = [champion_requests] + [deltas.get(c.id, empty).requests + deltas.get(c.id, empty).failovers
                                            for c in active]
        if sum(counts):
            self.srm.update(counts)
            if self.srm.rejected and not self.srm_flagged:
                log.warning("%s: sample ratio mismatch (p=%.2g): no step while flagged", self.slug, self.srm.p_value)
            self.srm_flagged = self.srm_flagged or self.srm.rejected

    def _decide(self, deployment: Deployment, policy: GuardrailPolicy) -> Decision | None:
        """At most one decision a tick (a second one would be judged on a config the first replaced)."""
        for watch in self.challengers.values():
            test = watch.alarm()
            if test is not None:
                return Decision(ROLLBACK, watch.challenger_id, 0, deployment.cache_version,
                                plain_json({**watch.evidence(test), "traffic_pct": pct_to_json(watch.traffic_bp)}))
        if self.srm_flagged or not policy.steps_bp:
            return None
        for watch in self.challengers.values():
            if watch.requests_since_change < policy.step_after_requests:
                continue
            step = policy.next_step_bp(watch.traffic_bp)
            if step is None or deployment.challenger_bp - watch.traffic_bp + step > MAX_CHALLENGERS_BP:
                continue
            evidence: dict[str, Any] = {
                "test": "step", "alpha": policy.alpha, "requests_since_change": watch.requests_since_change,
                "step_after_requests": policy.step_after_requests, "from_pct": pct_to_json(watch.traffic_bp),
                "to_pct": pct_to_json(step), "since": watch.started_at,
                "error_rate": None if watch.error is None else watch.error.to_json(),
                "latency": None if watch.latency is None else watch.latency.to_json(),
                "srm": None if self.srm is None else self.srm.to_json(),
            }
            return Decision(STEP, watch.challenger_id, step, deployment.cache_version, plain_json(evidence))
        return None

    def state(self) -> dict[str, Any]:
        """What the judge publishes for the status (`{prefix}/guardrails/{slug}`)."""
        return plain_json({
            "deployment_id": self.slug, "judged_cache_version": self.cache_version,
            "srm": {"flagged": self.srm_flagged, "p_value": None if self.srm is None else self.srm.p_value},
            "challengers": {cid: watch.state(self.srm_flagged) for cid, watch in self.challengers.items()},
        })


def decision_mutation(decision: Decision):
    """The change a decision makes, re-judged on the config it would replace: the
    challenger must still be active with the share it was judged at."""
    def mutate(deployment: Deployment, models):
        challenger = deployment.challenger(decision.challenger_id)
        if deployment.cache_version != decision.basis_version or challenger is None or not challenger.is_active:
            raise ApiError("version_conflict", f"{decision.action} of {decision.challenger_id} was judged on "
                                               f"version {decision.basis_version}; the deployment changed since")
        if decision.action == ROLLBACK:
            action = TrafficAction("remove_challenger", challenger_id=decision.challenger_id)
        else:
            action = TrafficAction("update_traffic", challenger_id=decision.challenger_id,
                                   traffic_bp=decision.traffic_bp)
        return apply_traffic_action(deployment, action, models)
    return mutate


class Judge:
    """The leader's loop: tick every settings.interval_s until cancelled."""

    def __init__(self, etcd: Etcd, layout: Layout, store, settings: JudgeSettings = JudgeSettings(),
                 identity: str = ""):
        self.etcd, self.layout, self.store, self.settings = etcd, layout, store, settings
        self.identity = identity
        self.deltas = CounterDeltas()
        self.watches: dict[str, DeploymentWatch] = {}
        self.decisions: list[tuple[str, Decision, int]] = []  # (slug, decision, cache_version written)
        self._published: dict[str, bytes] = {}
        self._parsed: dict[str, tuple[int, Deployment | None]] = {}  # key -> (mod_revision, config)

    async def run(self, lease: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.tick(lease)
            except (EtcdError, asyncio.TimeoutError) as err:
                log.warning("guardrail tick skipped: etcd unreachable (%s)", err)
            except ApiError as err:
                log.warning("guardrail tick skipped: %s", err.message)
            except Exception:
                log.exception("guardrail tick failed")
            await asyncio.sleep(max(0.0, self.settings.interval_s - (loop.time() - started)))

    async def tick(self, lease: int = 0) -> None:
        (deployment_kvs, router_kvs), _ = await asyncio.wait_for(
            self.etcd.get_prefixes([self.layout.deployments, self.layout.routers]), self.settings.write_timeout_s)
        deltas = self.deltas.tick(parse_records(kv.value for kv in router_kvs))
        guarded: dict[str, Deployment] = {}
        parsed: dict[str, tuple[int, Deployment | None]] = {}
        for kv in deployment_kvs:
            known = self._parsed.get(kv.key)
            if known is None or known[0] != kv.mod_revision:  # parsed once per version
                try:
                    known = (kv.mod_revision, Deployment.from_json(loads(kv.value)))
                except (ValueError, KeyError, TypeError):
                    known = (kv.mod_revision, None)
            parsed[kv.key] = known
            deployment = known[1]
            if deployment is not None and deployment.guardrails is not None:
                guarded[deployment.deployment_id] = deployment
        self._parsed = parsed
        for slug in [s for s in self.watches if s not in guarded]:
            del self.watches[slug]
        for slug, deployment in guarded.items():
            watch = self.watches.get(slug)
            if watch is None:
                watch = self.watches[slug] = DeploymentWatch(slug, self.settings)
            decision = watch.observe(deployment, deltas.get(slug, {}))
            if decision is not None:
                await self._apply(deployment, decision)
        await self._publish(lease)

    async def _apply(self, deployment: Deployment, decision: Decision) -> None:
        try:
            result = await self.store.change_deployment(
                deployment.org_id, deployment.deployment_id, decision_mutation(decision), action=decision.action,
                request_body=decision.body, actor=ACTOR, request_id=decision.request_id,
                expected_cache_version=decision.basis_version, deadline_s=self.settings.write_timeout_s,
                evidence=decision.evidence)
        except ApiError as err:
            # An operator's change came first (version_conflict), or etcd is down: the
            # next tick judges the config as it is then.
            log.info("%s: %s of %s not written: %s %s", deployment.deployment_id, decision.action,
                     decision.challenger_id, err.code, err.message)
            return
        version = result.deployment.cache_version
        self.decisions.append((deployment.deployment_id, decision, version))
        log.warning("%s: %s %s (%s) -> version %d%s", deployment.deployment_id, decision.action,
                    decision.challenger_id, decision.evidence.get("test"), version,
                    " (replayed: written before)" if result.replayed else "")

    async def _publish(self, lease: int) -> None:
        """Each watched deployment's state, lease-bound to the leader's lease (gone when no
        judge runs); unchanged states are not written again."""
        ops = []
        now = time.time()
        for slug, watch in self.watches.items():
            state = watch.state()
            value = dumps({**state, "judge": self.identity})
            if self._published.get(slug) == value:
                continue
            self._published[slug] = value
            ops.append(put_op(self.layout.guardrail_state(slug), dumps({**state, "judge": self.identity,
                                                                        "updated_at": now}), lease=lease))
        for slug in [s for s in self._published if s not in self.watches]:
            del self._published[slug]
            ops.append(delete_op(self.layout.guardrail_state(slug)))
        for start in range(0, len(ops), 100):
            await asyncio.wait_for(self.etcd.txn([], ops[start:start + 100]), self.settings.write_timeout_s)
