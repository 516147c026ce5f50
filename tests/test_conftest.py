"""``built_once``: the session fixtures that pytest-xdist's workers share (the suite's own machinery)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tests.conftest import built_once


class Factory:
    """What ``built_once`` reads of pytest's TempPathFactory: each worker's base folder, inside the run's."""

    def __init__(self, run: Path, worker: str) -> None:
        self.base = run / worker

    def getbasetemp(self) -> Path:
        return self.base

    def mktemp(self, name: str) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        folder = self.base / f"{name}{len(list(self.base.iterdir()))}"  # numbered, as pytest's are
        folder.mkdir()
        return folder


def slow_build(folder: Path) -> None:
    """Counts its calls in the run's folder, and takes long enough that a second worker arrives meanwhile."""
    import time

    with open(folder.parent / "builds.txt", "a") as log:
        log.write("built\n")
    time.sleep(0.5)
    (folder / "weights.bin").write_bytes(b"\x01" * 16)


def worker(run: str, name: str, answers: multiprocessing.Queue) -> None:
    import os

    os.environ["PYTEST_XDIST_WORKER"] = name
    folder = built_once(Factory(Path(run), name), "model", slow_build)  # type: ignore[arg-type]
    answers.put((str(folder), (folder / "weights.bin").read_bytes()))


def test_two_workers_share_one_build(tmp_path: Path) -> None:
    answers: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=worker, args=(str(tmp_path), f"gw{n}", answers)) for n in range(2)]
    for process in workers:
        process.start()
    results = [answers.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    assert (tmp_path / "builds.txt").read_text() == "built\n"  # the second waited for the first's build
    assert results[0] == results[1] == (str(tmp_path / "model"), b"\x01" * 16)


def test_a_build_that_failed_half_way_is_rebuilt_from_an_empty_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    factory = Factory(tmp_path, "gw0")

    def fails(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"partial")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        built_once(factory, "model", fails)  # type: ignore[arg-type]
    folder = built_once(factory, "model", lambda f: (f / "whole.bin").write_bytes(b"ok"))  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == ["whole.bin"]
    # Once built, it is not built again.
    again = built_once(factory, "model", lambda f: pytest.fail("built twice"))  # type: ignore[arg-type]
    assert again == folder


def test_without_xdist_each_call_builds_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    factory, builds = Factory(tmp_path, "serial"), []
    first = built_once(factory, "model", builds.append)  # type: ignore[arg-type]
    second = built_once(factory, "model", builds.append)  # type: ignore[arg-type]
    assert builds == [first, second] and first != second
    assert not (tmp_path / "model").exists()  # nothing shared: no folder in the run's base
