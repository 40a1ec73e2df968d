"""Changes go through the control plane (never by writing etcd): a small sync gRPC client."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc

from tsplit.protojson import message_to_json, struct_from_json
from tsplit.cli.context import CliContext, CliError
from tsplit.errors import api_error_from_rpc_error
from tsplit.v1 import controlplane_pb2 as cp_pb
from tsplit.v1 import controlplane_pb2_grpc as cp_grpc

RPC_TIMEOUT_S = 15.0
# A change whose outcome is unknown (commit_unknown) is sent again with its key until the
# control plane tells; this long at most.
LEARN_OUTCOME_S = 60.0
RETRY_PAUSE_S = 0.5


class ApiCallError(CliError):
    """The control plane refused a call: .code is the API's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


struct = struct_from_json
to_json = message_to_json


class ControlPlaneClient:
    def __init__(self, ctx: CliContext):
        self.address = ctx.require_controlplane()
        self._metadata = [("authorization", f"Bearer {ctx.require_token()}")]
        self._channel = grpc.insecure_channel(self.address)
        self._stub = cp_grpc.ControlPlaneStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ControlPlaneClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, request):
        """One RPC. A change (a request with a request_id field) carries an idempotency key
        and, while its outcome is unknown, is sent again with that key until it is known."""
        change = "request_id" in request.DESCRIPTOR.fields_by_name
        if change and not request.request_id:
            request.request_id = f"cli-{uuid.uuid4().hex}"
        give_up = time.monotonic() + LEARN_OUTCOME_S
        while True:
            try:
                return getattr(self._stub, method)(request, metadata=self._metadata, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                api_error = api_error_from_rpc_error(err, change=change)
            if api_error.code != "commit_unknown" or time.monotonic() + RETRY_PAUSE_S >= give_up:
                break
            time.sleep(RETRY_PAUSE_S)
        where = f" (control plane at {self.address})" if api_error.code == "unavailable" else ""
        key = f" (request_id {request.request_id})" if api_error.code == "commit_unknown" else ""
        raise ApiCallError(api_error.code, f"{api_error.code}: {api_error.message}{where}{key}")

    def get_deployment(self, slug: str) -> cp_pb.Deployment:
        return self.call("GetDeployment", cp_pb.GetDeploymentRequest(deployment_id=slug))

    def register_model(self, body: dict[str, Any]) -> cp_pb.Model:
        return self.call("RegisterModel", cp_pb.RegisterModelRequest(body=struct(body)))

    def update_model(self, model_id: str, body: dict[str, Any]) -> cp_pb.Model:
        return self.call("UpdateModel", cp_pb.UpdateModelRequest(model_id=model_id, body=struct(body)))

    def delete_model(self, model_id: str) -> None:
        self.call("DeleteModel", cp_pb.DeleteModelRequest(model_id=model_id))

    def create_deployment(self, body: dict[str, Any]) -> cp_pb.Deployment:
        return self.call("CreateDeployment", cp_pb.CreateDeploymentRequest(body=struct(body)))

    def delete_deployment(self, slug: str) -> None:
        self.call("DeleteDeployment", cp_pb.DeleteDeploymentRequest(deployment_id=slug))

    def manage_traffic(self, slug: str, body: dict[str, Any], expected: int | None = None):
        request = cp_pb.ManageTrafficRequest(deployment_id=slug, body=struct(body))
        if expected is not None:
            request.expected_cache_version = expected
        return self.call("ManageTraffic", request)

    def rollback(self, slug: str, to_version: int) -> cp_pb.DeploymentChange:
        return self.call("RollbackDeployment", cp_pb.RollbackDeploymentRequest(
            deployment_id=slug, body=struct({"to_version": to_version})))

    def apply(self, slug: str, desired: dict[str, Any], expected: int | None) -> cp_pb.DeploymentChange:
        """expected None: the deployment does not exist yet (apply creates it)."""
        request = cp_pb.ApplyTrafficRequest(deployment_id=slug, body=struct(desired))
        if expected is not None:
            request.expected_cache_version = expected
        return self.call("ApplyTraffic", request)

    def set_guardrails(self, slug: str, policy: dict[str, Any]) -> cp_pb.DeploymentChange:
        return self.call("SetGuardrails", cp_pb.SetGuardrailsRequest(deployment_id=slug, body=struct(policy)))
