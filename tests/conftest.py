"""Shared fixtures: a tiny VGG, a trained tiny checkpoint, the real-data path, markers, a CLI runner, and the
exported and verified tiny models the tests of every stage read. Servers: tests/serve_process.py; verdicts:
tests/verdicts.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest
import torch
from click.testing import CliRunner, Result

from tests.serve_process import ServerProcess
from vggexport.model import VGG, ModelConfig

if TYPE_CHECKING:
    from tests.test_readme_torchvision import SectionRun

# Helpers with asserts of their own (not test modules, conftests or plugins) get pytest's assert rewriting too.
pytest.register_assert_rewrite("tests.serve.batching")
# Tests never touch the network: data comes from ../shared or is generated.
os.environ["VGGEXPORT_OFFLINE"] = "1"
# Hypothesis (and Schemathesis through it) keeps a cache in ./.hypothesis; a run leaves nothing in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(Path(os.environ.get("TMPDIR", "/tmp")) / "vggexport-hypothesis"))
# Two compute threads at most; under pytest-xdist the workers split the cores between them, and the commands a
# test starts inherit the same count (OMP_NUM_THREADS): two workers never run four compute threads on two cores,
# where each parallel region waits for its slowest, descheduled thread.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
SERIAL_THREADS = min(2, torch.get_num_threads())
THREADS = max(1, SERIAL_THREADS // WORKERS)
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

# ../shared/data beside the checkout; VGGEXPORT_TEST_DATA points elsewhere (the CI rules' own tests use it).
REAL_DATA = Path(os.environ.get("VGGEXPORT_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
TINY = {"width": 0.0625, "head": 32, "dropout": 0.0}
# Fixtures of more than one folder: the signing tests' key pairs and signed folders (store/, serve/, deploy/,
# report/), and the browser of the page tests (serve/, report/).
pytest_plugins = ["tests.signed_folders", "tests.browser.chromium"]


def in_ci() -> bool:
    """CI must not pass by skipping: there, what a test needs and lacks is a failure (.ci/run sets CI=1)."""
    return bool(os.environ.get("CI"))


def real_data_missing() -> str | None:
    if (REAL_DATA / "FashionMNIST" / "raw").is_dir():
        return None
    return f"real Fashion-MNIST not found at {REAL_DATA} (FashionMNIST/raw; VGGEXPORT_TEST_DATA names another root)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.browser.chromium import browser_missing_reason

    data_missing = real_data_missing()
    wants = {name: any(item.get_closest_marker(name) for item in items) for name in ("realdata", "browser")}
    if in_ci():
        # One line and a failed run, before any test starts, instead of a green run of skips.
        missing = [reason for reason in (data_missing if wants["realdata"] else None,
                                         browser_missing_reason() if wants["browser"] else None) if reason]
        if missing:
            pytest.exit(f"CI cannot skip what it must test: {'; '.join(missing)}",
                        returncode=pytest.ExitCode.TESTS_FAILED)
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=data_missing or "")
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if item.get_closest_marker("realdata") and data_missing:
            item.add_marker(skip_data)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        order_for_workers(items)


# The torchvision section's run (~6 min on 2 cores) feeds two modules. Under pytest-xdist (`-n`), with
# pyproject's `--dist loadfile --no-loadscope-reorder`, each module runs on one worker and modules are handed out
# in collection order: the first of the two goes first, so its worker starts the run at once, and the other goes
# last, by which time the run is on disk for whichever worker takes it (built_once).
SECTION_FIRST, SECTION_LAST = "test_pretrained.py", "test_readme_torchvision.py"


def order_for_workers(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    rank = {SECTION_FIRST: 0, SECTION_LAST: 2}
    items.sort(key=lambda item: rank.get(item.path.name, 1) if item.path.parent == here else 1)  # stable


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build`` fills once per run: under pytest-xdist the workers share it (the first to need it
    builds it under a lock, the others wait and read it); without xdist it is a fresh temporary folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the run's base folder, above every worker's own
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way left it
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def tiny_config(**overrides: object) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


def order_one_logits(model: torch.nn.Module, shape: tuple[int, int, int], scale: float = 1.0) -> torch.nn.Module:
    """Rescale the last layer so the logits on random inputs spread ~``scale``: a random-init tiny VGG's are
    ~1e-4, the size of the fp32 atol, so a tolerance would bite on nothing."""
    model.eval()
    with torch.no_grad():
        spread = float(model(torch.randn(16, *shape)).std())
        last = model.classifier[-1]
        last.weight *= scale / spread
        last.bias *= scale / spread
    return model


@pytest.fixture
def tiny_vgg() -> VGG:
    torch.manual_seed(0)
    return VGG(tiny_config()).eval()


@pytest.fixture
def real_data_dir() -> Path:
    missing = real_data_missing()
    if missing:
        if in_ci():
            pytest.fail(f"real-data tests must run in CI: {missing}")
        pytest.skip(missing)
    return REAL_DATA


class Cli:
    """Runs the real click command in-process and returns click's Result."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: object) -> Result:
        from vggexport.cli import cli

        return self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli() -> Cli:
    return Cli()


