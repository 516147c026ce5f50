"""`vggexport report`: a self-contained HTML file about a tiny trained, exported and verified model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.browser.chromium import (  # the browser fixture comes through pytest_plugins (tests/conftest.py)
    assert_not_uniform,
    broken_images,
    overflows_horizontally,
    save_screenshot,
    watched_page,
)
from tests.conftest import TINY_TRAIN_ARGS, Cli
from vggexport.report import ReportConfig, build_report
from vggexport.report.curves import split_series
from vggexport.report.parity_table import parity_rows

SECTIONS = ("card", "curves", "confusion", "per-class", "mistakes", "parity", "speed", "provenance")
SAMPLES = 128


@pytest.fixture(scope="module")
def imperfect_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model of its own, trained one epoch, exported and verified: unlike the shared trained model
    (which scores 1.0), it still makes mistakes for the report's gallery and confusion matrix to show."""
    from click.testing import CliRunner

    from vggexport.cli import cli

    root = tmp_path_factory.mktemp("report")
    for command in (["train", *TINY_TRAIN_ARGS], ["export"], ["verify", "--samples", str(SAMPLES)]):
        result = CliRunner().invoke(cli, [*command, "--artifacts", str(root)])
        assert result.exit_code == 0, result.output
    return root / "vgg11_bn"


@pytest.fixture(scope="module")
def report(imperfect_folder: Path) -> Path:
    return build_report(ReportConfig(folder=imperfect_folder, samples=SAMPLES, mistakes=6, bench_seconds=0.1))


def references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.IGNORECASE)


def test_report_is_one_self_contained_file_with_every_section(report: Path) -> None:
    html = report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}"' in html, section
    assert not re.search(r"https?://", html), "the report must not reference the network"
    refs = references(html)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
    assert "<link" not in html and "<script" not in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 3 + 6  # curves, confusion, speed, gallery


def test_report_numbers_match_the_model(report: Path, imperfect_folder: Path) -> None:
    parity = json.loads((imperfect_folder / "parity.json").read_text())
    reference = next(r["checks"]["real"]["reference_accuracy"] for entry in parity["files"].values()
                     for r in entry["runtimes"] if "real" in r.get("checks", {}))
    html = report.read_text()
    # The same images, the same model: the report's accuracy is verify's reference accuracy.
    assert f"accuracy <b>{reference:.4f}</b>" in html
    assert f"of {SAMPLES:,})" in html
    for runtime in ("pytorch", "torchscript", "onnxruntime-cpu"):
        assert re.search(rf"<td>{runtime}</td><td>[^<]+</td><td>[^<]+</td><td class=\"num\">64</td>", html), runtime
    manifest = json.loads((imperfect_folder / "manifest.json").read_text())
    for name in ("best.pt", "model.onnx", "model.torchscript.pt", "parity.json"):
        assert manifest["artifacts"][name]["sha256"] in html, name
    assert manifest["artifacts"]["report.html"]["sha256"]  # the report itself is recorded


def test_evaluation_counts_every_image_and_keeps_the_surest_mistakes(imperfect_folder: Path) -> None:
    from vggexport.checkpoint import load_checkpoint
    from vggexport.report.evaluation import evaluate_test_set

    ckpt = load_checkpoint(imperfect_folder / "best.pt")
    full = evaluate_test_set(ckpt, data_dir=None, samples=None, keep_mistakes=5, batch_size=100)
    assert full.samples == 512 and full.confusion.shape == (10, 10)
    assert full.accuracy == pytest.approx(ckpt.metrics["test_accuracy"], abs=1e-9)  # training's own number
    confidences = [m.confidence for m in full.mistakes]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert all(m.true != m.predicted and m.pixels.shape == (32, 32, 1) and m.pixels.dtype == np.uint8
               for m in full.mistakes)
    # Batching must not change which mistakes are kept.
    one_batch = evaluate_test_set(ckpt, data_dir=None, samples=None, keep_mistakes=5, batch_size=512)
    assert [m.index for m in one_batch.mistakes] == [m.index for m in full.mistakes]


