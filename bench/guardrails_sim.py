"""Simulation of the guardrail tests (issue 13): thousands of seeded runs, a look every second.

Each run is a stream of one-second intervals: a fixed number of requests a second, each
routed to the challenger with the second's share, each an error (or a slow answer) with its
variant's probability; the tests of controlplane/guardrails/stats.py look after every second.
Runs are vectorised with numpy (one array row per run). The figures it reports:
- A/A false rollbacks (stationary, and a 5->10->20->50 % ramp with a +-10 % drift of the
  shared error rate), for the conditional mixture test, the same mixture on pooled counts,
  and a naive one-sided z-test at alpha looked at every second;
- detection of a doubled error rate (10/90, 50/50), of a +20 % p99 latency regression,
  and of an SRM of 9 % against 10 %, in challenger (or total) requests;
- SRM A/A alarms.

    .venv/bin/python -m bench.guardrails_sim --runs 4000 --seed 1 [--out results.json]

scripts/bench runs it as its `guardrails` phase.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from scipy.stats import lognorm, norm

from controlplane.guardrails import stats
from tsplit.status import LATENCY_BUCKETS_MS

ALPHA = 0.01
Z_CRIT = float(norm.ppf(1 - ALPHA))  # the naive test's critical value, looked at every second

_LOG_W = np.log(stats.ALTERNATIVE_WEIGHTS)
_THETA = np.log(stats.ALTERNATIVE_PSI)


def _log(msg: str) -> None:
    print(f"[guardrails-sim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _q_table(n: int) -> np.ndarray:
    """T[k, j] = log(1 + psi_j r) - log(1 + r), r = k / (n - k): the interval term is e_c theta - e T[n_c]."""
    table = np.empty((n + 1, len(_THETA)))
    table[0] = 0.0
    table[n] = _THETA  # no champion requests: every error is the challenger's, the term is 0
    k = np.arange(1, n)
    table[1:n] = -stats.conditional_log_lr(k, n - k, 0, 1, _THETA)
    return table


@dataclass(frozen=True)
class CountScenario:
    """Two variants' requests and events (errors, or slow answers) second by second."""

    name: str
    seconds: int
    rate: int  # requests a second, both variants
    share: np.ndarray  # (seconds,) the challenger's share of each second
    p_champion: np.ndarray  # (seconds,) or (runs, 1)/(seconds,) broadcastable: event chance
    ratio: float = 1.0  # challenger event chance = ratio * champion's (when p_challenger is None)
    p_challenger: np.ndarray | None = None
    methods: tuple[str, ...] = ("mixture",)


def _p_at(p: np.ndarray, t: int) -> np.ndarray:
    """p is (seconds,) (one chance a second) or (runs, 1) (one chance a run, all seconds)."""
    return p[..., t] if p.shape[-1] > 1 else p[..., 0]


