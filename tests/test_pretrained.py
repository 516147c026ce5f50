"""torchvision's ImageNet VGGs through the chain: import, export, the preprocessing graph, serve, embed, fine-tune.

The weights are torchvision's own vgg11_bn with seeded random values saved as torchvision
distributes them (a state_dict .pth): full size, so the import, its exports and the fine-tune checked here
are the files the README section's commands wrote from those weights (the ``torchvision_section`` fixture,
run once per session); only what the section does not do is done here.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import Cli
from tests.serve_process import ServerProcess
from tests.imagenet_photos import CLASSES, PHOTO_SIZES, WEIGHTS, framed_photo, photo_folder
from tests.test_readme_torchvision import SectionRun
from vggexport.checkpoint import load_checkpoint
from vggexport.data.imagefolder import decode_photo, fit_to_model
from vggexport.transforms import normalize

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY_PHOTOS = ((2, (333, 500)), (5, (229, 300)), (0, (300, 229)))  # (seed, size): clear top-1s


@pytest.fixture(scope="module")
def imported(torchvision_section: SectionRun) -> Path:
    """The section's ``vggexport import`` then ``vggexport export --with-preprocessing``: the model folder."""
    return torchvision_section.model_dir("vggexport import")


@pytest.fixture(scope="module")
def fine_tuned(torchvision_section: SectionRun) -> Path:
    """The section's two-step ``vggexport train --init ... --freeze-features`` on its photo folder, exported."""
    return torchvision_section.model_dir("vggexport train")


def stretched_logits(model: torch.nn.Module, path: Path) -> np.ndarray:
    """The model on the photo stretched to 224 x 224: what a server that ignores the crop would answer."""
    transform = WEIGHTS.transforms()
    x = torch.from_numpy(decode_photo(path, "RGB")).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return model(normalize(x, mean=transform.mean, std=transform.std)).numpy()[0]


def margin(logits: np.ndarray) -> float:
    first, second = np.sort(logits)[-2:][::-1]
    return float(first - second)


def torchvision_logits(model: torch.nn.Module, path: Path) -> np.ndarray:
    """torchvision's own pipeline: PIL image, weights.transforms(), the model in eval mode."""
    with Image.open(path) as image, torch.no_grad():
        return model(WEIGHTS.transforms()(image.convert("RGB")).unsqueeze(0)).numpy()[0]


