"""verify on a folder of photos: imported models (ImageNet-style resize and crop) have no dataset here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import Cli, tiny_config
from vggexport.checkpoint import load_checkpoint, save_checkpoint
from vggexport.export.onnx import export_onnx
from vggexport.model import build_model
from vggexport.export.spec import ExportSpec

CLASSES = ("cat", "dog")


@pytest.fixture(scope="module")
def cropping_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RGB model with torchvision's kind of policy: shorter side to 40, centre crop 32."""
    folder = tmp_path_factory.mktemp("photos") / "tiny-imported"
    folder.mkdir()
    config = tiny_config(in_channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=2,
                         class_names=CLASSES, dataset="imagenet", resize_size=40, model_name="tiny-imported")
    with torch.random.fork_rng():  # the same weights whichever tests ran before on this worker
        torch.manual_seed(0)
        weights = build_model(config).state_dict()
    ckpt = load_checkpoint(save_checkpoint(folder / "best.pt", model_config=config, state={"model": weights}))
    export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    export_onnx(ckpt, folder / "model.preprocessing.onnx", ExportSpec(), preprocessing=True)
    return folder


def write_photos(root: Path, labelled: bool) -> Path:
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (90, 45), (40, 40), (123, 77)]
    for i, (h, w) in enumerate(sizes * 2):
        folder = root / CLASSES[i % 2] if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i % 3 == 0:
            image.convert("L").save(folder / f"p{i}.png")  # greyscale photos are converted to RGB
        else:
            image.save(folder / f"p{i}.jpg", quality=90)
    return root


@pytest.mark.parametrize("labelled", [True, False])
def test_photos_verify_both_graphs(run_cli: Cli, cropping_model: Path, tmp_path: Path, labelled: bool) -> None:
    photos = write_photos(tmp_path / "photos", labelled)
    result = run_cli("verify", "--artifacts", cropping_model.parent, "--name", "tiny-imported", "--data-dir", photos)
    assert result.exit_code == 0, result.output
    files = json.loads((cropping_model / "parity.json").read_text())["files"]
    real = files["model.onnx"]["runtimes"][0]["checks"]["real"]
    assert real["samples"] == 8 and real["top1_agreement"] == 1.0
    assert (real["accuracy"] is not None) is labelled
    photos_check = files["model.preprocessing.onnx"]["runtimes"][0]["checks"]
    # the uint8 graph gets each photo before any resize: its own resize and crop are what is checked
    assert set(photos_check) == {"random-pixels", "real-photos"} and photos_check["real-photos"]["samples"] == 8


def test_an_imported_model_without_photos_says_what_to_pass(run_cli: Cli, cropping_model: Path) -> None:
    result = run_cli("verify", "--artifacts", cropping_model.parent, "--name", "tiny-imported")
    assert result.exit_code == 2
    assert "pass --data-dir with a folder of photos" in result.output and "Traceback" not in result.output
    random_only = run_cli("verify", "--artifacts", cropping_model.parent, "--name", "tiny-imported", "--random-only")
    assert random_only.exit_code == 0, random_only.output


def test_a_corrupt_photo_is_named(run_cli: Cli, cropping_model: Path, tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos", labelled=False)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_cli("verify", "--artifacts", cropping_model.parent, "--name", "tiny-imported", "--data-dir", photos)
    assert result.exit_code == 2 and "broken.jpg" in result.output and "Traceback" not in result.output
