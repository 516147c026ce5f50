"""The ``vggexport`` command line: parse options into a frozen config, call the library.

torch and onnxruntime are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vggexport import __version__
from vggexport.errors import VggExportError
from vggexport.names import CFG_NAMES, DATASETS, ONNX_PRECISIONS, OPTIMIZERS, PRECISIONS, PROVIDERS, RECIPES, RUNTIMES

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class CLI(click.Group):
    """Turns user errors (ours and click's) into one line on stderr and an exit code, no traceback."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except VggExportError as exc:
            fail(str(exc), exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


def duration(text: str) -> float:
    """``--time-budget``: 600, 90s, 10m -> seconds, or a click usage error (one line)."""
    from vggexport.training.config import parse_duration

    try:
        return parse_duration(text)
    except VggExportError as exc:
        raise click.BadParameter(str(exc)) from None


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


NAME_KEY = "vggexport.model_name"


def remember_name(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--name is kept in the click context: ``selection()`` and ``model_name()`` read it, no signature carries it."""
    if value is not None:
        from vggexport.names import check_model_name

        try:
            ctx.meta[NAME_KEY] = check_model_name(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--name") from None


def model_name() -> str | None:
    """This command's --name, or None: then the name is torchvision's for --cfg and --batch-norm."""
    return click.get_current_context().meta.get(NAME_KEY)


name_option = click.option("--name", default=None, expose_value=False, callback=remember_name,
                           help="Model folder <artifacts>/<NAME>/ and served name [default: from --cfg and "
                                "--batch-norm, e.g. vgg11_bn].")
model_options = compose(
    name_option,
    click.option("--cfg", type=click.Choice(CFG_NAMES, case_sensitive=False), default="A", show_default=True,
                 callback=lambda _c, _p, v: v.upper(), help="VGG config: A=VGG-11, B=VGG-13, D=VGG-16, E=VGG-19."),
    click.option("--batch-norm/--no-batch-norm", default=True, show_default=True,
                 help="Batch norm after every conv (torchvision's *_bn models)."),
    click.option("--artifacts", type=click.Path(file_okay=False), default="artifacts", show_default=True,
                 help="Output folder; each model gets <artifacts>/<name>/ (name as torchvision's, e.g. vgg11_bn)."),
)
checkpoint_option = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                                 help="Checkpoint to export (default: <artifacts>/<name>/best.pt).")


@click.group(cls=CLI, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggexport")
def cli() -> None:
    """Train, export, verify and serve VGG image classifiers.

    \b
    vggexport train                 # Fashion-MNIST, VGG-11 (cfg A)
    vggexport export --cfg A        # TorchScript + ONNX
    vggexport verify --cfg A        # parity of every runtime against PyTorch
    vggexport report --cfg A        # one self-contained HTML page about the model
    vggexport serve --cfg A         # KServe v2 over HTTP with ONNX Runtime
    """


train_options = compose(
    click.option("--dataset", type=click.Choice(DATASETS), default="fashion-mnist", show_default=True),
    click.option("--data-dir", type=click.Path(), default=None,
                 help="Dataset root (torchvision layout); else $VGGEXPORT_DATA_DIR, else the user cache."),
    click.option("--recipe", type=click.Choice(RECIPES), default="default", show_default=True,
                 help="Defaults for the options left unset. fast: the GPU speed run (32x32, full width, batch 256, "
                      "shifts 2 px, erasing 0.25, EMA 0.999, --time-budget 50s unless --epochs)."),
    click.option("--image-size", type=int, default=None,
                 help="Multiple of 32 [default: 224 on CUDA, 32 on CPU; 32 with --recipe fast]."),
    click.option("--width", type=float, default=None,
                 help="Channel multiplier [default: 1.0 on CUDA, 0.25 on CPU; 1.0 with --recipe fast]."),
    click.option("--head", type=int, default=512, show_default=True, help="Classifier width (4096 in the paper)."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True),
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Epochs [default: 8, or what --time-budget allows]."),
    click.option("--time-budget", type=str, default=None, callback=lambda _c, _p, v: None if v is None else duration(v),
                 help="Seconds for the whole run (600, 90s, 10m): the first steps are timed and the most whole "
                      "epochs that fit, evaluation and checkpoints included, are trained; the choice is printed "
                      "and saved so --epochs repeats it."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Global batch [default: 128; 256 with --recipe fast]."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Peak learning rate [default: 0.05 for sgd, 0.003 for adam]."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
                 help="adam is AdamW (decoupled weight decay 0.05); sgd is Nesterov momentum 0.9."),
    click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
                 help="On conv and linear weights [default: 0.05 for adam, 5e-4 for sgd]."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="auto = bf16 where the device computes it natively (Ampere+ GPUs; AMX/AVX-512 BF16 CPUs), "
                      "else fp16 with loss scaling on CUDA and fp32 on the CPU."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps."),
    click.option("--resume", is_flag=True, help="Continue from <artifacts>/<name>/last.pt."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model."),
    click.option("--deterministic", is_flag=True,
                 help="Deterministic algorithms, CUDA included: repeatable runs, bit-exact resume."),
    click.option("--crop-padding", type=click.IntRange(min=0), default=None,
                 help="Random-shift augmentation in pixels (0: off; flips stay on where the data allows) "
                      "[default: 0; 2 with --recipe fast]."),
    click.option("--erase", type=click.FloatRange(0, 1), default=None,
                 help="Random-erasing probability per training image (Zhong et al. 2017) [default: 0; 0.25 with "
                      "--recipe fast]."),
    click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True),
    click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=None,
                 help="Decay of an exponential moving average of the weights, which is then evaluated and shipped "
                      "(0: off) [default: 0; 0.999 with --recipe fast]."),
    click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Hold N training images out (seeded, stratified by class) and ship the model with the best "
                      "accuracy on them; 0 ships the final model. The test set is scored once, for the shipped model."),
    click.option("--eval-samples", type=click.IntRange(min=1), default=None,
                 help="Score only the first N images of the validation and test splits (quick checks)."),
    click.option("--sync-bn", is_flag=True, help="Synchronised batch norm across data-parallel processes (CUDA)."),
    click.option("--flip-average/--no-flip-average", default=None,
                 help="At inference average the image's and its mirror's class probabilities, as the paper "
                      "does (section 3.2) [default: on where the dataset is mirror-symmetric]."),
)


@cli.command()
@model_options
@train_options
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (runs torchrun; --batch-size stays the global batch).")
@click.option("--init", default=None, metavar="torchvision:NAME",
              help="Fine-tune: start from torchvision's ImageNet VGG (e.g. torchvision:vgg11_bn); its last layer is "
                   "replaced for the dataset's classes.")
@click.option("--weights", default=None, metavar="FILE",
              help="With --init: its .pth as torchvision distributes it, or DEFAULT to download it.")
@click.option("--freeze-features", is_flag=True, help="With --init: train only the classifier.")
def train(cfg: str, batch_norm: bool, artifacts: str, compile_: bool, nproc: int, **options: Any) -> int | None:
    """Train a VGG and write best.pt, last.pt, metrics.jsonl and curves.png."""
    import os

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from vggexport.distributed import launch

        return launch(nproc, without_option(sys.argv[1:], "--nproc"))
    from vggexport.train import TrainConfig
    from vggexport.train import train as run_training

    run_training(TrainConfig(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, compile=compile_, name=model_name(),
                             **options))
    return None


def without_option(argv: list[str], name: str) -> list[str]:
    """argv minus ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


opset_option = click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18-23).")
tolerance_options = compose(
    click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance, CPU fp32."),
    click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance, CPU fp32."),
    click.option("--cuda-atol", type=float, default=5e-3, show_default=True,
                 help="Absolute tolerance when either side runs on CUDA (cuDNN's conv algorithms differ)."),
    click.option("--cuda-rtol", type=float, default=1e-2, show_default=True,
                 help="Relative tolerance when either side runs on CUDA."),
)


def selection(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None = None) -> Any:
    from vggexport.workflow import ModelSelection

    return ModelSelection(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, checkpoint=checkpoint,
                          model_name=model_name())


def make_spec(opset: int = 18, **tolerances: float) -> Any:
    from vggexport.spec import ExportSpec

    return ExportSpec(opset=opset, **tolerances)


@cli.command()
@model_options
@checkpoint_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <artifacts>/<name>/model.torchscript.pt].")
def torchscript(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, out: str | None) -> None:
    """Export a checkpoint to TorchScript (with its metadata in _extra_files)."""
    from vggexport.workflow import export_torchscript

    click.echo(f"wrote {export_torchscript(selection(cfg, batch_norm, artifacts, checkpoint), out)}")


calibration_options = compose(
    click.option("--calibration-samples", type=int, default=512, show_default=True,
                 help="int8: training images to calibrate activation ranges on (a seeded random subset)."),
    click.option("--calibration-method", type=click.Choice(("minmax", "entropy", "percentile"), case_sensitive=False),
                 default="minmax", show_default=True,
                 help="int8: how activation ranges are chosen (entropy clips most; see BENCHMARKS.md)."),
    click.option("--calibration-seed", type=int, default=0, show_default=True, help="int8: which subset."),
    click.option("--data-dir", type=click.Path(), default=None,
                 help="int8: dataset root holding the training images (as for train)."),
    # Tests and demonstrations only: calibrating on constant or noise images makes a bad int8 model on purpose.
    click.option("--calibration-images", type=click.Choice(("train", "constant", "noise")), default="train",
                 hidden=True),
)


def calibration_config(calibration_samples: int, calibration_method: str, calibration_seed: int,
                       data_dir: str | None, calibration_images: str) -> Any:
    from vggexport.quantize import CalibrationConfig

    return CalibrationConfig(method=calibration_method, samples=calibration_samples, seed=calibration_seed,
                             data_dir=data_dir, images=calibration_images)


@cli.command()
@model_options
@checkpoint_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <artifacts>/<name>/model.onnx, model.fp16.onnx or model.int8.onnx].")
@opset_option

