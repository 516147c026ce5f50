"""Where a loaded `vggexport serve` spends its threads' time, one layout of instances beside another.

    python tools/serve_threads.py [--model artifacts/vgg11_bn/model.onnx] [--layouts 1x2 2x1] [--clients 64]
                                  [--seconds 6] [--rounds 2]

A layout NxT is `--instances N --threads T`. Each round starts that server, drives it with
`tools/loadgen.py`'s raw HTTP/1.1 client for one window, and reads over exactly that window
the machine's /proc/stat (user, system, idle, steal) and, per server thread, its
/proc/.../schedstat and context switches: the share of the window on a CPU, runnable but
waiting for one (the run queue), and asleep (waiting for work, I/O or a lock); every
answer is checked against offline ONNX Runtime. Only the event loop is named (its thread id
is the process id); Python does not name the others for the OS. Rounds alternate between
layouts. What it answers: whether idle CPU under a layout is threads with nothing to do, or
threads that could run and were not given a CPU. With --sched-trace, tools/sched_trace.py
also records the window's context switches and says whether those waits fell while another
CPU was idle (misplaced work) or while every CPU was busy (bursty work).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

import rounds  # noqa: E402
import loadgen  # noqa: E402
import peer_servers  # noqa: E402
import sched_trace  # noqa: E402

STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/vgg11_bn/model.onnx"))
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="INSTANCESxTHREADS [default: 1x2 2x1]")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sched-trace", action="store_true",
                        help="Also record the window's context switches (tools/sched_trace.py, Linux perf) and say "
                             "how long runnable threads waited while another CPU was idle.")
    return parser.parse_args()


def machine() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def threads(pid: int) -> dict[int, tuple[int, ...]]:
    """{tid: (ns on a CPU, ns runnable and waiting, voluntary switches, involuntary switches)}."""
    found: dict[int, tuple[int, ...]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run, wait = map(int, (task / "schedstat").read_text().split()[:2])
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
            found[int(task.name)] = (run, wait, int(status["voluntary_ctxt_switches"]),
                                     int(status["nonvoluntary_ctxt_switches"]))
        except (OSError, KeyError, ValueError):
            continue  # it ended between the listing and the read
    return found


def context_switches(recording: subprocess.Popen[str], data: Path, pid: int) -> list[str]:
    """tools/sched_trace.py's report of the round, or the one line saying why there is none (perf refused, say:
    perf_event_paranoid, no CAP_PERFMON)."""
    try:
        return ["  context switches (perf sched):", *(f"  {line}" for line in sched_trace.finish(recording, data, pid))]
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        recording.kill()
        recording.wait()
        return [f"  context switches: not recorded ({exc})"]


def one_round(model: Path, layout: str, clients: int, seconds: float, logs: Path, inputs: Path,
              io: dict[str, Any], expected: object, trace: bool = False) -> tuple[list[str], list[str]]:
    from vggexport.serve.smoke import free_port

    instances, threads_each = (int(x) for x in layout.split("x"))
    server = peer_servers.start_vggexport(model, logs, free_port(), 0, instances, threads_each)
    recordings: list[subprocess.Popen[str]] = []
    data = logs / f"perf-{layout}.data"
    try:
        server.wait_ready(120)
        pid = server.process.pid
        def probe() -> tuple[float, list[int], dict[int, tuple[int, ...]], tuple[float, float]]:
            if trace and not recordings:  # as the window opens; it ends a little before the window does
                recordings.append(sched_trace.start_record(data, max(seconds - 0.5, 0.5)))
            return time.perf_counter(), machine(), threads(pid), server.batch_counts(io["name"])

        result = loadgen.drive(f"{server.url}/v2/models/{io['name']}/infer", inputs, [1, *io["input"][1]],
                               clients=clients, seconds=seconds, warmup=1.0, names=(io["input"][0], io["output"][0]),
                               probe=probe)
    except BaseException:
        for recording in recordings:  # no perf left recording behind a failed round
            recording.kill()
            recording.wait()
        raise
    finally:
        server.stop()
    traced = context_switches(recordings[0], data, pid) if recordings else []
    _, wrong = rounds.check_answers(result, expected, io)  # failed or wrong answers are no throughput
    (t0, m0, th0, b0), (t1, m1, th1, b1) = result.probes
    wall, spent = t1 - t0, [b - a for a, b in zip(m0, m1)]
    cores = 100 * (os.cpu_count() or 1) / max(sum(spent), 1)
    batch = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1)
    lines = [f"{layout}: {result.rate:.0f} req/s, answers {result.requests} "
             + ("ok" if not wrong else f"{len(wrong)} WRONG") + f", mean batch {batch:.1f}; machine "
             + ", ".join(f"{name} {cores * n:.0f}%" for name, n in zip(STAT_FIELDS, spent) if cores * n >= 0.5)]
    for tid in sorted(set(th0) & set(th1)):
        run, wait, voluntary, involuntary = (b - a for a, b in zip(th0[tid], th1[tid]))
        if run < 0.01 * wall * 1e9:
            continue  # a thread that hardly ran (gRPC's, the signal handler's)
        role = "event loop" if tid == pid else f"thread {tid}"
        lines.append(f"    {role:<14} on a CPU {100 * run / 1e9 / wall:5.1f}%  "
                     f"run queue {100 * wait / 1e9 / wall:5.1f}%  "
                     f"asleep {100 - 100 * (run + wait) / 1e9 / wall:5.1f}%  "
                     f"switches/s voluntary {voluntary / wall:6.0f} involuntary {involuntary / wall:6.0f}")
    return lines + traced, [f"{layout}: {problem}" for problem in wrong[:5]]


def main() -> int:
    args = parse_args()
    if args.sched_trace and shutil.which("perf") is None:
        print("error: --sched-trace needs Linux perf (with the sched tracepoints) on PATH", file=sys.stderr)
        return 2
    rounds.exit_on_sigterm()  # through one_round's finally: no server (a session of its own) is left running
    io = rounds.model_io(args.model)
    logs = Path(tempfile.mkdtemp(prefix="serve-threads-"))
    inputs, expected = rounds.inputs_and_answers(args.model, io, 64, logs)
    problems: list[str] = []
    print(f"CPU flags: {rounds.cpu_flags()}; {os.cpu_count()} cores; {args.clients} clients; logs in {logs}")
    for round_no in range(1, args.rounds + 1):
        for layout in args.layouts:
            lines, wrong = one_round(args.model, layout, args.clients, args.seconds, logs, inputs, io, expected,
                                     args.sched_trace)
            print(f"round {round_no}, " + "\n".join(lines), flush=True)
            problems += wrong
    for problem in problems:
        print(f"WRONG: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
