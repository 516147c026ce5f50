"""Runs the GPU run's steps: each under its own limit, all under one deadline, teed into one log, and ends
with a summary and one archive of the small result files, so at most a handful of files come back.

A step past its limit is killed with everything it started (its own process group); the summary prints
whatever happened, and the run exits 0 only when every step passed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_MEMBER_BYTES = 4 * 1024 * 1024  # a result file bigger than this stays out of the archive (said in it)
RESULT_SUFFIXES = (".json", ".jsonl", ".log", ".txt", ".csv", ".pbtxt")
SUMMARY, LOG, ARCHIVE = "summary.txt", "gpu_check.log", "results.tar.gz"


@dataclass
class Result:
    title: str
    status: str  # passed, failed, timed out, skipped
    rc: int | None
    seconds: float
    limit_s: float

    def line(self) -> str:
        rc = "" if self.rc is None else f" rc {self.rc}"
        return f"{self.status:>9}{rc:7s} {self.seconds:6.1f} s of {self.limit_s:4.0f} s  {self.title}"


class Run:
    """Steps in order; ``deadline_s`` after the start no step runs on, so the summary still prints in time."""

    def __init__(self, log: Path, deadline_s: float) -> None:
        self.started = time.monotonic()
        self.deadline_s = deadline_s
        self.log: IO[str] = open(log, "a", buffering=1)
        self.results: list[Result] = []
        self.stopped: str | None = None  # why the remaining steps are skipped

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def step(self, title: str, argv: Sequence[str], limit_s: float, *, env: dict[str, str], cwd: Path,
             critical: bool = False) -> Result:
        left = self.deadline_s - (time.monotonic() - self.started)
        if self.stopped or left < 5:
            result = Result(title, "skipped", None, 0.0, limit_s)
            self.say(f"\n=== skipped: {title} ({self.stopped or 'the deadline is reached'})")
        else:
            result = self.execute(title, argv, min(limit_s, left), env, cwd)
        self.results.append(result)
        if critical and result.status != "passed" and not self.stopped:
            self.stopped = f"{title!r} did not pass"
        return result

    def execute(self, title: str, argv: Sequence[str], limit_s: float, env: dict[str, str], cwd: Path) -> Result:
        self.say(f"\n=== {title} ({time.strftime('%H:%M:%S')}, limit {limit_s:.0f} s)\n$ {' '.join(argv)}")
        started = time.monotonic()
        try:
            process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       errors="replace", env=env, cwd=cwd, start_new_session=True)
        except OSError as exc:
            self.say(f"cannot start: {exc}")
            return Result(title, "failed", None, 0.0, limit_s)
        reader = threading.Thread(target=self.copy_output, args=(process.stdout,), daemon=True)
        reader.start()
        status = "passed"
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            status = "timed out"
            stop_group(process)
        reader.join(timeout=5)
        seconds = time.monotonic() - started
        if status == "passed" and process.returncode != 0:
            status = "failed"
        result = Result(title, status, process.returncode, seconds, limit_s)
        self.say(f"--- {result.line()}")
        return result

    def copy_output(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            sys.stdout.write(line)
            sys.stdout.flush()
            self.log.write(line)

    def summary(self) -> list[str]:
        passed = sum(r.status == "passed" for r in self.results)
        lines = ["=== summary", *(r.line() for r in self.results),
                 f"GPU run: {passed} of {len(self.results)} steps passed in {time.monotonic() - self.started:.0f} s"]
        lines += [f"not passed: {r.title} ({r.status})" for r in self.results if r.status != "passed"]
        return lines

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.status == "passed" for r in self.results)


def stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the step and all it started, then SIGKILL to whatever is left 5 s later."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pack_results(out: Path, sources: Sequence[Path]) -> Path:
    """The small result files under ``sources`` in one archive in ``out`` (paths relative to their source's parent)."""
    target = out / ARCHIVE
    left_out = []
    with tarfile.open(target.with_suffix(".tmp"), "w:gz") as archive:
        for source in sources:
            for path in sorted(source.rglob("*")) if source.is_dir() else []:
                if not path.is_file() or not path.name.endswith(RESULT_SUFFIXES):
                    continue
                name = str(path.relative_to(source.parent))
                if path.stat().st_size > MAX_MEMBER_BYTES:
                    left_out.append(f"{name} ({path.stat().st_size} bytes)")
                    continue
                archive.add(path, arcname=name)
        note = ("left out (over 4 MiB): " + ", ".join(left_out) if left_out else "nothing left out") + "\n"
        write_member(archive, "LEFT_OUT.txt", note)
    target.with_suffix(".tmp").replace(target)
    return target


def write_member(archive: tarfile.TarFile, name: str, text: str) -> None:
    import io

    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    archive.addfile(info, io.BytesIO(data))
