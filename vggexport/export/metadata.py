"""What every export says about itself: the model's config, labels, preprocessing and provenance, as flat strings.

TorchScript extra files, ONNX metadata_props and ``torch.export`` extra files all carry these, so an application
that knows nothing of vggexport can preprocess and label from the file alone. Torch-free.
"""

from __future__ import annotations

import json

from vggexport import __version__
from vggexport.checkpoint import Checkpoint
from vggexport.model import ModelConfig

TORCHSCRIPT_CONFIG = "model_config.json"
TORCHSCRIPT_METADATA = "metadata.json"
MODEL_VIEW = "input_image"  # the preprocessing variant's second output: uint8 pixels after resizing


def export_metadata(ckpt: Checkpoint, *, preprocessing: bool = False) -> dict[str, str]:
    """Flat string key/values: ONNX metadata_props and TorchScript extra files both take these."""
    config = ckpt.model_config
    accuracy = ckpt.metrics.get("test_accuracy")
    if preprocessing:
        input_format = "uint8 pixels (N, C, H, W), any H and W; resized, cropped and normalized inside the graph"
    else:
        input_format = "float32 (N, C, H, W) = (pixel / 255 - mean) / std after the resize and crop"
    return {
        "model_name": config.name,
        "cfg": config.cfg,
        "class_names": json.dumps(list(config.class_names)),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "image_size": str(config.image_size),
        "in_channels": str(config.in_channels),
        "input_format": input_format,
        **preprocessing_metadata(config),
        "dataset": config.dataset,
        "test_accuracy": "" if accuracy is None else f"{accuracy:.6f}",
        "checkpoint_sha256": ckpt.sha256(),
        "vggexport_version": __version__,
        "model_config": json.dumps(config.to_dict()),
    }


def preprocessing_metadata(config: ModelConfig) -> dict[str, str]:
    """How to turn a photo into the model's input, in keys an application in any language can follow."""
    size = config.image_size
    if config.resize_size:
        policy = "shorter-side-then-center-crop"
        text = (f"shorter side to {config.resize_size} px, the other keeping the aspect (truncated); "
                f"then the centre {size}x{size} (offsets round((resized - crop) / 2), halves to even)")
    else:
        policy, text = "stretch", f"to {size}x{size}, aspect not kept"
    return {
        "resize": f"{text}; {config.interpolation}, half-pixel centres (align_corners=false), antialiased when "
                  f"shrinking; then pixel / 255, minus mean, over std, per channel",
        "resize_policy": policy,
        "resize_size": str(config.resize_size or size),
        "crop_size": str(size),
        "interpolation": config.interpolation,
        "antialias": "true",
        "color_mode": config.color_mode,
    }
