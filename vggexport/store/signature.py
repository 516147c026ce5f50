"""Checking a folder's ``model.sig``: an OpenSSF model-signing bundle, signed with an elliptic-curve key.

parity.json and manifest.json prove integrity only: whoever can rewrite a file can rewrite both records
beside it. The bundle proves who vouched: it signs the sha256 of every file verify passed and of
parity.json itself (so each verdict is signed too). What is checked is the bundle's signed digests against
the bytes the caller already read, never the path read again. Torch-free, and ``model_signing`` is imported
only here and only when a check runs: a server started without ``--require-signature`` never loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.errors import VggExportError, first_line
from vggexport.store.fileio import ArtifactBytes, read_artifact
from vggexport.store.paths import PARITY

SIGNATURE = "model.sig"
PASSWORD_ENV = "VGGEXPORT_SIGN_KEY_PASSWORD"
RESIGN = "re-sign with `vggexport sign`"
RESIGN_ENTRY = "re-sign the entry with `vggexport triton --require-signature PUB.pem --sign-key KEY.pem`"
# A bundle for a few files is a few KiB; anything far larger is not one of ours and is not parsed.
MAX_BUNDLE_BYTES = 1 << 20
MAX_KEY_BYTES = 64 << 10
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's key signer accepts


def resign(folder: Path) -> str:
    """How to re-sign ``folder``: a Triton entry is signed by the command that writes it, not by `sign`."""
    return RESIGN_ENTRY if (folder / "config.pbtxt").is_file() else RESIGN


def import_signing() -> None:
    """model-signing and cryptography come with the optional extra: without it, one line instead of a traceback."""
    try:
        import cryptography.hazmat.primitives.serialization  # noqa: F401
        import model_signing._signing.sign_ec_key  # noqa: F401
        import model_signing.signing  # noqa: F401
    except ImportError as exc:
        raise VggExportError(f"signing needs model-signing ({first_line(exc, 80)}): "
                             f"install 'vggexport[signing]'") from None


@dataclass(frozen=True)
class SignedFiles:
    """What a verified bundle vouches for: file name (relative to the folder) -> sha256."""

    folder: Path
    digests: dict[str, str]
    fingerprint: str  # sha256 of the signing key's public DER (SubjectPublicKeyInfo)


def read_key_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()[:MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise VggExportError(f"cannot read the {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_KEY_BYTES or b"-----BEGIN" not in data:
        raise VggExportError(f"{path} is not a PEM {what}")
    return data


def check_curve(key: Any, path: Path) -> None:
    import_signing()
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise VggExportError(f"{path} is not an elliptic-curve key on P-256, P-384 or P-521 "
                             f"(make one with `openssl ecparam -name prime256v1 -genkey -noout`)")


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """The public key in PEM file ``path``; a one-line error for anything else (a private key included)."""
    path = Path(path)
    data = read_key_pem(path, "public key")
    import_signing()
    from cryptography.hazmat.primitives import serialization
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        hint = " (that is a private key: pass its public half)" if b"PRIVATE KEY" in data else ""
        raise VggExportError(f"{path} is not a PEM public key{hint}") from None
    check_curve(key, path)
    return key


def fingerprint(public_key: Any) -> str:
    """sha256 of the public key's DER: ``openssl pkey -pubin -outform DER | sha256sum`` says the same."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_bundle_file(path: Path, hint: str = RESIGN) -> None:
    """Refuse a missing, empty, huge or non-JSON bundle in one line, before the library parses it."""
    if not path.is_file():
        raise VggExportError(f"no signature at {path}: sign the folder with `vggexport sign --key KEY.pem`")
    size = path.stat().st_size
    if size == 0 or size > MAX_BUNDLE_BYTES:
        why = "is empty" if size == 0 else f"is {size:,} bytes, larger than any signature bundle"
        raise VggExportError(f"{path} {why}: {hint}")
    try:  # RecursionError: '[' * 200000 is valid-looking JSON nested past the parser's stack
        parsed = json.loads(path.read_bytes()[:MAX_BUNDLE_BYTES])
    except (ValueError, RecursionError):
        raise VggExportError(f"{path} is not JSON (truncated or not a signature bundle): {hint}") from None
    if not isinstance(parsed, dict):
        raise VggExportError(f"{path} is not a model-signing bundle: {hint}")


def signed_files(folder: Path, public_key_path: str | os.PathLike[str], bundle: Path | None = None) -> SignedFiles:
    """Verify ``folder/model.sig`` (or ``bundle``) against the public key and return the digests it signs.

    Only file serialisation with sha256 is accepted: those digests are comparable with the sha256 of bytes
    already read (shard digests are not).
    """
    public_key = load_public_key(public_key_path)
    path = bundle or folder / SIGNATURE
    hint = resign(folder)
    check_bundle_file(path, hint)
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    try:  # untrusted input: any parse failure of the library's is this file's fault, said in one line
        signature = sign_sigstore_pb.Signature.read(path)
    except Exception as exc:
        raise VggExportError(f"{path} is not a model-signing bundle ({first_line(exc, 120)}): {hint}") from None
    try:
        manifest = sign_ec_key.Verifier(Path(public_key_path)).verify(signature)
    except Exception as exc:  # cryptography's InvalidSignature says nothing; a key mismatch says so
        raise VggExportError(f"{path} was not signed by the key {public_key_path} (or was altered after signing: "
                             f"{first_line(exc, 100) or 'invalid signature'}); {hint}") from None
    method = manifest.serialization_type
    if method.get("method") != "files" or method.get("hash_type") != "sha256":
        raise VggExportError(f"{path} signs {method.get('method')} with {method.get('hash_type')}; vggexport "
                             f"checks file serialisation with sha256: {hint}")
    digests = {str(d.identifier): d.digest.digest_hex for d in manifest.resource_descriptors()}
    return SignedFiles(folder, digests, fingerprint(public_key))