@click.option("--with-preprocessing/--no-preprocessing", default=True, show_default=True,
              help="Also write model.preprocessing.onnx: uint8 pixels of any size in, resized/cropped and normalized "
                   "inside (what the server's /classify runs).")
@click.option("--precision", type=click.Choice(ONNX_PRECISIONS), default="fp32", show_default=True,
              help="fp16 and int8 are made from the fp32 model.onnx exported before from the same checkpoint.")
@calibration_options
def onnx(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, out: str | None, opset: int,
         with_preprocessing: bool, precision: str, **calibration: Any) -> None:
    """Export a checkpoint to a self-describing ONNX file (dynamic batch, metadata_props)."""
    from vggexport.workflow import export_onnx

    spec, config = make_spec(opset), calibration_config(**calibration)
    for path in export_onnx(selection(cfg, batch_norm, artifacts, checkpoint), spec, out, with_preprocessing,
                            precision=precision, calibration=config):
        click.echo(f"wrote {path}")


@cli.command()
@model_options
@checkpoint_option
@opset_option

@click.option("--with-preprocessing/--no-preprocessing", default=True, show_default=True,
              help="Also write model.preprocessing.onnx (uint8 pixels in; what /classify runs).")
@click.option("--precision", "precisions", type=click.Choice(ONNX_PRECISIONS), multiple=True, default=("fp32",),
              show_default=True, help="ONNX precisions to write (repeatable); fp32 is always written.")
