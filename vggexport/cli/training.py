"""train, pipeline and import: where a model comes from."""

from __future__ import annotations

import sys
from typing import Any

import click

from vggexport.cli.group import cli
from vggexport.cli.options import (
    check_sign_key,
    model_name,
    model_options,
    server_options,
    sign_key_option,
    train_options,
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
        from vggexport.training.distributed import launch

        return launch(nproc, without_option(sys.argv[1:], "--nproc"))
    from vggexport.training import TrainConfig
    from vggexport.training import train as run_training

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


@cli.command()
@model_options
@train_options
@click.option("--serve/--no-serve", "serve_on", default=True, show_default=True,
              help="Serve at the end; --no-serve ends after a smoke request to a short-lived server.")
@click.option("--force", is_flag=True, help="Re-run every stage, even those that are up to date.")
@server_options
@sign_key_option
def pipeline(cfg: str, batch_norm: bool, artifacts: str, compile_: bool, serve_on: bool, force: bool, host: str,
             port: int, provider: str, sign_key: str | None, **options: Any) -> None:
    """Train -> export -> verify -> serve in one command, skipping stages that are up to date.

    --sign-key signs what verify passed after the verify stage; the report shows the signature.
    """
    from vggexport.pipeline import Pipeline, PipelineConfig
    from vggexport.training import TrainConfig

    check_sign_key(sign_key)

    train_config = TrainConfig(cfg=cfg, batch_norm=batch_norm, artifacts=artifacts, compile=compile_,
                               name=model_name(), **options)
    Pipeline(PipelineConfig(train=train_config, serve=serve_on, force=force, host=host, port=port,
                            provider=provider, sign_key=sign_key)).run()


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
    from vggexport.pretrained import import_torchvision

    click.echo(f"wrote {import_torchvision(source, weights, name=name, artifacts=artifacts)}")
