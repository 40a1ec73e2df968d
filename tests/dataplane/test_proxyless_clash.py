"""Name clash: a process that already registered the `inference` proto package (as
Triton's client, MLServer and KServe do) can still import and use the proxyless client.

The subprocess first imports a vendor module compiled from the OIP v2 messages under
another file name, with the vendor's own stub, as a Triton user's process would; then it
routes, mirrors and compares through a ProxylessClient with that vendor stub; and last it
shows the clash is real: importing our generated module there fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "tsplit" / "inference" / "grpc_predict_v2.proto"

SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from vendor_oip import grpc_service_pb2 as vendor, grpc_service_pb2_grpc as vendor_grpc  # registers inference.*

    from dataplane.proxyless import ProxylessClient

    out = {"generated_module_imported": "tsplit.inference.grpc_predict_v2_pb2" in sys.modules}
    with ProxylessClient(sys.argv[2], sys.argv[3], wait_ready_s=10) as client:
        stub = vendor_grpc.GRPCInferenceServiceStub(client.channel())
        request = vendor.ModelInferRequest(model_name="dep_clash", id="r1")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
        tensor.contents.fp32_contents.extend([0.2, 0.8])
        answers = []
        for i in range(20):
            response, call = stub.ModelInfer.with_call(request, metadata=(("x-routing-key", f"k{i}"),), timeout=5)
            answers.append([response.model_name, dict(call.initial_metadata())["tsplit-variant"]])
        out["answers"] = answers
        out["metadata_name"] = stub.ModelMetadata(vendor.ModelMetadataRequest(name="dep_clash"), timeout=5).name
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = client.stats_snapshot()["dep_clash"].get("ch_b", {})
            if row.get("compared", 0) and row["compared"] == row["mirrored"]:
                break
            time.sleep(0.05)
        out["ch_b"] = client.stats_snapshot()["dep_clash"].get("ch_b", {})
        out["generated_module_imported"] |= "tsplit.inference.grpc_predict_v2_pb2" in sys.modules
    try:
        import tsplit.inference.grpc_predict_v2_pb2  # noqa: F401
        out["clash"] = None
    except Exception as err:  # the clash a caller of both would meet
        out["clash"] = f"{type(err).__name__}: {err}"
    print(json.dumps(out))
""")


def _compile_vendor_module(directory: Path) -> None:
    """The OIP v2 messages, package `inference`, under another file name (like Triton's
    grpc_service.proto), compiled with grpc_tools.protoc."""
    package = directory / "vendor_oip"
    package.mkdir()
    (package / "grpc_service.proto").write_text(PROTO.read_text())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{directory}", f"--python_out={directory}",
                    f"--grpc_python_out={directory}", "vendor_oip/grpc_service.proto"],
                   check=True, cwd=directory, timeout=60)


async def test_a_process_with_another_inference_package_uses_the_client(
        tmp_path, backends, etcd_endpoint, layout, dp):
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_b", weights=dp.WEIGHTS_B)
    await backends.deployment("dep_clash", "mod_a", [("ch_b", "mod_b", 50)], shadow_mode=True)
    _compile_vendor_module(tmp_path)
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", SCRIPT, str(tmp_path), etcd_endpoint, layout.prefix],
        capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answers"] == [["lin-mod_a", "champion"]] * 20          # routed, with our metadata
    assert result["metadata_name"] == "dep_clash"
    ch_b = result["ch_b"]
    assert 0 < ch_b["mirrored"] == ch_b["compared"] < 20                  # mirrored and compared
    assert ch_b["label_agree"] == 0 < ch_b["label_total"]                 # B's labels are A's opposite
    assert not result["generated_module_imported"]
    assert result["clash"] and "inference" in result["clash"]             # the clash is real there
