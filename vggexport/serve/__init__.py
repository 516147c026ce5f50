"""Serving: the Open Inference Protocol (KServe v2) over HTTP and gRPC, ONNX Runtime, dynamic batching; no torch."""
