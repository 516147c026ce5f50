"""Signed deployments: `vggexport sign`, `verify-signature`, `serve/triton --require-signature`, and the
OpenSSF model-signing CLI agreeing with them in both directions. Every refusal is one line, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli, ServerProcess
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


def test_the_library_clis_bundle_without_the_served_file_does_not_cover_it(folder: Path,
                                                                           keys: dict[str, Path]) -> None:
    from vggexport.errors import VggExportError
    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    made = subprocess.run([MODEL_SIGNING, "sign", "key", "--private_key", str(keys["key"]), "--signature",
                           str(folder / "model.sig"), "--ignore-paths", str(folder / "model.onnx"), str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    with pytest.raises(VggExportError, match="is not covered by"):
        create_app(ServeConfig(model=str(folder / "model.onnx"), provider="cpu", require_signature=str(keys["pub"])))


def serve_refusal(folder: Path, public: Path) -> str:
    """`vggexport serve --require-signature` on the folder: it must exit before listening, in one line."""
    process = ServerProcess(folder / "model.onnx", "--provider", "cpu", "--require-signature", str(public),
                            gate=True)
    try:
        output, _ = process.process.communicate(timeout=60)
    finally:
        process.stop()
    assert process.process.returncode != 0, output
    return one_line_error(subprocess.CompletedProcess([], process.process.returncode, "", output))


def test_serve_require_signature_refuses(signed: Path, keys: dict[str, Path]) -> None:
    """The real command, for one break (a process start costs seconds); the rest below, in-process."""
    BREAKS["forged-parity-and-manifest"](signed, keys)
    assert "re-sign with `vggexport sign`" in serve_refusal(signed, keys["pub"])


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_the_serving_gate_refuses_every_break(signed: Path, keys: dict[str, Path], case: str) -> None:
    from vggexport.errors import VggExportError
    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    BREAKS[case](signed, keys)
    model = signed / ("model.renamed.onnx" if case == "renamed-file" else "model.onnx")
    with pytest.raises(VggExportError, match=GATE_SAYS[case]) as refused:
        create_app(ServeConfig(model=str(model), provider="cpu", require_signature=str(keys["pub"])))
    assert "\n" not in str(refused.value)


def test_serve_require_signature_serves_a_faithful_folder_without_torch(signed: Path, keys: dict[str, Path]) -> None:
    import httpx

    server = ServerProcess(signed / "model.onnx", "--provider", "cpu", "--require-signature", str(keys["pub"]),
                           gate=True).wait_ready()
    try:
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps
        assert httpx.get(f"{server.url}/v2/models/vgg11_bn", timeout=5).status_code == 200
    finally:
        server.stop()


def test_a_later_verify_makes_serve_refuse_until_re_signed(signed: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    from vggexport.errors import VggExportError
    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    verified = run_cli("verify", "--artifacts", signed.parent, "--model", signed / "model.onnx", "--samples", "64")
    assert verified.exit_code == 0, verified.output  # parity.json is rewritten (new verdict times)
    config = ServeConfig(model=str(signed / "model.onnx"), provider="cpu", require_signature=str(keys["pub"]))
    with pytest.raises(VggExportError, match=r"parity.json has changed since it was signed.*re-sign with `vggexport"):
        create_app(config)
    assert run_cli("sign", "--artifacts", signed.parent, "--key", keys["key"]).exit_code == 0
    create_app(config).state.service.engine.runner.deactivate()


def test_a_worker_refusal_is_one_line_and_uvicorns_startup_failure(folder: Path, keys: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Workers rebuild their config from the parent's: the key goes with it, so each one's load is checked,
    and a refusal exits with code 3, on which uvicorn's supervisor stops instead of restarting it forever."""
    from dataclasses import asdict

    from vggexport.serve.app import CONFIG_ENV, FAILED_ENV, app_from_environment
    from vggexport.serve.service import ServeConfig

    config = ServeConfig(model=str(folder / "model.onnx"), provider="cpu", workers=2,
                         require_signature=str(keys["pub"]))
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"config": asdict(config), "listen": {"host": "127.0.0.1"}}))
    monkeypatch.delenv(FAILED_ENV, raising=False)
    with pytest.raises(SystemExit, match="^3$"):  # the folder was never signed
        app_from_environment()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no signature at"), lines


def test_serve_workers_stop_and_exit_non_zero_when_a_worker_refuses(signed: Path, keys: dict[str, Path]) -> None:
    """The parent's check passes; the bundle goes before the workers (fresh interpreters, seconds away) read it."""
    process = ServerProcess(signed / "model.onnx", "--provider", "cpu", "--workers", "2", "--require-signature",
                            str(keys["pub"]), gate=True)
    try:
        assert process.process.stdout is not None
        seen = []
        for line in process.process.stdout:
            seen.append(line)
            if "] serving " in line:
                (signed / "model.sig").unlink()
                break
        rest, _ = process.process.communicate(timeout=60)
    finally:
        process.stop()
    output = "".join(seen) + rest
    assert "a worker refused to start: no signature at" in one_line_error(
        subprocess.CompletedProcess([], process.process.returncode, "", output))


