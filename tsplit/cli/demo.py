"""`tsplit demo`: the whole product in one run, on the embedded default stack.

Starts the stack with demo models, creates a deployment over the REST gateway, runs the
seed's PATCH actions printing every request and answer, sends inference traffic through
the routers, shows `tsplit get` as the split and shadow mode change, rolls back, and stops.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx

from tsplit.cli.context import CliContext, CliError
from tsplit.inference import grpc_predict_v2_pb2 as oip
from tsplit.inference import grpc_predict_v2_pb2_grpc as oip_grpc

SLUG = "dep_demo"


def banner(text: str) -> None:
    """A section title, bold on a terminal (a file or pipe gets no escape codes)."""
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


class Rest:
    def __init__(self, base_url: str, token: str):
        self.client = httpx.Client(base_url=base_url, timeout=10.0,
                                   headers={"authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> dict[str, Any]:
        shown = f" -d '{json.dumps(body)}'" if body is not None else ""
        print(f"$ curl -X {method} {self.client.base_url}{path} -H 'Authorization: Bearer …'"
              f"{' -H ' + repr('Content-Type: application/json') if body is not None else ''}{shown}")
        resp = self.client.request(method, path, json=body)
        data = resp.json()
        print(f"{resp.status_code} {json.dumps(data, indent=2)}")
        if expect is not None and resp.status_code != expect:
            raise CliError(f"{method} {path} answered {resp.status_code}, expected {expect}: {data}")
        return data


def send_traffic(routers: list[str], count: int, seed: int = 7) -> dict[str, int]:
    """`count` ModelInfer calls spread over the routers; how many each variant answered."""
    rng = random.Random(seed)
    channels = [grpc.insecure_channel(address) for address in routers]
    stubs = [oip_grpc.GRPCInferenceServiceStub(c) for c in channels]

    def one(i: int) -> str:
        x = [rng.uniform(-1, 1), rng.uniform(-1, 1)]
        request = oip.ModelInferRequest(model_name=SLUG, inputs=[oip.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, 2], contents=oip.InferTensorContents(fp32_contents=x))])
        _, call = stubs[i % len(stubs)].ModelInfer.with_call(request, timeout=5)
        return dict(call.initial_metadata()).get("tsplit-variant", "?")

    counts: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(8) as pool:
            for variant in pool.map(one, range(count)):
                counts[variant] = counts.get(variant, 0) + 1
    finally:
        for c in channels:
            c.close()
    return counts


def wait_propagated(ctx: CliContext, version: int, timeout: float = 10.0) -> float:
    """Seconds until every router's record shows `version` applied for the demo deployment."""
    import asyncio
    from tsplit.cli.reads import read_state

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = asyncio.run(read_state(ctx.require_etcd(), ctx.layout))
        routers = [r for r in state.routers if r.get("kind", "router") == "router"]
        if routers and all(r.get("applied", {}).get(SLUG) == version for r in routers):
            return time.monotonic() - started
        time.sleep(0.02)
    raise CliError(f"routers did not report version {version} within {timeout:.0f} s")


def show_get(ctx: CliContext) -> None:
    from tsplit.cli.main import cmd_get

    time.sleep(1.3)  # routers publish counters every second
    print(f"$ tsplit get {SLUG}")
    cmd_get(argparse.Namespace(slug=SLUG, watch=False, json=False, interval=1.0), ctx)


def run_demo(ctx: CliContext, keep: bool = False) -> int:
    from tsplit.cli.context import resolve
    from tsplit.cli.stack import UpOptions, down, up

    banner(f"tsplit up --dir {ctx.directory} --routers 2 --demo-models")
    stack, _ = up(UpOptions(directory=ctx.directory, routers=2, demo_models=True, etcd_prefix=ctx.etcd_prefix),
                  lambda line: print("  " + line))
    ctx = resolve(argparse.Namespace(dir=str(ctx.directory)))
    try:
        models = {m["model_name"]: m["model_id"] for m in stack["demo_models"]}
        routers = [r["address"] for r in stack["routers"]]
        rest = Rest(stack["gateway"]["url"], stack["jwt"]["admin_token"])

        banner("Create a deployment whose champion is linear-a")
        rest.call("POST", "/v1/deployments", {"deployment_id": SLUG, "champion_model_id": models["linear-a"]},
                  expect=201)

        banner("The seed's PATCH: add linear-b as a challenger on 10 % of traffic")
        added = rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                          {"action": "add_challenger", "model_id": models["linear-b"], "traffic_pct": 10})
        challenger_b = added["challenger"]["id"]
        print(f"propagated to every router in {1000 * wait_propagated(ctx, added['cache_version']):.0f} ms")

        banner("2,000 inference requests through the two routers (Open Inference Protocol v2)")
        print(send_traffic(routers, 2000))
        show_get(ctx)

        banner("update_traffic: linear-b to 30 %; add linear-c on 5 %")
        rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                  {"action": "update_traffic", "challenger_id": challenger_b, "traffic_pct": 30})
        added_c = rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                            {"action": "add_challenger", "model_id": models["linear-c"], "traffic_pct": 5})
        wait_propagated(ctx, added_c["cache_version"])
        print(send_traffic(routers, 2000, seed=8))
        show_get(ctx)

        banner("Bad requests are refused with the API's error codes")
        rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                  {"action": "update_traffic", "challenger_id": challenger_b, "trafic_pct": 40}, expect=422)
        rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                  {"action": "update_traffic", "challenger_id": challenger_b, "traffic_pct": 48}, expect=422)

        banner("toggle_shadow: the champion answers everything; challengers score silently")
        shadow = rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic", {"action": "toggle_shadow", "shadow_mode": True})
        wait_propagated(ctx, shadow["cache_version"])
        print(send_traffic(routers, 2000, seed=9))
        show_get(ctx)

        banner("remove_challenger: linear-c's share returns to the champion")
        removed = rest.call("PATCH", f"/v1/deployments/{SLUG}/traffic",
                            {"action": "remove_challenger", "challenger_id": added_c["challenger"]["id"]})

        banner(f"tsplit history {SLUG}; then roll back to version {added['cache_version']}")
        from tsplit.cli.main import cmd_history
        cmd_history(argparse.Namespace(slug=SLUG, json=False, after=0, limit=1000), ctx)
        rolled = rest.call("POST", f"/v1/deployments/{SLUG}/rollback", {"to_version": added["cache_version"]})
        wait_propagated(ctx, rolled["deployment"]["cache_version"])
        print(send_traffic(routers, 1000, seed=10))
        show_get(ctx)
        print(f"\n(last change: version {removed['cache_version']} -> "
              f"rollback gave version {rolled['deployment']['cache_version']})")
    finally:
        if keep:
            print(f"\nthe stack keeps running: `tsplit get --dir {ctx.directory}`, `tsplit down --dir {ctx.directory}`")
        else:
            banner(f"tsplit down --dir {ctx.directory}")
            down(ctx.directory, lambda line: print("  " + line))
    return 0
