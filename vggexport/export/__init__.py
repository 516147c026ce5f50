"""Export: one spec, the self-describing metadata, TorchScript, ONNX, torch.export, and the reduced-precision
variants."""
