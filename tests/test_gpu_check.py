"""The GPU run's harness (tools/gpu_check.py) on the CPU: its plan fits the device, and its bookkeeping holds
when a step hangs or a server dies. The rehearsal itself (--rehearse) is a developer's tool, not a CI step."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import gpu_check  # noqa: E402
from gpu import build, layout, plan, preflight  # noqa: E402
from gpu.runner import ARCHIVE, LOG, SUMMARY  # noqa: E402


def test_plan_fits_the_device() -> None:
    done = subprocess.run(["bash", str(TOOLS / "gpu_check.sh"), "--plan"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = re.findall(r"call \d+: command '([^']+)'.*; ([\d.]+) MiB", done.stdout)
    assert calls and all(float(mib) <= 60 for _, mib in calls), done.stdout
    commands = [command for command, _ in calls]
    assert commands == [f"bash tools/gpu_check.sh --stash {n}" for n in range(1, len(calls))] + [
        f"bash tools/gpu_check.sh --call {len(calls)}"]  # the run goes last, and knows how many came before
    whole = re.search(r"whole plan (\d+) s = ([\d.]+) min", done.stdout)
    assert whole and int(whole.group(1)) <= 11 * 60 and "fits" in done.stdout.splitlines()[-1]
    steps = re.search(r"steps (\d+) s", done.stdout)
    assert steps and int(steps.group(1)) <= 8 * 60


def test_a_call_over_the_limit_does_not_fit() -> None:
    calls = plan.plan_calls([(".ortgpu/p1", 55 * layout.MIB), (".gpudata", 30 * layout.MIB)], 3 * layout.MIB)
    assert len(calls) == 2 and all(c.carried_bytes + 3 * layout.MIB <= layout.CALL_LIMIT for c in calls)
    lines, fits = plan.describe(calls, 3 * layout.MIB, built=True)
    assert fits
    too_big = plan.plan_calls([(".ortgpu/p1", 61 * layout.MIB)], 1 * layout.MIB)
    lines, fits = plan.describe(too_big, 1 * layout.MIB, built=True)
    assert not fits and "DOES NOT FIT" in lines[-1]


def test_the_rehearsal_runs_every_step_on_the_cpu() -> None:
    def asks_cuda(argv: tuple[str, ...]) -> bool:
        return any(a == "cuda" or a.endswith("-cuda") for a in argv)

    assert sum(asks_cuda(step.argv) for step in plan.STEPS) >= 5  # the GPU run asks for CUDA ...
    for step in plan.STEPS:
        argv = plan.rehearsed(step)
        assert not asks_cuda(argv), argv  # ... and its rehearsal never does
        if "train" in argv and "--precision" in argv:  # the last value wins: fp16 training needs CUDA
            assert argv[len(argv) - 1 - argv[::-1].index("--precision") + 1] in ("bf16", "fp32"), argv


def writer(count: int) -> str:
    """A step's code that writes ``count`` small results in nested folders and one too big to come back."""
    return ("import sys; from pathlib import Path; work = Path(sys.argv[1])\n"
            f"for i in range({count}):\n"
            "    (work / 'r' / ('s%d' % (i % 3))).mkdir(parents=True, exist_ok=True)\n"
            "    (work / 'r' / ('s%d' % (i % 3)) / ('m%d.json' % i)).write_text('[]')\n"
            "(work / 'big.log').write_bytes(b'x' * (5 * 2**20))\nprint('wrote')\n")


def test_a_hung_step_is_killed_and_the_summary_prints(tmp_path: Path) -> None:
    steps = (
        plan.Step("write results", (sys.executable, "-c", writer(30), "{work}"), 30, 1),
        # The step and the child it starts both hang; the whole process group goes at the limit.
        plan.Step("hang", (sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); "
                           "print('hanging', flush=True); time.sleep(300)"), 2, 1),
        plan.Step("after the hang", (sys.executable, "-c", "print('still runs')"), 30, 1),
        plan.Step("critical failure", (sys.executable, "-c", "raise SystemExit(3)"), 30, 1, critical=True),
        plan.Step("never runs", (sys.executable, "-c", "print('no')"), 30, 1),
    )
    out = tmp_path / "out"
    started = time.monotonic()
    code = gpu_check.run_steps(tmp_path / "root", sys.executable, out, "gpu", steps, deadline_s=120)
    assert time.monotonic() - started < 60
    assert code == 1
    summary = (out / SUMMARY).read_text()
    assert re.search(r"timed out\s+rc -?\d+\s+[\d.]+ s of\s+2 s  hang", summary), summary
    assert re.search(r"passed\s+rc 0 .* after the hang", summary) and "failed rc 3" in summary
    assert re.search(r"skipped\s+0.0 s .* never runs", summary)
    assert "GPU run: 2 of 5 steps passed" in summary and "not passed: hang (timed out)" in summary
    assert "still runs" in (out / LOG).read_text() and "no\n" not in (out / LOG).read_text()
    # What comes back: at most 8 files, none over 16 MiB, none more than two folders down.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted([ARCHIVE, LOG, SUMMARY])
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)
    with tarfile.open(out / ARCHIVE) as archive:
        names = archive.getnames()
        note = archive.extractfile("LEFT_OUT.txt").read().decode()  # type: ignore[union-attr]
    assert sum(n.endswith(".json") for n in names) == 30 and "gpu-run/big.log" in note


