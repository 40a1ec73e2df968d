"""Plain-text tables for people (`--json` prints the data instead)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from tsplit.resources import Deployment, Model


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def ago(timestamp: str, now: datetime | None = None) -> str:
    """'2026-11-22T13:00:00Z' -> '4m' (cortex style)."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _ms(value: Any) -> str:
    return "-" if not value else f"{value:.1f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def model_label(model_id: str, models: dict[str, Model]) -> str:
    model = models.get(model_id)
    return f"{model_id} ({model.model_name})" if model else f"{model_id} (unregistered)"


def variant_status(row: dict[str, Any], in_sync: int, total: int) -> str:
    """'no routers', 'updating' (a router is behind), else the row's health (tsplit.status:
    live, failing, erroring)."""
    if total == 0:
        return "no routers"
    if in_sync < total:
        return "updating"
    return row.get("health") or "live"


def mirrored(row: dict[str, Any]) -> str:
    """Shadow copies sent, with the failed ones beside: '67 (67 errors)'."""
    errors = row.get("mirror_errors", 0)
    return f"{row.get('mirrored', 0)} ({errors} error{'' if errors == 1 else 's'})" if errors else str(row.get("mirrored", 0))


def deployment_view(deployment: Deployment, status: dict[str, Any], models: dict[str, Model],
                    sync: tuple[int, int, list[str]]) -> str:
    in_sync, total, stale = sync
    shadow = deployment.shadow_mode
    headers = ["variant", "model", "weight", "slots", "status", "requests", "ok", "errors", "avg ms", "p99 ms", "failovers"]
    if shadow:
        headers += ["mirrored", "dropped", "agreement", "exact", "mean |diff|"]
    rows = []
    for v in status.get("variants", []):
        row = [v["variant"], model_label(v["model_id"], models), weight(v.get("traffic_pct")), v.get("slots", "-"),
               variant_status(v, in_sync, total), v.get("requests", 0), v.get("ok", 0), v.get("errors", 0),
               _ms(v.get("avg_latency_ms")), _ms(v.get("p99_latency_ms")), v.get("failovers", 0)]
        if shadow:
            diff = v.get("mean_abs_diff")
            row += [mirrored(v), v.get("mirror_dropped", 0), _pct(v.get("label_agreement")),
                    _pct(v.get("exact_match_rate")), "-" if diff is None else f"{diff:.4f}"]
        rows.append(row)
    lines = [f"{deployment.deployment_id}   org {deployment.org_id}   mode {'shadow' if shadow else 'split'}", "",
             table(headers, rows), ""]
    lines.append(f"cache_version: {deployment.cache_version}")
    lines.append(f"last update: {ago(deployment.updated_at)} ago by {deployment.updated_by or '-'}")
    sync_line = f"routers: {in_sync}/{total} at version {deployment.cache_version}"
    if stale:
        sync_line += f" (behind: {', '.join(stale)})"
    lines.append(sync_line)
    if status.get("guardrails"):
        lines += guardrail_lines(status)
    return "\n".join(lines)


def _ratio_text(value: Any) -> str:
    if not isinstance(value, dict) or value.get("estimate") is None:
        return "-"
    interval = value.get("confidence_interval") or [None, None]
    low, high = ("-" if v is None else f"{v:.2f}" for v in interval)
    return f"{value['estimate']:.2f} [{low}, {high}]"


def _p(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def guardrail_lines(status: dict[str, Any]) -> list[str]:
    """The guardrails part of `tsplit get SLUG`: the policy, SRM and each challenger's tests."""
    summary = status["guardrails"]
    policy = summary.get("policy") or {}
    steps = "/".join(str(s) for s in policy.get("steps") or []) or "none"
    srm = "FLAGGED (no steps)" if summary.get("srm") else "ok"
    lines = ["", f"guardrails: alpha {policy.get('alpha')}, steps {steps} after {policy.get('step_after_requests')} "
                 f"requests, latency q {policy.get('latency_quantile') or 'off'}; srm {srm}; judge {summary.get('judge') or '-'}"]
    rows = []
    for v in status.get("variants", [])[1:]:
        g = v.get("guardrail") or {}
        latency = g.get("latency_exceedance") or {}
        rows.append([v["variant"], g.get("state", "-"), _ratio_text(g.get("error_ratio")), _p(g.get("p_value")),
                     _ratio_text(latency), _p(latency.get("p_value")), g.get("requests_since_change", 0)])
    lines.append(table(["challenger", "state", "error ratio [CI]", "p", "slow ratio [CI]", "p (slow)",
                        "requests since change"], rows))
    return lines


def weight(pct: Any) -> str:
    """A traffic share as a person writes it: 20, 67.5, 12.34 (never 67.50 or 20.0)."""
    if pct is None:
        return "-"
    return f"{round(float(pct), 2):g}"


def deployments_summary(deployments: list[Deployment], models: dict[str, Model],
                        sync: dict[str, tuple[int, int, list[str]]]) -> str:
    rows = []
    for d in deployments:
        in_sync, total, _ = sync[d.deployment_id]
        split = ", ".join(f"{c.id} {weight(c.traffic_pct)}%" for c in d.active_challengers) or "-"
        rows.append([d.deployment_id, model_label(d.champion_model_id, models), split,
                     "shadow" if d.shadow_mode else "split", d.cache_version, f"{in_sync}/{total}",
                     ago(d.updated_at)])
    return table(["deployment", "champion", "challengers", "mode", "version", "routers", "last update"], rows)
