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
            rejected_now["mixture"] = logsumexp(lam + _LOG_W, axis=1) >= threshold
        if "pooled" in s.methods:
            pooled = stats.conditional_log_lr(cum["n_c"], cum["n_b"], cum["e_c"], cum["e_b"], _THETA)
            rejected_now["pooled"] = logsumexp(pooled + _LOG_W, axis=1) >= threshold
        if "ztest" in s.methods:
            rejected_now["ztest"] = _z(cum) >= Z_CRIT
        for m, now in rejected_now.items():
            fresh = now & (first[m] < 0)
            first[m][fresh] = t + 1
            at_requests[m][fresh] = cum["n_c"][fresh]
        if all((first[m] >= 0).all() for m in s.methods):
            break
    return {"first_second": first, "challenger_requests": at_requests}


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


def aa_scenarios(seconds: int, rate: int) -> list[CountScenario]:
    methods = ("mixture", "pooled", "ztest")
    flat = np.full(seconds, 0.01)
    return [
        CountScenario(f"A/A stationary 10/90, 1 % errors, {rate} req/s, {seconds} s", seconds, rate,
                      np.full(seconds, 0.10), flat, methods=methods),
        CountScenario(f"A/A ramp 5->10->20->50 %, error rate drifting 0.9->1.1 %, {rate} req/s, {seconds} s",
                      seconds, rate, ramp_share(seconds), drift(seconds, 0.01), methods=methods),
    ]


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
        cdf = dist.cdf(np.asarray(stats.SPEC_LATENCY_BUCKETS_MS, dtype=float))
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
    tail_b = np.array([champ_probs[k + 1:].sum() for k in range(len(stats.SPEC_LATENCY_BUCKETS_MS))])[edges]
    tail_c = np.array([chal_probs[k + 1:].sum() for k in range(len(stats.SPEC_LATENCY_BUCKETS_MS))])[edges]
    warm_challenger = rng.binomial(rate * warmup_seconds, share, size=runs)
    scenario = CountScenario("latency", seconds, rate, np.full(seconds, share), tail_b[:, None], p_challenger=tail_c[:, None])
    out = simulate_counts(scenario, runs, rng)
    reqs = out["challenger_requests"]
    out["challenger_requests"] = np.where(reqs >= 0, reqs + warm_challenger, -1)
    out["thresholds_ms"] = {str(stats.SPEC_LATENCY_BUCKETS_MS[k]): int((edges == k).sum()) for k in np.unique(edges)}
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
    runs: int = 4000
    seed: int = 1
    aa_seconds: int = 3600
    rate: int = 100  # requests a second in every scenario
    detect_runs: int | None = None  # runs of the detection rows (default: runs)


