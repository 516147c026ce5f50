"""Training end to end on tiny synthetic runs: artifacts, model selection, exact resume, the time budget."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import Cli, tiny_config
from vggexport.checkpoint import load_checkpoint, save_checkpoint
from vggexport.errors import VggExportError
from vggexport.training import TrainConfig, train

# fp32 pinned wherever runs are compared: auto is bf16 on CPUs with native bf16.
TINY = {"dataset": "synthetic", "width": 0.0625, "head": 32, "batch_size": 64, "device": "cpu", "precision": "fp32"}


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_every_artifact_and_ships_the_final_model(tmp_path: Path) -> None:
    result = train(TrainConfig(**TINY, epochs=2, artifacts=str(tmp_path)))
    out = tmp_path / "vgg11_bn"
    assert result.out_dir == out
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "manifest.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = metrics(out)
    epochs, tests = lines[:2], lines[2:]
    assert [r["record"] for r in epochs] == ["epoch", "epoch"] and len(tests) == 1
    assert not any(k.startswith(("test_", "val_")) for r in epochs for k in r), "no test numbers during training"
    assert tests[0]["record"] == "test" and tests[0]["selected_on"] == "final" and tests[0]["test_samples"] == 512
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best.payload["selected_on"] == "final" and best.metrics["test_accuracy"] == tests[0]["test_accuracy"]
    for key, value in last.payload["model"].items():  # the final model ships: best.pt = last.pt's weights
        assert torch.equal(value, best.payload["model"][key]), key
    assert best.model_config.dataset == "synthetic" and not best.model_config.flip_average
    assert last.payload["train_config"]["epochs"] == 2
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_val_size_picks_the_model_on_validation_and_scores_test_once(tmp_path: Path) -> None:
    result = train(TrainConfig(**TINY, epochs=3, val_size=256, artifacts=str(tmp_path)))
    out = tmp_path / "vgg11_bn"
    lines = metrics(out)
    epochs = [r for r in lines if r["record"] == "epoch"]
    assert len(epochs) == 3 and all(r["val_samples"] == 256 and "test_accuracy" not in r for r in epochs)
    assert [r["record"] for r in lines].count("test") == 1
    best_epoch = max(epochs, key=lambda r: r["val_accuracy"])  # first of equals, as the trainer keeps it
    best = load_checkpoint(out / "best.pt")
    assert best.payload["selected_on"] == "val" and best.payload["selected_epoch"] == best_epoch["epoch"]
    assert result.final["selected_on"] == "val" and best.metrics["test_accuracy"] == result.final["test_accuracy"]
    assert best.build_model()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_checkpoint_rebuilds_model_alone(tmp_path: Path) -> None:
    train(TrainConfig(**TINY, epochs=1, max_steps=3, erase=0.5, flip_average=True, artifacts=str(tmp_path)))
    ckpt = load_checkpoint(tmp_path / "vgg11_bn" / "best.pt")
    model = ckpt.build_model()
    assert not model.training and ckpt.model_config.flip_average
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_checkpoint_sha256_is_of_the_bytes_loaded(tmp_path: Path) -> None:
    import hashlib

    first = save_checkpoint(tmp_path / "a.pt", model_config=tiny_config(), state={"model": {}})
    loaded_bytes = first.read_bytes()
    ckpt = load_checkpoint(first)
    # Swapped after loading: exports and parity records must still name what was loaded.
    save_checkpoint(first, model_config=tiny_config(width=0.5), state={"model": {}})
    assert first.read_bytes() != loaded_bytes
    assert ckpt.sha256() == hashlib.sha256(loaded_bytes).hexdigest()


# Every random choice on: shifts, erasing, dropout, EMA. Batch 256: 8 steps an epoch.
RANDOM_RECIPE = {**TINY, "batch_size": 256, "crop_padding": 2, "erase": 0.5, "dropout": 0.3, "ema": 0.9,
                 "deterministic": True}


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a).payload, load_checkpoint(b).payload
    for part in ("model", "ema"):
        for key in sa[part]:
            torch.testing.assert_close(sa[part][key], sb[part][key], rtol=0, atol=0, msg=f"{part} {key}")
    assert sa["scheduler"] == sb["scheduler"] and sa["step"] == sb["step"]
    assert sa["optimizer"]["param_groups"][0]["lr"] == sb["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_mid_epoch_stop_resumes_at_the_exact_step(tmp_path: Path) -> None:
    train(TrainConfig(**RANDOM_RECIPE, epochs=2, artifacts=str(tmp_path / "a")))
    stopped = train(TrainConfig(**RANDOM_RECIPE, epochs=2, max_steps=5, artifacts=str(tmp_path / "b")))
    assert stopped.steps == 5  # step 5 of 8: mid-epoch
    assert load_checkpoint(tmp_path / "b" / "vgg11_bn" / "last.pt").payload["step"] == 5
    resumed = train(TrainConfig(**RANDOM_RECIPE, resume=True, artifacts=str(tmp_path / "b")))
    assert resumed.steps == 16 and resumed.epochs == 2  # the epochs come from the checkpoint
    assert_same_state(tmp_path / "a" / "vgg11_bn" / "last.pt", tmp_path / "b" / "vgg11_bn" / "last.pt")
    lines = metrics(tmp_path / "b" / "vgg11_bn")
    assert [(r["record"], r["epoch"]) for r in lines] == [("epoch", 1), ("epoch", 2), ("test", 2)]


BUDGET_S = 24  # "0.4m"
BUDGET_STEPS = 4  # of the 8 in an epoch: enough to tell one schedule from another


@pytest.mark.slow
def test_time_budget_records_its_choice_and_epochs_repeats_it(tmp_path: Path) -> None:
    # A process of its own, as users run it: the budget counts from the process's start (imports included), so
    # in pytest's process, minutes old by then, the budget would be spent before training starts and the choice
    # always the one-epoch minimum. --max-steps stops the run once the plan is made and a few steps are taken,
    # so the test does not spend the budget; the schedule still spans the epochs chosen.
    budgeted = subprocess.run([sys.executable, "-m", "vggexport", "train", *cli_args({**RANDOM_RECIPE, "ema": 0}),
                               "--time-budget", "0.4m", "--max-steps", str(BUDGET_STEPS),
                               "--artifacts", str(tmp_path / "a")],
                              capture_output=True, text=True, timeout=300,
                              # as many threads as the repeat below, in this process: the same arithmetic
                              env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    output = budgeted.stdout + budgeted.stderr
    assert budgeted.returncode == 0, output[-3000:]
    state = load_checkpoint(tmp_path / "a" / "vgg11_bn" / "last.pt").payload
    epochs = state["epochs"]
    plan = state["plan"]
    assert plan["budget_s"] == BUDGET_S and plan["epochs"] == epochs >= 1 and state["step"] == BUDGET_STEPS
    # Whole epochs that fit: beyond the one-epoch minimum, the predicted run and the margin end within the budget.
    assert epochs == 1 or epochs * plan["epoch_s"] + plan["final_s"] + plan["margin_s"] <= BUDGET_S, plan
    assert set(state["timings"]) == {"step_s", "eval_image_s", "save_s"} and state["timings"]["step_s"] > 0
    assert f"repeat with --epochs {epochs}" in output
    # the same steps under the schedule of the epochs printed
    repeated = train(TrainConfig(**{**RANDOM_RECIPE, "ema": 0}, epochs=epochs, max_steps=state["step"],
                                 artifacts=str(tmp_path / "b")))
    assert repeated.epochs == epochs and repeated.steps == state["step"]
    a, b = (load_checkpoint(p / "vgg11_bn" / "last.pt").payload["model"] for p in (tmp_path / "a", tmp_path / "b"))
    for key in a:  # the measurement's steps were undone: the budgeted run is the --epochs run
        assert torch.equal(a[key], b[key]), key


def cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return args


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "2", "--time-budget", "60"], "exclude each other"),
    (["--time-budget", "soon"], "cannot read 'soon' as a duration"),
    (["--time-budget", "0"], "must be positive"),
    (["--val-size", "2040"], "leaves fewer than one batch"),
    (["--sync-bn"], "--sync-bn needs CUDA"),
])
def test_bad_training_options_are_one_line_errors(run_cli: Cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("train", *cli_args(TINY), *args, "--artifacts", tmp_path)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(VggExportError, match="run `vggexport train` first"):
        train(TrainConfig(**TINY, resume=True, artifacts=str(tmp_path)))


def test_resume_with_other_architecture_is_refused(tmp_path: Path) -> None:
    train(TrainConfig(**TINY, epochs=1, max_steps=2, artifacts=str(tmp_path)))
    with pytest.raises(VggExportError, match="different model"):
        train(TrainConfig(**{**TINY, "head": 64}, epochs=2, resume=True, artifacts=str(tmp_path)))


def test_resume_may_switch_flip_average(tmp_path: Path) -> None:
    # A checkpoint from before flip averaging (or with it off) resumes: the flip changes no weight.
    train(TrainConfig(**TINY, epochs=1, max_steps=2, flip_average=False, artifacts=str(tmp_path)))
    result = train(TrainConfig(**TINY, epochs=2, max_steps=4, flip_average=True, resume=True, artifacts=str(tmp_path)))
    assert result.steps == 4
    assert load_checkpoint(tmp_path / "vgg11_bn" / "best.pt").model_config.flip_average


def test_finished_run_says_how_to_continue(tmp_path: Path) -> None:
    train(TrainConfig(**{**TINY, "batch_size": 512}, epochs=1, artifacts=str(tmp_path)))
    with pytest.raises(VggExportError, match="raise --epochs to continue"):
        train(TrainConfig(**{**TINY, "batch_size": 512}, epochs=1, resume=True, artifacts=str(tmp_path)))


def test_interrupted_checkpoint_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, model_config=tiny_config(), state={"model": {"w": torch.ones(3)}})
    before = target.read_bytes()
    # A local lambda cannot be pickled: torch.save fails after it has started writing. Python raises
    # AttributeError for a local object (PicklingError from 3.14 on).
    with pytest.raises((AttributeError, pickle.PicklingError), match="Can't pickle local object"):
        save_checkpoint(target, model_config=tiny_config(), state={"model": {"w": torch.zeros(10**6)}, "x": lambda: 0})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(VggExportError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    with pytest.raises(VggExportError, match="not a vggexport checkpoint"):
        load_checkpoint(path)


@pytest.mark.gpu
def test_fp16_on_cuda_trains_with_a_grad_scaler(tmp_path: Path) -> None:
    result = train(TrainConfig(**{**TINY, "device": "cuda", "precision": "fp16"}, epochs=1, artifacts=str(tmp_path)))
    state = load_checkpoint(tmp_path / "vgg11_bn" / "last.pt").payload
    assert state["precision"] == "fp16" and state["scaler"]["scale"] > 0
    assert torch.isfinite(torch.tensor(result.final["test_loss"]))


@pytest.mark.gpu
def test_deterministic_cuda_runs_are_bitwise_equal(tmp_path: Path) -> None:
    config = {**RANDOM_RECIPE, "device": "cuda", "epochs": 1}
    for name in ("a", "b"):
        train(TrainConfig(**config, artifacts=str(tmp_path / name)))
    assert_same_state(tmp_path / "a" / "vgg11_bn" / "last.pt", tmp_path / "b" / "vgg11_bn" / "last.pt")


@pytest.mark.gpu
def test_cuda_mid_epoch_resume_with_ema(tmp_path: Path) -> None:
    config = {**RANDOM_RECIPE, "device": "cuda"}
    train(TrainConfig(**config, epochs=2, artifacts=str(tmp_path / "a")))
    train(TrainConfig(**config, epochs=2, max_steps=5, artifacts=str(tmp_path / "b")))
    train(TrainConfig(**config, resume=True, artifacts=str(tmp_path / "b")))
    assert_same_state(tmp_path / "a" / "vgg11_bn" / "last.pt", tmp_path / "b" / "vgg11_bn" / "last.pt")


@pytest.mark.realdata
def test_short_real_training_beats_chance(real_data_dir: Path, tmp_path: Path) -> None:
    result = train(TrainConfig(data_dir=str(real_data_dir), width=0.125, head=64, epochs=1, max_steps=150,
                               device="cpu", precision="fp32", eval_samples=2000, artifacts=str(tmp_path)))
    assert result.final["test_accuracy"] > 0.6 and result.final["test_samples"] == 2000  # chance is 0.1
    assert result.model_config.flip_average  # Fashion-MNIST is mirror-symmetric: the paper's test-time flip is on
