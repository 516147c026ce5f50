"""One runner contract for every runtime (Polygraphy's backend/): base, onnxrt (torch-free), pytorch, and the
registry."""
