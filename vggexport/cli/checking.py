"""verify and report: whether the files agree with their checkpoint, and what the model does."""

from __future__ import annotations

import click

from vggexport.cli.group import cli
from vggexport.cli.options import (
    check_sign_key,
    checkpoint_option,
    model_options,
    selection,
    served_model_dir,
    sign_key_option,
    tolerance_options,
    variant_options,
    verify_spec,
)
from vggexport.errors import VggExportError
from vggexport.names import RUNTIMES


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
@sign_key_option
def verify(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, models: tuple[str, ...],
           runtimes: tuple[str, ...], data_dir: str | None, samples: int | None, random_only: bool,
           report: str | None, device: str, save_failures: str | None, sign_key: str | None,
           **criteria: float) -> int:
    """Check exported files against PyTorch eager fp32 (random and real data) and their checkpoint.

    \b
    Each file runs on every runtime that takes it; fp32 files must agree within the tolerances and
    on 100 % of real top-1 predictions, fp16/int8 variants within their accuracy criteria; NaN or
    Inf fails; metadata must say what the checkpoint says. parity.json records each file's verdict
    and sha256: serve and triton refuse files it does not record as passed.
    \b
    Exit codes: 0 all agree; 1 a parity or metadata failure; 2 a usage error or missing data.
    --sign-key signs the passed files and parity.json after a passing run (as `vggexport sign`).
    """
    from pathlib import Path

    from vggexport.verify.table import print_parity
    from vggexport.verify.command import UsageError, VerifyOptions
    from vggexport.verify.command import verify as run_verify

    chosen = selection(cfg, batch_norm, artifacts, checkpoint)
    check_sign_key(sign_key)
    options = VerifyOptions(models=models, runtimes=runtimes, data_dir=data_dir, samples=samples,
                            random_only=random_only, device=device, report=report, save_failures=save_failures)
    try:
        result = run_verify(Path(checkpoint) if checkpoint else chosen.model_dir / "best.pt", chosen.model_dir,
                            verify_spec(**criteria), options)
    except VggExportError as exc:  # anything but a verdict means verify could not judge: exit 2
        raise UsageError(str(exc)) from None
    print_parity(result)
    if sign_key and result.passed:
        from vggexport.cli.signing import sign_verified

        # The folders whose parity.json this run wrote: --model may name a file outside <artifacts>/<name>/.
        for folder in sorted({parity.resolve().parent for parity in result.parity_files}):
            sign_verified(folder, sign_key)
    elif sign_key:
        click.echo("not signed: verification failed", err=True)
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
