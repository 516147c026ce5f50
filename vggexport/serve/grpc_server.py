"""KServe v2 over gRPC (Triton's GRPCInferenceService), on the HTTP server's event loop and data plane.

The message and service definitions are the generated ones tritonclient ships
(``tritonclient.grpc.service_pb2``), so the official ``tritonclient.grpc`` works
unmodified. Outputs go back as ``raw_output_contents``, as Triton sends them.
Methods this server has no use for (repository control, shared memory, traces)
answer UNIMPLEMENTED from the generated base class.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from vggexport.errors import VggExportError
from vggexport.names import V2_TO_GRPC_CONTENTS
from vggexport.serve.dataplane import INLINE_BYTES, INLINE_VALUES, DataPlane, InferCall, InferResult, OutputRequest
from vggexport.serve.errors import ProtocolError
from vggexport.serve.metrics import ServerMetrics
from vggexport.serve.protocol import BYTES, DATATYPES, datatype_name, decode_raw, element_count, encode_raw

log = logging.getLogger("vggexport.serve")
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}


def status_code(exc: VggExportError) -> grpc.StatusCode:
    return STATUS_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL)


def decode_input(tensor: Any, raw: bytes | None) -> np.ndarray:
    shape = list(tensor.shape)
    if raw is not None:
        return decode_raw(tensor.name, tensor.datatype, shape, raw)
    field = V2_TO_GRPC_CONTENTS.get(tensor.datatype)
    if field is None or tensor.datatype not in DATATYPES:
        raise ProtocolError(f"input {tensor.name!r}: datatype {tensor.datatype[:20]!r} needs raw_input_contents")
    count = element_count(tensor.name, shape)
    values = list(getattr(tensor.contents, field))
    if len(values) != count:
        raise ProtocolError(f"input {tensor.name!r}: {len(values)} values for shape {shape}")
    if tensor.datatype == BYTES:
        return np.array(values, dtype=np.object_).reshape(shape)
    try:
        return np.asarray(values, dtype=DATATYPES[tensor.datatype]).reshape(shape)
    except (OverflowError, ValueError):
        raise ProtocolError(f"input {tensor.name!r}: values do not fit {tensor.datatype}") from None


def to_call(request: Any) -> InferCall:
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise ProtocolError(f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise ProtocolError(f"input {tensor.name!r} appears twice")
        inputs[tensor.name] = decode_input(tensor, raws[index] if raws else None)
    outputs = None
    if request.outputs:
        outputs = [OutputRequest(o.name, classification_count(o)) for o in request.outputs]
    return InferCall(model=request.model_name, version=request.model_version, id=request.id, inputs=inputs,
                     outputs=outputs)


def classification_count(output: Any) -> int:
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    if parameter.WhichOneof("parameter_choice") != "int64_param" or parameter.int64_param < 0:
        raise ProtocolError(f"output {output.name!r}: classification must be a non-negative int64")
    return int(parameter.int64_param)


def to_response(result: InferResult) -> Any:
    response = service_pb2.ModelInferResponse(model_name=result.model_name, model_version=result.model_version,
                                              id=result.id)
    for output, array in result.outputs:
        response.outputs.add(name=output.name, datatype=datatype_name(array), shape=list(array.shape))
        response.raw_output_contents.append(encode_raw(array))
    return response


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self.plane, self.metrics = plane, metrics
        # The metrics' children for the served model, looked up once (labels() takes a lock and a dict lookup).
        self.success = metrics.success.labels(plane.service.name)
        self.latency = metrics.request_latency.labels("grpc_infer")

    async def guarded(self, context: Any, work: Any) -> Any:
        try:
            return await work()
        except VggExportError as exc:
            self.metrics.failure.labels(self.plane.service.name, "client" if exc.http_status < 500 else "server").inc()
            await context.abort(status_code(exc), str(exc))
        except Exception:
            log.exception("gRPC request failed")  # the details stay in the server's log
            self.metrics.failure.labels(self.plane.service.name, "server").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return service_pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))
        return await self.guarded(context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.server_metadata()
        return service_pb2.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                                  extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            meta = self.plane.model_metadata(request.name, request.version)
            tensor = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])
        return await self.guarded(context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return service_pb2.ModelConfigResponse(config=self.plane.model_config(request.name, request.version))
        return await self.guarded(context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            started = time.perf_counter()
            plane = self.plane
            plane.model(request.model_name, request.model_version)
            call = await plane.offload_if(request.ByteSize() > INLINE_BYTES, to_call, request)
            result = await plane.infer(call)
            # Every output is raw here and none is flagged binary, so json_values counts them all: a bound.
            response = await plane.offload_if(result.json_values() > INLINE_VALUES, to_response, result)
            self.success.inc()
            self.latency.observe(time.perf_counter() - started)
            return response
        return await self.guarded(context, work)


async def start_grpc(plane: DataPlane, metrics: ServerMetrics, host: str, port: int, max_message_bytes: int, *,
                     shared_port: bool = False) -> Any:
    """A started grpc.aio server on ``host:port`` (call it from the running event loop).

    Only ``--workers N`` shares the port (SO_REUSEPORT): otherwise a second server on the same port
    would silently take half the traffic instead of failing.
    """
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes), ("grpc.so_reuseport", int(shared_port))]
    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, metrics), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise VggExportError(f"cannot listen for gRPC on {host}:{port} (in use?); pick --grpc-port or 0 to disable")
    await server.start()
    return server
