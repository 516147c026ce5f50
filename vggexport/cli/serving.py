"""serve and triton: shipping only what verify passed."""

from __future__ import annotations

from typing import Any

import click

from vggexport.cli.group import cli
from vggexport.cli.options import (
    allow_unverified_option,
    model_options,
    onnx_file,
    check_sign_key,
    precision_choice,
    require_signature_option,
    served_model_dir,
    server_options,
    serving_options,
    sign_key_option,
)


@cli.command()
@model_options
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to serve, model.preprocessing.onnx included [default: <artifacts>/<name>/model.onnx].")
@precision_choice
@server_options
@serving_options
@allow_unverified_option
@require_signature_option
def serve(cfg: str, batch_norm: bool, artifacts: str, model_path: str | None, precision: str, host: str, port: int,
          grpc_port: int, max_body_mb: float, allow_unverified: bool, require_signature: str | None,
          **options: Any) -> None:
    """Serve an ONNX model: KServe v2 (Triton-compatible) over HTTP and gRPC, plus an image endpoint.

    \b
    GET  /v2/health/ready            200 ready, 503 not (also while draining after SIGTERM)
    POST /v2/models/<name>/infer     tensors in, logits/probabilities out (or top-K classification)
    POST /v2/models/<name>/classify  an image in (?top_k=3&return_input=true), labels out
    \b
    Only files that `vggexport verify` recorded as passed are served (--allow-unverified overrides);
    with --require-signature, only files model.sig signs with that key, checked in every worker.
    """
    import logging
    import os

    from vggexport.serve.app import serve_forever
    from vggexport.serve.service import ServeConfig

    folder = served_model_dir(cfg, batch_norm, artifacts)
    # The gate runs where each session is made (every worker too): it checks the bytes that session loads.
    config = ServeConfig(model=onnx_file(folder, model_path, precision), max_body_bytes=int(max_body_mb * 2**20),
                         gate="warn" if allow_unverified else "refuse",
                         require_signature=os.path.abspath(require_signature) if require_signature else None,
                         **options)
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
@require_signature_option
@sign_key_option
def triton(cfg: str, batch_norm: bool, artifacts: str, model_path: str | None, precision: str,
           repository: str | None, allow_unverified: bool, require_signature: str | None, sign_key: str | None,
           **options: Any) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt, 1/model.onnx, labels.txt).

    The repository's model name is the ONNX metadata's (which --name sets at training or import).
    --require-signature checks the source folder's model.sig first; --sign-key signs the written entry.
    """
    from pathlib import Path

    from vggexport.deploy.triton import TritonConfig, write_repository

    folder = served_model_dir(cfg, batch_norm, artifacts)
    root = Path(repository) if repository else Path(artifacts) / "triton"
    config = TritonConfig(**options)
    check_sign_key(sign_key)
    target = write_repository(Path(onnx_file(folder, model_path, precision)), root, config,
                              allow_unverified=allow_unverified, require_signature=require_signature,
                              sign_key=sign_key)
    click.echo(f"wrote {target}/config.pbtxt, {target}/1/model.onnx, {target}/labels.txt")
    if sign_key:
        click.echo(f"signed them into {target}/model.sig")
