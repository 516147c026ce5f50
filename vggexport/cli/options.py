"""Options several commands share, as decorators, and the small helpers that turn them into configs.

Nothing heavy is imported here: ``--help`` stays instant and ``serve`` never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from vggexport.errors import VggExportError
from vggexport.names import CFG_NAMES, DATASETS, ONNX_PRECISIONS, OPTIMIZERS, PRECISIONS, PROVIDERS, RECIPES

F = TypeVar("F", bound=Callable[..., Any])


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


opset_option = click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18-23).")
tolerance_options = compose(
    click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance, CPU fp32."),
    click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance, CPU fp32."),
    click.option("--cuda-atol", type=float, default=5e-3, show_default=True,
                 help="Absolute tolerance when either side runs on CUDA (cuDNN's conv algorithms differ)."),
    click.option("--cuda-rtol", type=float, default=1e-2, show_default=True,
                 help="Relative tolerance when either side runs on CUDA."),
    click.option("--range-tol", type=float, default=1e-3, show_default=True,
                 help="Largest difference as a fraction of the reference output's range (max - min), CPU fp32: "
                      "catches a scaled or shifted output at any scale, where atol does not."),
    click.option("--cuda-range-tol", type=float, default=2e-3, show_default=True,
                 help="The same when either side runs on CUDA."),
)


def selection(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None = None) -> Any:
    from vggexport.export.command import ModelSelection

    return ModelSelection(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, checkpoint=checkpoint,
                          model_name=model_name())


def make_spec(opset: int = 18, **tolerances: float) -> Any:
    from vggexport.export.spec import ExportSpec

    return ExportSpec(opset=opset, **tolerances)


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
    from vggexport.export.variants.calibration import CalibrationConfig

    return CalibrationConfig(method=calibration_method, samples=calibration_samples, seed=calibration_seed,
                             data_dir=data_dir, images=calibration_images)


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


def verify_spec(atol: float, rtol: float, cuda_atol: float, cuda_rtol: float, range_tol: float,
                cuda_range_tol: float, int8_max_drop: float, int8_min_agreement: float, fp16_max_drop: float,
                fp16_min_agreement: float) -> Any:
    from vggexport.export.spec import AccuracyCriterion, ExportSpec

    variants = {"int8": AccuracyCriterion("int8", int8_max_drop / 100, int8_min_agreement),
                "fp16": AccuracyCriterion("fp16", fp16_max_drop / 100, fp16_min_agreement)}
    return ExportSpec(atol=atol, rtol=rtol, cuda_atol=cuda_atol, cuda_rtol=cuda_rtol, range_tol=range_tol,
                      cuda_range_tol=cuda_range_tol, variants=variants)


allow_unverified_option = click.option(
    "--allow-unverified", is_flag=True,
    help="Ship a file that parity.json does not record as passed (with a warning) instead of refusing it.")
require_signature_option = click.option(
    "--require-signature", type=click.Path(dir_okay=False), default=None, metavar="PUBLIC_KEY.pem",
    help="Ship only files that model.sig beside them, signed by this key (an EC public key PEM), covers, with "
         "the parity.json verdict it signs; refuse anything else (see docs/signing.md).")
sign_key_option = click.option(
    "--sign-key", type=click.Path(dir_okay=False), default=None, metavar="PRIVATE_KEY.pem",
    help="Then sign what was verified into model.sig with this EC private key (PEM); an encrypted key's "
         "passphrase is read from $VGGEXPORT_SIGN_KEY_PASSWORD, never from an option.")


def check_sign_key(path: str | None) -> None:
    """Load the signing key before any long work: a wrong passphrase fails now, not after training."""
    if path:
        from pathlib import Path

        from vggexport.store.signing import load_private_key

        load_private_key(Path(path))


server_options = compose(
    click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it)."),
    click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                 help="ONNX Runtime execution provider. auto: CUDA where the NVIDIA driver sees a GPU and "
                      "onnxruntime has the CUDA provider, else the CPU with no CUDA library loaded. cuda fails "
                      "at start-up, saying why, if CUDA cannot run."),
)


def served_model_dir(cfg: str, batch_norm: bool, artifacts: str) -> Any:
    """<artifacts>/<name>/ without importing torch (the serving process never loads it)."""
    from vggexport.names import model_folder_name
    from vggexport.store.paths import model_dir

    return model_dir(artifacts, model_folder_name(model_name(), cfg, batch_norm))


def onnx_file(folder: Any, model_path: str | None, precision: str) -> str:
    """--model wins; else the precision variant's file (model.onnx, model.fp16.onnx, model.int8.onnx)."""
    from vggexport.store.paths import ONNX_BY_PRECISION

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
                 help="How long a batch waits for more requests, from its first request's arrival (0: take whatever "
                      "queued while the last batch ran)."),
    click.option("--max-queue-size", type=click.IntRange(min=1), default=None,
                 help="Images allowed to wait; beyond it requests get 503 + Retry-After [default: 4 x max batch]."),
    click.option("--timeout-ms", type=click.FloatRange(min=0), default=30_000.0, show_default=True,
                 help="A request waiting longer than this gets 504 (0: no limit)."),
    click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True),
    click.option("--max-image-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
                 help="Larger images get 413, checked from the header before decoding."),
    click.option("--preprocessing-model", type=click.Path(dir_okay=False), default=None,
                 help="uint8 ONNX for /classify [default: model.preprocessing.onnx beside the model]."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="ONNX Runtime intra-op threads; the runs share the session's pool "
                      "[default: cores - instances + 1]."),
    click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Batches run at once from the one queue, on the one session (Triton's instance_group count)."),
    click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Server processes on the one port, each with its own session; /metrics sums them."),
    click.option("--warmup/--no-warmup", default=None,
                 help="Run batch 1 and the max batch before turning ready [default: on CUDA only]."),
)
