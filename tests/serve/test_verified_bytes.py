"""The serving gate reads each file once: the sha256 it checks is that of the bytes the session loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.broken_models import BREAKERS, broken_copy, replace_hostile
from tests.serve_process import ServerProcess
from vggexport.errors import VggExportError
from vggexport.store.fileio import sha256_file
from vggexport.backend.onnxrt import OnnxRuntimeRunner
from vggexport.serve.app import create_app
from vggexport.serve.runner import ServingRunner
from vggexport.serve.service import ServeConfig

BATCH = np.random.default_rng(3).standard_normal((4, 1, 32, 32), dtype=np.float32)


def outputs_of(path: Path) -> np.ndarray:
    with OnnxRuntimeRunner(path) as runner:
        return runner.infer(BATCH)


def recorded_sha256(folder: Path) -> str:
    return str(json.loads((folder / "parity.json").read_text())["files"]["model.onnx"]["sha256"])


def test_the_session_runs_the_bytes_the_gate_checked(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is swapped for a broken one right after the gate passed it: the server runs what was checked."""
    from vggexport.serve import service

    model = folder / "model.onnx"
    good = outputs_of(model)
    broken = broken_copy(model, folder.parent / "broken.onnx", BREAKERS["altered-weights"])
    checked = service.gated_bytes

    def check_then_swap(path: Path, config: ServeConfig) -> object:
        artifact = checked(path, config)
        shutil.copyfile(broken, path)  # what reading the path again would now load
        return artifact

    monkeypatch.setattr(service, "gated_bytes", check_then_swap)
    said: list[str] = []
    app = create_app(ServeConfig(model=str(model), provider="cpu", gate="refuse"), phase=said.append)
    runner = app.state.service.engine.runner
    assert sha256_file(model) != recorded_sha256(folder)  # the swap happened
    np.testing.assert_array_equal(runner.infer_all(BATCH)[0], good)
    runner.deactivate()
    with pytest.raises(RuntimeError, match="loads them once"):  # its copy of the bytes was released
        runner.activate()
    assert not np.allclose(outputs_of(broken), good, rtol=1e-2, atol=1e-7)  # the file on disk computes otherwise
    assert any(f"sha256 {recorded_sha256(folder)}" in line for line in said), said


def test_a_file_changed_after_verify_is_refused_where_the_session_is_made(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Re-exported (so the manifest vouches for the new bytes) but not verified again."""
    from vggexport.checkpoint import load_checkpoint
    from vggexport.export.onnx import export_onnx
    from vggexport.export.spec import ExportSpec

    model = folder / "model.onnx"
    export_onnx(load_checkpoint(folder / "best.pt"), model, ExportSpec(opset=20))
    with pytest.raises(VggExportError, match="changed after it was verified.*--allow-unverified"):
        create_app(ServeConfig(model=str(model), provider="cpu", gate="refuse"))
    said: list[str] = []
    create_app(ServeConfig(model=str(model), provider="cpu", gate="warn"), phase=said.append)
    assert "changed after it was verified" in capsys.readouterr().err
    assert any(f"sha256 {sha256_file(model)}" in line for line in said)  # the bytes it warned about are served
    with pytest.raises(VggExportError, match="changed after it was verified"):
        create_app(ServeConfig(model=str(model), provider="cpu"))  # an embedder's create_app refuses too
    create_app(ServeConfig(model=str(model), provider="cpu", gate="off"))  # unless it opts out by name
    assert capsys.readouterr().err == ""


def hostile(folder: Path, case: str) -> Path:
    return replace_hostile(folder / "model.onnx", case)


# Where the manifest records the file, it refuses other bytes before anything parses them.
CHANGED = "has changed since vggexport wrote it"
CASES = {"directory": "no ONNX model at", "symlink loop": "no ONNX model at", "empty": CHANGED, "truncated": CHANGED}
UNRECORDED = {**CASES, "empty": "is empty", "truncated": "ONNX Runtime cannot load"}


@pytest.mark.parametrize("gate", ["refuse", "warn", "off"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recorded", [True, False], ids=["in-manifest", "unrecorded"])
def test_hostile_files_are_a_one_line_error(folder: Path, case: str, gate: str, recorded: bool) -> None:
    if not recorded:  # a foreign folder: no manifest (so no record verify wrote) vouches for anything
        (folder / "manifest.json").unlink()
    model = hostile(folder, case)
    phrase = (CASES if recorded else UNRECORDED)[case]
    if gate == "refuse" and case in ("empty", "truncated"):
        phrase = "changed after it was verified" if recorded else "was not written by `vggexport verify`"
    with pytest.raises(VggExportError, match=phrase) as caught:
        create_app(ServeConfig(model=str(model), provider="cpu", gate=gate))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("case, code", [("directory", 2), ("symlink loop", 1), ("empty", 1), ("truncated", 1)])
def test_serve_exits_with_one_line_on_a_hostile_file(folder: Path, case: str, code: int) -> None:
    server = ServerProcess(hostile(folder, case), "--provider", "cpu")  # with --allow-unverified
    assert server.process.wait(timeout=60) == code  # 2: click's own check of --model (not a directory)
    output = server.process.stdout.read() if server.process.stdout else ""
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output and lines[-1].startswith("error: "), output
    assert ("is a directory" if code == 2 else CASES[case]) in lines[-1], output


def test_an_unknown_gate_is_refused() -> None:
    with pytest.raises(VggExportError, match="unknown gate"):
        ServeConfig(model="model.onnx", gate="maybe")


def test_every_worker_gates_its_own_read(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--workers N: each worker process reads the file and builds its session from the config the parent
    passed; a file changed after the parent started is refused there too: one line, and uvicorn's
    startup-failure exit code (3), on which its supervisor stops instead of restarting the worker."""
    from dataclasses import asdict

    from vggexport.serve.app import CONFIG_ENV, FAILED_ENV, STARTUP_FAILURE, Listen, app_from_environment

    model = folder / "model.onnx"
    config = ServeConfig(model=str(model), provider="cpu", gate="refuse", workers=2)
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"config": asdict(config), "listen": asdict(Listen())}))
    monkeypatch.delenv(FAILED_ENV, raising=False)
    assert app_from_environment().state.service.engine.runner.is_active
    broken_copy(model, model, BREAKERS["altered-weights"])
    with pytest.raises(SystemExit, match=str(STARTUP_FAILURE)):
        app_from_environment()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "changed after it was verified" in line, line


