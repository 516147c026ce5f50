"""The official tritonclient over gRPC and HTTP against one real server process: the same answers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import MODEL, Served, inputs


def test_health_and_metadata_over_grpc(server: Served) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    meta = client.get_server_metadata()
    assert meta.name == "vggexport" and "classification" in meta.extensions
    model = client.get_model_metadata(MODEL)
    assert model.versions == ["1"] and model.inputs[0].datatype == "FP32"
    assert list(model.inputs[0].shape) == [-1, 1, 32, 32]
    assert [o.name for o in model.outputs] == ["logits", "probabilities"]
    client.close()


@pytest.mark.parametrize("class_count", [0, 3])
def test_grpc_and_http_clients_give_identical_outputs(server: Served, class_count: int) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = inputs(3, seed=1)
    answers = []
    for module, client in ((grpcclient, grpcclient.InferenceServerClient(server.grpc_url)),
                           (httpclient, httpclient.InferenceServerClient(server.url.removeprefix("http://")))):
        tensor = module.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        outputs = [module.InferRequestedOutput("logits", class_count=class_count),
                   module.InferRequestedOutput("probabilities", class_count=class_count)]
        result = client.infer(MODEL, [tensor], outputs=outputs, request_id="r-42")
        response = result.get_response()
        assert (response["id"] if isinstance(response, dict) else response.id) == "r-42"
        answers.append([result.as_numpy("logits"), result.as_numpy("probabilities")])
        client.close()
    (grpc_logits, grpc_probs), (http_logits, http_probs) = answers
    np.testing.assert_array_equal(grpc_logits, http_logits)
    np.testing.assert_array_equal(grpc_probs, http_probs)
    if class_count:
        assert grpc_logits.shape == (3, class_count) and grpc_logits.dtype == np.object_
        score, index, label = grpc_probs[0, 0].decode().split(":")
        assert label == f"class_{index}" and 0 < float(score) <= 1
        top_by_logit = [int(s.decode().split(":")[1]) for s in grpc_logits[:, 0]]
        assert top_by_logit == [int(s.decode().split(":")[1]) for s in grpc_probs[:, 0]]  # softmax keeps the order
    else:
        np.testing.assert_allclose(grpc_probs.sum(axis=1), np.ones(3), rtol=1e-5)


@pytest.mark.parametrize(("case", "model", "version", "shape", "datatype", "code", "message"), [
    ("unknown model", "resnet50", "", [1, 1, 32, 32], "FP32", "NOT_FOUND", "unknown model"),
    ("unknown version", MODEL, "7", [1, 1, 32, 32], "FP32", "NOT_FOUND", "no version '7'"),
    ("wrong shape", MODEL, "", [1, 1, 16, 64], "FP32", "INVALID_ARGUMENT", "expected [-1, 1, 32, 32]"),
    ("wrong datatype", MODEL, "", [1, 1, 32, 32], "INT32", "INVALID_ARGUMENT", "must be FP32"),
])
def test_grpc_errors_carry_their_status(server: Served, case: str, model: str, version: str, shape: list[int],
                                        datatype: str, code: str, message: str) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input", shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, np.float32 if datatype == "FP32" else np.int32))
    with pytest.raises(InferenceServerException, match=re.escape(message)) as caught:
        client.infer(model, [tensor], model_version=version)
    assert code in str(caught.value.status()) and message in caught.value.message(), str(caught.value)
    assert client.is_server_live()
    client.close()


def test_grpc_raw_contents_that_disagree_with_the_shape_are_refused(server: Served) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[2**32, 2**32])
        request.raw_input_contents.append(b"")
        with pytest.raises(grpc.RpcError, match="over the") as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the" in caught.value.details()
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 32, 32])
        request.raw_input_contents.append(b"\0" * 12)
        with pytest.raises(grpc.RpcError, match="12 bytes for shape") as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "12 bytes for shape" in caught.value.details()


@pytest.mark.gpu
def test_cuda_server_answers_like_the_cpu_one(served_folder) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    from tests.serve.conftest import Served

    x = inputs(8, seed=1)
    answers = []
    for provider in ("cpu", "cuda"):
        process = Served(served_folder / "model.onnx", "--provider", provider).wait_ready(timeout=180)
        try:
            client = grpcclient.InferenceServerClient(process.grpc_url)
            assert client.get_model_metadata(MODEL, as_json=True)["platform"] == "onnxruntime_onnx"
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            answers.append(client.infer(MODEL, [tensor]).as_numpy("logits"))
            client.close()
        finally:
            process.stop()
        if provider == "cuda":
            assert "warm-up: batch 64" in process.output()  # start-up logs its phases
    np.testing.assert_allclose(answers[1], answers[0], atol=5e-3, rtol=1e-2)


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_port_in_use_is_a_one_line_error(server: Served, which: str) -> None:
    import subprocess
    import sys

    from vggexport.serve.smoke import free_port

    taken = server.grpc_port if which == "grpc" else server.port
    other = free_port()
    ports = ["--grpc-port", str(taken), "--port", str(other)] if which == "grpc" else \
        ["--grpc-port", str(other), "--port", str(taken)]
    done = subprocess.run([sys.executable, "-m", "vggexport", "serve", "--model", str(server.model), *ports,
                           "--allow-unverified"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1  # one error line (the warnings are --allow-unverified's, asked for)
    assert server.process.poll() is None  # the first server is untouched


def test_grpc_too_large_is_resource_exhausted(server: Served) -> None:
    """A message over --max-body-mb (1 MiB here) is refused as HTTP's 413 would be: RESOURCE_EXHAUSTED."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1024, 1, 32, 32])
        request.raw_input_contents.append(b"\0" * (1024 * 32 * 32 * 4))
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value


def test_grpc_a_request_past_its_timeout_is_deadline_exceeded(served_folder: Path) -> None:
    """The batcher's 504 over gRPC: a lone request waits for a batch (1.5 s) longer than --timeout-ms allows."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    process = Served(served_folder / "model.onnx", "--max-queue-delay-ms", "1500", "--timeout-ms", "100").wait_ready()
    try:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        tensor = grpcclient.InferInput("input", [1, 1, 32, 32], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32))
        with pytest.raises(InferenceServerException, match="timed out after 100 ms") as caught:
            client.infer(MODEL, [tensor])
        assert "DEADLINE_EXCEEDED" in str(caught.value.status())
        assert client.is_server_live()
        client.close()
    finally:
        process.stop()
