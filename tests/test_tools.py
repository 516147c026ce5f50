"""The scripts in tools/ still start: BENCHMARKS.md quotes their commands."""

from __future__ import annotations

import platform
import time
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
# embed_onnx.py takes no options (its own tests run it); without_amx.py is tested below.
SCRIPTS = sorted(p.name for p in TOOLS.glob("*.py") if p.name not in ("embed_onnx.py", "without_amx.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_tool_imports_and_explains_itself(script: str) -> None:
    done = subprocess.run([sys.executable, str(TOOLS / script), "--help"], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="arch_prctl and its seccomp filter are Linux x86-64")
def test_without_amx_refuses_the_amx_request_and_runs_the_script(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import ctypes, sys\n"
                      "libc = ctypes.CDLL(None, use_errno=True)\n"
                      "print('request returned', libc.syscall(158, 0x1023, 18), 'args', sys.argv[1:])\n"
                      "print('getpid allowed', libc.syscall(39) > 0)\n")
    done = subprocess.run([sys.executable, str(TOOLS / "without_amx.py"), str(script), "--flag"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "request returned -1 args ['--flag']" in done.stdout and "getpid allowed True" in done.stdout


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc")
def test_serve_threads_reads_this_process_threads_and_the_machine() -> None:
    """What tools/serve_threads.py reports rests on these two reads; a thread that computes shows time on a CPU."""
    import os
    import threading

    sys.path.insert(0, str(TOOLS))
    import serve_threads

    stop = threading.Event()
    worker = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    worker.start()
    try:
        before = serve_threads.threads(os.getpid())
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        after = serve_threads.threads(os.getpid())
    finally:
        stop.set()
        worker.join()
    assert os.getpid() in before and after[os.getpid()][0] > before[os.getpid()][0]  # ns on a CPU grew
    assert all(len(v) == 4 and all(n >= 0 for n in v) for v in after.values())
    assert worker.native_id in before and after[worker.native_id][0] > before[worker.native_id][0]  # it ran too
    stat = serve_threads.machine()
    assert len(stat) == len(serve_threads.STAT_FIELDS) and sum(stat) > 0


def test_bench_commits_serves_each_side_from_its_own_tree(tmp_path: Path) -> None:
    """The baseline's server must import the baseline's vggexport/, not the editable install's or the candidate's."""
    sys.path.insert(0, str(TOOLS))
    import bench_commits

    commit = bench_commits.export_tree("HEAD", tmp_path / "baseline")
    assert len(commit) == 40 and (tmp_path / "baseline" / "vggexport" / "__init__.py").is_file()
    assert not (tmp_path / "baseline" / "tests").exists()  # the package only
    where = bench_commits.imported_from(tmp_path / "baseline")
    assert where == (tmp_path / "baseline" / "vggexport" / "__init__.py").resolve()
    with pytest.raises(SystemExit, match="no-such-revision"):
        bench_commits.export_tree("no-such-revision", tmp_path / "other")


def switch(cpu: int, t: float, prev: tuple[str, int, int], state: str, following: tuple[str, int]) -> str:
    """One sched_switch line as `perf script -F comm,pid,tid,cpu,time,event,trace` prints it."""
    comm, pid, tid = prev
    return (f"{comm:>16} {pid:>5}/{tid:<5} [{cpu:03d}] {t:12.6f}:       sched:sched_switch: prev_comm={comm} "
            f"prev_pid={tid} prev_prio=120 prev_state={state} ==> next_comm={following[0]} next_pid={following[1]} "
            "next_prio=120")


def test_sched_trace_sets_a_wait_against_the_other_cpu_idle_and_names_an_incomplete_cpu() -> None:
    """CPU 0 idles 1.0-1.5 s. Thread 10 of process 5 is preempted on CPU 1 at 1.1 and runs again at 1.3: a 0.2 s
    wait, all of it with CPU 0 idle. CPU 2 goes idle but its way out of idle is missing: its idle is not known."""
    sys.path.insert(0, str(TOOLS))
    import sched_trace

    idle, server, other = ("swapper/0", 0, 0), ("python", 5, 10), ("other", 7, 11)
    text = "\n".join([
        switch(0, 1.0, ("worker", 9, 9), "S", ("swapper/0", 0)),
        switch(1, 1.05, ("worker", 9, 12), "S", ("python", 10)),
        switch(1, 1.1, server, "R", ("other", 11)),
        switch(2, 1.15, ("worker", 9, 13), "S", ("swapper/2", 0)),
        switch(1, 1.3, other, "S", ("python", 10)),
        switch(0, 1.5, idle, "R", ("worker", 9)),
        switch(2, 1.6, ("worker", 9, 14), "S", ("swapper/2", 0)),  # left idle at 1.15 without a recorded switch
    ])
    trace = sched_trace.parse(text)
    assert trace.complete == {0, 1} and trace.untraced[2] == 1
    assert [(tid, cpu) for tid, cpu, _, _ in trace.waits] == [(10, 1)]
    lines = sched_trace.report(trace, pid=5)
    assert "CPU 0 83%" in lines[0] and "CPU 2 not known (of its 1 switches out of idle, the trace holds 0)" in lines[0]
    assert any(line.split() [:2] == ["thread", "10"] and "runnable (recorded waits)  33.3%" in line
               and "another CPU idle  33.3%" in line for line in lines), lines