# fp32 pinned: --precision auto is bf16 on CPUs with native bf16 and fp32 elsewhere, and tests that compare
# runs or judge thresholds must judge the same arithmetic everywhere (tests/test_hardware.py covers auto).
TINY_TRAIN_ARGS = ("--dataset", "synthetic", "--width", "0.0625", "--head", "32", "--epochs", "1",
                   "--batch-size", "64", "--device", "cpu", "--precision", "fp32")


TRAINED_MIN_ACCURACY = 0.75


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny synthetic training run shared by the export, verify and serve tests, trained far above chance
    (the checks that lean on accuracy, agreement or int8's drop would check nothing on a model at chance).

    Synthetic data is learnt in a jump after ~150 steps: 8 epochs of 32 steps, without dropout, reach 1.0 for
    seeds 0-2 (measured), so the 0.75 floor holds with room on any CPU.
    """
    from vggexport.checkpoint import load_checkpoint
    from vggexport.training import TrainConfig, train

    def build(root: Path) -> None:
        # The thread count changes fp32 sums, so the weights: the same model whether the suite runs in one
        # process or in workers (the int8 tests judge how this model takes a bad calibration).
        torch.set_num_threads(SERIAL_THREADS)
        try:
            train(TrainConfig(dataset="synthetic", width=0.0625, head=32, dropout=0.0, epochs=8, batch_size=64,
                              device="cpu", precision="fp32", artifacts=str(root)))
        finally:
            torch.set_num_threads(THREADS)

    root = built_once(tmp_path_factory, "artifacts", build)
    accuracy = load_checkpoint(root / "vgg11_bn" / "best.pt").payload["metrics"]["test_accuracy"]
    assert accuracy >= TRAINED_MIN_ACCURACY, f"the shared trained model scored {accuracy}, near chance"
    return root


class Exported(NamedTuple):
    folder: Path  # <artifacts>/vgg11_bn
    output: str  # what `vggexport export` printed


@pytest.fixture(scope="session")
def exported_tiny(trained_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A copy of the shared trained model put through ``vggexport export`` once (TorchScript, model.pt2,
    model.onnx, model.preprocessing.onnx), for every test that needs those files of it. Read only: tests that
    verify, break or add files copy the folder."""
    def build(root: Path) -> None:
        shutil.copytree(trained_artifacts / "vgg11_bn", root / "vgg11_bn")
        result = Cli()("export", "--artifacts", root, "--with-preprocessing")
        assert result.exit_code == 0, result.output
        (root / "export-output.txt").write_text(result.output)

    root = built_once(tmp_path_factory, "exported", build)
    return Exported(root / "vgg11_bn", (root / "export-output.txt").read_text())


@pytest.fixture(scope="session")
def served_onnx(exported_tiny: Exported) -> Path:
    return exported_tiny.folder / "model.onnx"


@pytest.fixture(scope="session")
def server(served_onnx: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(served_onnx, "--max-batch-size", "64", "--max-queue-delay-ms", "5",
                            "--max-body-mb", "1", "--provider", "cpu").wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def verified_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny model (logits of order 1, tests/test_export.make_checkpoint) exported and passed by
    verify on random inputs and the synthetic test split; its report beside the folder as cpu-report.json, for
    other runtimes' verdicts (renamed_report). Read only: the triton and serving-gate tests copy it."""
    import json

    from tests.export.test_export import make_checkpoint
    from vggexport.export.onnx import export_onnx
    from vggexport.export.spec import ExportSpec
    from vggexport.verify.command import VerifyOptions, verify

    def build(root: Path) -> None:
        folder = root / "vgg11_bn"
        folder.mkdir()
        export_onnx(make_checkpoint(folder, dataset="synthetic"), folder / "model.onnx", ExportSpec())
        report = verify(folder / "best.pt", folder, ExportSpec(), VerifyOptions())
        assert report.passed, report.to_dict()
        (root / "cpu-report.json").write_text(json.dumps(report.to_dict()))

    return built_once(tmp_path_factory, "verified", build) / "vgg11_bn"


# The variant fixtures: test_variants.py and test_quantize.py share them (one instance per module).
VARIANT_CALIBRATION = ("--calibration-samples", "128")


@pytest.fixture(scope="module")
def artifacts(trained_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny model, flip-averaged (so the log_softmax/logsumexp tail is in the graph), fp32 exported."""
    import dataclasses

    from vggexport.checkpoint import load_checkpoint, save_checkpoint
    from vggexport.export.onnx import export_onnx
    from vggexport.export.spec import ExportSpec

    root = tmp_path_factory.mktemp("variants")
    folder = root / "vgg11_bn"
    folder.mkdir()
    trained = load_checkpoint(trained_artifacts / "vgg11_bn" / "best.pt")
    config = dataclasses.replace(trained.model_config, flip_average=True)
    state = {k: v for k, v in trained.payload.items() if k != "model_config"}
    ckpt = load_checkpoint(save_checkpoint(folder / "best.pt", model_config=config, state=state))
    export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    return root


@pytest.fixture(scope="module")
def int8(artifacts: Path) -> Path:
    result = Cli()("onnx", "--artifacts", artifacts, "--precision", "int8", *VARIANT_CALIBRATION)
    assert result.exit_code == 0, result.output
    return artifacts / "vgg11_bn" / "model.int8.onnx"


# torchvision's full-size VGG: built once, and the README section's commands run on it once (~4 min here).
# tests/test_readme_torchvision.py checks the commands; tests/test_pretrained.py reads the files they wrote
# (the import, its exports, the fine-tune) instead of making its own full-size copies of them.

@pytest.fixture(scope="session")
def torchvision_vgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """torchvision's vgg11_bn with seeded random weights: the .pth file and the model it holds."""
    import torchvision

    from tests.imagenet_photos import random_vgg11_bn

    folder = built_once(tmp_path_factory, "weights", random_vgg11_bn)
    model = torchvision.models.vgg11_bn().eval()
    model.load_state_dict(torch.load(folder / "vgg11_bn-random.pth", weights_only=True))
    return folder / "vgg11_bn-random.pth", model


@pytest.fixture(scope="session")
def torchvision_section(torchvision_vgg: tuple[Path, torch.nn.Module],
                        tmp_path_factory: pytest.TempPathFactory) -> SectionRun:
    """Every command of the README's "Deploy torchvision's VGG16" section, run once on ``torchvision_vgg``.

    Read it, never write into it: tests that change a file copy the folder first."""
    # The run lives beside the README test, which owns how the section is found and rewritten.
    from tests.test_readme_torchvision import SectionRun, run_section

    def build(folder: Path) -> None:
        run_section(folder, torchvision_vgg[0]).save(folder.with_name(f"{folder.name}.json"))

    folder = built_once(tmp_path_factory, "torchvision-section", build)
    return SectionRun.load(folder.with_name(f"{folder.name}.json"))
