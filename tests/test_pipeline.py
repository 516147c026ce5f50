from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_TRAIN_ARGS, Cli
from vggexport.store.fileio import sha256_file

PIPELINE_ARGS = (*TINY_TRAIN_ARGS, "--max-steps", "8", "--no-serve")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from click.testing import CliRunner

    from vggexport.cli import cli

    root = tmp_path_factory.mktemp("pipeline")
    result = CliRunner().invoke(cli, ["pipeline", *PIPELINE_ARGS, "--artifacts", str(root)])
    assert result.exit_code == 0, result.output
    return root / "vgg11_bn", result.output


def test_pipeline_runs_every_stage_and_smoke_tests(pipeline_run: tuple[Path, str]) -> None:
    folder, output = pipeline_run
    for stage in ("stage 1/5: train", "stage 2/5: export", "stage 3/5: verify", "stage 4/5: report",
                  "stage 5/5: serve"):
        assert stage in output
    assert (folder / "report.html").is_file()
    assert "smoke request to a short-lived server: vgg11_bn answered" in output


def test_manifest_checksums_match_the_files(pipeline_run: tuple[Path, str]) -> None:
    folder, _ = pipeline_run
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "model.onnx", "model.torchscript.pt",
                 "parity.json", "report.html"):
        entry = manifest["artifacts"][name]
        assert entry["sha256"] == sha256_file(folder / name) and entry["size"] == (folder / name).stat().st_size
    for name in ("best.pt", "model.onnx", "parity.json"):  # each artifact keeps the versions that made it
        assert {"torch", "onnx", "vggexport", "python"} <= set(manifest["artifacts"][name]["versions"])
    assert manifest["model_config"]["cfg"] == "A" and manifest["train_config"]["max_steps"] == 8
    assert manifest["dataset"]["name"] == "synthetic" and manifest["parity"]["passed"]
    assert set(manifest["stages"]) == {"train", "export", "verify", "report"}


def test_rerun_skips_up_to_date_stages(run_cli: Cli, pipeline_run: tuple[Path, str]) -> None:
    folder, _ = pipeline_run
    result = run_cli("pipeline", *PIPELINE_ARGS, "--artifacts", folder.parent)
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date") == 4


def test_tampered_onnx_is_refused_by_verify_and_serve(run_cli: Cli, pipeline_run: tuple[Path, str],
                                                       tmp_path: Path) -> None:
    import shutil

    from tests.serve_process import ServerProcess

    copy = tmp_path / "vgg11_bn"
    shutil.copytree(pipeline_run[0], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    (copy / "model.onnx").write_bytes(bytes(data))
    result = run_cli("verify", "--artifacts", tmp_path, "--random-only")
    assert result.exit_code == 1 and "has changed since vggexport wrote it" in result.output
    server = ServerProcess(copy / "model.onnx")
    assert server.process.wait(timeout=60) == 1
    assert "has changed since vggexport wrote it" in (server.process.stdout.read() if server.process.stdout else "")
    rerun = run_cli("pipeline", *PIPELINE_ARGS, "--artifacts", tmp_path)
    assert rerun.exit_code == 1 and "has changed" in rerun.output


def test_tampered_checkpoint_is_refused_by_export(run_cli: Cli, pipeline_run: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "vgg11_bn"
    shutil.copytree(pipeline_run[0], copy)
    with open(copy / "best.pt", "ab") as handle:
        handle.write(b"\x00")
    for command in ("onnx", "torchscript"):
        result = run_cli(command, "--artifacts", tmp_path)
        assert result.exit_code == 1 and "best.pt has changed" in result.output


def test_pipeline_sign_key_signs_after_verify_and_the_report_shows_it(pipeline_run: tuple[Path, str],
                                                                      tmp_path: Path) -> None:
    import shutil

    from tests.signed_folders import write_key_pair
    from vggexport.store.signature import fingerprint, load_public_key

    folder = Path(shutil.copytree(pipeline_run[0], tmp_path / "vgg11_bn"))
    key, public = write_key_pair(tmp_path, "key")
    result = Cli()("pipeline", *PIPELINE_ARGS, "--artifacts", tmp_path, "--sign-key", key)
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date") == 3  # train, export, verify; the report shows the new signature
    assert Cli()("verify-signature", public, folder).exit_code == 0
    assert fingerprint(load_public_key(public)) in (folder / "report.html").read_text()