def simulate_counts(s: CountScenario, runs: int, rng: np.random.Generator) -> dict:
    """First look (second) at which each method rejects, and the challenger requests by then."""
    table = _q_table(s.rate)
    lam = np.zeros((runs, len(_THETA)))
    cum = {name: np.zeros(runs, dtype=np.int64) for name in ("n_c", "n_b", "e_c", "e_b")}
    first = {m: np.full(runs, -1, dtype=np.int64) for m in s.methods}
    at_requests = {m: np.full(runs, -1, dtype=np.int64) for m in s.methods}
    threshold = math.log(1 / ALPHA)
    for t in range(s.seconds):
        n_c = rng.binomial(s.rate, s.share[t], size=runs)
        n_b = s.rate - n_c
        p_b = np.broadcast_to(_p_at(s.p_champion, t), (runs,))
        p_c = np.broadcast_to(_p_at(s.p_challenger, t), (runs,)) if s.p_challenger is not None else np.minimum(1.0, s.ratio * p_b)
        e_c = rng.binomial(n_c, p_c)
        e_b = rng.binomial(n_b, p_b)
        for name, value in (("n_c", n_c), ("n_b", n_b), ("e_c", e_c), ("e_b", e_b)):
            cum[name] += value
        rejected_now: dict[str, np.ndarray] = {}
        if "mixture" in s.methods:
            lam += e_c[:, None] * _THETA[None, :] - (e_c + e_b)[:, None] * table[n_c]
            rejected_now["mixture"] = _mixture_reaches(lam, threshold)
        if "pooled" in s.methods:
            pooled = stats.conditional_log_lr(cum["n_c"], cum["n_b"], cum["e_c"], cum["e_b"], _THETA)
            rejected_now["pooled"] = _mixture_reaches(pooled, threshold)
        if "ztest" in s.methods:
            rejected_now["ztest"] = _z(cum) >= Z_CRIT
        for m, now in rejected_now.items():
            fresh = now & (first[m] < 0)
            first[m][fresh] = t + 1
            at_requests[m][fresh] = cum["n_c"][fresh]
        if all((first[m] >= 0).all() for m in s.methods if m != "ztest_final"):
            if "ztest_final" not in s.methods:
                break
    if "ztest_final" in s.methods:  # one look, at the end, on the pooled counts
        final = _z(cum) >= Z_CRIT
        first["ztest_final"][final] = s.seconds
        at_requests["ztest_final"][final] = cum["n_c"][final]
    return {"first_second": first, "challenger_requests": at_requests}


def _mixture_reaches(log_lr: np.ndarray, threshold: float) -> np.ndarray:
    """logsumexp(log_lr + log w, axis=1) >= threshold, row by row.

    logsumexp is at most max_j (log_lr_j + log w_j) + log K, so only the rows where that
    bound reaches the threshold need the sum (most rows, most seconds, do not).
    """
    weighted = log_lr + _LOG_W
    best = weighted.max(axis=1)
    out = np.zeros(len(log_lr), dtype=bool)
    rows = np.flatnonzero(best + math.log(weighted.shape[1]) >= threshold)
    if len(rows):
        out[rows] = logsumexp(weighted[rows], axis=1) >= threshold
    return out


