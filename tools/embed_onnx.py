"""Classify images with a vggexport .onnx using only onnxruntime and numpy: no torch, no vggexport.

    python tools/embed_onnx.py model.onnx images.npy     # uint8 (N, H, W) or (N, C, H, W)

Everything it needs (input size, channels, mean/std, labels) comes from the
model's metadata_props; the resize is the same bilinear (align_corners=False)
that training used. Prints one JSON line per image: index, label, probability.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort


def bilinear_resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) float -> (N, C, size, size), half-pixel centres like torch's align_corners=False.

    Exact for upsampling; for shrinking by a large factor torch additionally antialiases.
    """
    _, _, height, width = images.shape

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, n_in - 1), (pos - low).astype(np.float32)

    y0, y1, wy = axis(height)
    x0, x1, wx = axis(width)
    rows = images[:, :, y0, :] * (1 - wy)[:, None] + images[:, :, y1, :] * wy[:, None]
    return rows[:, :, :, x0] * (1 - wx) + rows[:, :, :, x1] * wx


def main(model_path: str, images_path: str) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size, channels = int(meta["image_size"]), int(meta["in_channels"])
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
    labels = json.loads(meta["class_names"])
    pixels = np.load(images_path)
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    if pixels.shape[1] != channels:
        raise SystemExit(f"images have {pixels.shape[1]} channels; the model takes {channels}")
    x = bilinear_resize(pixels.astype(np.float32) / 255.0, size)
    x = ((x - mean) / std).astype(np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for row in probabilities:
        best = int(row.argmax())
        print(json.dumps({"index": best, "label": labels[best], "probability": float(row[best])}))
    assert "torch" not in sys.modules and "vggexport" not in sys.modules


if __name__ == "__main__":
    main(*sys.argv[1:3])
