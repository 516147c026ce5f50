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
