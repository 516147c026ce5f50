"""HTTP serving: the Open Inference Protocol (KServe v2) over ONNX Runtime, with dynamic batching."""
