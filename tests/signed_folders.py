"""Signed folders for the signing tests of every stage: key pairs, a private copy of the session's verified
tiny model (signed or not), the ways to break a signed folder, and what each refusal must look like.
Its fixtures reach every test module through ``pytest_plugins`` in tests/conftest.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli
from vggexport.store.manifest import update_manifest

MODEL_SIGNING = str(Path(sys.executable).with_name("model_signing"))


def write_key_pair(folder: Path, name: str, password: bytes | None = None) -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    (key, pub), (other, other_pub) = write_key_pair(root, "key"), write_key_pair(root, "other")
    locked, _ = write_key_pair(root, "locked", b"s3cret")
    return {"key": key, "pub": pub, "other": other, "other_pub": other_pub, "locked": locked}


@pytest.fixture(scope="module")
def verified_folder(verified_tiny: Path) -> Path:
    """model.onnx that verify passed (random and synthetic real data), beside best.pt and manifest.json: the
    session's verified tiny model, only read (``folder`` is the copy a test breaks)."""
    return verified_tiny


@pytest.fixture
def folder(verified_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the verified folder (tests break it)."""
    return Path(shutil.copytree(verified_folder, tmp_path / "artifacts" / "vgg11_bn"))


@pytest.fixture
def signed(folder: Path, keys: dict[str, Path], run_cli: Cli) -> Path:
    result = run_cli("sign", "--artifacts", folder.parent, "--key", keys["key"])
    assert result.exit_code == 0, result.output
    return folder


def one_line_error(result: object) -> str:
    """The refusal of a CliRunner result or a CompletedProcess: non-zero exit, one line, no traceback."""
    code = getattr(result, "exit_code", getattr(result, "returncode", 0))
    text = getattr(result, "output", None) or getattr(result, "stderr", "")
    assert code != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def library_verify(target: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODEL_SIGNING, "verify", "key", "--signature", str(target / "model.sig"),
                           "--public_key", str(public), "--ignore_unsigned_files", str(target)],
                          capture_output=True, text=True, timeout=60)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def forge_parity(folder: Path) -> None:
    """A forged verdict with a manifest rebuilt to match it: passes read_parity, so only the signature catches it."""
    record = json.loads((folder / "parity.json").read_text())
    record["files"]["model.onnx"]["runtimes"][0]["tolerances"]["atol"] = 1.0
    (folder / "parity.json").write_text(json.dumps(record, indent=2) + "\n")
    update_manifest(folder, [folder / "parity.json"])


BREAKS: dict[str, Callable[[Path, dict[str, Path]], object]] = {
    "flipped-onnx-byte": lambda f, k: flip_byte(f / "model.onnx"),
    "flipped-parity-byte": lambda f, k: (f / "parity.json").write_text(
        (f / "parity.json").read_text().replace('"passed": true', '"passed": true ', 1)),
    "forged-parity-and-manifest": lambda f, k: forge_parity(f),
    "renamed-file": lambda f, k: (f / "model.onnx").rename(f / "model.renamed.onnx"),
    "missing-bundle": lambda f, k: (f / "model.sig").unlink(),
    "empty-bundle": lambda f, k: (f / "model.sig").write_bytes(b""),
    "truncated-bundle": lambda f, k: (f / "model.sig").write_bytes((f / "model.sig").read_bytes()[:200]),
    "non-json-bundle": lambda f, k: (f / "model.sig").write_text("not json\n"),
    "json-not-a-bundle": lambda f, k: (f / "model.sig").write_text('{"mediaType": 3}'),
    "huge-bundle": lambda f, k: (f / "model.sig").write_bytes(b" " * (2 << 20)),
    "another-keys-bundle": lambda f, k: shutil.copyfile(sign_with(f, k["other"]), f / "model.sig"),
    "deeply-nested-bundle": lambda f, k: (f / "model.sig").write_text("[" * 200_000),
}


# What the signature gate says for each break: the plain parity gate would say none of these.
GATE_SAYS = {
    "flipped-onnx-byte": r"model.onnx has changed since it was signed",
    "flipped-parity-byte": r"parity.json has changed since it was signed",
    "forged-parity-and-manifest": r"parity.json has changed since it was signed",
    "renamed-file": r"model.renamed.onnx is not covered by .*model.sig",
    "missing-bundle": r"no signature at .*model.sig",
    "empty-bundle": r"model.sig is empty",
    "truncated-bundle": r"model.sig is not JSON",
    "non-json-bundle": r"model.sig is not JSON",
    "json-not-a-bundle": r"model.sig is not a model-signing bundle",
    "huge-bundle": r"larger than any signature bundle",
    "another-keys-bundle": r"was not signed by the key",
    "deeply-nested-bundle": r"model.sig is not JSON",
}


def sign_with(folder: Path, key: Path) -> Path:
    """A bundle over the same files by another key (written beside the folder)."""
    copy = Path(shutil.copytree(folder, folder.parent / "other-copy"))
    result = Cli()("sign", "--artifacts", copy.parent, "--name", copy.name, "--key", key)
    assert result.exit_code == 0, result.output
    return copy / "model.sig"

