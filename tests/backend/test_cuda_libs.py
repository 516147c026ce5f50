"""Finding the nvidia-* wheels' CUDA libraries wherever the interpreter imports from, and `--provider auto`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vggexport.backend.cuda_libs import (CUDNN_PARTS, captured_native_stderr, cuda_libraries, find_cuda_libraries,
                                 library_dirs, ort_error)
from vggexport.errors import VggExportError
from vggexport.backend.onnxrt import CUDA_EP, resolve_provider
from vggexport.backend.onnxrt import OnnxRuntimeRunner

CUDA13 = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcufft.so.12",
          "libnvrtc.so.13")
CUDNN = ("libcudnn.so.9", *(f"libcudnn_{part}.so.9" for part in CUDNN_PARTS))


def wheel_layout(site: Path, libraries: dict[str, tuple[str, ...]]) -> Path:
    """site/nvidia/<wheel>/lib/<library> as empty files: enough for discovery, which never loads."""
    for wheel, names in libraries.items():
        folder = site / "nvidia" / wheel / "lib"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).touch()
    return site


def test_finds_the_wheels_in_any_path_entry_not_only_beside_onnxruntime(tmp_path: Path) -> None:
    carried = tmp_path / "carried"  # onnxruntime-gpu installed with pip --target: no nvidia folder there
    (carried / "onnxruntime").mkdir(parents=True)
    venv = wheel_layout(tmp_path / "venv", {"cu13": CUDA13, "cudnn": CUDNN})
    found = find_cuda_libraries(13, [str(carried), str(venv)])
    assert found.not_in_wheels() == []
    assert {lib.name: path for lib, path in found.found.items()} == {
        **{name: venv.resolve() / "nvidia" / "cu13" / "lib" / name for name in CUDA13},
        "libcudnn.so.9": venv.resolve() / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9"}
    names = [lib.name for lib in found.found]
    assert names.index("libcublasLt.so.13") < names.index("libcublas.so.13")  # cublas needs cublasLt


def test_cuda12_per_library_wheels_and_cufft_11(tmp_path: Path) -> None:
    site = wheel_layout(tmp_path / "site", {
        "cuda_runtime": ("libcudart.so.12",), "cublas": ("libcublas.so.12", "libcublasLt.so.12"),
        "curand": ("libcurand.so.10",), "cufft": ("libcufft.so.11",), "cudnn": CUDNN})
    found = find_cuda_libraries(12, [str(site)])
    assert found.not_in_wheels() == []  # nvrtc is absent, but optional, as in ORT
    assert [lib.name for lib, path in found.found.items() if path is None] == ["libnvrtc.so.12"]
    assert "libcufft.so.11" in [lib.name for lib in found.found]
    assert found.found[cuda_libraries(12)[1]] == site.resolve() / "nvidia" / "cublas" / "lib" / "libcublasLt.so.12"


def test_a_missing_library_is_named_with_the_folders_searched(tmp_path: Path) -> None:
    site = wheel_layout(tmp_path / "site", {"cu13": CUDA13, "cudnn": ()})
    found = find_cuda_libraries(13, [str(site)])
    assert found.not_in_wheels() == ["libcudnn.so.9"]
    line = found.not_found("libcudnn.so.9")
    assert "\n" not in line and line.startswith("libcudnn.so.9 not found in ")
    for wheel in ("cu13", "cudnn"):
        assert str(site.resolve() / "nvidia" / wheel / "lib") in line


def test_a_missing_cudnn_sub_library_is_named(tmp_path: Path) -> None:
    site = wheel_layout(tmp_path / "site", {"cu13": CUDA13, "cudnn": tuple(n for n in CUDNN if "_cnn" not in n)})
    assert find_cuda_libraries(13, [str(site)]).not_in_wheels() == ["libcudnn_cnn.so.9"]


def test_no_wheels_at_all_says_so(tmp_path: Path) -> None:
    found = find_cuda_libraries(13, [str(tmp_path)])
    assert found.searched == [] and set(found.not_in_wheels()) == {"libcudart.so.13", "libcublasLt.so.13",
                                                                   "libcublas.so.13", "libcurand.so.10",
                                                                   "libcudnn.so.9"}
    assert "no nvidia/*/lib folder on sys.path" in found.not_found("libcudart.so.13")


def test_default_search_covers_every_sys_path_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = wheel_layout(tmp_path / "elsewhere", {"cudnn": ("libcudnn.so.9",)})
    monkeypatch.syspath_prepend(str(site))
    assert (site / "nvidia" / "cudnn" / "lib").resolve() in library_dirs()


def test_the_real_wheels_load_in_a_torch_free_process() -> None:
    """Where this venv has the nvidia-* wheels, they load (RTLD_GLOBAL, in order) without a GPU and without torch."""
    import onnxruntime as ort

    major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    if not major.isdigit() or find_cuda_libraries(int(major)).not_in_wheels():
        pytest.skip("no CUDA build of onnxruntime, or no nvidia-* wheels here")
    script = ("import json, sys; "
              "from vggexport.backend.cuda_libs import find_cuda_libraries, load_cuda_libraries as load; "
              f"problems = load(find_cuda_libraries({major})); maps = open('/proc/self/maps').read(); "
              "print(json.dumps([problems, 'torch' in sys.modules, "
              "[n for n in ('libcudart', 'libcublasLt', 'libcublas.', 'libcurand', 'libcudnn.') if n not in maps]]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[], False, []]


def test_ort_error_keeps_ort_reason_in_one_short_line() -> None:
    record = ("2026-12-01 14:21:43.767904686 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
              "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& "
              "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
              "/x/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
              "cannot open shared object file: No such file or directory")
    warning = "2026-12-01 14:21:43.7 [W:onnxruntime:Default, x.cc:1 f] Failed to create CUDAExecutionProvider."
    assert ort_error(["unrelated", warning, record]) == (
        "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
        "cannot open shared object file: No such file or directory")
    assert ort_error([warning]) is None


def test_ort_records_on_fd2_are_captured_the_rest_passes(capfd: pytest.CaptureFixture[str]) -> None:
    with captured_native_stderr() as records:
        os.write(2, b"\x1b[1;31m2026-12-01 1:2:3 [E:onnxruntime:Default, a.cc:1 f] why\n\x1b[m\nsomeone else\n")
        assert records == []
    assert records == ["2026-12-01 1:2:3 [E:onnxruntime:Default, a.cc:1 f] why"]
    assert capfd.readouterr().err == "someone else\n"


def test_resolve_provider_asks_for_gpus() -> None:
    import onnxruntime as ort

    assert resolve_provider("auto", gpus=lambda: 0) == "cpu"
    assert resolve_provider("auto", gpus=lambda: 1) == ("cuda" if CUDA_EP in ort.get_available_providers() else "cpu")
    assert resolve_provider("cpu", gpus=lambda: 1) == "cpu" and resolve_provider("cuda", gpus=lambda: 0) == "cuda"
    with pytest.raises(VggExportError, match=r"^unknown provider 'tpu': use auto, cuda or cpu$"):
        resolve_provider("tpu", gpus=lambda: 1)


def test_runner_says_what_auto_resolved_to_before_its_session_opens(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"  # not read before activate()
    runner = OnnxRuntimeRunner(model, provider="auto")
    resolved = resolve_provider("auto")
    assert runner.name == f"onnxruntime-{resolved}"
    assert runner.provider == (CUDA_EP if resolved == "cuda" else "CPUExecutionProvider")
    with pytest.raises(VggExportError, match="unknown provider"):
        OnnxRuntimeRunner(model, provider="gpu")
