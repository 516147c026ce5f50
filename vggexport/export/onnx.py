"""``model.onnx`` (and ``model.preprocessing.onnx``): torch.onnx's dynamo exporter, with the metadata in the file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from vggexport import __version__
from vggexport.checkpoint import Checkpoint
from vggexport.export.metadata import MODEL_VIEW, export_metadata
from vggexport.export.spec import ExportSpec
from vggexport.model import VGG, example_input
from vggexport.store.fileio import write_atomic
from vggexport.store.manifest import update_manifest
from vggexport.transforms import normalize, resize_crop


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