@calibration_options
def export(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, opset: int,
           with_preprocessing: bool, precisions: tuple[str, ...], **calibration: Any) -> None:
    """Run every export: TorchScript, torch.export (.pt2), ONNX and the ONNX precision variants asked for."""
    from vggexport.workflow import export_all

    config = calibration_config(**calibration)
    for path in export_all(selection(cfg, batch_norm, artifacts, checkpoint), make_spec(opset), with_preprocessing,
                           precisions, config):
        click.echo(f"wrote {path}")


variant_options = compose(
    click.option("--int8-max-drop", type=click.FloatRange(0, 100), default=0.3, show_default=True,
                 help="int8 variants: most test-accuracy points below PyTorch fp32."),
    click.option("--int8-min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
                 help="int8 variants: least top-1 agreement with PyTorch fp32 on real data."),
    click.option("--fp16-max-drop", type=click.FloatRange(0, 100), default=0.1, show_default=True,
                 help="fp16 variants: most test-accuracy points below PyTorch fp32."),
    click.option("--fp16-min-agreement", type=click.FloatRange(0, 1), default=0.998, show_default=True,
                 help="fp16 variants: least top-1 agreement with PyTorch fp32 on real data."),
)


def verify_spec(atol: float, rtol: float, cuda_atol: float, cuda_rtol: float, int8_max_drop: float,
                int8_min_agreement: float, fp16_max_drop: float, fp16_min_agreement: float) -> Any:
    from vggexport.spec import AccuracyCriterion, ExportSpec

    variants = {"int8": AccuracyCriterion("int8", int8_max_drop / 100, int8_min_agreement),
                "fp16": AccuracyCriterion("fp16", fp16_max_drop / 100, fp16_min_agreement)}
    return ExportSpec(atol=atol, rtol=rtol, cuda_atol=cuda_atol, cuda_rtol=cuda_rtol, variants=variants)


