"""Device and precision choices, made once and reported to the user."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from vggexport.errors import VggExportError, first_line
from vggexport.names import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when it works, else CPU; an explicit CUDA device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise VggExportError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VggExportError(f"device {spec} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VggExportError(f"device {spec} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise VggExportError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True on CPUs with native bf16 matmul (AMX or AVX-512 BF16); elsewhere bf16 is emulated and slow.

    ``cpuinfo`` is the text of /proc/cpuinfo; tests pass one instead of reading the host's.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = cpuinfo.split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Native bf16 only (Ampere and newer): ``is_bf16_supported()`` alone also counts slow emulation."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device, *, native_bf16: bool | None = None) -> str:
    """``auto``: bf16 where the device computes it natively, else fp16 on CUDA and fp32 on the CPU.

    ``native_bf16`` overrides the capability probe (tests inject it so they never depend on the host).
    """
    if precision not in PRECISIONS:
        raise VggExportError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if native_bf16 is None:
            native_bf16 = cuda_has_native_bf16(device) if device.type == "cuda" else cpu_has_fast_bf16()
        if device.type == "cuda":
            return "bf16" if native_bf16 else "fp16"
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise VggExportError("fp16 training needs CUDA; use bf16 or fp32 on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def prefers_channels_last(device: torch.device, width: float) -> bool:
    """NHWC wins on CUDA and for narrow models on the CPU; at full width oneDNN on AVX2 runs NCHW faster
    (measured on the 2-core CI machine: width 0.25 964 vs 711 img/s, width 1.0 62 vs 69 img/s)."""
    return device.type == "cuda" or width < 1.0


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


# cuBLAS reads this when it creates its first handle; without it, deterministic matmuls on CUDA raise.
CUBLAS_DETERMINISTIC = ":4096:8"


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels everywhere, or cuDNN's autotuner on CUDA. Call before the first CUDA matmul."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 have fp32's range and need none."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def available_memory(device: torch.device, meminfo: str | None = None) -> int:
    """Bytes free for new tensors: the GPU's free memory, or the kernel's MemAvailable on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 4 << 30  # unknown: assume a small machine


CPU_ALLOCATION_FAILURES = ("DefaultCPUAllocator", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in CPU_ALLOCATION_FAILURES)


@contextlib.contextmanager
def batch_must_fit(batch_size: int, device: torch.device) -> Iterator[None]:
    """A training batch that does not fit becomes one line that says what to change, not a traceback."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        first = first_line(exc, 160)
        smaller = max(1, batch_size // 2)
        raise VggExportError(f"a training batch of {batch_size} images does not fit in {device.type} memory "
                             f"({first}); use a smaller --batch-size, e.g. {smaller}") from None
