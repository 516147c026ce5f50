"""Classify images with a vggexport .onnx using only onnxruntime and numpy: no torch, no vggexport.

    python tools/embed_onnx.py model.onnx images.npy     # uint8 (N, H, W) or (N, C, H, W)
    python tools/embed_onnx.py model.onnx photo.jpg ...  # image files (these need Pillow to decode)

Everything it needs comes from the model's metadata_props: the resize policy
(``resize_policy``, ``resize_size``, ``crop_size``: torchvision's Resize + CenterCrop
for imported models), ``color_mode``, ``mean``/``std`` and the labels. The resize is
the antialiased bilinear that training and the uint8 ONNX graph use. Prints one
JSON line per image: index, label, probability.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def resize_weights(n_in: int, resized: int, start: int, count: int) -> np.ndarray:
    """(count, n_in) weights of output pixels start..start+count of a resize from n_in to ``resized``.

    Antialiased bilinear with half-pixel centres (torch's interpolate(antialias=True), PIL's
    BILINEAR): a triangle filter widened by the scale when shrinking, renormalized at the edges.
    """
    scale = n_in / resized
    support = max(scale, 1.0)
    centres = scale * (np.arange(start, start + count) + 0.5)
    distance = np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def centre_offset(size: int, crop: int) -> int:
    """torchvision's CenterCrop offset, int(round((size - crop) / 2)): halves round to even."""
    return int(round((size - crop) / 2.0))


def resize_crop(image: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """float (C, H, W) in [0, 1] -> (C, crop, crop) by the policy in the model's metadata."""
    _, height, width = image.shape
    crop = int(meta.get("crop_size", meta["image_size"]))
    if meta.get("resize_policy") == "shorter-side-then-center-crop":
        resize = int(meta["resize_size"])
        shorter = min(height, width)
        new_height, new_width = resize * height // shorter, resize * width // shorter
    else:  # "stretch" (and models exported before the policy was recorded)
        new_height = new_width = crop
    rows = resize_weights(height, new_height, centre_offset(new_height, crop), crop)
    cols = resize_weights(width, new_width, centre_offset(new_width, crop), crop)
    return rows @ image @ cols.T


def read_images(paths: list[str], mode: str) -> list[np.ndarray]:
    """uint8 (C, H, W) per image, from one .npy batch or from image files."""
    if len(paths) == 1 and paths[0].endswith(".npy"):
        pixels = np.load(paths[0])
        return list(pixels[:, None] if pixels.ndim == 3 else pixels)
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.uint8)
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return images


def main(model_path: str, *image_paths: str) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    channels = int(meta["in_channels"])
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(-1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(-1, 1, 1)
    labels = json.loads(meta["class_names"])
    images = read_images(list(image_paths), meta.get("color_mode", "RGB" if channels == 3 else "L"))
    if any(image.shape[0] != channels for image in images):
        raise SystemExit(f"images have {images[0].shape[0]} channels; the model takes {channels}")
    x = np.stack([(resize_crop(image.astype(np.float32) / 255.0, meta) - mean) / std for image in images])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for row in probabilities:
        best = int(row.argmax())
        print(json.dumps({"index": best, "label": labels[best], "probability": float(row[best])}))
    assert "torch" not in sys.modules and "vggexport" not in sys.modules


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a vggexport .onnx (its metadata_props say how to prepare images)")
    parser.add_argument("images", nargs="+", help="one .npy of uint8 images, or image files")
    args = parser.parse_args()
    main(args.model, *args.images)
