"""The artifact folder, torch-free: paths, atomic file I/O, the manifest, the parity record, ONNX files read
without torch."""
