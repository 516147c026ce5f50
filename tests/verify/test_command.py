from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.broken_models import BREAKERS, EXPECTED, broken_copy
from tests.conftest import Cli, Exported
from vggexport.checkpoint import load_checkpoint, save_checkpoint
from vggexport.data.load import load_dataset
from vggexport.store.fileio import sha256_file
from vggexport.export.spec import ExportSpec
from vggexport.transforms import preprocess
from vggexport.verify.run import assert_parity

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported_artifacts(exported_tiny: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny trained model's exports, the preprocessing variant included (verify writes
    parity.json, and tests here break files)."""
    root = tmp_path_factory.mktemp("verify")
    shutil.copytree(exported_tiny.folder, root / "vgg11_bn")
    return root


@pytest.fixture(scope="module")
def verified(exported_artifacts: Path) -> tuple[Path, str]:
    from click.testing import CliRunner

    from vggexport.cli import cli

    result = CliRunner().invoke(cli, ["verify", "--artifacts", str(exported_artifacts)])
    said = result.output if result.exit_code == 0 else f"exit {result.exit_code}: {result.output}"
    return exported_artifacts / "vgg11_bn", said


def test_verify_checks_every_artifact_and_records_each_file(verified: tuple[Path, str]) -> None:
    folder, output = verified
    assert "all runtimes agree" in output, output
    record = json.loads((folder / "parity.json").read_text())
    assert record["passed"] and record["checkpoint"]["sha256"] == sha256_file(folder / "best.pt")
    assert set(record["files"]) == {"model.onnx", "model.preprocessing.onnx", "model.torchscript.pt", "model.pt2"}
    for name, entry in record["files"].items():
        assert entry["sha256"] == sha256_file(folder / name) and entry["passed"], name
    onnx_real = record["files"]["model.onnx"]["runtimes"][0]["checks"]["real"]
    assert onnx_real["samples"] == 512 and onnx_real["top1_agreement"] == 1.0 and onnx_real["nonfinite"] == 0
    assert onnx_real["accuracy"] == onnx_real["reference_accuracy"]
    assert 0 <= onnx_real["median_abs"] <= onnx_real["p99_abs"] <= onnx_real["max_abs"] < 1e-4
    assert onnx_real["mean_abs"] > 0, "a real comparison of two runtimes differs somewhere in float32"


def test_preprocessing_variant_is_verified_through_its_uint8_input(verified: tuple[Path, str]) -> None:
    folder, _ = verified
    entry = json.loads((folder / "parity.json").read_text())["files"]["model.preprocessing.onnx"]
    assert entry["takes_pixels"] is True
    checks = entry["runtimes"][0]["checks"]
    # random float tensors cannot be pixels: it gets random uint8 images of an odd size and the real images
    assert set(checks) == {"random-pixels", "real"}
    assert checks["real"]["samples"] == 512 and checks["real"]["top1_agreement"] == 1.0


def test_manifest_keeps_each_artifacts_own_versions(verified: tuple[Path, str]) -> None:
    folder, _ = verified
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "versions" not in manifest
    for name in ("best.pt", "model.onnx", "parity.json"):
        assert {"vggexport", "torch", "python"} <= set(manifest["artifacts"][name]["versions"]), name


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_a_broken_copy_is_refused(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path, breaker: str) -> None:
    folder, _ = verified
    broken = broken_copy(folder / "model.onnx", tmp_path / f"{breaker}.onnx", BREAKERS[breaker])
    result = run_cli("verify", "--artifacts", folder.parent, "--model", broken)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "parity FAILED" in result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    entry = report["files"][broken.name]
    assert not entry["passed"]
    failures = [f for r in entry["runtimes"] for f in r["failures"] + [r["error"] or ""]]
    assert any(EXPECTED[breaker] in f for f in failures), failures  # caught by the check that names the fault


def test_failures_name_what_is_wrong(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = verified
    expected = {"all-nan": "non-finite values (NaN or Inf)", "swapped-class-names": "'class_names' is",
                "wrong-mean": "'mean' is", "altered-weights": "values outside atol"}
    for breaker, phrase in expected.items():
        broken = broken_copy(folder / "model.onnx", tmp_path / f"{breaker}.onnx", BREAKERS[breaker])
        result = run_cli("verify", "--artifacts", folder.parent, "--model", broken, "--random-only")
        assert result.exit_code == 1 and phrase in result.output, (breaker, result.output)
        assert "onnxruntime-cpu" in result.output


def test_a_faithful_copy_is_accepted(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = verified
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(folder / "model.onnx", copy)
    result = run_cli("verify", "--artifacts", folder.parent, "--model", copy)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "parity.json").read_text())["files"]["copy.onnx"]["passed"]


def test_save_failures_writes_the_evidence(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = verified
    broken = broken_copy(folder / "model.onnx", tmp_path / "nan.onnx", BREAKERS["all-nan"])
    result = run_cli("verify", "--artifacts", folder.parent, "--model", broken, "--random-only",
                     "--save-failures", tmp_path / "evidence")
    assert result.exit_code == 1
    saved = np.load(tmp_path / "evidence" / "nan.onnx-onnxruntime-cpu-random-b7.npz")
    assert saved["inputs"].shape == (7, 1, 32, 32) and saved["reference"].shape == saved["candidate"].shape == (7, 10)
    assert np.isnan(saved["candidate"]).all() and np.isfinite(saved["reference"]).all()


def test_a_runtime_error_is_that_runtimes_failure(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    """An ONNX that ORT loads but cannot run at batch 7: ORT's own exception is reported, not raised."""
    import onnx

    folder, _ = verified
    proto = onnx.load(str(folder / "model.onnx"))
    output = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [f"{output}_free" if o == output else o for o in node.output]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 10], np.int64), "fixed_shape"))
    proto.graph.node.append(onnx.helper.make_node("Reshape", [f"{output}_free", "fixed_shape"], [output]))
    onnx.save(proto, str(tmp_path / "batch1.onnx"))
    result = run_cli("verify", "--artifacts", folder.parent, "--model", tmp_path / "batch1.onnx", "--random-only")
    assert result.exit_code == 1 and "Traceback" not in result.output
    runtime = json.loads((tmp_path / "parity.json").read_text())["files"]["batch1.onnx"]["runtimes"][0]
    assert "[ONNXRuntimeError]" in runtime["error"] and "Reshape" in runtime["error"], runtime["error"]


