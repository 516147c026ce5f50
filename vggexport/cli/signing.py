"""sign and verify-signature: who vouches for a model folder's verified files (OpenSSF model signing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vggexport.cli.group import cli
from vggexport.cli.options import model_options, served_model_dir


def print_signed(result: Any) -> None:
    """What the signature covers, and the files it leaves out (a reader must know what is not vouched for)."""
    click.echo(f"signed {len(result.signed)} file(s) into {result.path} with key sha256:{result.fingerprint}: "
               f"{', '.join(sorted(result.signed))}")
    click.echo(f"not signed: {', '.join(result.unsigned) if result.unsigned else '(none)'}")


def sign_verified(folder: Path, key: str) -> None:
    from vggexport.store.signing import sign_model_folder

    print_signed(sign_model_folder(folder, key))


@cli.command()
@model_options
@click.option("--key", required=True, type=click.Path(dir_okay=False), metavar="PRIVATE_KEY.pem",
              help="EC private key (PEM; P-256, P-384 or P-521). An encrypted key's passphrase is read from "
                   "$VGGEXPORT_SIGN_KEY_PASSWORD.")
def sign(cfg: str, batch_norm: bool, artifacts: str, key: str) -> None:
    """Sign the files verify passed, and parity.json, into <artifacts>/<name>/model.sig.

    \b
    The bundle is OpenSSF model signing's (file serialisation, sha256), so `model_signing verify key`
    checks it too. manifest.json, checkpoints and unverified files are not signed; they are listed.
    A file whose bytes are not the ones parity.json passed is refused: verify it again first.
    """
    sign_verified(served_model_dir(cfg, batch_norm, artifacts), key)


@cli.command("verify-signature")
@click.argument("public_key", metavar="PUBLIC_KEY.pem", type=click.Path(dir_okay=False))
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@model_options
def verify_signature(public_key: str, folder: str | None, cfg: str, batch_norm: bool, artifacts: str) -> None:
    """Check FOLDER's model.sig (a model folder or a Triton entry) [default: <artifacts>/<name>/].

    \b
    The bundle must be signed by PUBLIC_KEY.pem, every signed file must hold the signed bytes, and it must
    cover parity.json and every file parity.json passed (in a Triton entry: config.pbtxt, labels.txt and
    each version's model.onnx). Exit code 1 and one line when any of that fails.
    """
    from vggexport.store.signature import check_folder

    where = Path(folder) if folder else served_model_dir(cfg, batch_norm, artifacts)
    signed, unsigned = check_folder(where, public_key)
    click.echo(f"{where}/model.sig: signed by key sha256:{signed.fingerprint}; {len(signed.digests)} file(s) "
               f"match: {', '.join(sorted(signed.digests))}")
    click.echo(f"not signed: {', '.join(unsigned) if unsigned else '(none)'}")