def test_cli_report_without_bench(run_cli: Cli, imperfect_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = run_cli("report", "--artifacts", imperfect_folder.parent, "--samples", 32, "--no-bench", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "data: synthetic data (generated)\n" in result.output
    html = out.read_text()
    assert "Not measured (--no-bench)" in html and "of 32)" in html


def test_missing_checkpoint_is_a_one_line_error(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("report", "--artifacts", tmp_path, "--name", "nothing_here")
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: no checkpoint at")
    assert not (tmp_path / "nothing_here" / "report.html").exists()


def test_truncated_checkpoint_is_a_one_line_error(run_cli: Cli, imperfect_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    (folder / "best.pt").write_bytes((imperfect_folder / "best.pt").read_bytes()[:1000])
    result = run_cli("report", "--artifacts", tmp_path)
    assert result.exit_code != 0 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not (folder / "report.html").exists()


@pytest.mark.parametrize("args, message", [(("--samples", "0"), "--samples"), (("--bench-seconds", "nan"), "nan"),
                                           (("--bench-seconds", "1e9"), "--bench-seconds"),
                                           (("--mistakes", "-1"), "--mistakes")])
def test_bad_options_are_refused(run_cli: Cli, imperfect_folder: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("report", "--artifacts", imperfect_folder.parent, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_more_samples_than_the_test_split_uses_all_of_it(imperfect_folder: Path, tmp_path: Path) -> None:
    html = build_report(ReportConfig(folder=imperfect_folder, samples=10**9, bench=False, mistakes=0,
                                     out=str(tmp_path / "r.html"))).read_text()
    assert "of 512)" in html and "No mistakes" not in html.split('id="mistakes"')[0]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_name_must_be_a_plain_folder(run_cli: Cli, tmp_path: Path, name: str) -> None:
    result = run_cli("report", "--artifacts", tmp_path, "--name", name)
    assert result.exit_code != 0 and "--name" in result.output and result.output.count("\n") == 1


def test_card_says_which_epoch_the_shipped_weights_are_from(report: Path, imperfect_folder: Path) -> None:
    from vggexport.checkpoint import load_checkpoint

    payload = load_checkpoint(imperfect_folder / "best.pt").payload
    html = report.read_text()
    assert payload["selected_epoch"] == 1  # best.pt records the shipped weights' epoch as selected_epoch
    assert f"best.pt, saved after epoch 1, step {payload['selected_step']}</td>" in html and "epoch ?" not in html


def test_card_leaves_an_unknown_epoch_out(tmp_path: Path) -> None:
    """A checkpoint that records no epoch or step (an import, an old file): its name alone, no "?"."""
    from tests.conftest import tiny_config
    from vggexport.checkpoint import load_checkpoint, save_checkpoint
    from vggexport.model import VGG
    from vggexport.report.card import card_section

    config = tiny_config()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "best.pt", model_config=config,
                                           state={"model": VGG(config).state_dict()}))
    html = card_section(ckpt, {}, [], parameters=1, test_accuracy=None).body
    assert "<th>Checkpoint</th><td>best.pt</td>" in html and "saved after" not in html and "?" not in html
    last = load_checkpoint(save_checkpoint(tmp_path / "last.pt", model_config=config,
                                           state={"model": VGG(config).state_dict(), "epoch": 3, "step": 96}))
    assert "<td>last.pt, saved after epoch 3, step 96</td>" in card_section(last, {}, [], 1, None).body


def test_missing_pieces_become_notes(imperfect_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    shutil.copy(imperfect_folder / "best.pt", folder / "best.pt")  # no manifest, metrics, exports or parity
    html = build_report(ReportConfig(folder=folder, samples=16, bench=False)).read_text()
    assert "No metrics.jsonl" in html and "No parity.json: not verified" in html
    assert "No exported artifact and no parity result" in html and "No manifest.json" in html
    assert "of 16)" in html  # the test set still runs


@pytest.mark.parametrize("parity_text, metrics_text", [
    ("{not json", '{"epoch": 1, "train_loss": 1.0}\n{broken'),
    ("[1, 2, 3]", ""),
    ('{"runtimes": "oops", "files": [1, null, {"checks": [7]}]}', '{"epoch": "x", "test_accuracy": NaN}\n'),
    ('{"files": {"model.onnx": {"verdict": 3, "checks": {"real": {"accuracy": "high", "max_abs": Infinity}}}}}',
     "[]\n"),
])
def test_hostile_parity_and_metrics_files_do_not_crash(imperfect_folder: Path, tmp_path: Path, parity_text: str,
                                                       metrics_text: str) -> None:
    folder = tmp_path / "hostile"
    shutil.copytree(imperfect_folder, folder)
    (folder / "parity.json").write_text(parity_text)
    (folder / "metrics.jsonl").write_text(metrics_text)
    html = build_report(ReportConfig(folder=folder, samples=8, bench=False)).read_text()
    assert all(f'<section id="{s}"' in html for s in SECTIONS)
    assert "Traceback" not in html


def test_unreadable_test_data_is_a_note(imperfect_folder: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from vggexport.checkpoint import load_checkpoint, save_checkpoint
    from vggexport.model import ModelConfig

    ckpt = load_checkpoint(imperfect_folder / "best.pt")
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    config = ModelConfig.from_dict({**ckpt.model_config.to_dict(), "dataset": "mnist"})
    state = {k: v for k, v in ckpt.payload.items() if k not in ("format", "format_version", "vggexport_version",
                                                                 "model_config")}
    save_checkpoint(folder / "best.pt", model_config=config, state=state)
    monkeypatch.setenv("VGGEXPORT_OFFLINE", "1")
    html = build_report(ReportConfig(folder=folder, data_dir=str(tmp_path / "empty"), bench=False)).read_text()
    assert "No test-set evaluation:" in html and "mnist" in html


def test_benchmark_reports_a_broken_runtime_as_a_row(imperfect_folder: Path, tmp_path: Path) -> None:
    from vggexport.checkpoint import load_checkpoint
    from vggexport.report.bench import measure

    folder = tmp_path / "bench"
    shutil.copytree(imperfect_folder, folder)
    (folder / "model.truncated.onnx").write_bytes((folder / "model.onnx").read_bytes()[:500])
    timings = measure(folder, load_checkpoint(folder / "best.pt"), seconds=0.05)
    by_file = {(t.file, t.batch): t for t in timings}
    assert by_file[("model.truncated.onnx", 1)].error and by_file[("model.truncated.onnx", 64)].error
    for name in ("best.pt", "model.torchscript.pt", "model.onnx"):
        for batch in (1, 64):
            timing = by_file[(name, batch)]
            assert timing.error is None and timing.runs >= 3 and timing.images_per_second > 0


def test_parity_rows_for_every_verified_file_and_unverified_ones() -> None:
    recorded = {"model.onnx": "a" * 64, "model.int8.onnx": "b" * 64, "model.fp16.onnx": "c" * 64,
                "model.pt2": "d" * 64, "best.pt": "e" * 64}
    data = {"passed": False, "files": [
        {"file": "model.onnx", "sha256": "a" * 64, "runtime": "onnxruntime-cpu", "verdict": "pass",
         "checks": {"random-b1": {"max_abs": 1e-7, "passed": True}, "real": {"accuracy": 0.91, "passed": True}}},
        {"path": "/x/model.int8.onnx", "sha256": "0" * 64, "runtime": "onnxruntime-cpu", "passed": True,
         "checks": [{"name": "real", "accuracy": 0.90, "top1_agreement": 0.995}]},
        {"file": "model.fp16.onnx", "sha256": "c" * 64, "runtimes": [
            {"runtime": "onnxruntime-cpu", "passed": False, "failures": ["accuracy 0.2 points down"],
             "checks": {"real": {"accuracy": 0.89, "passed": False}}}]},
    ]}
    rows = parity_rows(data, recorded)
    verdicts = {(r.file, r.check): r.verdict for r in rows}
    assert verdicts[("model.onnx", "random-b1")] == "pass" and verdicts[("model.onnx", "real")] == "pass"
    assert verdicts[("model.int8.onnx", "real")].startswith("stale")  # verified bytes differ from the file now
    assert verdicts[("model.fp16.onnx", "real")] == "FAIL"
    assert any("0.2 points" in r.detail for r in rows if r.file == "model.fp16.onnx")

    from vggexport.report.parity_table import parity_section

    html = parity_section(data, None, recorded).body
    assert "model.pt2" in html and "not verified" in html  # in the manifest, absent from parity.json


def test_curves_label_every_split_they_find() -> None:
    records = [
        {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.3, "val_loss": 1.9, "val_accuracy": 0.35},
        {"epoch": 2, "train_loss": 1.5, "train_accuracy": 0.5, "val_loss": 1.4, "val_accuracy": 0.55,
         "test_accuracy": 0.52, "split": {"val": "5000 training images held out"}},
        {"epoch": 2, "split": "holdout", "loss": 1.3, "accuracy": 0.6, "lr": float("nan")},
    ]
    series, described, x_key = split_series(records)
    assert x_key == "epoch"
    assert set(series["loss"]) == {"train", "val", "holdout"}
    assert set(series["accuracy"]) == {"train", "val", "test", "holdout"}
    assert series["accuracy"]["test"] == [(2.0, 0.52)]
    assert described == {"val": "5000 training images held out"}


@pytest.mark.browser
def test_report_renders_in_chromium(browser, report: Path) -> None:  # type: ignore[no-untyped-def]
    watched = watched_page(browser)
    page = watched.page
    page.goto(report.resolve().as_uri())
    page.wait_for_load_state("load")
    for section in SECTIONS:
        assert page.locator(f"section#{section} h2").is_visible(), section
    assert page.locator("img").count() >= 9
    assert broken_images(page) == []
    assert page.locator(".gallery figure").count() == 6
    assert not overflows_horizontally(page)
    png = page.screenshot(full_page=False)
    assert_not_uniform(png)
    save_screenshot(png, "report.png")
    watched.assert_clean()
    page.close()


@pytest.mark.gpu
def test_report_on_cuda_times_the_cuda_runtimes(imperfect_folder: Path, tmp_path: Path) -> None:
    out = build_report(ReportConfig(folder=imperfect_folder, samples=SAMPLES, device="cuda", bench_seconds=0.2,
                                    out=str(tmp_path / "cuda.html")))
    html = out.read_text()
    assert "PyTorch eager fp32 on cuda" in html
    for runtime in ("pytorch-cuda", "torchscript-cuda", "onnxruntime-cuda"):
        assert f"<td>{runtime}</td>" in html, runtime
    assert "error:" not in html.split('id="speed"')[1].split("</section>")[0]


def test_cuda_device_without_cuda_is_a_one_line_error(run_cli: Cli, imperfect_folder: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("report", "--artifacts", imperfect_folder.parent, "--device", "cuda", "--no-bench")
    assert result.exit_code != 0 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_parity_rows_for_files_with_nested_runtimes_and_metadata_failures() -> None:
    from vggexport.report.parity_table import parity_section

    check = {"max_abs": 1e-6, "top1_agreement": 1.0, "accuracy": 0.88}
    data = {"passed": False, "tolerances": {"atol": 1e-4, "rtol": 1e-3},
            "reference": {"runtime": "pytorch", "provider": "cpu", "passed": True, "checks": {"real": check}},
            "files": {"model.onnx": {"sha256": "a" * 64, "passed": False, "runtimes": [
                {"runtime": "onnxruntime-cpu", "artifact": "model.onnx", "sha256": "a" * 64, "passed": False,
                 "failures": ["[metadata] 'mean' is 0.5 but the checkpoint says 0.286",
                              "[real] top-1 agreement 99.00% < 100.00%"],
                 "checks": {"random-b1": check, "real": check}}]}}}
    rows = parity_rows(data, {"model.onnx": "a" * 64})
    verdicts = {(r.runtime, r.check): r.verdict for r in rows}
    assert verdicts == {("pytorch", "real"): "reference", ("onnxruntime-cpu", "random-b1"): "pass",
                        ("onnxruntime-cpu", "real"): "FAIL", ("onnxruntime-cpu", "whole file"): "FAIL"}
    body = parity_section(data, None, {"model.onnx": "a" * 64}).body
    assert "atol 0.0001, rtol 0.001" in body
    assert body.count("the checkpoint says 0.286") == 1  # listed once, not on every row


def test_parity_rows_show_each_runtimes_verdict_with_its_own_reference_and_tolerances() -> None:
    """vggexport.parity/3: one file, a CPU and a CUDA verdict, each judged against its own reference."""
    from vggexport.report.parity_table import parity_section

    check = {"max_abs": 1e-6, "top1_agreement": 1.0, "accuracy": 0.88, "samples": 512}
    verdict = {"artifact": "model.onnx", "sha256": "a" * 64, "passed": True, "failures": [], "checks": {"real": check}}
    data = {"format": "vggexport.parity/3", "passed": False, "files": {"model.onnx": {
        "sha256": "a" * 64, "passed": False, "runtimes": [
            {**verdict, "runtime": "onnxruntime-cpu", "provider": "CPUExecutionProvider",
             "reference": {"runtime": "pytorch", "provider": "cpu"}, "tolerances": {"atol": 1e-4, "rtol": 1e-3}},
            {**verdict, "runtime": "onnxruntime-cuda", "provider": "CUDAExecutionProvider", "passed": False,
             "failures": ["[real] top-1 agreement 97.00% < 100.00%"],
             "reference": {"runtime": "pytorch", "provider": "cuda"}, "tolerances": {"atol": 5e-3, "rtol": 1e-2}}]}}}
    rows = parity_rows(data, {"model.onnx": "a" * 64})
    assert {(r.runtime, r.reference, r.limits, r.verdict) for r in rows} == {
        ("onnxruntime-cpu", "pytorch cpu", "atol 0.0001, rtol 0.001", "pass"),
        ("onnxruntime-cuda", "pytorch cuda", "atol 0.005, rtol 0.01", "FAIL")}
    body = parity_section(data, None, {"model.onnx": "a" * 64}).body
    assert "<th>compared with</th>" in body and "<td>pytorch cuda</td><td>atol 0.005, rtol 0.01</td>" in body
    assert "model.onnx</b> on onnxruntime-cuda: [real] top-1 agreement 97.00%" in body
