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
from vggexport.names import CFG_NAMES, DATASETS, OPTIMIZERS, PRECISIONS, PROVIDERS, RUNTIMES

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


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


model_options = compose(
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
    click.option("--image-size", type=int, default=None, help="Multiple of 32 [default: 224 on CUDA, 32 on CPU]."),
    click.option("--width", type=float, default=None, help="Channel multiplier [default: 1.0 on CUDA, 0.25 on CPU]."),
    click.option("--head", type=int, default=512, show_default=True, help="Classifier width (4096 in the paper)."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True),
    click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Peak learning rate [default: 0.05 for sgd, 0.003 for adam]."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
                 help="adam is AdamW (decoupled weight decay 0.05); sgd is Nesterov momentum 0.9."),
    click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
                 help="On conv and linear weights [default: 0.05 for adam, 5e-4 for sgd]."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="auto = bf16 on CUDA or on a CPU with native bf16 (AMX/AVX-512 BF16), else fp32."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps."),
    click.option("--resume", is_flag=True, help="Continue from <artifacts>/<name>/last.pt."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model."),
    click.option("--deterministic", is_flag=True, help="Deterministic algorithms (bit-exact resume)."),
    click.option("--crop-padding", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Random-shift augmentation in pixels (0: off; flips stay on where the data allows)."),
    click.option("--erase", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="Random-erasing probability per training image (Zhong et al. 2017)."),
    click.option("--flip-average/--no-flip-average", default=None,
                 help="At inference average the image's and its mirror's class probabilities, as the paper "
                      "does (section 3.2) [default: on where the dataset is mirror-symmetric]."),
)


@cli.command()
@model_options
@train_options
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (runs torchrun; --batch-size stays the global batch).")
def train(cfg: str, batch_norm: bool, artifacts: str, compile_: bool, nproc: int, **options: Any) -> int | None:
    """Train a VGG and write best.pt, last.pt, metrics.jsonl and curves.png."""
    import os

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from vggexport.distributed import launch

        return launch(nproc, without_option(sys.argv[1:], "--nproc"))
    from vggexport.train import TrainConfig
    from vggexport.train import train as run_training

    run_training(TrainConfig(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, compile=compile_, **options))
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

    return ModelSelection(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, checkpoint=checkpoint)


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


@cli.command()
@model_options
@checkpoint_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <artifacts>/<name>/model.onnx].")
@opset_option
@click.option("--with-preprocessing", is_flag=True,
              help="Also write a variant that takes uint8 pixels of any size and resizes/normalizes inside.")
def onnx(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, out: str | None, opset: int,
         with_preprocessing: bool) -> None:
    """Export a checkpoint to a self-describing ONNX file (dynamic batch, metadata_props)."""
    from vggexport.workflow import export_onnx

    spec = make_spec(opset)
    for path in export_onnx(selection(cfg, batch_norm, artifacts, checkpoint), spec, out, with_preprocessing):
        click.echo(f"wrote {path}")


@cli.command()
@model_options
@checkpoint_option
@opset_option
@click.option("--with-preprocessing", is_flag=True, help="Also write the uint8-input ONNX variant.")
def export(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, opset: int,
           with_preprocessing: bool) -> None:
    """Run both exports: TorchScript and ONNX."""
    from vggexport.workflow import export_all

    for path in export_all(selection(cfg, batch_norm, artifacts, checkpoint), make_spec(opset), with_preprocessing):
        click.echo(f"wrote {path}")


@cli.command()
@model_options
@checkpoint_option
@tolerance_options
@click.option("--runtimes", "runtimes", multiple=True, type=click.Choice(RUNTIMES),
              help="Runtimes to check (repeatable) [default: every one available here].")
