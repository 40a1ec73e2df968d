"""The bench's models and deployments, written straight to etcd in the control plane's
format (tsplit.resources), so the router rows need no control plane."""

from __future__ import annotations

from dataclasses import dataclass

from tsplit import etcd as etcd_mod
from tsplit.etcd import Etcd
from tsplit.layout import Layout
from tsplit.resources import Challenger, Deployment, Model, dumps

BENCH_ORG = "org_bench"


@dataclass(frozen=True)
class BenchBackends:
    """host:port of each backend process."""

    champion: str
    challenger: str
    slow1: str  # 50 ms slower: the shadow row's challengers
    slow2: str
    champion_http: str = ""  # the champion's and challenger's v2 REST side (host:port)
    challenger_http: str = ""


def bench_models(backends: BenchBackends) -> list[Model]:
    # Two models on the challenger backend under different names: the backend counts by
    # model_name, so the precision row tells its two challengers apart.
    # The split's two models carry the backends' REST side as http_endpoint (a REST call is
    # forwarded as REST); the *grpc twins have none (a REST call is translated to ModelInfer).
    return [
        Model("mod_champ001", backends.champion, "linear-a", org_id=BENCH_ORG, http_endpoint=backends.champion_http),
        Model("mod_chall001", backends.challenger, "linear-b", org_id=BENCH_ORG,
              http_endpoint=backends.challenger_http),
        Model("mod_champgrpc", backends.champion, "linear-a", org_id=BENCH_ORG),
        Model("mod_challgrpc", backends.challenger, "linear-b", org_id=BENCH_ORG),
        Model("mod_slow0001", backends.slow1, "slow-1", org_id=BENCH_ORG),
        Model("mod_slow0002", backends.slow2, "slow-2", org_id=BENCH_ORG),
        Model("mod_prec0001", backends.challenger, "precise-1", org_id=BENCH_ORG),
        Model("mod_prec0002", backends.challenger, "precise-2", org_id=BENCH_ORG),
    ]


def bench_deployments() -> list[Deployment]:
    def dep(slug: str, challengers: tuple[Challenger, ...] = (), shadow: bool = False,
            champion: str = "mod_champ001") -> Deployment:
        return Deployment(slug, BENCH_ORG, champion, challengers, shadow, 1, "2026-01-01T00:00:00Z", "bench")
    return [
        dep("dep_split", (Challenger("ch_split01", "mod_chall001", 1000),)),
        # The same split on models without http_endpoint: REST translated to ModelInfer.
        dep("dep_split_grpc", (Challenger("ch_splitg1", "mod_challgrpc", 1000),), champion="mod_champgrpc"),
        dep("dep_solo"),
        dep("dep_shadow", (Challenger("ch_slow01", "mod_slow0001", 2500),
                           Challenger("ch_slow02", "mod_slow0002", 2500)), shadow=True),
        # The 8 MiB requests beside dep_shadow's small calls (issue 11 target 4): another
        # champion backend, so the small calls share only the router (and the cores) with
        # them; half of them mirrored to a slow backend, as dep_shadow's (the 50 % cap).
        dep("dep_shadow_large", (Challenger("ch_large01", "mod_slow0001", 2500),
                                 Challenger("ch_large02", "mod_slow0002", 2500)), shadow=True, champion="mod_chall001"),
        # 0.01 % granularity: 12.34 % and 0.01 %
        dep("dep_precise", (Challenger("ch_prec01", "mod_prec0001", 1234),
                            Challenger("ch_prec02", "mod_prec0002", 1))),
    ]


def history_record(deployment: Deployment) -> bytes:
    return dumps({"config": deployment.to_json(), "action": "create", "actor": "bench", "at": deployment.updated_at})


async def write_models(etcd: Etcd, layout: Layout, models: list[Model]) -> None:
    for model in models:
        await etcd.put(layout.model(model.model_id), dumps(model.to_json()))


async def write_deployments(etcd: Etcd, layout: Layout, deployments: list[Deployment], batch: int = 64) -> None:
    """Each deployment with its version-1 history record, `batch` deployments per txn."""
    for start in range(0, len(deployments), batch):
        ops = []
        for d in deployments[start:start + batch]:
            ops.append(etcd_mod.put_op(layout.deployment(d.deployment_id), dumps(d.to_json())))
            ops.append(etcd_mod.put_op(layout.history_version(d.deployment_id, d.cache_version), history_record(d)))
        await etcd.txn([], ops)
