"""Triton Python-backend model for tools/bench_peers.py: the ONNX in one ONNX Runtime CPU session.

Triton's dynamic batcher hands `execute` up to max_batch_size requests at once; they are
concatenated into one batch and run in one session call, as `vggexport serve` runs its
batches. The session options repeat vggexport.backend.onnxrt.session_options for a server
(all graph optimisations, sequential execution, N intra-op threads, no spinning); N and the
model path come from config.pbtxt's parameters. What the session really got is written to
the `report` file, so the benchmark prints what ran rather than what was asked.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(params["intra_op_num_threads"])
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(params["model"], sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o["name"] for o in config["output"]]
        with open(params["report"], "w") as report:
            json.dump({"onnxruntime": ort.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                       "providers": self.session.get_providers(),
                       "intra_op_num_threads": options.intra_op_num_threads,
                       "inter_op_num_threads": options.inter_op_num_threads,
                       "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning")},
                      report)

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        responses, start = [], 0
        for array in arrays:  # each request gets back its own rows
            stop = start + len(array)
            tensors = [pb_utils.Tensor(name, out[start:stop]) for name, out in zip(self.output_names, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
