"""Triton's model configuration extension against real `vggexport serve` processes and the official clients."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format

from tests.serve.conftest import Served

MODEL = "vgg11_bn"
RIGHT_TO_LEFT = "\u202e"
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8"}


def configs(process: Served, version: str = "") -> tuple[dict[str, Any], Any]:
    """(HTTP JSON, gRPC ModelConfig) from the official tritonclient HTTP and gRPC clients."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(process.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        return http.get_model_config(MODEL, version), grpc.get_model_config(MODEL, version).config
    finally:
        http.close()
        grpc.close()


def assert_transports_agree(process: Served, version: str = "") -> Any:
    from tritonclient.grpc import model_config_pb2

    as_json, message = configs(process, version)
    assert json_format.ParseDict(as_json, model_config_pb2.ModelConfig()) == message
    return message


def assert_matches_session(message: Any, onnx_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (graph_input,), graph_logits = session.get_inputs(), session.get_outputs()[0]
    (declared,) = message.input
    assert declared.name == graph_input.name
    assert pb.DataType.Name(declared.data_type) == ORT_TO_TRITON[graph_input.type]
    assert list(declared.dims) == [d if isinstance(d, int) else -1 for d in graph_input.shape[1:]]
    assert [o.name for o in message.output] == ["logits", "probabilities"]
    for output in message.output:
        assert output.data_type == pb.TYPE_FP32 and list(output.dims) == graph_logits.shape[1:]
        assert output.label_filename == "labels.txt"
    assert message.platform == "onnxruntime_onnx" and message.name == MODEL
    assert [(g.count, g.kind) for g in message.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]


def test_http_and_grpc_serve_one_config_that_matches_the_session(server: Served, served_folder: Path) -> None:
    import tritonclient.http as httpclient

    message = assert_transports_agree(server)
    assert_matches_session(message, served_folder / "model.onnx")
    assert message.max_batch_size == 64  # --max-batch-size 64
    assert message.dynamic_batching.max_queue_delay_microseconds == 5000  # --max-queue-delay-ms 5
    assert not message.dynamic_batching.preferred_batch_size  # the batcher takes whatever is queued
    assert not message.model_warmup  # a CPU server does not warm up unless asked
    as_json = httpx.get(f"{server.url}/v2/models/{MODEL}/config").json()
    assert as_json["input"][0]["dims"] == [1, 32, 32]  # numbers, as Triton prints int64, not strings
    assert as_json["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    metadata = client.get_model_metadata(MODEL)
    assert "model_configuration" in client.get_server_metadata()["extensions"]
    client.close()
    assert metadata["inputs"][0]["shape"] == [-1, *message.input[0].dims]
    assert [[-1, *o.dims] for o in message.output] == [o["shape"] for o in metadata["outputs"]]


def test_versioned_path_and_openapi(server: Served) -> None:
    unversioned = assert_transports_agree(server)
    assert assert_transports_agree(server, "1") == unversioned
    body = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1/config")
    assert body.status_code == 200 and body.headers["content-type"] == "application/json"
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/config", "/v2/models/{name}/versions/{version}/config"} <= set(paths)


def test_preprocessing_model_without_batching_and_with_warmup(served_folder: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    path = served_folder / "model.preprocessing.onnx"
    process = Served(path, "--max-batch-size", "1", "--warmup").wait_ready()
    try:
        message = assert_transports_agree(process)
    finally:
        process.stop()
    assert_matches_session(message, path)
    assert message.input[0].data_type == pb.TYPE_UINT8 and list(message.input[0].dims) == [1, -1, -1]
    assert message.max_batch_size == 1 and not message.HasField("dynamic_batching")  # --max-batch-size 1: off
    (warmup,) = message.model_warmup  # what the server ran before turning ready: a zero batch of 1
    assert warmup.batch_size == 1 and warmup.inputs["input"].zero_data
    assert list(warmup.inputs["input"].dims) == [1, 32, 32]


def test_the_triton_repository_and_the_server_agree(server: Served, served_folder: Path, tmp_path: Path) -> None:
    """`vggexport triton` and `vggexport serve` build their ModelConfig with one function."""
    from tritonclient.grpc import model_config_pb2

    from vggexport.deploy.triton import TritonConfig, write_repository

    config = TritonConfig(max_batch_size=64, kind="cpu", max_queue_delay_us=5000)
    target = write_repository(served_folder / "model.onnx", tmp_path / "repo", config, allow_unverified=True)
    written = text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    served = assert_transports_agree(server)
    for field in ("name", "platform", "max_batch_size"):
        assert getattr(written, field) == getattr(served, field), field
    assert list(written.input) == list(served.input)
    assert list(written.output) == list(served.output[:1])  # the repository declares the logits only
    assert written.instance_group[0].kind == served.instance_group[0].kind
    assert written.dynamic_batching.max_queue_delay_microseconds == \
        served.dynamic_batching.max_queue_delay_microseconds
    assert (target / "labels.txt").read_text().splitlines()[0] == "class_0"


HOSTILE_HTTP = {
    "unknown model": "/v2/models/resnet50/config",
    "unknown version": f"/v2/models/{MODEL}/versions/2/config",
    "version 0": f"/v2/models/{MODEL}/versions/0/config",
    "negative version": f"/v2/models/{MODEL}/versions/-1/config",
    "NaN version": f"/v2/models/{MODEL}/versions/NaN/config",
    "float version": f"/v2/models/{MODEL}/versions/1.0/config",
    "long version": f"/v2/models/{MODEL}/versions/{'9' * 4000}/config",
    "NaN model": "/v2/models/NaN/config",
    "Infinity model": "/v2/models/Infinity/config",
    "empty model": "/v2/models//config",
    "empty version": f"/v2/models/{MODEL}/versions//config",
    "long model": f"/v2/models/{'x' * 4000}/config",
    "encoded slash": f"/v2/models/{quote(MODEL + '/x', safe='')}/config",
    "encoded traversal": f"/v2/models/{quote('../' + MODEL, safe='')}/config",
    "encoded nul": "/v2/models/%00/config",
    "unicode model": f"/v2/models/{quote(MODEL + RIGHT_TO_LEFT)}/config",
    "model name with space": f"/v2/models/{quote(MODEL + ' ')}/config",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HTTP))
def test_hostile_names_over_http_are_404_json(server: Served, case: str) -> None:
    response = httpx.get(f"{server.url}{HOSTILE_HTTP[case]}", timeout=30)
    assert response.status_code == 404, (case, response.status_code, response.text[:200])
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(("model", "version", "message"), [
    ("resnet50", "", "unknown model 'resnet50'"),
    ("", "", "unknown model ''"),
    ("x" * 4000, "", "unknown model"),
    ("NaN", "", "unknown model 'NaN'"),
    (f"{MODEL}/../{MODEL}", "", "unknown model"),
    ("\0", "", "unknown model"),
    (MODEL, "2", "no version '2'"),
    (MODEL, "NaN", "no version 'NaN'"),
    (MODEL, "-1", "no version '-1'"),
    (MODEL, "9" * 4000, "no version"),
])
def test_hostile_names_over_grpc_are_not_found(server: Served, model: str, version: str, message: str) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError, match=re.escape(message)) as caught:
            stub.ModelConfig(service_pb2.ModelConfigRequest(name=model, version=version))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and message in caught.value.details()
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_json_form_writes_every_64_bit_integer_as_a_number() -> None:
    """Map values, map keys of uint64 and repeated int64 inside nested messages, as Triton's HTTP prints them."""
    from tritonclient.grpc import model_config_pb2 as pb

    from vggexport.serve.model_config import config_json

    message = pb.ModelConfig(name="m", max_batch_size=8)
    message.input.add(name="input", data_type=pb.TYPE_FP32, dims=[1, 2**40, -1])
    message.dynamic_batching.priority_queue_policy[3].default_timeout_microseconds = 2**63 + 1
    message.dynamic_batching.max_queue_delay_microseconds = 7
    warm = message.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs["input"].CopyFrom(pb.ModelWarmup.Input(data_type=pb.TYPE_FP32, dims=[1, 2, 2], zero_data=True))
    as_json = config_json(message)
    assert as_json["input"][0]["dims"] == [1, 2**40, -1]
    assert as_json["dynamic_batching"]["priority_queue_policy"]["3"]["default_timeout_microseconds"] == 2**63 + 1
    assert as_json["dynamic_batching"]["max_queue_delay_microseconds"] == 7
    assert as_json["model_warmup"][0]["inputs"]["input"]["dims"] == [1, 2, 2]
    assert json_format.ParseDict(as_json, pb.ModelConfig()) == message


@pytest.mark.gpu
def test_cuda_server_declares_a_gpu_instance_and_its_warmup(served_folder: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    process = Served(served_folder / "model.onnx", "--provider", "cuda", "--max-batch-size", "16").wait_ready(
        timeout=180)
    try:
        message = assert_transports_agree(process)
    finally:
        process.stop()
    assert [g.kind for g in message.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert [w.batch_size for w in message.model_warmup] == [1, 16]  # CUDA warms up batch 1 and the largest
