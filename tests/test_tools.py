"""The scripts in tools/ still start: BENCHMARKS.md quotes their commands."""

from __future__ import annotations

import platform
import time
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
# rounds.py and v2_http.py are no scripts but parts the benchmarks share (tests/test_bench_peers.py tests them, and
# each benchmark runs here).
SCRIPTS = sorted(p.name for p in TOOLS.glob("*.py") if p.name not in ("rounds.py", "v2_http.py"))


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

    baseline = tmp_path / "baseline"
    (baseline / "vggexport").mkdir(parents=True)
    (baseline / "vggexport" / "stale.py").write_text("")  # left by an earlier revision: must go
    commit = bench_commits.export_tree("HEAD", baseline)
    assert len(commit) == 40 and (baseline / "vggexport" / "__init__.py").is_file()
    assert not (baseline / "tests").exists() and not (baseline / "vggexport" / "stale.py").exists()
    loaded = bench_commits.imported_from(baseline)
    assert (baseline / "vggexport" / "serve" / "app.py").resolve() in loaded
    assert all(p.is_relative_to(baseline.resolve()) for p in loaded)
    # A module the baseline lacks is missing there: the editable install must not hand over this checkout's.
    (baseline / "vggexport" / "names.py").unlink()
    with pytest.raises(SystemExit, match="does not import from"):
        bench_commits.imported_from(baseline)
    with pytest.raises(SystemExit, match="no-such-revision"):
        bench_commits.export_tree("no-such-revision", tmp_path / "other")


def switch(cpu: int, t: float, prev: tuple[str, int, int], state: str, following: tuple[str, int]) -> str:
    """One sched_switch line as `perf script -F comm,pid,tid,cpu,time,event,trace` prints it."""
    comm, pid, tid = prev
    return (f"{comm:>16} {pid:>5}/{tid:<5} [{cpu:03d}] {t:12.6f}:       sched:sched_switch: prev_comm={comm} "
            f"prev_pid={tid} prev_prio=120 prev_state={state} ==> next_comm={following[0]} next_pid={following[1]} "
            "next_prio=120")


def event(cpu: int, t: float, name: str, tid: int, tail: str) -> str:
    """A sched_waking or sched_migrate_task line for thread ``tid`` (named python), fired on ``cpu``."""
    return (f"{'swapper':>16} {0:>5}/{0:<5} [{cpu:03d}] {t:12.6f}:       sched:{name}: comm=python pid={tid} "
            f"prio=120 {tail}")


IDLE0, IDLE1, SERVER, OTHER = ("swapper/0", 0, 0), ("swapper/1", 0, 0), ("python", 5, 10), ("other", 7, 11)


def traced(*lines: str) -> tuple[object, list[str]]:
    sys.path.insert(0, str(TOOLS))
    import sched_trace

    trace = sched_trace.parse("\n".join(lines))
    return trace, sched_trace.report(trace, pid=5)


def waited_line(lines: list[str]) -> str:
    return next(line for line in lines if line.split()[:2] == ["thread", "10"])


def test_sched_trace_sets_a_wait_against_the_other_cpu_idle_and_names_an_incomplete_cpu() -> None:
    """CPU 0 idles 1.0-1.5 s. Thread 10 of process 5 is preempted on CPU 1 at 1.1 and runs again there at 1.3: a
    0.2 s wait, all of it with CPU 0 idle. CPU 2 goes idle, then a task leaves it: its way out of idle is
    missing, so its idle is not known."""
    trace, lines = traced(
        switch(0, 1.0, ("worker", 9, 9), "S", ("swapper/0", 0)),
        switch(1, 1.05, ("worker", 9, 12), "S", ("python", 10)),
        switch(1, 1.1, SERVER, "R", ("other", 11)),
        switch(2, 1.15, ("worker", 9, 13), "S", ("swapper/2", 0)),
        switch(1, 1.3, OTHER, "S", ("python", 10)),
        switch(0, 1.5, IDLE0, "R", ("worker", 9)),
        switch(2, 1.6, ("worker", 9, 14), "S", ("swapper/2", 0)),  # left idle at 1.15 without a recorded switch
    )
    assert trace.complete == {0, 1} and trace.untraced[2] == 1
    assert trace.waits == [(10, [(1, 1.1, 1.3)])]
    assert "CPU 0 83%" in lines[0] and "CPU 2 not known (1 of its 2 switches do not follow" in lines[0]
    assert "waited  33.3% of the window, another CPU idle meanwhile  33.3%" in waited_line(lines)
    assert "CPU 0 idle 83.3% of the window; a task waited on another CPU's queue for 40% of that idle time" in lines


def test_sched_trace_counts_the_wait_of_a_task_that_an_idle_cpu_then_pulls() -> None:
    """Preempted on CPU 1 at 1.1 while CPU 0 idles; CPU 0 pulls it at 1.2 (a migration, then a switch out of idle).
    The 0.1 s it waited on CPU 1's queue all had CPU 0 idle: misplaced work, not excused by where it ran."""
    trace, lines = traced(
        switch(0, 1.0, ("worker", 9, 9), "S", ("swapper/0", 0)),
        switch(1, 1.05, ("worker", 9, 12), "S", ("python", 10)),
        switch(1, 1.1, SERVER, "R", ("other", 11)),
        event(0, 1.2, "sched_migrate_task", 10, "orig_cpu=1 dest_cpu=0"),
        switch(0, 1.2, IDLE0, "R", ("python", 10)),
        switch(0, 1.4, SERVER, "S", ("worker", 9)),
    )
    assert trace.waits == [(10, [(1, 1.1, 1.2), (0, 1.2, 1.2)])]
    assert "waited  25.0% of the window, another CPU idle meanwhile  25.0%" in waited_line(lines)


def test_sched_trace_adds_up_two_other_cpus_idle_at_different_moments() -> None:
    """Asleep since 1.0, woken onto busy CPU 2's queue at 1.1, run there at 1.3: CPU 0 idles 1.1-1.2 and CPU 1
    1.2-1.3, so some other CPU was idle for the whole 0.2 s wait (not just the longer of the two)."""
    trace, lines = traced(
        switch(0, 1.0, ("worker", 9, 9), "S", ("worker", 20)),
        switch(1, 1.0, ("worker", 9, 12), "S", ("worker", 21)),
        switch(2, 1.0, SERVER, "S", ("worker", 22)),  # thread 10 sleeps: only a task seen asleep can be woken
        event(1, 1.1, "sched_waking", 10, "target_cpu=002"),
        switch(0, 1.1, ("worker", 9, 20), "S", ("swapper/0", 0)),
        switch(0, 1.2, IDLE0, "R", ("worker", 9)),
        switch(1, 1.2, ("worker", 9, 21), "S", ("swapper/1", 0)),
        switch(1, 1.3, IDLE1, "R", ("worker", 12)),
        switch(2, 1.3, ("worker", 9, 22), "S", ("python", 10)),
        switch(2, 1.4, SERVER, "S", ("worker", 13)),
    )
    assert trace.complete == {0, 1, 2} and trace.waits == [(10, [(2, 1.1, 1.3)])]
    assert "waited  50.0% of the window, another CPU idle meanwhile  50.0%" in waited_line(lines)
    assert lines[-1].endswith("; overlaps: 1, median 200000 us, longest 200000 us"), lines[-1]
