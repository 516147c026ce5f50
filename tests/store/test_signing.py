"""`vggexport sign` and `verify-signature` (and `verify --sign-key`), and the OpenSSF model-signing CLI agreeing
with them in both directions. Every refusal is one line, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.signed_folders import BREAKS, MODEL_SIGNING, flip_byte, library_verify, one_line_error


def test_sign_lists_what_it_signs_and_leaves_out_and_the_library_agrees(folder: Path, keys: dict[str, Path],
                                                                       run_cli: Cli) -> None:
    from vggexport.store.signature import fingerprint, load_public_key

    result = run_cli("sign", "--artifacts", folder.parent, "--key", keys["key"])
    assert result.exit_code == 0, result.output
    signed_line, unsigned_line = result.output.strip().splitlines()[-2:]
    assert "model.onnx, parity.json" in signed_line and fingerprint(load_public_key(keys["pub"])) in signed_line
    assert unsigned_line.startswith("not signed:") and "best.pt" in unsigned_line and "manifest.json" in unsigned_line
    assert not list(folder.glob(".model.sig.*"))  # the partial bundle was renamed, none is left over
    checked = library_verify(folder, keys["pub"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ours = run_cli("verify-signature", keys["pub"], folder)
    assert ours.exit_code == 0 and "2 file(s) match: model.onnx, parity.json" in ours.output, ours.output


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_verify_signature_refuses_in_one_line(signed: Path, keys: dict[str, Path], run_cli: Cli, case: str) -> None:
    BREAKS[case](signed, keys)
    one_line_error(run_cli("verify-signature", keys["pub"], signed))


def test_a_key_that_is_no_key_is_refused(signed: Path, keys: dict[str, Path], run_cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    assert "not a PEM public key" in one_line_error(run_cli("verify-signature", junk, signed))
    assert "private key" in one_line_error(run_cli("verify-signature", keys["key"], signed))
    assert "not a PEM private key" in one_line_error(run_cli("sign", "--artifacts", signed.parent, "--key", junk))


def test_an_encrypted_key_needs_its_variable(folder: Path, keys: dict[str, Path], run_cli: Cli,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VGGEXPORT_SIGN_KEY_PASSWORD", raising=False)
    assert "VGGEXPORT_SIGN_KEY_PASSWORD" in one_line_error(run_cli("sign", "--artifacts", folder.parent,
                                                                   "--key", keys["locked"]))
    monkeypatch.setenv("VGGEXPORT_SIGN_KEY_PASSWORD", "wrong")
    assert "passphrase" in one_line_error(run_cli("sign", "--artifacts", folder.parent, "--key", keys["locked"]))
    monkeypatch.setenv("VGGEXPORT_SIGN_KEY_PASSWORD", "s3cret")
    assert run_cli("sign", "--artifacts", folder.parent, "--key", keys["locked"]).exit_code == 0


def test_sign_refuses_bytes_that_parity_json_did_not_pass(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    flip_byte(folder / "model.onnx")
    assert "run `vggexport verify` again" in one_line_error(
        run_cli("sign", "--artifacts", folder.parent, "--key", keys["key"]))
    assert not (folder / "model.sig").exists()


def test_our_verifier_accepts_the_library_clis_bundle(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    made = subprocess.run([MODEL_SIGNING, "sign", "key", "--private_key", str(keys["key"]),
                           "--signature", str(folder / "model.sig"), str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    result = run_cli("verify-signature", keys["pub"], folder)
    assert result.exit_code == 0, result.output
    assert "manifest.json" in result.output.splitlines()[-2]  # the library signed every file


def test_verify_sign_key_signs_after_a_passing_run(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    result = run_cli("verify", "--artifacts", folder.parent, "--model", folder / "model.onnx", "--random-only",
                     "--sign-key", keys["key"])
    assert result.exit_code == 0, result.output
    assert "not signed:" in result.output
    assert run_cli("verify-signature", keys["pub"], folder).exit_code == 0


def test_verify_sign_key_signs_the_folder_it_verified(folder: Path, keys: dict[str, Path], run_cli: Cli,
                                                      tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(folder / "model.onnx", elsewhere / "model.onnx")
    result = run_cli("verify", "--artifacts", folder.parent, "--model", elsewhere / "model.onnx", "--random-only",
                     "--sign-key", keys["key"])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "model.sig").is_file() and not (folder / "model.sig").exists()
    assert run_cli("verify-signature", keys["pub"], elsewhere).exit_code == 0


def test_left_overs_in_the_folder_do_not_block_sign(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    (folder / ".model.sig.0123456789abcdef.tmp").write_text("a partial bundle of a killed sign")
    (folder / "old").mkdir()
    (folder / "old" / "model.sig").write_text("{}")
    result = run_cli("sign", "--artifacts", folder.parent, "--key", keys["key"])
    assert result.exit_code == 0, result.output
    assert "old/model.sig" in result.output.splitlines()[-1]  # listed as not signed
    assert not list(folder.parent.glob(".*.tmp"))


def test_sign_refuses_a_model_sig_folder(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    (folder / "model.sig").mkdir()
    assert "model.sig is not a file" in one_line_error(run_cli("sign", "--artifacts", folder.parent,
                                                               "--key", keys["key"]))


def test_without_the_signing_extra_one_line(signed: Path, keys: dict[str, Path], run_cli: Cli,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in ("model_signing", "cryptography")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "model_signing", None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for args in (("sign", "--artifacts", signed.parent, "--key", keys["key"]),
                 ("verify-signature", keys["pub"], signed)):
        assert "install 'vggexport[signing]'" in one_line_error(run_cli(*args))