def test_serve_without_require_signature_never_loads_model_signing(folder: Path, keys: dict[str, Path]) -> None:
    code = ("import sys; from vggexport.serve.app import create_app; from vggexport.serve.service import ServeConfig; "
            f"create_app(ServeConfig(model={str(folder / 'model.onnx')!r}, provider='cpu', "
            "require_signature=sys.argv[1] or None)); "
            "print('model_signing' in sys.modules, 'torch' in sys.modules)")
    plain = subprocess.run([sys.executable, "-c", code, ""], capture_output=True, text=True, timeout=60)
    assert plain.stdout.split() == ["False", "False"], plain.stdout + plain.stderr
    assert Cli()("sign", "--artifacts", folder.parent, "--key", keys["key"]).exit_code == 0
    checked = subprocess.run([sys.executable, "-c", code, str(keys["pub"])], capture_output=True, text=True,
                             timeout=60)
    assert checked.stdout.split() == ["True", "False"], checked.stdout + checked.stderr


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


def test_verify_sign_key_signs_after_a_passing_run(folder: Path, keys: dict[str, Path], run_cli: Cli) -> None:
    result = run_cli("verify", "--artifacts", folder.parent, "--model", folder / "model.onnx", "--random-only",
                     "--sign-key", keys["key"])
    assert result.exit_code == 0, result.output
    assert "not signed:" in result.output
    assert run_cli("verify-signature", keys["pub"], folder).exit_code == 0


def test_the_report_shows_the_signature(signed: Path, keys: dict[str, Path]) -> None:
    from vggexport.report.card import signature_part
    from vggexport.store.manifest import read_manifest
    from vggexport.store.signature import fingerprint, load_public_key

    shown = signature_part(signed, read_manifest(signed))
    assert fingerprint(load_public_key(keys["pub"])) in shown and "model.onnx, parity.json" in shown
    assert "changed or gone" not in shown
    (signed / "model.sig").unlink()
    assert "changed or gone" in signature_part(signed, read_manifest(signed))


class SwapOnReread:
    """An audit hook (it observes, it replaces nothing we ship): the second time ``path`` is opened, ``swap``
    rewrites it first. The race of a swap between two reads of parity.json, made deterministic."""

    def __init__(self, path: Path, swap: Callable[[], None]) -> None:
        self.path, self.swap, self.opens, self.armed = str(path.resolve()), swap, 0, True
        sys.addaudithook(self.hook)  # hooks cannot be removed: disarm() makes it inert

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.armed or event != "open" or not isinstance(args[0], str):
            return
        import os

        if os.path.realpath(args[0]) == self.path:
            self.opens += 1
            if self.opens == 2:
                self.armed = False
                self.swap()

    def disarm(self) -> None:
        self.armed = False


def test_the_gates_judge_the_signed_verdict_not_a_later_read(folder: Path, keys: dict[str, Path], run_cli: Cli,
                                                              tmp_path: Path) -> None:
    """The signed verdict is random inputs only; a passing record (manifest rebuilt) swapped in after the signed
    read must change nothing: serve and triton refuse by the signed verdict."""
    from vggexport.errors import VggExportError
    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    passing = (folder / "parity.json").read_text()
    record = json.loads(passing)
    for verdict in record["files"]["model.onnx"]["runtimes"]:
        verdict["real_data"] = {"checked": False, "samples": 0, "complete": False}
    (folder / "parity.json").write_text(json.dumps(record, indent=2) + "\n")
    update_manifest(folder, [folder / "parity.json"])
    assert run_cli("sign", "--artifacts", folder.parent, "--key", keys["key"]).exit_code == 0
    signed_record = (folder / "parity.json").read_text()

    def swap() -> None:
        (folder / "parity.json").write_text(passing)
        update_manifest(folder, [folder / "parity.json"])

    def restore() -> None:
        (folder / "parity.json").write_text(signed_record)
        update_manifest(folder, [folder / "parity.json"])

    hook = SwapOnReread(folder / "parity.json", swap)
    try:
        with pytest.raises(VggExportError, match="verified on random inputs only"):
            create_app(ServeConfig(model=str(folder / "model.onnx"), provider="cpu",
                                   require_signature=str(keys["pub"])))
        restore()
        hook.opens, hook.armed = 0, True
        refused = run_cli("triton", "--artifacts", folder.parent, "--repository", tmp_path / "repo", "--kind", "cpu",
                          "--require-signature", keys["pub"])
        assert "verified on random inputs only" in one_line_error(refused)
    finally:
        hook.disarm()
    assert not (tmp_path / "repo" / "vgg11_bn").exists()


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


def test_the_report_survives_a_hand_edited_signature_record(signed: Path) -> None:
    from vggexport.report.card import signature_part
    from vggexport.store.manifest import read_manifest

    manifest = read_manifest(signed)
    manifest["signature"]["files"] = 3
    assert "Key fingerprint" in signature_part(signed, manifest)  # no TypeError from the hand-edited list
