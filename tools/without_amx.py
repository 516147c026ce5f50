"""Run a Python script with Intel AMX withheld from this process, on Linux x86-64.

    python tools/without_amx.py tools/bench_infer.py --variants --checkpoint artifacts/vgg11_bn/best.pt

A process must ask Linux for AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM) before it can use AMX;
ONNX Runtime's MLAS asks once when it loads and falls back to its AVX-512 VNNI kernels when refused.
This installs a seccomp filter that refuses that one request (EPERM) and allows every other system call,
then runs the script: the same CPU measured as an AVX-512 VNNI machine without AMX, side by side with
a normal run. It cannot take away AVX-512 itself (no AVX2-only emulation).
"""

from __future__ import annotations

import ctypes
import runpy
import struct
import sys
from pathlib import Path

ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 0x1023, 18
SYS_ARCH_PRCTL, AUDIT_ARCH_X86_64 = 158, 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_EPERM = 0x7FFF0000, 0x00050000 | 1


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def instruction(code: int, jump_true: int, jump_false: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jump_true, jump_false, k)


def withhold_amx() -> None:
    """Refuse arch_prctl(ARCH_REQ_XCOMP_PERM, ...) in this process and its children from now on."""
    program = b"".join([
        instruction(BPF_LD_W_ABS, 0, 0, 4), instruction(BPF_JEQ_K, 0, 5, AUDIT_ARCH_X86_64),  # seccomp_data.arch
        instruction(BPF_LD_W_ABS, 0, 0, 0), instruction(BPF_JEQ_K, 0, 3, SYS_ARCH_PRCTL),  # .nr
        instruction(BPF_LD_W_ABS, 0, 0, 16), instruction(BPF_JEQ_K, 0, 1, ARCH_REQ_XCOMP_PERM),  # .args[0]
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_EPERM),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)])
    buffer = ctypes.create_string_buffer(program)
    fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                                                                 ctypes.byref(fprog), 0, 0):
        sys.exit(f"without_amx: seccomp filter refused (errno {ctypes.get_errno()})")
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != -1:
        sys.exit("without_amx: AMX permission was still granted; the filter did not take")


USAGE = "usage: without_amx.py SCRIPT [ARGUMENTS...]   (the script's own options follow it)"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}")
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    withhold_amx()
    print("AMX withheld: arch_prctl(ARCH_REQ_XCOMP_PERM) is refused in this process", flush=True)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
