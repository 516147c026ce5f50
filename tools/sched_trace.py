"""Whether runnable threads waited while another CPU stood idle: the scheduler's own record of a window.

    python tools/sched_trace.py --pid PID [--seconds 2] [--data perf.data]

Records every CPU's context switches and wake-ups for --seconds (`perf sched record -a`,
Linux perf with the sched tracepoints), then reads the events back (`perf script`). A task
is runnable from its wake-up (queued on the wake-up's target CPU) or from being switched
out runnable (preempted: queued where it ran), until a switch puts it on a CPU; a migration
moves it to another CPU's queue. For each such wait the report sums how long some CPU other
than the one it was queued on stood idle meanwhile. Much of it: the kernel (or the
hypervisor under it) left a CPU idle while work waited. Little of it: CPUs were idle at
other moments than the waits, so the load is bursty, not badly placed. Reported per thread
of the process --pid names and for the five other tasks that waited longest, by name (a task
that waited under 0.5 % of the window is left out); then, per CPU, how much of the waiting
queued there met another CPU idle, and how much of the CPU's idle time met a wait queued
elsewhere (any task's but perf's, kernel threads included); then every task's waiting added
up, with how many overlaps there were and their median and longest. A CPU whose switches do
not follow one from another (some guest kernels record every switch into idle on a CPU and
none out of it) has an idle time the trace does not know: it is named, and left out.
tools/serve_threads.py --sched-trace runs it over its loaded window.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<time>[\d.]+):"
                  r"\s+sched:(?P<event>\w+):\s+(?P<trace>.*)$")
SWITCH = re.compile(r"prev_comm=(?P<prev_comm>.*) prev_pid=(?P<prev>\d+) prev_prio=\S+ prev_state=(?P<state>\S+) "
                    r"==> next_comm=(?P<next_comm>.*) next_pid=(?P<next>\d+)")
WAKING = re.compile(r"comm=(?P<comm>.*) pid=(?P<tid>\d+) prio=\S+ target_cpu=(?P<cpu>\d+)")
RECORDER = ("perf", "perf-exec")  # perf sched record and the command it times (its `sleep`, still named so)
MIGRATE = re.compile(r"comm=(?P<comm>.*) pid=(?P<tid>\d+) prio=\S+ orig_cpu=\d+ dest_cpu=(?P<cpu>\d+)")


@dataclass
class Trace:
    """What one recording says: each CPU's idle stretches, and each task's runnable waits that a recorded switch
    ended. ``untraced``: per CPU, switches whose outgoing task is not the one the trace last put there."""

    idle: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    # (tid, its wait as pieces (CPU queued on, from, to): a migration starts a new piece)
    waits: list[tuple[int, list[tuple[int, float, float]]]] = field(default_factory=list)
    process: dict[int, int] = field(default_factory=dict)  # tid -> pid, for the tasks seen running
    names: dict[int, str] = field(default_factory=dict)
    switches: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    untraced: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    first: float = 0.0
    last: float = 0.0

    @property
    def cpus(self) -> set[int]:
        return set(self.switches)

    @property
    def complete(self) -> set[int]:
        """The CPUs whose idle the trace knows: (nearly) every switch follows from the one before it there."""
        return {cpu for cpu, n in self.switches.items() if self.untraced.get(cpu, 0) <= n // 100}  # 1 % slack


class Parser:
    """`perf script -F comm,pid,tid,cpu,time,event,trace` of a `perf sched record`, fed in time order."""

    def __init__(self) -> None:
        self.trace = Trace()
        self.on_cpu: dict[int, tuple[int, float]] = {}  # CPU -> (tid running, since)
        self.off: set[int] = set()  # tasks seen switched out and not back in since: only they can be woken
        # tid -> (the CPU whose queue it is on, since when there, the pieces of its wait before that)
        self.queued: dict[int, tuple[int, float, list[tuple[int, float, float]]]] = {}

    def feed(self, line: str) -> None:
        found = LINE.match(line)
        if found is None:
            return
        t, cpu, event, text = float(found["time"]), int(found["cpu"]), found["event"], found["trace"]
        trace = self.trace
        trace.first, trace.last = trace.first or t, t
        if event in ("sched_waking", "sched_wakeup") and (woken := WAKING.match(text)):
            tid = int(woken["tid"])
            if tid in self.off:  # the earliest wake-up counts: runnable from then
                self.queued.setdefault(tid, (int(woken["cpu"]), t, []))
        elif event == "sched_migrate_task" and (moved := MIGRATE.match(text)):
            tid = int(moved["tid"])
            if tid in self.queued:
                queue, since, pieces = self.queued[tid]
                self.queued[tid] = (int(moved["cpu"]), t, [*pieces, (queue, since, t)])
        elif event == "sched_switch" and (switch := SWITCH.match(text)):
            self.switch(t, cpu, switch, int(found["pid"]))

    def switch(self, t: float, cpu: int, switch: re.Match[str], pid: int) -> None:
        trace = self.trace
        prev, following = int(switch["prev"]), int(switch["next"])
        trace.switches[cpu] += 1
        trace.process[prev] = pid
        trace.names[prev], trace.names[following] = switch["prev_comm"], switch["next_comm"]
        current, since = self.on_cpu.get(cpu, (None, t))
        if current is not None and prev != current:  # the switch that put prev here is missing
            trace.untraced[cpu] += 1
            self.queued.pop(prev, None)  # its wait ended unseen
        elif prev == 0 and current is not None:
            trace.idle[cpu].append((since, t))
        self.off.add(prev)
        if prev != 0 and switch["state"].startswith("R"):  # preempted: it waits for a CPU, here, from now
            self.queued[prev] = (cpu, t, [])
        if following != 0:
            self.off.discard(following)
            if following in self.queued:
                queue, since, pieces = self.queued.pop(following)
                trace.waits.append((following, [*pieces, (queue, since, t)]))
        self.on_cpu[cpu] = (following, t)


def parse(text: str) -> Trace:
    """The trace of ``perf script``'s text. A CPU's time before its first switch is unknown and left out; so is a
    wait whose end the trace does not hold (a task seen switched out that was never seen switched in)."""
    parser = Parser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.trace


class IdleTimes:
    """Each CPU's idle stretches, to ask how much of [a, b] CPUs other than one were idle."""

    def __init__(self, spans: dict[int, list[tuple[float, float]]], cpus: set[int]) -> None:
        self.spans = {cpu: sorted(spans.get(cpu, [])) for cpu in cpus}
        self.starts = {cpu: [a for a, _ in found] for cpu, found in self.spans.items()}

    def clipped(self, cpu: int, a: float, b: float) -> list[tuple[float, float]]:
        """``cpu``'s idle stretches inside [a, b], cut to it."""
        found, pieces = self.spans[cpu], []
        for start, end in found[max(bisect.bisect_right(self.starts[cpu], a) - 1, 0):]:
            if start >= b:
                break
            if end > a:
                pieces.append((max(a, start), min(b, end)))
        return pieces

    def elsewhere(self, cpu: int, a: float, b: float) -> float:
        """How much of [a, b] at least one CPU other than ``cpu`` was idle (any idle one could have run the task)."""
        pieces = sorted(p for other in self.spans if other != cpu for p in self.clipped(other, a, b))
        total, reach = 0.0, a
        for start, end in pieces:  # the union of the pieces, in order
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