@pytest.mark.slow
def test_onnx_reproduces_torchvision(imported: Path, torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    model = torchvision_vgg[1]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(imported / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-3)
    assert (got.argmax(1) == expected.argmax(1)).all()
    with torch.no_grad():  # the checkpoint rebuilds torchvision's model exactly
        torch.testing.assert_close(load_checkpoint(imported / "best.pt").build_model()(x).numpy(), expected)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == WEIGHTS.meta["categories"] and len(WEIGHTS.meta["categories"]) == 1000
    assert (meta["model_name"], meta["resize_size"], meta["crop_size"], meta["color_mode"]) == (imported.name, "256",
                                                                                                 "224", "RGB")
    assert meta["resize_policy"] == "shorter-side-then-center-crop" and meta["interpolation"] == "bilinear"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert json.loads(meta["model_config"])["flip_average"] is False


@pytest.mark.slow
def test_preprocessing_graph_is_torchvisions_eval_transform(imported: Path, tmp_path: Path,
                                                            torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    session = ort.InferenceSession(str(imported / "model.preprocessing.onnx"), providers=["CPUExecutionProvider"])
    decided = 0
    for seed, size in enumerate(PHOTO_SIZES):
        path = framed_photo(tmp_path / f"{seed}.jpg", size, seed)
        expected = torchvision_logits(torchvision_vgg[1], path)
        pixels = decode_photo(path, "RGB").transpose(2, 0, 1)[None].copy()
        got = session.run(None, {"input": pixels})[0][0]
        # PIL resizes in 8-bit fixed point, the graph in float: the logits differ by that rounding only.
        difference = float(np.abs(got - expected).max())
        assert difference < 0.03 * float(np.abs(expected).max()), f"{size}: {difference}"
        if margin(expected) > 2 * difference:  # a near-tie would be decided by rounding, not by the policy
            decided += 1
            assert int(got.argmax()) == int(expected.argmax()), size
    assert decided >= len(PHOTO_SIZES) - 2


@pytest.mark.slow
def test_classify_gives_torchvisions_top1(imported: Path, tmp_path: Path,
                                          torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    model = torchvision_vgg[1]
    photos = [framed_photo(tmp_path / f"{seed}.jpg", size, seed) for seed, size in CLASSIFY_PHOTOS]
    expected = [torchvision_logits(model, p) for p in photos]
    assert min(margin(e) for e in expected) > 0.0035, "near-ties: pick other photos"
    # The check can fail: stretching instead of torchvision's resize and crop changes a top-1 here.
    assert any(stretched_logits(model, p).argmax() != e.argmax() for p, e in zip(photos, expected))
    server = ServerProcess(imported / "model.onnx", "--provider", "cpu").wait_ready()
    try:
        for path, logits in zip(photos, expected):
            response = httpx.post(f"{server.url}/v2/models/{imported.name}/classify?top_k=5",
                                  content=path.read_bytes(), timeout=60)
            assert response.status_code == 200, response.text
            top = response.json()["predictions"][0]
            best = int(logits.argmax())
            assert (top["index"], top["label"]) == (best, WEIGHTS.meta["categories"][best]), path.name
    finally:
        server.stop()


@pytest.mark.slow
def test_embedding_tool_follows_the_metadata(imported: Path, tmp_path: Path,
                                             torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    paths = [framed_photo(tmp_path / f"{seed}.jpg", size, seed) for seed, size in CLASSIFY_PHOTOS]
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "embed_onnx.py"), str(imported / "model.onnx"),
                             *map(str, paths)], capture_output=True, text=True, timeout=300, check=True)
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [int(torchvision_logits(torchvision_vgg[1], p).argmax()) for p in paths]
    assert [a["index"] for a in answers] == expected
    assert [a["label"] for a in answers] == [WEIGHTS.meta["categories"][i] for i in expected]


# Hostile inputs: one line, an exit code, nothing written.

def small_state(value: float = 0.0) -> dict[str, torch.Tensor]:
    """vgg11_bn's keys with tiny tensors: the right names, the wrong shapes."""
    with torch.device("meta"):
        keys = list(torchvision.models.vgg11_bn().state_dict())
    return {k: torch.full((2,), value) for k in keys}


class Pickled:
    pass


def hostile_weights(case: str, folder: Path, real: Path) -> tuple[str, Path | str]:
    """(source, weights) for each way an import can be wrong."""
    path = folder / f"{case}.pth"
    if case == "truncated":
        torch.save(small_state(), path)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "module pickle":
        torch.save(torch.nn.Linear(2, 2), path)
    elif case == "plain pickle":
        path.write_bytes(pickle.dumps(Pickled()))
    elif case == "not tensors":
        torch.save({"epoch": 3, "note": "a training log"}, path)
    elif case == "wrong shapes":
        torch.save(small_state(), path)
    elif case == "nan":
        torch.save(small_state(float("nan")), path)
    sources = {"vgg11 weights as vgg16_bn": "torchvision:vgg16_bn", "bn weights as plain vgg11": "torchvision:vgg11",
               "unknown model": "torchvision:vgg12", "other family": "torchvision:resnet18",
               "no prefix": "vgg11_bn"}
    if case in sources:
        return sources[case], real
    if case == "missing":
        return "torchvision:vgg11_bn", folder / "nothing.pth"
    if case == "download offline":
        return "torchvision:vgg11_bn", "DEFAULT"
    return "torchvision:vgg11_bn", path


EXPECTED = {"missing": "no weights file", "truncated": "truncated", "empty": "truncated",
            "module pickle": "weights_only", "plain pickle": "weights_only", "not tensors": "not a state_dict",
            "wrong shapes": "(expected (64, 3, 3, 3))", "nan": "NaN",
            "vgg11 weights as vgg16_bn": "they are vgg11_bn's", "bn weights as plain vgg11": "vgg11_bn's",
            "unknown model": "unknown model 'torchvision:vgg12'",
            "other family": "unknown model 'torchvision:resnet18'", "no prefix": "unknown model 'vgg11_bn'",
            "download offline": "VGGEXPORT_OFFLINE"}
HOSTILE = ("missing", "truncated", "empty", "module pickle", "plain pickle", "not tensors", "wrong shapes", "nan",
           "vgg11 weights as vgg16_bn", "bn weights as plain vgg11", "unknown model", "other family", "no prefix",
           "download offline")


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_imports_fail_in_one_line_and_write_nothing(case: str, tmp_path: Path, run_cli: Cli,
                                                           torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    source, weights = hostile_weights(case, tmp_path, torchvision_vgg[0])
    artifacts = tmp_path / "artifacts"
    result = run_cli("import", source, "--weights", weights, "--name", "x", "--artifacts", artifacts)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert EXPECTED[case] in lines[0], lines[0]
    assert not artifacts.exists()


def test_import_refuses_a_bad_name(tmp_path: Path, run_cli: Cli) -> None:
    result = run_cli("import", "torchvision:vgg11_bn", "--weights", tmp_path / "w.pth", "--name", "../up",
                     "--artifacts", tmp_path / "a")
    assert result.exit_code == 1 and "invalid model name" in result.output and not (tmp_path / "a").exists()


# Fine-tuning: vggexport train --init torchvision:vgg11_bn --weights FILE on a folder of photos.


@pytest.mark.slow
def test_fine_tune_two_steps_then_export(fine_tuned: Path, torchvision_section: SectionRun,
                                         torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    photos = torchvision_section.folder / "my_photos"
    ckpt = load_checkpoint(fine_tuned / "best.pt")
    config, state = ckpt.model_config, ckpt.payload["model"]
    assert (config.name, config.class_names, config.image_size, config.resize_size) == (fine_tuned.name, CLASSES,
                                                                                        224, 256)
    assert config.mean == tuple(WEIGHTS.transforms().mean) and ckpt.payload["step"] == 2
    pretrained = torchvision_vgg[1].state_dict()
    for key, _ in torchvision_vgg[1].features.named_parameters():  # frozen: still torchvision's
        assert torch.equal(state[f"features.{key}"], pretrained[f"features.{key}"]), key
    assert not torch.equal(state["classifier.0.weight"], pretrained["classifier.0.weight"])  # trained
    assert state["classifier.6.weight"].shape == (3, 4096)  # replaced for the folder's classes

    model = ckpt.build_model()
    x = torch.randn(2, 3, 224, 224)
    session = ort.InferenceSession(str(fine_tuned / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-4, rtol=1e-3)
    # Served pixels are trained pixels: the graph on a photo equals the model on the photo as training decoded it.
    graph = ort.InferenceSession(str(fine_tuned / "model.preprocessing.onnx"),
                                 providers=["CPUExecutionProvider"])
    pixels = decode_photo(photos / "bee" / "0.jpg", "RGB")
    trained = fit_to_model(pixels, image_size=224, resize_size=256)[None].float() / 255
    with torch.no_grad():
        expected = model(normalize(trained, mean=config.mean, std=config.std)).numpy()
    served = graph.run(None, {"input": pixels.transpose(2, 0, 1)[None].copy()})[0]
    np.testing.assert_allclose(served, expected, atol=0.01 * np.abs(expected).max())


def test_init_loads_all_but_the_last_layer(torchvision_vgg: tuple[Path, torch.nn.Module]) -> None:
    from vggexport.model import ModelConfig, build_model
    from vggexport.training import TrainConfig, finetune

    config = finetune.resolve_train_config(TrainConfig(init="torchvision:vgg11_bn", weights=str(torchvision_vgg[0])))
    assert (config.cfg, config.batch_norm, config.image_size, config.width, config.head) == ("A", True, 224, 1.0, 4096)
    model = build_model(ModelConfig(in_channels=3, num_classes=3, image_size=224, head=4096, mean=(0.5,) * 3,
                                    std=(0.5,) * 3))
    fresh_last = model.classifier[6].weight.clone()
    finetune.initialize(model, config)
    for key, value in torchvision_vgg[1].state_dict().items():
        if not key.startswith("classifier.6."):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.classifier[6].weight, fresh_last)
    assert all(p.requires_grad for p in model.parameters())  # no --freeze-features: everything trains


# Each case names the words of its own refusal: an early failure they all shared would not pass them.
FINE_TUNE_REFUSALS = {
    "no weights": r"--init torchvision:vgg11_bn needs --weights FILE",
    "weights alone": r"--weights and --freeze-features need --init torchvision:NAME",
    "freeze alone": r"--weights and --freeze-features need --init torchvision:NAME",
    "image size": r"--init torchvision:vgg11_bn fixes --image-size 224 and --width 1\.0",
    "unknown model": r"unknown model 'torchvision:vgg12': choose torchvision:NAME",
    "greyscale data": r"--init torchvision:vgg11_bn needs RGB images; synthetic has 1 channel",
    "wrong architecture": r"does not hold torchvision's vgg13_bn weights \(they are vgg11_bn's",
}


@pytest.mark.parametrize("case", list(FINE_TUNE_REFUSALS))
def test_fine_tune_refusals(case: str, torchvision_vgg: tuple[Path, torch.nn.Module], tmp_path: Path,
                            run_cli: Cli) -> None:
    init, weights = ["--init", "torchvision:vgg11_bn"], ["--weights", str(torchvision_vgg[0])]
    extra = {"no weights": init, "weights alone": weights, "freeze alone": ["--freeze-features"],
             "image size": [*init, *weights, "--image-size", "32"],
             "unknown model": ["--init", "torchvision:vgg12", *weights],
             "greyscale data": [*init, *weights, "--dataset", "synthetic"],
             "wrong architecture": ["--init", "torchvision:vgg13_bn", *weights]}[case]
    dataset = [] if case == "greyscale data" else ["--dataset", "imagefolder", "--data-dir",
                                                   photo_folder(tmp_path / "photos")]
    result = run_cli("train", *dataset, *extra, "--artifacts", tmp_path / "artifacts", "--max-steps", "1",
                     "--batch-size", "4", "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(r"error: .*" + FINE_TUNE_REFUSALS[case], lines[0]), result.output
    assert not list((tmp_path / "artifacts").rglob("*.pt"))


def test_files_without_batch_norm_counters_import(torchvision_vgg: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                  run_cli: Cli) -> None:
    """torchvision's published _bn files predate num_batches_tracked; they must import as torchvision loads them."""
    state = {k: v for k, v in torchvision_vgg[1].state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "legacy.pth")
    result = run_cli("import", "torchvision:vgg11_bn", "--weights", tmp_path / "legacy.pth", "--artifacts", tmp_path)
    assert result.exit_code == 0, result.output
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "vgg11_bn" / "best.pt").build_model()(x),
                                   torchvision_vgg[1](x))


@pytest.fixture(scope="module")
def imported_alone(torchvision_vgg: tuple[Path, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vggexport import`` then ``vggexport onnx --with-preprocessing`` only: ``pytest -m gpu`` runs within a
    device-time budget that the whole README section (``imported``) would not fit."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    cli = Cli()
    result = cli("import", "torchvision:vgg11_bn", "--weights", torchvision_vgg[0], "--name", "imagenet-vgg11",
                 "--artifacts", artifacts)
    assert result.exit_code == 0, result.output
    result = cli("onnx", "--name", "imagenet-vgg11", "--artifacts", artifacts, "--with-preprocessing")
    assert result.exit_code == 0, result.output
    return artifacts / "imagenet-vgg11"


@pytest.mark.gpu
def test_graphs_on_cuda_match_the_cpu(imported_alone: Path, tmp_path: Path) -> None:
    """ORT's CUDA provider runs the antialiased Resize and the crop as the CPU does."""
    imported = imported_alone
    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}
    for graph in ("model.preprocessing.onnx", "model.onnx"):
        sessions = {k: ort.InferenceSession(str(imported / graph), providers=p) for k, p in providers.items()}
        assert sessions["cuda"].get_providers()[0] == "CUDAExecutionProvider"
        if graph == "model.onnx":
            feeds = [np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)]
        else:
            feeds = [decode_photo(framed_photo(tmp_path / f"{i}.jpg", size, i), "RGB").transpose(2, 0, 1)[None].copy()
                     for i, size in enumerate(PHOTO_SIZES)]
        for x in feeds:
            cpu, cuda = (sessions[k].run(None, {"input": x})[0] for k in ("cpu", "cuda"))
            np.testing.assert_allclose(cuda, cpu, atol=5e-3 * np.abs(cpu).max(), rtol=1e-2)
            assert (cuda.argmax(1) == cpu.argmax(1)).all()