def _z(cum: dict) -> np.ndarray:
    n_c, n_b = cum["n_c"].astype(float), cum["n_b"].astype(float)
    e_c, e_b = cum["e_c"].astype(float), cum["e_b"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (e_c + e_b) / (n_c + n_b)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
        z = (e_c / n_c - e_b / n_b) / se
    return np.where((n_c > 0) & (n_b > 0) & (se > 0), z, -np.inf)


def _rate(first: np.ndarray) -> float:
    return float((first >= 0).mean())


def _quantiles(values: np.ndarray) -> dict:
    """Median and 90th percentile of detection (runs never detected count as infinitely late)."""
    v = np.where(values >= 0, values.astype(float), np.inf)
    return {"median": _finite(np.quantile(v, 0.5)), "p90": _finite(np.quantile(v, 0.9))}


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _within(values: np.ndarray, budget: int) -> float:
    return float(((values >= 0) & (values <= budget)).mean())


# -- scenarios --------------------------------------------------------------------------------------

def ramp_share(seconds: int, steps=(0.05, 0.10, 0.20, 0.50)) -> np.ndarray:
    stage = np.minimum(np.arange(seconds) * len(steps) // seconds, len(steps) - 1)
    return np.asarray(steps)[stage]


def drift(seconds: int, base: float, amplitude: float = 0.10) -> np.ndarray:
    """The shared error rate drifting linearly from base (1 - amplitude) to base (1 + amplitude)."""
    return base * (1 + amplitude * np.linspace(-1, 1, seconds))


AA_METHODS = ("mixture", "pooled", "ztest", "ztest_final")
METHOD_NAMES = {
    "mixture": "conditional mixture (the guardrail), every second",
    "pooled": "the same mixture on counts pooled across intervals, every second",
    "ztest": "naive one-sided z-test at alpha on pooled counts, every second",
    "ztest_final": "the same z-test once, at the end",
}


def aa_scenarios(seconds: int, rate: int, fast_rate: int | None = None) -> list[CountScenario]:
    """Stationary 10/90, and the ramp with drift (at `rate`, and at `fast_rate` when given)."""
    out = [CountScenario(f"A/A stationary 10/90, 1 % errors, {rate} req/s, {seconds} s", seconds, rate,
                         np.full(seconds, 0.10), np.full(seconds, 0.01), methods=AA_METHODS)]
    for r in (rate, fast_rate) if fast_rate else (rate,):
        out.append(CountScenario(f"A/A ramp 5->10->20->50 %, error rate drifting 0.9->1.1 %, {r} req/s, {seconds} s",
                                 seconds, r, ramp_share(seconds), drift(seconds, 0.01), methods=AA_METHODS))
    return out


def error_detection(share: float, seconds: int, rate: int) -> CountScenario:
    return CountScenario(f"errors 1 % -> 2 % at {round(share * 100)}/{round((1 - share) * 100)}", seconds, rate,
                         np.full(seconds, share), np.full(seconds, 0.01), ratio=2.0)


# -- latency --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyModel:
    median_ms: float
    sigma: float

    def bucket_probs(self, scale: float = 1.0, sigma: float | None = None) -> np.ndarray:
        dist = lognorm(s=self.sigma if sigma is None else sigma, scale=self.median_ms * scale)
        cdf = dist.cdf(np.asarray(LATENCY_BUCKETS_MS, dtype=float))
        return np.diff(np.concatenate([[0.0], cdf, [1.0]]))

    def p99(self, scale: float = 1.0, sigma: float | None = None) -> float:
        return float(lognorm(s=self.sigma if sigma is None else sigma, scale=self.median_ms * scale).ppf(0.99))


def simulate_latency(model: LatencyModel, share: float, seconds: int, rate: int, runs: int,
                     rng: np.random.Generator, scale: float = 1.0, sigma: float | None = None,
                     quantile: float = 0.99) -> dict:
    """LatencyTest's two phases: tau from the champion's warm-up histogram, then the mixture test.

    The warm-up seconds' challenger requests count towards the detection budget.
    """
    warmup = stats.LatencyTest(ALPHA, quantile).warmup_answers
    warmup_seconds = math.ceil(warmup / (rate * (1 - share)))
    champ_probs = model.bucket_probs()
    chal_probs = model.bucket_probs(scale, sigma)
    warm = rng.multinomial(rng.binomial(rate * warmup_seconds, 1 - share, size=runs), champ_probs)
    edges = np.array([stats.snapped_latency_threshold(row, quantile) for row in warm])
    tail_b = np.array([champ_probs[k + 1:].sum() for k in range(len(LATENCY_BUCKETS_MS))])[edges]
    tail_c = np.array([chal_probs[k + 1:].sum() for k in range(len(LATENCY_BUCKETS_MS))])[edges]
    warm_challenger = rng.binomial(rate * warmup_seconds, share, size=runs)
    scenario = CountScenario("latency", seconds, rate, np.full(seconds, share), tail_b[:, None], p_challenger=tail_c[:, None])
    res = simulate_counts(scenario, runs, rng)
    reqs = res["challenger_requests"]["mixture"]
    out = {"first_second": res["first_second"]["mixture"], "challenger_requests": np.where(reqs >= 0, reqs + warm_challenger, -1)}
    out["thresholds_ms"] = {str(LATENCY_BUCKETS_MS[k]): int((edges == k).sum()) for k in np.unique(edges)}
    out["tail"] = {"champion": float(np.median(tail_b)), "challenger": float(np.median(tail_c))}
    return out


# -- SRM ------------------------------------------------------------------------------------------

def simulate_srm(observed: float, expected: float, seconds: int, rate: int, runs: int,
                 rng: np.random.Generator) -> dict:
    """First second at which SrmTest's Bayes factor reaches 1/0.001, and the total requests by then."""
    p0 = np.array([expected, 1 - expected])
    counts = np.zeros((runs, 2))
    first = np.full(runs, -1, dtype=np.int64)
    threshold = math.log(1 / stats.SRM_ALPHA)
    for t in range(seconds):
        c = rng.binomial(rate, observed, size=runs)
        counts[:, 0] += c
        counts[:, 1] += rate - c
        now = stats.dirichlet_multinomial_log_bf(counts, p0) >= threshold
        first[now & (first < 0)] = t + 1
        if (first >= 0).all():
            break
    return {"first_second": first, "requests": np.where(first >= 0, first * rate, -1)}


# -- the run --------------------------------------------------------------------------------------

@dataclass
class SimSettings:
    runs: int = 4000  # runs of every row (SRM A/A: srm_aa_factor times more, it is cheap)
    seed: int = 1
    aa_seconds: int = 3600  # looks of the A/A rows (one a second)
    rate: int = 100  # requests a second in every row
    fast_rate: int = 1000  # the ramp-plus-drift A/A row again at this rate (pooling's bias grows with traffic)
    srm_aa_factor: int = 5


def _aa_row(name: str, runs: int, looks: int, first: np.ndarray, target: float) -> dict:
    return {"kind": "aa", "name": name, "runs": runs, "looks": looks, "false_alarms": _rate(first),
            "false_alarm_runs": int((first >= 0).sum()), "target": f"<= {target}", "met": bool(_rate(first) <= target)}


def _detect_row(name: str, runs: int, requests: np.ndarray, budget: int, unit: str = "challenger requests") -> dict:
    share = _within(requests, budget)
    return {"kind": "detect", "name": name, "runs": runs, "budget": budget, "unit": unit,
            "detected_within_budget": share, **{f"{k}_{unit.split()[0]}_requests": v for k, v in _quantiles(requests).items()},
            "target": f">= 0.9 of runs within {budget} {unit}", "met": bool(share >= 0.9)}


def run(settings: SimSettings) -> dict:
    rng = np.random.default_rng(settings.seed)
    runs, rate = settings.runs, settings.rate
    started = time.time()
    out: dict = {"settings": dict(settings.__dict__), "alpha": ALPHA, "srm_alpha": stats.SRM_ALPHA,
                 "alternatives": {"psi_min": float(stats.ALTERNATIVE_PSI[0]), "psi_max": float(stats.ALTERNATIVE_PSI[-1]),
                                  "points": len(stats.ALTERNATIVE_PSI), "weights": "uniform in log psi"},
                 "srm_concentration": stats.SRM_CONCENTRATION, "methods": METHOD_NAMES, "rows": []}
    rows = out["rows"]

    for scenario in aa_scenarios(settings.aa_seconds, rate, settings.fast_rate):
        _log(scenario.name)
        res = simulate_counts(scenario, runs, rng)["first_second"]
        row = _aa_row(scenario.name, runs, scenario.seconds, res["mixture"], ALPHA)
        row["others"] = {m: _rate(res[m]) for m in scenario.methods if m != "mixture"}
        rows.append(row)

    for share, budget in ((0.10, 3500), (0.50, 6500)):
        scenario = error_detection(share, seconds=math.ceil(4 * budget / (share * rate)), rate=rate)
        _log(scenario.name)
        reqs = simulate_counts(scenario, runs, rng)["challenger_requests"]["mixture"]
        rows.append(_detect_row(f"{scenario.name}, {rate} req/s", runs, reqs, budget))

    widened = 0.5 + math.log(1.2) / norm.ppf(0.99)
    latency_cases = [  # (label, model, challenger scale, challenger sigma)
        ("x1.2 (+20 % at every quantile)", LatencyModel(20.0, 0.5), 1.2, None),
        ("x1.2, p99 just above the 50 ms edge", LatencyModel(16.0, 0.5), 1.2, None),
        ("x1.2, p99 just below the 100 ms edge", LatencyModel(30.0, 0.5), 1.2, None),
        ("x1.2, a tight champion, every answer in (2, 5] ms", LatencyModel(3.5, 0.1), 1.2, None),
        (f"+20 % p99 with the same median (sigma 0.5 -> {widened:.3f})", LatencyModel(20.0, 0.5), 1.0, widened),
    ]
    for label, model, scale, sigma in latency_cases:
        name = (f"latency {label}: lognormal median {model.median_ms:g} ms sigma {model.sigma:g}, "
                f"p99 {model.p99():.1f} -> {model.p99(scale, sigma):.1f} ms, 10/90")
        _log(name)
        res = simulate_latency(model, 0.10, math.ceil(4 * 2000 / (0.10 * rate)), rate, runs, rng, scale=scale, sigma=sigma)
        row = _detect_row(name, runs, res["challenger_requests"], 2000)
        row.update(thresholds_ms=res["thresholds_ms"], tail_beyond_threshold=res["tail"])
        rows.append(row)
    model = LatencyModel(20.0, 0.5)
    name = f"A/A latency p99: lognormal median 20 ms sigma 0.5, 10/90, {rate} req/s, {settings.aa_seconds} s"
    _log(name)
    res = simulate_latency(model, 0.10, settings.aa_seconds, rate, runs, rng)
    rows.append(_aa_row(name, runs, settings.aa_seconds, res["first_second"], ALPHA))

    name = f"SRM 9 % observed vs 10 % allocated, {rate} req/s"
    _log(name)
    res = simulate_srm(0.09, 0.10, math.ceil(4 * 30000 / rate), rate, runs, rng)
    rows.append(_detect_row(name, runs, res["requests"], 30000, unit="total requests"))
    srm_runs = runs * settings.srm_aa_factor
    name = f"A/A SRM 10 % vs 10 %, {rate} req/s, {settings.aa_seconds} s"
    _log(name)
    res = simulate_srm(0.10, 0.10, settings.aa_seconds, rate, srm_runs, rng)
    rows.append(_aa_row(name, srm_runs, settings.aa_seconds, res["first_second"], stats.SRM_ALPHA))
    out["seconds"] = round(time.time() - started, 1)
    return out


def summary_lines(result: dict) -> list[str]:
    lines = []
    for row in result["rows"]:
        met = "met" if row["met"] else "MISSED"
        if row["kind"] == "aa":
            others = "".join(f"; {m} {v:.4f}" for m, v in row.get("others", {}).items())
            lines.append(f"{row['name']}: false alarms {row['false_alarms']:.4f} ({row['false_alarm_runs']}/{row['runs']} runs, "
                         f"{row['looks']} looks){others} [target {row['target']}: {met}]")
        else:
            unit = row["unit"].split()[0]
            lines.append(f"{row['name']}: detected within {row['budget']} {row['unit']} in {row['detected_within_budget']:.3f} "
                         f"of runs; median {row[f'median_{unit}_requests']}, p90 {row[f'p90_{unit}_requests']} "
                         f"({row['runs']} runs) [target {row['target']}: {met}]")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.guardrails_sim", description=__doc__.splitlines()[0])
    defaults = SimSettings()
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--aa-seconds", type=int, default=defaults.aa_seconds)
    parser.add_argument("--rate", type=int, default=defaults.rate)
    parser.add_argument("--fast-rate", type=int, default=defaults.fast_rate)
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    result = run(SimSettings(args.runs, args.seed, args.aa_seconds, args.rate, args.fast_rate))
    print("\n".join(summary_lines(result)))
    print(f"({result['seconds']} s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
