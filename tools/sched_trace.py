"""Whether runnable threads waited while another CPU stood idle: the scheduler's own record of a window.

    python tools/sched_trace.py --pid PID [--seconds 2] [--data perf.data]

Records every CPU's context switches for --seconds (`perf sched record -a`, Linux perf
with the sched tracepoints), then reads them back (`perf sched timehist --state`): each
line is one stretch of a task on a CPU, with how long it waited before it. A task that
was preempted (switched out runnable) waited in the run queue for all of its wait; a task
that slept waited from its wake-up (the scheduling delay). For each such runnable stretch
the report sums how much of it another CPU spent idle. Much of it: the kernel (or the
hypervisor under it) left a CPU idle while work waited. Little of it: CPUs were idle at
other moments than the waits, so the load is bursty, not badly placed. Reported per thread
of the process --pid names, and for every other task by name. tools/serve_threads.py
--sched-trace runs it over its loaded window.
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
WAKING = re.compile(r"comm=(?P<comm>.*) pid=(?P<tid>\d+) prio=")


@dataclass
class Trace:
    """What one recording says: each CPU's idle stretches, and each task's runnable waits that a recorded switch
    ended. ``untraced``: per CPU, switches out of idle the trace does not hold (seen on some guest kernels, where
    one CPU records every switch into idle and none out of it); such a CPU's idle is not known."""

    idle: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    waits: list[tuple[int, int, float, float]] = field(default_factory=list)  # (tid, CPU it then ran on, from, to)
    process: dict[int, int] = field(default_factory=dict)  # tid -> pid, for the tasks seen running
    names: dict[int, str] = field(default_factory=dict)
    untraced: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    cpus: set[int] = field(default_factory=set)  # every CPU a switch was recorded on
    first: float = 0.0
    last: float = 0.0

    @property
    def complete(self) -> set[int]:
        """The CPUs whose idle the trace knows: every switch out of idle that it should hold, it holds."""
        return {cpu for cpu in self.cpus if self.untraced.get(cpu, 0) <= self.exits(cpu) // 100}  # 1 % slack

    def exits(self, cpu: int) -> int:
        """Switches out of idle on ``cpu``: those the trace holds, and those it must have missed."""
        return len(self.idle.get(cpu, [])) + self.untraced.get(cpu, 0)


def parse(text: str) -> Trace:
    """`perf script -F comm,pid,tid,cpu,time,event,trace` of a `perf sched record`, in time order. A task is
    runnable from its wake-up (sched_waking) or from being switched out runnable (preempted, state R), until a
    switch puts it on a CPU. What happened on a CPU before its first switch is unknown and left out; so is a wait
    whose end the trace does not hold (a task seen switched out that was never seen switched in)."""
    trace = Trace()
    on_cpu: dict[int, tuple[int, float]] = {}  # CPU -> (tid running, since)
    runnable: dict[int, float] = {}  # tid -> since when
    for line in text.splitlines():
        found = LINE.match(line)
        if found is None:
            continue
        t, cpu, event = float(found["time"]), int(found["cpu"]), found["event"]
        trace.first, trace.last = trace.first or t, t
        if event == "sched_waking" and (woken := WAKING.match(found["trace"])):
            tid = int(woken["tid"])
            if all(current != tid for current, _ in on_cpu.values()):
                runnable.setdefault(tid, t)
            continue
        switch = SWITCH.match(found["trace"]) if event == "sched_switch" else None
        if switch is None:
            continue
        prev, following = int(switch["prev"]), int(switch["next"])
        trace.cpus.add(cpu)
        trace.process[prev] = int(found["pid"])
        trace.names[prev], trace.names[following] = switch["prev_comm"], switch["next_comm"]
        current, since = on_cpu.get(cpu, (None, t))
        if prev != current:  # the switch that put prev here is missing from the trace
            runnable.pop(prev, None)  # its wait ended unseen
            if current == 0:
                trace.untraced[cpu] += 1
        elif prev == 0:
            trace.idle[cpu].append((since, t))
        if prev != 0 and switch["state"].startswith("R"):  # preempted: it waits for a CPU from now
            runnable[prev] = t
        if following != 0 and following in runnable:
            trace.waits.append((following, cpu, runnable.pop(following), t))
        on_cpu[cpu] = (following, t)
    return trace


class IdleTimes:
    """Each CPU's idle stretches, to ask how much of [a, b] CPUs other than one were idle."""

    def __init__(self, spans: dict[int, list[tuple[float, float]]], cpus: set[int]) -> None:
        self.spans = {cpu: sorted(spans.get(cpu, [])) for cpu in cpus}
        self.starts = {cpu: [a for a, _ in found] for cpu, found in self.spans.items()}

    def on(self, cpu: int, a: float, b: float) -> float:
        found, total = self.spans.get(cpu, []), 0.0
        i = max(bisect.bisect_right(self.starts.get(cpu, []), a) - 1, 0)
        while i < len(found) and found[i][0] < b:
            total += max(0.0, min(b, found[i][1]) - max(a, found[i][0]))
            i += 1
        return total

    def elsewhere(self, cpu: int, a: float, b: float) -> float:
        """The longest idle time of any other CPU inside [a, b] (one idle CPU is enough to have run the task)."""
        return max((self.on(other, a, b) for other in self.spans if other != cpu), default=0.0)


@dataclass
class Tally:
    runnable: float = 0.0
    while_idle: float = 0.0  # of ``runnable``, while another CPU was idle
    episodes: int = 0  # runnable stretches with over 20 us of another CPU idle


def tally(trace: Trace, pid: int) -> tuple[dict[str, Tally], list[float]]:
    """Per task (the --pid's threads by thread id, others by name): its recorded waits, and how much of them another
    CPU with a complete trace was idle; and the lengths of those idle overlaps."""
    idle = IdleTimes(trace.idle, trace.complete)
    tallies: dict[str, Tally] = defaultdict(Tally)
    overlaps: list[float] = []
    for tid, cpu, a, b in trace.waits:
        key = (f"thread {tid}" + (" (its main thread)" if tid == pid else "") if trace.process.get(tid) == pid
               else trace.names.get(tid, str(tid)))
        entry = tallies[key]
        entry.runnable += b - a
        overlap = idle.elsewhere(cpu, a, b)
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
        f"CPU {cpu} not known (of its {trace.exits(cpu)} switches out of idle, the trace holds "
        f"{len(trace.idle.get(cpu, []))})" for cpu in sorted(trace.cpus))]
    ours = sorted((k for k in tallies if k.startswith("thread ")), key=lambda k: -tallies[k].runnable)
    others = sorted((k for k in tallies if not k.startswith("thread ")), key=lambda k: -tallies[k].runnable)[:5]
    for name in [*ours, *others]:
        t = tallies[name]
        if t.runnable < 0.005 * window:
            continue  # a task that hardly waited
        lines.append(f"    {name[:30]:<30} runnable (recorded waits) {pct(t.runnable):5.1f}%  "
                     f"of it with another CPU idle {pct(t.while_idle):5.1f}% ({t.episodes} times)")
    idle = IdleTimes(trace.idle, trace.complete)
    for cpu in sorted(trace.cpus):
        others = trace.cpus - {cpu}
        ended = [(a, b) for _, c, a, b in trace.waits if c == cpu]
        if not ended or not others <= trace.complete:
            continue  # waits on this CPU can be set against the others' idle only where all of that is known
        waited = sum(b - a for a, b in ended)
        overlap = sum(idle.elsewhere(cpu, a, b) for a, b in ended)
        lines.append(f"waits that ended on CPU {cpu}: {pct(waited):.1f}% of the window; another CPU was idle for "
                     f"{100 * overlap / waited:.0f}% of them")
    every = sum(t.runnable for t in tallies.values())
    wasted = sum(t.while_idle for t in tallies.values())
    lines.append(f"all tasks: recorded waits {pct(every):.1f}% of the window, of it with another CPU idle "
                 f"{pct(wasted):.1f}%" + (f"; those overlaps: median {statistics.median(overlaps) * 1e6:.0f} us, "
                                          f"longest {max(overlaps) * 1e6:.0f} us" if overlaps else ""))
    return lines


def start_record(data: Path, seconds: float) -> subprocess.Popen:
    """`perf sched record` of every CPU for ``seconds``, in the background (see ``finish``)."""
    if shutil.which("perf") is None:
        raise RuntimeError("perf (Linux perf, with the sched tracepoints) is not installed here")
    return subprocess.Popen(["perf", "sched", "record", "-a", "-o", str(data), "--", "sleep", f"{seconds:.3f}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(recording: subprocess.Popen, data: Path, pid: int) -> list[str]:
    _, errors = recording.communicate(timeout=120)
    if recording.returncode != 0:
        raise RuntimeError(f"perf sched record failed: {errors.strip().splitlines()[-1:]}")
    done = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event,trace"],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"perf script failed: {done.stderr.strip().splitlines()[-1:]}")
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
