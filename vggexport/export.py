"""TorchScript and ONNX exports that describe themselves.

Both exports carry the model's ModelConfig, labels, preprocessing and the
checkpoint's sha256, so an application that knows nothing of vggexport can
preprocess and label from the file alone.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from vggexport import __version__
from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError
from vggexport.fileio import ModelSource, write_atomic
from vggexport.manifest import read_checked, update_manifest
from vggexport.model import VGG, ModelConfig
from vggexport.onnx_io import read_onnx_metadata  # noqa: F401  (moved there: torch-free; kept importable here)
from vggexport.spec import ExportSpec
from vggexport.transforms import normalize, resize_crop

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


def example_input(config: ModelConfig, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, config.in_channels, config.image_size, config.image_size)


def export_torchscript(ckpt: Checkpoint, out: str | Path) -> Path:
    """Trace on CPU in eval mode; the graph has no device constants, so it loads on CUDA too."""
    model = ckpt.build_model("cpu")
    extra = {TORCHSCRIPT_CONFIG: json.dumps(ckpt.model_config.to_dict()),
             TORCHSCRIPT_METADATA: json.dumps(export_metadata(ckpt))}
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream; it still works and we test that it does.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input(ckpt.model_config), check_trace=False)
        written = write_atomic(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    update_manifest(written.parent, [written])
    return written


def load_torchscript(source: ModelSource, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The module and its metadata from a path or from bytes already read (then exactly those bytes)."""
    artifact = read_checked(source, f"no TorchScript model at {source}: run `vggexport torchscript` first")
    extra = {TORCHSCRIPT_CONFIG: "", TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(artifact.data), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VggExportError(f"{artifact.path} is not a readable TorchScript model ({first[:120]})") from None
    if not extra[TORCHSCRIPT_METADATA]:
        raise VggExportError(f"{artifact.path} is TorchScript but not a vggexport export (no {TORCHSCRIPT_METADATA})")
    return module.eval(), json.loads(extra[TORCHSCRIPT_METADATA])


class Preprocessing(torch.nn.Module):
    """Raw uint8 pixels of any size in; logits and the uint8 pixels the model saw (after resize/crop) out.

    With ``resize_size`` it is torchvision's evaluation transform: Resize(resize_size) of the shorter
    side (bilinear, antialias), CenterCrop(image_size), Normalize(mean, std). The second output lets a
    server show exactly the model's view without torch.
    """

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = model
        self.image_size, self.resize_size = model.config.image_size, model.config.resize_size
        self.mean, self.std = model.config.mean, model.config.std

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = resize_crop(pixels.to(torch.float32) / 255.0, image_size=self.image_size, resize_size=self.resize_size,
                        always_resize=True)
        seen = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        return self.model(normalize(x, mean=self.mean, std=self.std)), seen


def onnx_program(ckpt: Checkpoint, spec: ExportSpec, *, preprocessing: bool) -> Any:
    """Run torch.onnx's dynamo exporter; batch (and H, W with preprocessing) are symbolic."""
    model: torch.nn.Module = ckpt.build_model("cpu")
    config = ckpt.model_config
    batch = torch.export.Dim(spec.batch_axis, min=1, max=65536)
    if preprocessing:
        model = Preprocessing(model).eval()
        # Unlike each other and any configured size, so the exporter cannot specialize the resize or crop away.
        side = max(config.image_size, config.resize_size) + 5
        example = torch.randint(0, 256, (2, config.in_channels, side + 3, side), dtype=torch.uint8)
        height, width = torch.export.Dim("height", min=2, max=8192), torch.export.Dim("width", min=2, max=8192)
        dynamic = {"pixels": {0: batch, 2: height, 3: width}}
    else:
        example = example_input(config)
        dynamic = {"x": {0: batch}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            model, (example,), dynamo=True, opset_version=spec.opset, input_names=[spec.input_name],
            output_names=[spec.output_name, *([MODEL_VIEW] if preprocessing else [])], dynamic_shapes=dynamic,
            external_data=False, verbose=False, optimize=True,
        )


def export_onnx(ckpt: Checkpoint, out: str | Path, spec: ExportSpec, *, preprocessing: bool = False) -> Path:
    import onnx

    program = onnx_program(ckpt, spec, preprocessing=preprocessing)
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in export_metadata(ckpt, preprocessing=preprocessing).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"{ckpt.model_config.name} image classifier exported by vggexport {__version__}; "
                        "see metadata_props for labels and preprocessing")
    proto.producer_name, proto.producer_version = "vggexport", __version__
    onnx.checker.check_model(proto, full_check=True)
    written = write_atomic(out, lambda tmp: onnx.save_model(proto, str(tmp)))
    update_manifest(written.parent, [written])
    return written