def test_a_non_finite_reference_is_an_error_of_its_own(run_cli: Cli, verified: tuple[Path, str],
                                                       tmp_path: Path) -> None:
    folder, _ = verified
    ckpt = load_checkpoint(folder / "best.pt")
    state = dict(ckpt.payload)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    last = [k for k in state["model"] if k.endswith("weight")][-1]
    state["model"][last].fill_(float("nan"))
    bad = save_checkpoint(tmp_path / "nan.pt", model_config=ckpt.model_config,
                          state={k: v for k, v in state.items() if k not in ("model_config", "format")})
    result = run_cli("verify", "--artifacts", folder.parent, "--checkpoint", bad, "--random-only")
    assert result.exit_code == 1
    assert "reference itself produced" in result.output and "non-finite" in result.output


@pytest.mark.parametrize(("args", "phrase"), [
    (["--model", "nowhere.onnx"], "no file at"),
    (["--model", "README.md"], "cannot tell how to run"),
    (["--checkpoint", "missing.pt"], "no checkpoint at"),
])
def test_usage_errors_exit_2(run_cli: Cli, verified: tuple[Path, str], args: list[str], phrase: str) -> None:
    folder, _ = verified
    if "README.md" in args:
        args = ["--model", str(ROOT / "README.md")]
    result = run_cli("verify", "--artifacts", folder.parent, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and phrase in lines[-1] and "Traceback" not in result.output


def test_nothing_to_verify_exits_2(run_cli: Cli, trained_artifacts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    shutil.copyfile(trained_artifacts / "vgg11_bn" / "best.pt", folder / "best.pt")
    result = run_cli("verify", "--artifacts", tmp_path, "--random-only")
    assert result.exit_code == 2 and "run `vggexport export` first" in result.output


def test_records_merge_and_a_new_checkpoint_makes_them_stale(run_cli: Cli, verified: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    folder, _ = verified
    copy = tmp_path / "vgg11_bn"
    shutil.copytree(folder, copy)
    (copy / "parity.json").unlink()
    for name in ("model.onnx", "model.torchscript.pt"):
        assert run_cli("verify", "--artifacts", tmp_path, "--model", copy / name, "--random-only").exit_code == 0
    assert set(json.loads((copy / "parity.json").read_text())["files"]) == {"model.onnx", "model.torchscript.pt"}
    retrained = save_checkpoint(tmp_path / "other.pt", model_config=load_checkpoint(copy / "best.pt").model_config,
                                state={"model": load_checkpoint(copy / "best.pt").payload["model"]})
    result = run_cli("verify", "--artifacts", tmp_path, "--checkpoint", retrained, "--model", copy / "model.onnx",
                     "--random-only")
    assert result.exit_code == 1 and "'checkpoint_sha256' is" in result.output
    assert set(json.loads((copy / "parity.json").read_text())["files"]) == {"model.onnx"}


@pytest.mark.realdata
def test_assert_parity_on_real_images(verified: tuple[Path, str], real_data_dir: Path) -> None:
    """How users put our parity check in their own pytest suites."""
    folder, _ = verified
    ckpt = load_checkpoint(folder / "best.pt")
    data = load_dataset("fashion-mnist", real_data_dir)
    config = ckpt.model_config
    inputs = preprocess(data.test_images[:500], image_size=config.image_size, mean=config.mean, std=config.std)
    report = assert_parity(ckpt.path, folder / "model.onnx", inputs.numpy(),
                           labels=data.test_labels[:500].numpy(), spec=ExportSpec())
    assert report.runtimes[1].checks["real"].top1_agreement == 1.0


def test_assert_parity_refuses_nan(verified: tuple[Path, str], tmp_path: Path) -> None:
    from vggexport.verify.run import ParityError

    folder, _ = verified
    broken = broken_copy(folder / "model.onnx", tmp_path / "nan.onnx", BREAKERS["all-nan"])
    with pytest.raises(ParityError, match="non-finite"):
        assert_parity(folder / "best.pt", broken, input_shape=(1, 32, 32))


@pytest.mark.realdata
def test_embedding_without_torch(verified: tuple[Path, str], real_data_dir: Path, tmp_path: Path) -> None:
    folder, _ = verified
    ckpt = load_checkpoint(folder / "best.pt")
    data = load_dataset("fashion-mnist", real_data_dir)
    images = data.test_images[:64]
    np.save(tmp_path / "images.npy", images[:, 0].numpy())
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "embed_onnx.py"), str(folder / "model.onnx"),
                          str(tmp_path / "images.npy")], capture_output=True, text=True, check=True)
    predicted = [json.loads(line)["index"] for line in out.stdout.splitlines()]
    config = ckpt.model_config
    with torch.no_grad():
        ours = ckpt.build_model()(preprocess(images, image_size=32, mean=config.mean, std=config.std)).argmax(1)
    assert predicted == ours.tolist()


