"""`vggexport triton --require-signature --sign-key`: the source's signature is checked, the entry is signed, and
no refusal or failed signing leaves an unsigned entry behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.signed_folders import flip_byte, library_verify, one_line_error


def test_triton_checks_the_source_and_signs_the_entry(signed: Path, keys: dict[str, Path], run_cli: Cli,
                                                      tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    result = run_cli("triton", "--artifacts", signed.parent, "--repository", repository, "--kind", "cpu",
                     "--require-signature", keys["pub"], "--sign-key", keys["key"])
    assert result.exit_code == 0, result.output
    entry = repository / "vgg11_bn"
    checked = library_verify(entry, keys["pub"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ours = run_cli("verify-signature", keys["pub"], entry)
    assert ours.exit_code == 0 and "1/model.onnx, config.pbtxt, labels.txt" in ours.output, ours.output
    flip_byte(entry / "labels.txt")
    assert "vggexport triton --require-signature" in one_line_error(run_cli("verify-signature", keys["pub"], entry))
    (signed / "model.sig").unlink()
    one_line_error(run_cli("triton", "--artifacts", signed.parent, "--repository", tmp_path / "repo2", "--kind",
                           "cpu", "--require-signature", keys["pub"]))
    assert not (tmp_path / "repo2").exists()  # checked before anything was written


def test_triton_signs_only_a_source_whose_signature_was_checked(signed: Path, keys: dict[str, Path], run_cli: Cli,
                                                                tmp_path: Path) -> None:
    base = ("triton", "--artifacts", signed.parent, "--repository", tmp_path / "repo", "--kind", "cpu",
            "--sign-key", keys["key"])
    assert "--sign-key needs --require-signature" in one_line_error(run_cli(*base))
    assert "--allow-unverified" in one_line_error(run_cli(*base, "--require-signature", keys["pub"],
                                                          "--allow-unverified"))
    assert not (tmp_path / "repo").exists()


def test_triton_sign_key_refuses_to_leave_other_versions_unsigned(signed: Path, keys: dict[str, Path],
                                                                   run_cli: Cli, tmp_path: Path) -> None:
    old = tmp_path / "repo" / "vgg11_bn" / "2"
    old.mkdir(parents=True)
    (old / "model.onnx").write_bytes(b"an older version")
    refused = run_cli("triton", "--artifacts", signed.parent, "--repository", tmp_path / "repo", "--kind", "cpu",
                      "--require-signature", keys["pub"], "--sign-key", keys["key"])
    assert "holds 2 besides what this writes" in one_line_error(refused)
    assert sorted(p.name for p in old.parent.iterdir()) == ["2"]


def test_a_failed_entry_signing_writes_no_entry(signed: Path, keys: dict[str, Path], run_cli: Cli, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The library failing (the one thing replaced: model-signing's, not ours) leaves no unsigned entry."""
    from model_signing import signing

    def broken(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(signing.Config, "sign", broken)
    refused = run_cli("triton", "--artifacts", signed.parent, "--repository", tmp_path / "repo", "--kind", "cpu",
                      "--require-signature", keys["pub"], "--sign-key", keys["key"])
    assert "disk full" in one_line_error(refused)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == []  # no entry, no staging, no partial

