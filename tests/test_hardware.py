"""Device and precision choices, with the CPU's capability injected: these tests never read the host."""

from __future__ import annotations

import pytest
import torch

from vggexport.errors import VggExportError
from vggexport.hardware import cpu_has_fast_bf16, resolve_precision

CPU = torch.device("cpu")
AVX2_ONLY = "flags\t\t: fpu sse sse2 avx avx2 fma"
AVX512_BF16 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni"
AMX = "flags\t\t: fpu sse2 avx avx2 avx512f amx_bf16 amx_tile amx_int8"


@pytest.mark.parametrize(("cpuinfo", "native"), [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True), ("", False)])
def test_cpu_bf16_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_has_fast_bf16(cpuinfo) is native


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(native: bool, expected: str) -> None:
    assert resolve_precision("auto", CPU, native_bf16=native) == expected


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_never_picks_emulated_bf16(native: bool, expected: str) -> None:
    assert resolve_precision("auto", torch.device("cuda"), native_bf16=native) == expected


@pytest.mark.parametrize("native", [True, False])
def test_explicit_precision_wins_over_capability(native: bool) -> None:
    assert resolve_precision("fp32", CPU, native_bf16=native) == "fp32"
    assert resolve_precision("bf16", CPU, native_bf16=native) == "bf16"


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(VggExportError, match="fp16 training needs CUDA"):
        resolve_precision("fp16", CPU, native_bf16=True)


def test_available_memory_reads_meminfo() -> None:
    from vggexport.hardware import available_memory

    meminfo = "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n"
    assert available_memory(CPU, meminfo) == 20000000 * 1024
    assert available_memory(CPU, "garbage") == 4 << 30  # unknown: assume a small machine


def test_a_batch_that_does_not_fit_is_one_line() -> None:
    from vggexport.hardware import batch_must_fit

    expected = r"batch of 256 images does not fit in cpu memory .*--batch-size, e\.g\. 128"
    with pytest.raises(VggExportError, match=expected):
        with batch_must_fit(256, CPU):
            torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure of the CPU allocator
    with pytest.raises(RuntimeError, match="shape"):  # other errors keep their traceback: they are bugs
        with batch_must_fit(256, CPU):
            torch.zeros(3).view(2, 2)


def test_cuda_out_of_memory_is_recognised() -> None:
    from vggexport.hardware import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize(("precision", "enabled"), [("fp32", False), ("bf16", False)])
def test_grad_scaler_only_for_fp16(precision: str, enabled: bool) -> None:
    from vggexport.hardware import make_grad_scaler

    assert make_grad_scaler(CPU, precision).is_enabled() is enabled


@pytest.mark.gpu
def test_grad_scaler_on_for_cuda_fp16() -> None:
    from vggexport.hardware import make_grad_scaler

    assert make_grad_scaler(torch.device("cuda"), "fp16").is_enabled()


def test_deterministic_mode_sets_cublas_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    from vggexport.hardware import CUBLAS_DETERMINISTIC, configure_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_determinism(True, torch.device("cuda"))
        assert torch.are_deterministic_algorithms_enabled()
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC
        assert not torch.backends.cudnn.benchmark
    finally:
        configure_determinism(False, CPU)
    assert not torch.are_deterministic_algorithms_enabled()
