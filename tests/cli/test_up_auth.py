"""`tsplit up --auth jwt` starts routers that check tokens, and `tsplit token` mints one that
infers: end to end through the real commands, over gRPC and REST (SPEC section 5, "Auth")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from tsplit.inference import grpc_predict_v2_pb2 as oip
from tsplit.inference import grpc_predict_v2_pb2_grpc as oip_grpc

TSPLIT = str(Path(sys.executable).parent / "tsplit")
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [[0.3, 0.7]]}]}


def tsplit(*args: str) -> str:
    result = subprocess.run([TSPLIT, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"tsplit {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def jwt_stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack-jwt")
    tsplit("up", "--dir", str(directory), "--routers", "1", "--demo-models", "--auth", "jwt", "--detach")
    try:
        yield directory, json.loads((directory / "stack.json").read_text())
    finally:
        subprocess.run([TSPLIT, "down", "--dir", str(directory)], capture_output=True, timeout=90)


def test_a_minted_token_infers_through_a_jwt_router_and_none_is_refused(jwt_stack):
    directory, data = jwt_stack
    d = ["--dir", str(directory)]
    router = data["routers"][0]
    assert router["auth"] == "jwt"
    models = {m["model_name"]: m["model_id"] for m in data["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_jwt", *d)
    token = tsplit("token", *d).strip()
    assert token.count(".") == 2
    request = oip.ModelInferRequest(model_name="dep_jwt", inputs=[oip.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 2], contents=oip.InferTensorContents(fp32_contents=[0.3, 0.7]))])
    with grpc.insecure_channel(router["address"]) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        # The router follows the new deployment within the propagation bound.
        for _ in range(50):
            try:
                _, call = stub.ModelInfer.with_call(request, metadata=[("authorization", f"Bearer {token}")],
                                                    timeout=5)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                time.sleep(0.1)
        else:
            raise AssertionError("dep_jwt never reached the router")
        assert dict(call.initial_metadata())["tsplit-variant"] == "champion"
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    url = f"{router['http_url']}/v2/models/dep_jwt/infer"
    answer = httpx.post(url, json=ROW, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] and answer.headers["tsplit-variant"] == "champion"
    assert httpx.post(url, json=ROW, timeout=10).status_code == 401
    # A token of another org reads the deployment as missing.
    other = tsplit("token", "--org", "org_other", *d).strip()
    assert httpx.post(url, json=ROW, headers={"authorization": f"Bearer {other}"}, timeout=10).status_code == 404