def test_no_step_starts_past_the_deadline(tmp_path: Path) -> None:
    steps = (plan.Step("late", (sys.executable, "-c", "print('ran')"), 30, 1),)
    code = gpu_check.run_steps(tmp_path / "root", sys.executable, tmp_path / "out", "gpu", steps, deadline_s=0)
    assert code == 1 and "skipped" in (tmp_path / "out" / SUMMARY).read_text()


def test_the_server_wait_ends_when_the_server_dies(tmp_path: Path) -> None:
    from bench_serve import start_server

    server = start_server(tmp_path / "missing.onnx", tmp_path, "serve", "cpu")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"vggexport serve exited \([1-9]"):
        server.wait_ready(timeout=300)
    assert time.monotonic() - started < 60  # it died, so the wait is over long before its 300 s


def split_archive(root: Path, parts: int) -> Path:
    """A tar.xz of one file cut into ``parts`` pieces, stashed as the harness stashes onnxruntime-gpu's."""
    import hashlib
    import io

    payload = tarfile.TarInfo("onnxruntime/__init__.py")
    data = b"version = 'test'\n" * 1000
    payload.size = len(data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        archive.addfile(payload, io.BytesIO(data))
    blob = buffer.getvalue()
    carried = root / "carried"
    listing = []
    for i in range(parts):
        piece = carried / layout.PARTS / f"p{i + 1}" / f"ort.tar.xz.{i:02d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(blob[i * len(blob) // parts:(i + 1) * len(blob) // parts])
        listing.append(f"{hashlib.sha256(piece.read_bytes()).hexdigest()}  p{i + 1}/{piece.name}\n")
    (carried / layout.WHEELS).mkdir(parents=True)
    (carried / layout.WHEELS / build.PARTS_LIST).write_text("".join(listing))
    return carried


def test_install_unpacks_a_complete_set_of_parts_and_refuses_any_other(tmp_path: Path) -> None:
    carried = split_archive(tmp_path, 3)
    build.install(tmp_path)  # Python's lzma and tarfile: no xz binary is assumed on the machine
    assert (tmp_path / "site" / "onnxruntime" / "__init__.py").read_bytes().startswith(b"version = 'test'")
    piece = carried / layout.PARTS / "p2" / "ort.tar.xz.01"
    piece.write_bytes(piece.read_bytes()[:-1] + b"!")
    with pytest.raises(SystemExit, match="part p2/ort.tar.xz.01 differs from the one --build made"):
        build.install(tmp_path)
    piece.unlink()
    with pytest.raises(SystemExit, match="part p2/ort.tar.xz.01 was never stashed"):
        build.install(tmp_path)


def test_a_stash_after_a_lost_machine_says_so(tmp_path: Path) -> None:
    build.stash(tmp_path, [], call=1)
    build.stash(tmp_path, [], call=2)
    shutil.rmtree(tmp_path / "carried")  # a fresh machine: /tmp is empty again
    with pytest.raises(SystemExit, match=r"calls \[1, 2\] left nothing .* the machine was replaced between calls"):
        build.stash(tmp_path, [], call=3)


def test_pip_check_stops_the_run_only_for_what_it_relies_on() -> None:
    report = ("numba 0.60.0 has requirement numpy<2.1,>=1.22, but you have numpy 2.5.2.\n"
              "tritonclient 2.73.0 has requirement grpcio>=1.81.1, but you have grpcio 1.70.0.\n"
              "onnx 1.23.1 has requirement protobuf>=7, but you have protobuf 6.33.6.\n"
              "jax 0.11.2 requires jaxlib, which is not installed.\n")
    found = preflight.pip_check_problems(report, {"tritonclient", "numpy", "protobuf"}, {"tritonclient", "protobuf"})
    assert found == [report.splitlines()[1], report.splitlines()[2]]


def test_the_carried_requirements_expand_the_projects_own_extras() -> None:
    """The test extra names ``vggexport[signing]``: pip cannot resolve the project from an index, so the build
    must carry what that extra names instead (a build once stopped there)."""
    wanted = build.requirements()
    names = {build.requirement_name(r) for r in wanted}
    assert "vggexport" not in names
    assert {"model-signing", "pyopenssl", "schemathesis"} <= names
    project = {"name": "demo", "optional-dependencies": {"a": ["x>=1", "demo[b,c]"], "b": ["y"], "c": ["demo[b]", "z"]}}
    assert build.own_extra(project, "a") == ["x>=1", "y", "y", "z"]
    cyclic = {"name": "demo", "optional-dependencies": {"a": ["demo[b]"], "b": ["demo[a]", "y"]}}
    assert build.own_extra(cyclic, "a") == ["y"]  # extras that name each other end