@click.option("--data-dir", type=click.Path(), default=None, help="Where the dataset's test split is.")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Use only the first N test images.")
@click.option("--random-only", is_flag=True, help="Skip the real-data check (random inputs only).")
@click.option("--device", default="cpu", show_default=True, help="Device of the PyTorch fp32 reference (cpu, cuda).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="JSON report [default: <artifacts>/<name>/parity.json].")
def verify(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, atol: float,
           rtol: float, cuda_atol: float, cuda_rtol: float, runtimes: tuple[str, ...], data_dir: str | None, samples: int | None,
           random_only: bool, report: str | None, device: str) -> int:
    """Check every exported runtime against PyTorch eager fp32, on random and real data."""
    from vggexport.reporting import print_parity
    from vggexport.workflow import verify as run_verify

    result = run_verify(selection(cfg, batch_norm, artifacts, checkpoint), make_spec(atol=atol, rtol=rtol, cuda_atol=cuda_atol, cuda_rtol=cuda_rtol),
                        runtimes=runtimes, data_dir=data_dir, samples=samples, random_only=random_only,
                        report=report, device=device)
    print_parity(result)
    return 0 if result.passed else 1



@cli.command()
@model_options
@click.option("--name", default=None,
              help="Model folder under --artifacts [default: from --cfg/--batch-norm, e.g. vgg11_bn].")
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
def report(cfg: str, batch_norm: bool, artifacts: str, name: str | None, checkpoint: str | None,
           data_dir: str | None, samples: int | None, mistakes: int, bench: bool, bench_seconds: float,
           device: str, out: str | None) -> None:
    """Write one self-contained HTML report: model card, curves, confusion matrix, mistakes, parity, speed."""
    from vggexport.report import ReportConfig, build_report

    folder = paths_model_dir(artifacts, name or selection(cfg, batch_norm, artifacts).name)
    config = ReportConfig(folder=folder, checkpoint=checkpoint, data_dir=data_dir, samples=samples,
                          mistakes=mistakes, bench=bench, bench_seconds=bench_seconds, device=device, out=out)
    click.echo(f"wrote {build_report(config)}")


def paths_model_dir(artifacts: str, name: str) -> Any:
    from vggexport.artifacts import model_dir

    if not name or "/" in name or name in (".", ".."):
        raise VggExportError(f"--name {name!r} must be a plain folder name")
    return model_dir(artifacts, name)

server_options = compose(
    click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it)."),
    click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                 help="ONNX Runtime execution provider; cuda fails at start-up if CUDA cannot run."),
)


@cli.command()
@model_options
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to serve [default: <artifacts>/<name>/model.onnx].")
@server_options
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Dynamic batching limit; 1 turns batching off.")
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="How long a batch waits for more requests (0: take whatever queued while the last batch ran).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes on the one port, each with its own session; /metrics sums them.")
def serve(cfg: str, batch_norm: bool, artifacts: str, model_path: str | None, host: str, port: int, provider: str,
          max_batch_size: int, max_queue_delay_ms: float, max_body_mb: float, threads: int | None,
          workers: int) -> None:
    """Serve the ONNX model over HTTP: KServe v2 (Triton-compatible) plus an image endpoint."""
    import logging

    from vggexport.serve.app import serve_forever
    from vggexport.serve.service import ServeConfig

    path = model_path or str(selection(cfg, batch_norm, artifacts).model_dir / "model.onnx")
    config = ServeConfig(model=path, provider=provider, max_batch_size=max_batch_size,
                         max_queue_delay_ms=max_queue_delay_ms, max_body_bytes=int(max_body_mb * 2**20),
                         threads=threads, workers=workers)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve_forever(config, host=host, port=port)


@cli.command()
@model_options
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Model repository root [default: <artifacts>/triton].")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="instance_group kind.")
@click.option("--allow-unverified", is_flag=True, help="Write it even without a passed parity.json.")
def triton(cfg: str, batch_norm: bool, artifacts: str, repository: str | None, max_batch_size: int, instances: int,
           kind: str, allow_unverified: bool) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt, 1/model.onnx, labels.txt)."""
    from pathlib import Path

    from vggexport.triton import TritonConfig, write_repository

    chosen = selection(cfg, batch_norm, artifacts)
    root = Path(repository) if repository else Path(artifacts) / "triton"
    config = TritonConfig(max_batch_size=max_batch_size, instances=instances, kind=kind)
    target = write_repository(chosen.model_dir, root, config, allow_unverified=allow_unverified)
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

    train_config = TrainConfig(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, compile=compile_, **options)
    Pipeline(PipelineConfig(train=train_config, serve=serve_on, force=force, host=host, port=port,
                            provider=provider)).run()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