@dataclass
class Tally:
    runnable: float = 0.0
    while_idle: float = 0.0  # of ``runnable``, while a CPU other than the one it was queued on was idle
    episodes: int = 0  # runnable stretches with over 20 us of another CPU idle


def tally(trace: Trace, pid: int) -> tuple[dict[str, Tally], list[float]]:
    """Per task (the --pid's threads by thread id, others by name): its recorded waits, and how much of them a CPU
    other than the one it was queued on, with a complete trace, was idle; and the lengths of those overlaps."""
    idle = IdleTimes(trace.idle, trace.complete)
    tallies: dict[str, Tally] = defaultdict(Tally)
    overlaps: list[float] = []
    for tid, pieces in trace.waits:
        if trace.names.get(tid) in RECORDER:
            continue  # the instrument, not the load
        key = (f"thread {tid}" + (" (its main thread)" if tid == pid else "") if trace.process.get(tid) == pid
               else trace.names.get(tid, str(tid)))
        entry = tallies[key]
        entry.runnable += sum(b - a for _, a, b in pieces)
        overlap = sum(idle.elsewhere(cpu, a, b) for cpu, a, b in pieces)
        entry.while_idle += overlap
        if overlap > 20e-6:
            entry.episodes += 1
            overlaps.append(overlap)
    return tallies, overlaps