def run(settings: SimSettings) -> dict:
    rng = np.random.default_rng(settings.seed)
    runs, rate = settings.runs, settings.rate
    detect_runs = settings.detect_runs or runs
    started = time.time()
    out: dict = {"settings": settings.__dict__.copy(), "alpha": ALPHA, "srm_alpha": stats.SRM_ALPHA,
                 "alternatives": {"psi_min": float(stats.ALTERNATIVE_PSI[0]), "psi_max": float(stats.ALTERNATIVE_PSI[-1]),
                                  "points": len(stats.ALTERNATIVE_PSI)},
                 "srm_concentration": stats.SRM_CONCENTRATION, "rows": []}
    rows = out["rows"]

    for scenario in aa_scenarios(settings.aa_seconds, rate):
        _log(scenario.name)
        res = simulate_counts(scenario, runs, rng)
        rows.append({"kind": "aa", "name": scenario.name, "runs": runs, "looks": scenario.seconds,
                     "false_rollbacks": {m: _rate(res["first_second"][m]) for m in scenario.methods},
                     "target": f"<= {ALPHA} (conditional mixture)"})

    for share, budget in ((0.10, 3500), (0.50, 6500)):
        scenario = error_detection(share, seconds=math.ceil(4 * budget / (share * rate)), rate=rate)
        _log(scenario.name)
        res = simulate_counts(scenario, detect_runs, rng)
        reqs = res["challenger_requests"]["mixture"]
        rows.append({"kind": "detect_errors", "name": scenario.name, "runs": detect_runs, "budget": budget,
                     "detected_within_budget": _within(reqs, budget),
                     "challenger_requests": _quantiles(reqs), "target": f">= 0.9 within {budget} challenger requests"})

    model = LatencyModel(median_ms=20.0, sigma=0.5)
    latency_cases = [("+20 % at every quantile (latency x1.2)", 1.2, None),
                     ("+20 % p99, same median (sigma widened)", 1.0, model.sigma + math.log(1.2) / norm.ppf(0.99)),
                     ("A/A", 1.0, None)]
    for label, scale, sigma in latency_cases:
        name = f"latency p99 {label}, lognormal median {model.median_ms:g} ms sigma {model.sigma:g}, 10/90"
        _log(name)
        res = simulate_latency(model, 0.10, math.ceil(4 * 2000 / (0.10 * rate)) if label != "A/A" else settings.aa_seconds,
                               rate, detect_runs, rng, scale=scale, sigma=sigma)
        reqs = res["challenger_requests"]
        row = {"kind": "detect_latency" if label != "A/A" else "aa_latency", "name": name, "runs": detect_runs,
               "champion_p99_ms": model.p99(), "challenger_p99_ms": model.p99(scale, sigma),
               "thresholds_ms": res["thresholds_ms"], "tail_beyond_threshold": res["tail"]}
        if label == "A/A":
            row.update(false_rollbacks=_rate(reqs), looks=settings.aa_seconds, target=f"<= {ALPHA}")
        else:
            row.update(budget=2000, detected_within_budget=_within(reqs, 2000), challenger_requests=_quantiles(reqs),
                       target=">= 0.9 within 2000 challenger requests")
        rows.append(row)

    for observed, label in ((0.09, "SRM 9 % observed vs 10 % allocated"), (0.10, "SRM A/A 10 % vs 10 %")):
        _log(label)
        seconds = math.ceil(4 * 30000 / rate) if observed != 0.10 else settings.aa_seconds
        res = simulate_srm(observed, 0.10, seconds, rate, runs, rng)
        if observed == 0.10:
            rows.append({"kind": "aa_srm", "name": label, "runs": runs, "looks": seconds,
                         "false_alarms": _rate(res["first_second"]), "target": f"<= {stats.SRM_ALPHA}"})
        else:
            rows.append({"kind": "detect_srm", "name": label, "runs": runs, "budget": 30000,
                         "detected_within_budget": _within(res["requests"], 30000),
                         "requests": _quantiles(res["requests"]), "target": ">= 0.9 within 30000 requests"})
    out["seconds"] = round(time.time() - started, 1)
    return out


def summary_lines(result: dict) -> list[str]:
    lines = []
    for row in result["rows"]:
        if row["kind"] == "aa":
            fr = row["false_rollbacks"]
            lines.append(f"{row['name']}: false rollbacks mixture {fr['mixture']:.4f}, pooled {fr['pooled']:.4f}, "
                         f"naive z-test {fr['ztest']:.4f} ({row['runs']} runs, {row['looks']} looks; target {row['target']})")
        elif row["kind"] in ("aa_latency",):
            lines.append(f"{row['name']}: false rollbacks {row['false_rollbacks']:.4f} ({row['runs']} runs; target {row['target']})")
        elif row["kind"] == "aa_srm":
            lines.append(f"{row['name']}: false alarms {row['false_alarms']:.4f} ({row['runs']} runs, {row['looks']} looks; target {row['target']})")
        else:
            q = row.get("challenger_requests") or row.get("requests")
            lines.append(f"{row['name']}: detected within {row['budget']} in {row['detected_within_budget']:.3f} of runs; "
                         f"median {q['median']}, p90 {q['p90']} ({row['runs']} runs; target {row['target']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.guardrails_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=SimSettings.runs)
    parser.add_argument("--seed", type=int, default=SimSettings.seed)
    parser.add_argument("--aa-seconds", type=int, default=SimSettings.aa_seconds)
    parser.add_argument("--rate", type=int, default=SimSettings.rate)
    parser.add_argument("--detect-runs", type=int)
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    result = run(SimSettings(args.runs, args.seed, args.aa_seconds, args.rate, args.detect_runs))
    print("\n".join(summary_lines(result)))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