@cli.command()
@model_options
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="File to verify (repeatable): .onnx, .torchscript.pt or .pt2 [default: every artifact in "
                   "<artifacts>/<name>/].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint the files must match [default: <artifacts>/<name>/best.pt].")
@tolerance_options
@variant_options
@click.option("--runtimes", "runtimes", multiple=True, type=click.Choice(RUNTIMES),
              help="Only these runtimes (repeatable) [default: every one that runs the file, CUDA ones where "
                   "CUDA is present].")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Where the dataset's test split is [default: the --data-dir the checkpoint was trained with].")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Use only the first N test images.")
@click.option("--random-only", is_flag=True, help="Skip the real-data check (random inputs only; fp16/int8 "
              "variants need real data and are left out).")
@click.option("--device", default="cpu", show_default=True, help="Device of the PyTorch fp32 reference (cpu, cuda).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Also write this run's report here (the record of every verified file stays in "
                   "parity.json beside the files).")
@click.option("--save-failures", type=click.Path(file_okay=False), default=None,
              help="Write the inputs and both outputs of every failing check here as .npz.")
def verify(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, models: tuple[str, ...],
           runtimes: tuple[str, ...], data_dir: str | None, samples: int | None, random_only: bool,
           report: str | None, device: str, save_failures: str | None, **criteria: float) -> int:
    """Check exported files against PyTorch eager fp32 (random and real data) and their checkpoint.

    \b
    Each file runs on every runtime that takes it; fp32 files must agree within the tolerances and
    on 100 % of real top-1 predictions, fp16/int8 variants within their accuracy criteria; NaN or
    Inf fails; metadata must say what the checkpoint says. parity.json records each file's verdict
    and sha256: serve and triton refuse files it does not record as passed.
    \b
    Exit codes: 0 all agree; 1 a parity or metadata failure; 2 a usage error or missing data.
    """
    from pathlib import Path

    from vggexport.reporting import print_parity
    from vggexport.verification import UsageError, VerifyOptions
    from vggexport.verification import verify as run_verify

    chosen = selection(cfg, batch_norm, artifacts, checkpoint)
    options = VerifyOptions(models=models, runtimes=runtimes, data_dir=data_dir, samples=samples,
                            random_only=random_only, device=device, report=report, save_failures=save_failures)
    try:
        result = run_verify(Path(checkpoint) if checkpoint else chosen.model_dir / "best.pt", chosen.model_dir,
                            verify_spec(**criteria), options)
    except VggExportError as exc:  # anything but a verdict means verify could not judge: exit 2
        raise UsageError(str(exc)) from None
    print_parity(result)
    return 0 if result.passed else 1



@cli.command()
@model_options
@checkpoint_option
@click.option("--data-dir", type=click.Path(), default=None, help="Where the dataset's test split is.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N test images [default: the whole test split].")
@click.option("--mistakes", type=click.IntRange(min=0), default=24, show_default=True,
              help="Most confident mistakes to show as thumbnails.")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Time every runtime at batch 1 and 64 (about --bench-seconds each).")