def report(trace: Trace, pid: int) -> list[str]:
    window = trace.last - trace.first
    if window <= 0:
        return ["no context switches recorded"]
    tallies, overlaps = tally(trace, pid)
    pct = lambda seconds: 100 * seconds / window  # noqa: E731  (a share of the window, in %)
    lines = [f"window {window * 1e3:.0f} ms; idle " + ", ".join(
        f"CPU {cpu} {pct(sum(b - a for a, b in trace.idle.get(cpu, []))):.0f}%" if cpu in trace.complete else
        f"CPU {cpu} not known ({trace.untraced[cpu]} of its {trace.switches[cpu]} switches do not follow from the "
        "one before)" for cpu in sorted(trace.cpus))]
    ours = sorted((k for k in tallies if k.startswith("thread ")), key=lambda k: -tallies[k].runnable)
    others = sorted((k for k in tallies if not k.startswith("thread ")), key=lambda k: -tallies[k].runnable)[:5]
    for name in [*ours, *others]:
        t = tallies[name]
        if t.runnable < 0.005 * window:
            continue  # a task that hardly waited
        lines.append(f"    {name[:30]:<30} waited {pct(t.runnable):5.1f}% of the window, another CPU idle "
                     f"meanwhile {pct(t.while_idle):5.1f}% of the window ({t.episodes} times)")
    idle = IdleTimes(trace.idle, trace.complete)
    for cpu in sorted(trace.cpus):
        queued = [(a, b) for tid, pieces in trace.waits if trace.names.get(tid) not in RECORDER
                  for c, a, b in pieces if c == cpu]
        if not queued or not trace.cpus - {cpu} <= trace.complete:
            continue  # waits on this CPU can be set against the others' idle only where all of that is known
        waited = sum(b - a for a, b in queued)
        if waited <= 0:
            continue
        overlap = sum(idle.elsewhere(cpu, a, b) for a, b in queued)
        lines.append(f"waits queued on CPU {cpu}: {pct(waited):.1f}% of the window; another CPU was idle for "
                     f"{100 * overlap / waited:.0f}% of that waiting")
    for cpu in sorted(trace.complete):
        idle_time = sum(b - a for a, b in trace.idle.get(cpu, []))
        if idle_time > 0:
            lines.append(f"CPU {cpu} idle {pct(idle_time):.1f}% of the window; a task waited on another CPU's queue "
                         f"for {100 * idle_with_work_elsewhere(trace, cpu) / idle_time:.0f}% of that idle time")
    every = sum(t.runnable for t in tallies.values())
    wasted = sum(t.while_idle for t in tallies.values())
    spread = (f"; overlaps: {len(overlaps)}, median {statistics.median(overlaps) * 1e6:.0f} us, "
              f"longest {max(overlaps) * 1e6:.0f} us" if overlaps else "")
    lines.append(f"all tasks: waited {pct(every):.1f}% of the window, another CPU idle meanwhile "
                 f"{pct(wasted):.1f}% of the window{spread}")
    return lines


def idle_with_work_elsewhere(trace: Trace, cpu: int) -> float:
    """How long ``cpu`` stood idle while at least one task (not perf's) was queued on another CPU."""
    pieces = sorted((a, b) for tid, waits in trace.waits if trace.names.get(tid) not in RECORDER
                    for queue, a, b in waits if queue != cpu and b > a)
    merged: list[tuple[float, float]] = []
    for a, b in pieces:  # the union of the waits, in order
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    idle = IdleTimes({0: merged}, {0})  # the waits' union, asked as if it were a CPU's stretches
    return sum(idle.elsewhere(-1, a, b) for a, b in trace.idle.get(cpu, []))


def start_record(data: Path, seconds: float) -> subprocess.Popen[str]:
    """`perf sched record` of every CPU for ``seconds``, in the background (see ``finish``)."""
    if shutil.which("perf") is None:
        raise RuntimeError("perf (Linux perf, with the sched tracepoints) is not installed here")
    return subprocess.Popen(["perf", "sched", "record", "-a", "-o", str(data), "--", "sleep", f"{seconds:.3f}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no message)"


def finish(recording: subprocess.Popen[str], data: Path, pid: int) -> list[str]:
    _, errors = recording.communicate(timeout=120)
    if recording.returncode != 0:
        raise RuntimeError(f"perf sched record failed: {last_line(errors)}")
    done = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event,trace"],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"perf script failed: {last_line(done.stderr)}")
    return report(parse(done.stdout), pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True, help="The process whose threads are reported one by one.")
    parser.add_argument("--seconds", type=float, default=2.0, help="Recorded window [default: 2].")
    parser.add_argument("--data", type=Path, default=None, help="perf's data file [default: in a new /tmp dir].")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="sched-trace-")) / "perf.data"
    try:
        started = time.perf_counter()
        lines = finish(start_record(data, args.seconds), data, args.pid)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"recorded to {data}; took {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