def test_variants_are_judged_by_accuracy(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    """A faithful fp16 passes; an int8 calibrated on constant images (deliberately bad) is refused."""
    folder, _ = verified
    copy = tmp_path / "vgg11_bn"
    shutil.copytree(folder, copy)
    assert run_cli("onnx", "--artifacts", tmp_path, "--precision", "fp16").exit_code == 0
    assert run_cli("onnx", "--artifacts", tmp_path, "--precision", "int8", "--calibration-images", "constant",
                   "--calibration-samples", "64").exit_code == 0
    result = run_cli("verify", "--artifacts", tmp_path, "--model", copy / "model.fp16.onnx",
                     "--model", copy / "model.int8.onnx")
    assert result.exit_code == 1, result.output
    files = json.loads((copy / "parity.json").read_text())["files"]
    assert files["model.fp16.onnx"]["passed"] and files["model.fp16.onnx"]["precision"] == "fp16"
    int8 = files["model.int8.onnx"]
    assert not int8["passed"] and all("int8" in f for f in int8["runtimes"][0]["failures"])
    assert not any("atol" in f for f in int8["runtimes"][0]["failures"]), "variants are not judged elementwise"


def test_an_fp32_file_claiming_int8_is_refused(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    from tests.broken_models import set_metadata

    folder, _ = verified
    claim = broken_copy(folder / "model.onnx", tmp_path / "claims-int8.onnx", set_metadata("precision", str))
    import onnx

    proto = onnx.load(str(claim))
    proto.metadata_props.add(key="precision", value="int8")
    onnx.save(proto, str(claim))
    result = run_cli("verify", "--artifacts", folder.parent, "--model", claim)
    assert result.exit_code == 1 and "conv/linear weights are not int8" in result.output


def test_random_only_cannot_verify_a_variant(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = verified
    copy = tmp_path / "vgg11_bn"
    shutil.copytree(folder, copy)
    assert run_cli("onnx", "--artifacts", tmp_path, "--precision", "fp16").exit_code == 0
    result = run_cli("verify", "--artifacts", tmp_path, "--model", copy / "model.fp16.onnx", "--random-only")
    assert result.exit_code == 2 and "judged by accuracy on real data" in result.output


def test_weights_in_an_external_file_are_refused(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path) -> None:
    """The recorded sha256 would cover the .onnx but not the weights ONNX Runtime reads from beside it."""
    import onnx

    folder, _ = verified
    proto = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(proto, str(tmp_path / "external.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=1024)
    result = run_cli("verify", "--artifacts", folder.parent, "--model", tmp_path / "external.onnx", "--random-only")
    assert result.exit_code == 1 and "external data" in result.output


def test_torchscript_metadata_that_is_not_an_object_is_a_failure(run_cli: Cli, verified: tuple[Path, str],
                                                                  tmp_path: Path) -> None:
    import warnings

    folder, _ = verified
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(folder / "model.torchscript.pt"))
        torch.jit.save(module, str(tmp_path / "odd.torchscript.pt"),
                       _extra_files={"metadata.json": "[]", "model_config.json": "{}"})
    result = run_cli("verify", "--artifacts", folder.parent, "--model", tmp_path / "odd.torchscript.pt",
                     "--random-only")
    assert result.exit_code == 1 and "Traceback" not in result.output and "not an object of strings" in result.output


def test_the_random_seed_is_drawn_per_run_and_recorded(run_cli: Cli, verified: tuple[Path, str],
                                                       tmp_path: Path) -> None:
    folder, _ = verified
    seeds = set()
    for _ in range(2):
        assert run_cli("verify", "--artifacts", folder.parent, "--model", folder / "model.onnx", "--random-only",
                       "--report", tmp_path / "run.json").exit_code == 0
        seeds.add(json.loads((tmp_path / "run.json").read_text())["random_seed"])
    assert len(seeds) == 2, "a graph must not be able to recognise fixed random inputs"


@pytest.mark.parametrize("on_disk_first, swapped_in, passes", [("broken", "good", False), ("good", "broken", True)])
def test_the_bytes_hashed_are_the_bytes_run(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, on_disk_first: str, swapped_in: str,
                                            passes: bool) -> None:
    """The file is swapped on disk right after verify read it: the verdict and the recorded sha256 are both
    those of the bytes read. (Reading the path again to run it passed a broken file's sha256 when a good
    file was swapped in between: the gate would then have shipped the broken file as verified.)"""
    from vggexport.verify import command as verification

    folder, _ = verified
    files = {"good": shutil.copyfile(folder / "model.onnx", tmp_path / "good.onnx"),
             "broken": broken_copy(folder / "model.onnx", tmp_path / "broken.onnx", BREAKERS["altered-weights"])}
    target = tmp_path / "vgg11_bn" / "model.onnx"
    target.parent.mkdir()
    shutil.copyfile(files[on_disk_first], target)
    read_sha256 = sha256_file(target)
    inspect = verification.inspect

    def inspect_then_swap(path: Path, *args: object) -> object:
        found = inspect(path, *args)  # type: ignore[arg-type]
        shutil.copyfile(files[swapped_in], path)  # what a second read of the path would now load
        return found

    monkeypatch.setattr(verification, "inspect", inspect_then_swap)
    result = run_cli("verify", "--artifacts", folder.parent, "--model", target, "--random-only")
    assert sha256_file(target) != read_sha256  # the swap happened
    assert result.exit_code == (0 if passes else 1), result.output
    entry = json.loads((target.parent / "parity.json").read_text())["files"]["model.onnx"]
    assert entry["sha256"] == read_sha256 and entry["passed"] is passes
    assert all(r["sha256"] == read_sha256 for r in entry["runtimes"])


@pytest.mark.parametrize("name, content, phrase", [
    ("empty.onnx", b"", "is empty (0 bytes)"),
    ("truncated.onnx", "half", "not a readable ONNX model"),
    ("empty.torchscript.pt", b"", "not a readable archive"),
    ("truncated.pt2", "half", "not a readable archive"),
])
def test_an_empty_or_truncated_file_fails_in_one_line(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path,
                                                      name: str, content: object, phrase: str) -> None:
    folder, _ = verified
    source = folder / {"onnx": "model.onnx", "pt": "model.torchscript.pt", "pt2": "model.pt2"}[name.rsplit(".", 1)[1]]
    data = source.read_bytes()[: source.stat().st_size // 2] if content == "half" else b""
    (tmp_path / name).write_bytes(data)
    result = run_cli("verify", "--artifacts", folder.parent, "--model", tmp_path / name, "--random-only")
    assert result.exit_code == 1 and phrase in result.output and "Traceback" not in result.output, result.output
    entry = json.loads((tmp_path / "parity.json").read_text())["files"][name]
    assert entry["passed"] is False and entry["sha256"] == sha256_file(tmp_path / name)


@pytest.mark.parametrize("case", ["directory", "symlink loop"])
def test_a_path_that_cannot_be_read_is_a_usage_error(run_cli: Cli, verified: tuple[Path, str], tmp_path: Path,
                                                    case: str) -> None:
    """Exit 2 from the CLI; and from inspect itself, should the file turn into one after verify listed it."""
    from tests.backend.test_runners import unreadable
    from vggexport.verify.command import UsageError, inspect

    folder, _ = verified
    path = unreadable(tmp_path, case)
    result = run_cli("verify", "--artifacts", folder.parent, "--model", path, "--random-only")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith("error: ") and "Traceback" not in result.output
    with pytest.raises(UsageError, match="is a directory|cannot read") as caught:
        inspect(path, load_checkpoint(folder / "best.pt"), ExportSpec())
    assert "\n" not in str(caught.value)