def check_signed_bytes(signed: SignedFiles, name: str, sha256: str) -> None:
    """The bytes read for ``name`` are the ones the signature vouches for."""
    hint = resign(signed.folder)
    if name not in signed.digests:
        raise VggExportError(f"{signed.folder / name} is not covered by {signed.folder / SIGNATURE}: "
                             f"verify it, then {hint}")
    if signed.digests[name] != sha256:
        raise VggExportError(f"{signed.folder / name} has changed since it was signed (sha256 differs from "
                             f"{SIGNATURE}): verify it again if it was re-exported, then {hint}")


def require_signed(artifact: ArtifactBytes, public_key_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The signed parity record, parsed from the very bytes whose sha256 ``model.sig`` signs, when the bundle
    beside ``artifact`` is the key's, covers those bytes too and the record passed them; else a one-line error.

    The caller's parity gate must judge this record (``require_verified(..., record=...)``), never parity.json
    read again: the file could be swapped after this read, with a manifest rebuilt to match.
    """
    from vggexport.store.parity_record import parse_parity

    folder = artifact.path.resolve().parent
    signed = signed_files(folder, public_key_path)
    check_signed_bytes(signed, artifact.path.name, artifact.sha256)
    parity = read_artifact(folder / PARITY) if (folder / PARITY).is_file() else None
    if parity is None:
        raise VggExportError(f"no {PARITY} beside {artifact.path}: run `vggexport verify`, then {RESIGN}")
    check_signed_bytes(signed, PARITY, parity.sha256)
    record = parse_parity(parity)  # the signed bytes: the only record any later check may judge
    entry = record["files"].get(artifact.path.name)
    if not isinstance(entry, dict) or entry.get("sha256") != artifact.sha256 or entry.get("passed") is not True:
        raise VggExportError(f"the signed {PARITY} does not record {artifact.path} as passed: "
                             f"verify it, then {RESIGN}")
    return record


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` by relative name, the bundle itself left out: what a signature could cover.
    Only the top-level model.sig is the bundle: a nested one is a file like any other."""
    return sorted(name for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                  if name != SIGNATURE)


def verify_folder(folder: Path, public_key_path: str | os.PathLike[str]) -> tuple[SignedFiles, list[str]]:
    """Check every signed file's bytes on disk; returns what the signature covers and the files it does not."""
    signed = signed_files(folder, public_key_path)
    from model_signing import verifying

    hint = resign(folder)
    try:  # the library's own judgement of the folder first: every signed file re-hashed from disk
        verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key_path)).set_ignore_unsigned_files(
            True).verify(folder, folder / SIGNATURE)
    except Exception as exc:
        raise VggExportError(f"{folder} does not match {SIGNATURE}: {first_line(exc, 160)}; {hint}") from None
    for name in sorted(signed.digests):
        if not (folder / name).is_file():
            raise VggExportError(f"{folder / name} is signed but missing (renamed or deleted): {hint}")
        check_signed_bytes(signed, name, read_artifact(folder / name).sha256)
    return signed, [name for name in files_under(folder) if name not in signed.digests]


def required_files(folder: Path) -> tuple[str, ...]:
    """What a faithful signature must cover: a Triton entry's config, labels and every version's model.onnx;
    a model folder's parity.json and every file that parity.json records as passed."""
    if (folder / "config.pbtxt").is_file():
        labels = ("labels.txt",) if (folder / "labels.txt").is_file() else ()
        return ("config.pbtxt", *labels, *sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/model.onnx")))
    try:
        record = json.loads((folder / PARITY).read_bytes())
        passed = [name for name, entry in record["files"].items() if entry.get("passed") is True]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise VggExportError(f"{folder} has no readable {PARITY} and no config.pbtxt: not a model folder "
                             f"or a Triton entry") from None
    return (PARITY, *sorted(passed))


def check_folder(folder: Path, public_key_path: str | os.PathLike[str]) -> tuple[SignedFiles, list[str]]:
    """``vggexport verify-signature``: the bundle, every signed file on disk, and the coverage rules."""
    if not folder.is_dir():
        raise VggExportError(f"no folder at {folder}")
    signed, unsigned = verify_folder(folder, public_key_path)
    for name in required_files(folder):  # after verify_folder: a signed parity.json is the one read here
        check_signed_bytes(signed, name, signed.digests.get(name, ""))
    return signed, unsigned