@click.option("--bench-seconds", type=click.FloatRange(min=0.05, max=60), default=1.0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Device of the test-set evaluation (auto, cpu, cuda).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <artifacts>/<name>/report.html].")
def report(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None,
           data_dir: str | None, samples: int | None, mistakes: int, bench: bool, bench_seconds: float,
           device: str, out: str | None) -> None:
    """Write one self-contained HTML report: model card, curves, confusion matrix, mistakes, parity, speed."""
    from vggexport.report import ReportConfig, build_report

    folder = served_model_dir(cfg, batch_norm, artifacts)
    config = ReportConfig(folder=folder, checkpoint=checkpoint, data_dir=data_dir, samples=samples,
                          mistakes=mistakes, bench=bench, bench_seconds=bench_seconds, device=device, out=out)
    click.echo(f"wrote {build_report(config)}")



allow_unverified_option = click.option(
    "--allow-unverified", is_flag=True,
    help="Ship a file that parity.json does not record as passed (with a warning) instead of refusing it.")
server_options = compose(
    click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it)."),
    click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                 help="ONNX Runtime execution provider; cuda fails at start-up if CUDA cannot run."),
)


def served_model_dir(cfg: str, batch_norm: bool, artifacts: str) -> Any:
    """<artifacts>/<name>/ without importing torch (the serving process never loads it)."""
    from pathlib import Path

    from vggexport.names import torchvision_name

    return Path(artifacts) / (model_name() or torchvision_name(cfg, batch_norm))


def served_files(model: str, preprocessing_model: str | None) -> list[Any]:
    """Every file the server will load: the model, and the preprocessing graph /classify runs if there is one."""
    from pathlib import Path

    from vggexport.artifacts import ONNX_PREPROCESSING

    files = [Path(model)]
    image_graph = Path(preprocessing_model) if preprocessing_model else Path(model).with_name(ONNX_PREPROCESSING)
    if image_graph.is_file() and image_graph != files[0]:
        files.append(image_graph)
    return files


def onnx_file(folder: Any, model_path: str | None, precision: str) -> str:
    """--model wins; else the precision variant's file (model.onnx, model.fp16.onnx, model.int8.onnx)."""
    from vggexport.artifacts import ONNX_BY_PRECISION

    if model_path and precision != "fp32":
        raise VggExportError("pass --model FILE or --precision, not both")
    return model_path or str(folder / ONNX_BY_PRECISION[precision])


precision_choice = click.option(
    "--precision", type=click.Choice(ONNX_PRECISIONS), default="fp32", show_default=True,
    help="Which ONNX to use: fp32 model.onnx, fp16 model.fp16.onnx, int8 model.int8.onnx.")
serving_options = compose(
    click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
                 help="KServe v2 gRPC port (Triton's default); 0 disables gRPC."),
    click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Dynamic batching limit; 1 turns batching off."),
    click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="How long a batch waits for more requests (0: take whatever queued while the last batch ran)."),
    click.option("--max-queue-size", type=click.IntRange(min=1), default=None,
                 help="Images allowed to wait; beyond it requests get 503 + Retry-After [default: 4 x max batch]."),
    click.option("--timeout-ms", type=click.FloatRange(min=0), default=30_000.0, show_default=True,
                 help="A request waiting longer than this gets 504 (0: no limit)."),
    click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True),
    click.option("--max-image-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
                 help="Larger images get 413, checked from the header before decoding."),
    click.option("--preprocessing-model", type=click.Path(dir_okay=False), default=None,
                 help="uint8 ONNX for /classify [default: model.preprocessing.onnx beside the model]."),
    click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads."),
    click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Server processes on the one port, each with its own session; /metrics sums them."),
    click.option("--warmup/--no-warmup", default=None,
                 help="Run batch 1 and the max batch before turning ready [default: on CUDA only]."),
)


