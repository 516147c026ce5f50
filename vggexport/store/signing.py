"""Writing a folder's ``model.sig`` with the OpenSSF model-signing library and an elliptic-curve private key.

A model folder signs what parity.json records as passed, and parity.json itself (so the verdicts are signed
too); not manifest.json, the checkpoints or anything verify never passed. A Triton entry signs the three
files ``vggexport triton`` wrote. Each file's bytes on disk must have the digest the caller expects (the one
parity.json records), and the bundle the library wrote is read back and must sign exactly those digests
(a file changed while the library hashed it is refused), before it is moved into place.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.errors import VggExportError, first_line
from vggexport.store.fileio import read_artifact
from vggexport.store.manifest import update_manifest
from vggexport.store.parity_record import read_parity_bytes
from vggexport.store.paths import PARITY
from vggexport.store.signature import (
    PASSWORD_ENV,
    SIGNATURE,
    check_curve,
    files_under,
    fingerprint,
    import_signing,
    read_key_pem,
    signed_files,
)


@dataclass(frozen=True)
class SignResult:
    path: Path  # the bundle written
    signed: dict[str, str]  # file name -> sha256
    unsigned: list[str]  # files in the folder the signature does not cover
    fingerprint: str


def load_private_key(path: Path) -> tuple[Any, str | None]:
    """(the key, its passphrase): the passphrase comes from $VGGEXPORT_SIGN_KEY_PASSWORD, never from argv
    (where every user of the machine can read it)."""
    data = read_key_pem(path, "private key")
    import_signing()
    from cryptography.hazmat.primitives import serialization

    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError:  # cryptography: encrypted without a password, or a password for a plain key
        if password is None:
            raise VggExportError(f"{path} is encrypted: set {PASSWORD_ENV} to its passphrase") from None
        raise VggExportError(f"{path} is not encrypted: unset {PASSWORD_ENV}") from None
    except ValueError:
        wrong = " or the passphrase in " + PASSWORD_ENV + " is wrong" if password is not None else ""
        raise VggExportError(f"{path} is not a PEM private key{wrong}") from None
    except Exception as exc:  # cryptography raises its own types for unsupported key formats
        raise VggExportError(f"{path} is not a usable private key ({first_line(exc, 100)})") from None
    if not hasattr(key, "public_key"):
        raise VggExportError(f"{path} is not a private key")
    check_curve(key.public_key(), path)
    return key, password


def verified_files(folder: Path) -> dict[str, str]:
    """What a model folder's signature covers: every file parity.json passed, with the sha256 it passed,
    and parity.json itself; each file's bytes on disk must be those."""
    record, parity = read_parity_bytes(folder)  # refuses a record the manifest does not match
    if not record or parity is None:
        raise VggExportError(f"no {PARITY} in {folder}: run `vggexport verify` before signing")
    expected = {name: str(entry.get("sha256")) for name, entry in sorted(record["files"].items())
                if isinstance(entry, dict) and entry.get("passed") is True}
    if not expected:
        raise VggExportError(f"{folder / PARITY} records no file as passed: nothing to sign")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise VggExportError(f"{path} passed verification but is missing: run `vggexport verify` again")
        if read_artifact(path).sha256 != digest:
            raise VggExportError(f"{path} is not the file {PARITY} passed (its sha256 differs): "
                                 f"run `vggexport verify` again before signing")
    expected[PARITY] = parity.sha256  # the bytes judged above; the bundle must sign those (check_written)
    return expected


def library_sign(folder: Path, key_path: Path, password: str | None, names: set[str], target: Path) -> None:
    """model-signing's file serialisation with sha256 over ``names``; every other file is an ignored path."""
    from model_signing import hashing, signing

    # Everything else under the folder is ignored, a nested model.sig or a stray partial included: the
    # library would otherwise hash it, and the bundle would not sign exactly ``names``.
    ignored = [folder / name for name in files_under(folder) if name not in names] + [folder / SIGNATURE]
    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
    config.set_ignored_paths(paths=[p.relative_to(folder) for p in ignored], ignore_git_paths=True)
    try:
        # Bytes, though the hint says str: the library hands it to cryptography, which takes only bytes.
        secret: Any = password.encode() if password is not None else None
        signing.Config().use_elliptic_key_signer(private_key=key_path, password=secret).set_hashing_config(
            config).sign(folder, target)
    except Exception as exc:  # the library's failures (a symlink in the folder, an unreadable file) in one line
        raise VggExportError(f"signing {folder} failed: {first_line(exc, 160)}") from None


def sign_files(folder: Path, key_path: str | os.PathLike[str], expected: dict[str, str]) -> SignResult:
    """Sign ``expected`` (name -> the sha256 its bytes must have) into ``folder/model.sig``, atomically."""
    folder, key_path = Path(folder), Path(key_path)
    key, password = load_private_key(key_path)
    if (folder / SIGNATURE).is_dir() or (folder / SIGNATURE).is_symlink():
        raise VggExportError(f"{folder / SIGNATURE} is not a file: remove it, then sign again")
    # The bundle is written beside the folder (outside the tree the library hashes, so a left-over partial
    # never blocks a later sign), then read back and renamed over model.sig: readers see the old bundle or
    # the new one, never half.
    partial = folder.parent / f".{folder.name}.{SIGNATURE}.{secrets.token_hex(8)}.tmp"
    try:
        library_sign(folder, key_path, password, set(expected), partial)
        written = check_written(folder, partial, key.public_key(), expected)
        os.replace(partial, folder / SIGNATURE)
    finally:
        partial.unlink(missing_ok=True)
    return SignResult(folder / SIGNATURE, written, [n for n in files_under(folder) if n not in expected],
                      fingerprint(key.public_key()))


def public_pem_format() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def check_written(folder: Path, partial: Path, public_key: Any, expected: dict[str, str]) -> dict[str, str]:
    """The bundle the library wrote, verified with the key's public half, signs exactly ``expected``."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # the verifier takes its key from a file
        key_file = Path(scratch) / "key.pub"
        key_file.write_bytes(public_key.public_bytes(*public_pem_format()))
        digests = signed_files(folder, key_file, bundle=partial).digests
    if digests != expected:
        changed = sorted(set(digests) ^ set(expected) | {n for n in digests if digests[n] != expected.get(n)})
        raise VggExportError(f"{', '.join(changed)} in {folder} changed while it was signed: nothing was signed; "
                             f"run `vggexport verify` and sign again")
    return digests


def sign_model_folder(folder: Path, key_path: str | os.PathLike[str]) -> SignResult:
    """Sign what parity.json passed, and parity.json; record the signature (unsigned) in manifest.json so the
    report can show who signed what."""
    result = sign_files(folder, key_path, verified_files(folder))
    record_signature(folder, result)
    return result


def record_signature(folder: Path, result: SignResult) -> None:
    sha = hashlib.sha256(result.path.read_bytes()).hexdigest()
    update_manifest(folder, signature={"file": SIGNATURE, "sha256": sha, "key_fingerprint": result.fingerprint,
                                       "files": sorted(result.signed)})