@pytest.fixture
def cpu_report(verified_folder: Path) -> dict[str, object]:
    """The real report of the CPU verify that passed ``verified_folder``."""
    return dict(json.loads((verified_folder.parent / "cpu-report.json").read_text()))


def gate(folder: Path, provider: str, gpus: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the serving gate says of model.onnx for ``--provider``, with ``gpus`` GPUs (never the host's)."""
    import functools

    import onnxruntime

    from vggexport.backend.onnxrt import CPU_EP, CUDA_EP, resolve_provider
    from vggexport.serve import gate as serving_gate

    monkeypatch.setattr(serving_gate, "resolve_provider", functools.partial(resolve_provider, gpus=lambda: gpus))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_EP, CPU_EP])  # onnxruntime-gpu
    try:
        serving_gate.gated_bytes(folder / "model.onnx", ServeConfig(model=str(folder / "model.onnx"),
                                                                   provider=provider))
    except VggExportError as exc:
        assert "\n" not in str(exc)
        return f"refused: {exc}"
    return "ok"


def test_a_failed_verdict_refuses_whichever_runtime_passed(folder: Path, cpu_report: dict[str, object],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.verdicts import record_verdict, renamed_report

    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda", passed=False), folder / "model.onnx")
    for provider in ("cuda", "cpu"):  # CUDA failed, the CPU passed: neither ships
        assert "failed verification on onnxruntime-cuda" in gate(folder, provider, 1, monkeypatch), provider
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda"), folder / "model.onnx")
    assert gate(folder, "cuda", 1, monkeypatch) == "ok"
    record_verdict(renamed_report(cpu_report, "onnxruntime-cpu", passed=False), folder / "model.onnx")
    for provider in ("cuda", "cpu"):  # and the reverse
        assert "failed verification on onnxruntime-cpu" in gate(folder, provider, 1, monkeypatch), provider


def test_the_gate_judges_by_the_resolved_provider(folder: Path, cpu_report: dict[str, object],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """CPU-only record: --provider cuda (or auto with a GPU) is refused, auto without a GPU ships as the CPU."""
    cpu_only = "verified on the CPU only; its CUDA results were never compared"
    for provider, gpus in (("cuda", 0), ("auto", 1)):
        assert cpu_only in gate(folder, provider, gpus, monkeypatch), (provider, gpus)
    for provider, gpus in (("auto", 0), ("cpu", 1)):
        assert gate(folder, provider, gpus, monkeypatch) == "ok" and capsys.readouterr().err == ""
    # CUDA-only record: a CPU deployment needs a CPU verdict (any machine can give one).
    from tests.verdicts import record_verdict, renamed_report

    (folder / "parity.json").unlink()
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda"), folder / "model.onnx")
    assert gate(folder, "auto", 1, monkeypatch) == "ok" and capsys.readouterr().err == ""
    for provider, gpus in (("auto", 0), ("cpu", 1)):
        assert "verified on CUDA only" in gate(folder, provider, gpus, monkeypatch), (provider, gpus)


def test_auto_gated_as_cuda_is_gated_again_when_the_session_falls_back_to_the_cpu(
        folder: Path, cpu_report: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """auto resolved to CUDA (a GPU is there) but ORT's CUDA provider did not start: the CPU verdict decides."""
    import functools

    from tests.verdicts import record_verdict, renamed_report
    from vggexport.backend import onnxrt as onnx_io
    from vggexport.serve import gate as serving_gate
    from vggexport.serve import service

    (folder / "parity.json").unlink()
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda"), folder / "model.onnx")  # CUDA-only
    said: list[str] = []
    with_a_gpu = functools.partial(onnx_io.resolve_provider, gpus=lambda: 1)
    for module in (serving_gate, service):  # the gate and the fallback check both see a GPU
        monkeypatch.setattr(module, "resolve_provider", with_a_gpu)
    monkeypatch.setattr(onnx_io, "resolve_provider",  # the session: no CUDA starts
                        functools.partial(onnx_io.resolve_provider, gpus=lambda: 0))
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: [onnx_io.CUDA_EP, onnx_io.CPU_EP])
    opened: list[ServingRunner] = []  # observed, not replaced: the real activation runs
    activate = ServingRunner.activate_impl

    def observed(runner: ServingRunner) -> None:
        activate(runner)
        opened.append(runner)

    monkeypatch.setattr(ServingRunner, "activate_impl", observed)
    with pytest.raises(VggExportError, match="verified on CUDA only"):
        create_app(ServeConfig(model=str(folder / "model.onnx"), provider="auto"), phase=said.append)
    assert any(line.startswith("read model.onnx") for line in said)  # the CUDA gate passed; the CPU one refused
    assert len(opened) == 1 and not opened[0].is_active  # the refused session closed at once, not at collection


def test_an_older_record_is_refused_with_one_line(folder: Path, tmp_path: Path) -> None:
    """A vggexport.parity/2 record kept one verdict per file: it cannot say which runtime passed."""
    from vggexport.store.manifest import update_manifest
    from vggexport.deploy.triton import TritonConfig, write_repository

    record = json.loads((folder / "parity.json").read_text())
    (folder / "parity.json").write_text(json.dumps({**record, "format": "vggexport.parity/2"}))
    update_manifest(folder, [folder / "parity.json"])
    with pytest.raises(VggExportError, match=r"older parity record \(vggexport.parity/2.*verify` again") as caught:
        create_app(ServeConfig(model=str(folder / "model.onnx"), provider="cpu"))
    assert "\n" not in str(caught.value)
    with pytest.raises(VggExportError, match="older parity record"):
        write_repository(folder / "model.onnx", tmp_path / "repo", TritonConfig(kind="cpu"))


def test_triton_gates_kind_gpu_as_cuda_and_kind_cpu_as_the_cpu(folder: Path, cpu_report: dict[str, object],
                                                               tmp_path: Path) -> None:
    from tests.verdicts import record_verdict, renamed_report
    from vggexport.deploy.triton import TritonConfig, write_repository

    (folder / "parity.json").unlink()
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda"), folder / "model.onnx")  # CUDA-only
    assert write_repository(folder / "model.onnx", tmp_path / "gpu", TritonConfig(kind="gpu")).is_dir()
    with pytest.raises(VggExportError, match="verified on CUDA only"):
        write_repository(folder / "model.onnx", tmp_path / "cpu", TritonConfig(kind="cpu"))
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda", passed=False), folder / "model.onnx")
    with pytest.raises(VggExportError, match="failed verification on onnxruntime-cuda"):
        write_repository(folder / "model.onnx", tmp_path / "gpu2", TritonConfig(kind="gpu"))