@cli.command()
@model_options
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to serve, model.preprocessing.onnx included [default: <artifacts>/<name>/model.onnx].")
@precision_choice
@server_options
@serving_options
@allow_unverified_option
def serve(cfg: str, batch_norm: bool, artifacts: str, model_path: str | None, precision: str, host: str, port: int,
          grpc_port: int, max_body_mb: float, allow_unverified: bool, **options: Any) -> None:
    """Serve an ONNX model: KServe v2 (Triton-compatible) over HTTP and gRPC, plus an image endpoint.

    \b
    GET  /v2/health/ready            200 ready, 503 not (also while draining after SIGTERM)
    POST /v2/models/<name>/infer     tensors in, logits/probabilities out (or top-K classification)
    POST /v2/models/<name>/classify  an image in (?top_k=3&return_input=true), labels out
    \b
    Only files that `vggexport verify` recorded as passed are served (--allow-unverified overrides).
    """
    import logging

    from vggexport.record import require_verified
    from vggexport.serve.app import serve_forever
    from vggexport.serve.service import ServeConfig

    folder = served_model_dir(cfg, batch_norm, artifacts)
    config = ServeConfig(model=onnx_file(folder, model_path, precision), max_body_bytes=int(max_body_mb * 2**20),
                         **options)
    for served_file in served_files(config.model, config.preprocessing_model):
        require_verified(served_file, allow_unverified=allow_unverified)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve_forever(config, host=host, port=port, grpc_port=grpc_port)


@cli.command()
@model_options
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to ship [default: <artifacts>/<name>/model.onnx, or its --precision variant].")
@precision_choice
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Model repository root [default: <artifacts>/triton].")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="instance_group kind.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=100, show_default=True,
              help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="model_warmup: Triton runs a zero batch before the model turns ready.")
@allow_unverified_option
def triton(cfg: str, batch_norm: bool, artifacts: str, model_path: str | None, precision: str,
           repository: str | None, allow_unverified: bool, **options: Any) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt, 1/model.onnx, labels.txt).

    The repository's model name is the ONNX metadata's (which --name sets at training or import).
    """
    from pathlib import Path

    from vggexport.triton import TritonConfig, write_repository

    folder = served_model_dir(cfg, batch_norm, artifacts)
    root = Path(repository) if repository else Path(artifacts) / "triton"
    config = TritonConfig(**options)
    target = write_repository(Path(onnx_file(folder, model_path, precision)), root, config,
                              allow_unverified=allow_unverified)
    click.echo(f"wrote {target}/config.pbtxt, {target}/1/model.onnx, {target}/labels.txt")


@cli.command()
@model_options
@train_options
@click.option("--serve/--no-serve", "serve_on", default=True, show_default=True,
              help="Serve at the end; --no-serve ends after a smoke request to a short-lived server.")
@click.option("--force", is_flag=True, help="Re-run every stage, even those that are up to date.")
@server_options
def pipeline(cfg: str, batch_norm: bool, artifacts: str, compile_: bool, serve_on: bool, force: bool, host: str,
             port: int, provider: str, **options: Any) -> None:
    """Train -> export -> verify -> serve in one command, skipping stages that are up to date."""
    from vggexport.pipeline import Pipeline, PipelineConfig
    from vggexport.train import TrainConfig

    train_config = TrainConfig(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, compile=compile_,
                               name=model_name(), **options)
    Pipeline(PipelineConfig(train=train_config, serve=serve_on, force=force, host=host, port=port,
                            provider=provider)).run()


@cli.command("import")
@click.argument("source", metavar="torchvision:NAME")
@click.option("--weights", required=True, metavar="FILE",
              help="The .pth state_dict as torchvision distributes it (loaded with weights_only), or DEFAULT to "
                   "let torchvision download the official ImageNet weights.")
@click.option("--name", default=None, help="Model folder and served name [default: NAME, e.g. vgg16_bn].")
@click.option("--artifacts", type=click.Path(file_okay=False), default="artifacts", show_default=True)
def import_(source: str, weights: str, name: str | None, artifacts: str) -> None:
    """Import torchvision's ImageNet VGG (vgg11 ... vgg19_bn) with its labels and preprocessing.

    \b
    vggexport import torchvision:vgg16_bn --weights vgg16_bn-6c64b313.pth --name vgg16-imagenet
    """
    from vggexport.importer import import_torchvision

    click.echo(f"wrote {import_torchvision(source, weights, name=name, artifacts=artifacts)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
