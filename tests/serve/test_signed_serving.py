"""`vggexport serve --require-signature`: the gate refuses every break of a signed folder in one line, before
listening, in the parent and in every worker; it judges the verdict it read under the signature, and a server
without the option never loads model-signing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.serve_process import ServerProcess
from tests.signed_folders import BREAKS, GATE_SAYS, MODEL_SIGNING, one_line_error
from vggexport.store.manifest import update_manifest


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

