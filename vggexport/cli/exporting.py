"""torchscript, onnx and export: every file a checkpoint becomes."""

from __future__ import annotations

from typing import Any

import click

from vggexport.cli.group import cli
from vggexport.cli.options import (
    calibration_config,
    calibration_options,
    checkpoint_option,
    make_spec,
    model_options,
    opset_option,
    selection,
)
from vggexport.names import ONNX_PRECISIONS


@cli.command()
@model_options
@checkpoint_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <artifacts>/<name>/model.torchscript.pt].")
def torchscript(cfg: str, batch_norm: bool, artifacts: str, checkpoint: str | None, out: str | None) -> None:
    """Export a checkpoint to TorchScript (with its metadata in _extra_files)."""
    from vggexport.export.command import export_torchscript

    click.echo(f"wrote {export_torchscript(selection(cfg, batch_norm, artifacts, checkpoint), out)}")


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
    from vggexport.export.command import export_onnx

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
    from vggexport.export.command import export_all

    config = calibration_config(**calibration)
    for path in export_all(selection(cfg, batch_norm, artifacts, checkpoint), make_spec(opset), with_preprocessing,
                           precisions, config):
        click.echo(f"wrote {path}")
