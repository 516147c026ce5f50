"""The peer benchmark's parts that need no Triton: the load generator, the answer check, the Triton model folder.

The whole run (tools/bench_peers.py) needs Triton's own venv (about 420 MB, built once on
first use), so it is run by hand, not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import loadgen
import peer_servers
import rounds
import v2_http

LOGITS = np.arange(10, dtype=np.float32)


async def v2_server(connection: str = "keep-alive") -> tuple[asyncio.AbstractServer, int]:
    """A loopback stand-in answering every request with LOGITS in the binary tensor extension."""
    header = json.dumps({"model_name": "m", "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10],
                                                         "parameters": {"binary_data_size": 40}}]}).encode()
    answer = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(header) + 40}\r\nConnection: {connection}\r\n"
              f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode() + header + LOGITS.tobytes()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                # Content-Length's own line: Inference-Header-Content-Length ends the same way and comes first
                length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                              if line.startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(answer)
                if connection == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_closed_loop_counts_and_keeps_every_distinct_answer(client: str, connection: str) -> None:
    async def run() -> loadgen.Round:
        server, port = await v2_server(connection)
        bodies = [v2_http.binary_request(np.full((1, 1, 2, 2), i, np.float32).tobytes(), [1, 1, 2, 2])[0]
                  for i in range(3)]
        headers = v2_http.binary_request(b"\0" * 16, [1, 1, 2, 2])[1]
        async with server:
            # 1 s: on shared CI cores this process can be descheduled for most of a shorter window
            return await loadgen.closed_loop(f"http://127.0.0.1:{port}/v2/models/m/infer", 4, 1.0, bodies, headers,
                                             warmup=0.1, client=client)

    result = asyncio.run(run())
    assert result.errors == 0, result.first_error
    assert result.requests > 10 and len(result.latencies) == result.requests
    assert result.answers == {i: {LOGITS.tobytes()} for i in range(3)}  # each input asked for, one answer each
    assert 0 < result.cpu_s and result.rate == result.requests / 1.0


def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    from vggexport.serve.smoke import free_port

    port = free_port()  # nothing listens there
    body, headers = v2_http.binary_request(b"\0" * 4, [1])
    result = asyncio.run(loadgen.closed_loop(f"http://127.0.0.1:{port}/x", 2, 0.2, [body], headers))
    assert result.requests == 0 and result.errors > 0 and "Connect" in result.first_error


def test_round_survives_the_json_between_processes_and_merges() -> None:
    first = loadgen.Round(requests=2, seconds=1.0, cpu_s=0.1, latencies=[0.1, 0.2], answers={0: {b"\x01"}},
                          headers={b'{"a": 1}'})
    again = loadgen.Round.from_json(first.to_json())
    assert again == first
    again.merge(loadgen.Round(requests=1, errors=1, first_error="boom", seconds=1.0, answers={0: {b"\x02"}}))
    assert (again.requests, again.errors, again.first_error, again.processes) == (3, 1, "boom", 2)
    assert again.answers == {0: {b"\x01", b"\x02"}} and again.rate == 3.0


def test_every_benchmark_cuts_latency_the_same_way() -> None:
    """p50 and p99 of 1..100 ms, in ms; NaN, not an error, when a round got fewer than two answers."""
    p50, p99 = loadgen.Round(latencies=[i / 1000 for i in range(1, 101)]).latency_ms()
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.99)
    assert all(v != v for v in loadgen.Round(latencies=[0.1]).latency_ms())


def test_drive_runs_the_clients_in_processes_of_their_own(tmp_path: Path) -> None:
    import threading

    loop = asyncio.new_event_loop()
    _server, port = loop.run_until_complete(v2_server())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        inputs = tmp_path / "inputs.f32"
        inputs.write_bytes(np.zeros((4, 1, 2, 2), np.float32).tobytes())
        result = loadgen.drive(f"http://127.0.0.1:{port}/v2/models/m/infer", inputs, [1, 1, 2, 2], clients=5,
                               seconds=0.5, warmup=0.1, processes=2)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert result.processes == 2 and result.errors == 0 and result.requests > 10
    assert set(result.answers) == {0, 1, 2, 3}


def test_measure_drives_the_two_servers_abba_and_checks_every_answer(tmp_path: Path) -> None:
    """Whichever server goes first in a round gains (3-8 % with the same code on both sides): ABBA evens that out."""
    import argparse
    import threading

    loop = asyncio.new_event_loop()
    ports = [loop.run_until_complete(v2_server())[1] for _ in range(2)]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    driven: list[str] = []

    class Stand:  # what measure reads of a server: its URL, its CPU and its batch counters
        def __init__(self, name: str, port: int) -> None:
            self.name, self.url = name, f"http://127.0.0.1:{port}"

        def cpu_seconds(self) -> float:
            return 0.0

        def batch_counts(self, model: str) -> tuple[float, float]:
            driven.append(self.name)  # read as the driven server's window opens and closes
            return 0.0, 0.0

    inputs = tmp_path / "inputs.f32"
    inputs.write_bytes(np.zeros((2, 1, 2, 2), np.float32).tobytes())
    args = argparse.Namespace(clients=[2], rounds=2, seconds=0.2, warmup=0.05, client_processes=1, client="raw")
    io = {"name": "m", "input": ["input", [1, 2, 2]], "output": ["logits", [10]]}
    try:
        rows, problems = rounds.measure({"a": Stand("a", ports[0]), "b": Stand("b", ports[1])}, args, io,
                                        inputs, np.stack([LOGITS, LOGITS]))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert driven[::2] == ["a", "b", "b", "a"] and driven[1::2] == driven[::2]
    assert problems == [] and all(row["requests"] > 0 for key in (("a", 2), ("b", 2)) for row in rows[key])


def test_check_answers_names_a_wrong_answer_and_a_wrong_header() -> None:
    io = {"output": ["logits", [10]]}
    expected = np.stack([LOGITS, LOGITS + 1])
    header = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10]}]}).encode()
    good = loadgen.Round(requests=2, answers={0: {LOGITS.tobytes()}, 1: {(LOGITS + 1).tobytes()}}, headers={header})
    assert rounds.check_answers(good, expected, io) == (0.0, [])
    bad = loadgen.Round(requests=2, answers={0: {(LOGITS + 0.5).tobytes()}}, headers={header.replace(b"1, 10", b"2")})
    worst, problems = rounds.check_answers(bad, expected, io)
    assert worst == 0.5 and len(problems) == 2 and "image 0" in problems[1]


def test_the_triton_model_folder_says_python_backend_batch_64_no_delay(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    report = peer_servers.write_repository(tmp_path / "repo", "vgg11_bn", model,
                                           {"input": ["input", [1, 32, 32]], "output": ["logits", [10]]}, 2)
    config = (tmp_path / "repo" / "vgg11_bn" / "config.pbtxt").read_text()
    for line in ('backend: "python"', "max_batch_size: 64", "max_queue_delay_microseconds: 0",
                 "count: 1 kind: KIND_CPU", 'name: "input" data_type: TYPE_FP32 dims: [1, 32, 32]',
                 'name: "logits" data_type: TYPE_FP32 dims: [10]',
                 'key: "intra_op_num_threads" value: { string_value: "2" }', f'string_value: "{model}"'):
        assert line in config
    assert (tmp_path / "repo" / "vgg11_bn" / "1" / "model.py").read_text() == peer_servers.MODEL_PY.read_text()
    assert report.parent == tmp_path / "repo"


def test_instances_give_both_servers_the_same_sessions_and_threads(tmp_path: Path) -> None:
    """--instances 2: Triton's instance group of 2 and vggexport's 2 instances, each run on 1 thread."""
    io = {"input": ["input", [1, 32, 32]], "output": ["logits", [10]]}
    peer_servers.write_repository(tmp_path / "repo", "vgg11_bn", tmp_path / "model.onnx", io, 1, instances=2)
    config = (tmp_path / "repo" / "vgg11_bn" / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in config and 'key: "intra_op_num_threads" value: { string_value: "1" }' in config
    server = peer_servers.start_vggexport(tmp_path / "missing.onnx", tmp_path, 1, 2, instances=2, threads=1)
    server.process.wait(timeout=60)  # the model is missing: it exits at once, after its command was built
    command = server.process.args
    assert command[command.index("--instances") + 1] == "2" and command[command.index("--threads") + 1] == "1"
    single = peer_servers.start_vggexport(tmp_path / "missing.onnx", tmp_path, 1, 2)
    single.process.wait(timeout=60)
    assert "--instances" not in single.process.args and "--threads" not in single.process.args


def test_a_folder_that_is_not_a_venv_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="not a virtual environment"):
        peer_servers.ensure_venv(tmp_path, None, tmp_path / "pip.log")
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("script", ["bench_peers.py", "peer_servers.py", "loadgen.py"])
def test_help_builds_nothing_and_imports_nothing_heavy(script: str, tmp_path: Path) -> None:
    probe = ("import runpy, sys\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(TOOLS / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = ('numpy', 'onnxruntime', 'aiohttp', 'pytriton', 'vggexport')\n"
             "print(sorted(m for m in heavy if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.stdout.strip().endswith("[]"), done.stdout
    assert list(tmp_path.iterdir()) == []  # no venv, no cache


def test_start_pair_stops_the_started_server_when_the_other_fails(tmp_path: Path) -> None:
    """Real processes: one that never answers, beside one that exits at once or one whose start raises."""
    from vggexport.serve.smoke import free_port

    def process(name: str, code: str) -> peer_servers.ServerProcess:
        return peer_servers.ServerProcess(name, [sys.executable, "-c", code], free_port(), tmp_path / f"{name}.log",
                                          dict(os.environ))

    started: list[peer_servers.ServerProcess] = []

    def silent() -> peer_servers.ServerProcess:
        started.append(process("silent", "import time; time.sleep(120)"))
        return started[-1]

    def no_start() -> peer_servers.ServerProcess:
        raise OSError("no such binary")

    with pytest.raises(RuntimeError, match="exits exited"):
        rounds.start_pair({"exits": lambda: process("exits", "raise SystemExit(3)"), "silent": silent}, 60)
    with pytest.raises(OSError, match="no such binary"):
        rounds.start_pair({"silent": silent, "missing": no_start}, 60)
    assert len(started) == 2 and all(server.process.poll() is not None for server in started)  # stopped, not left


def test_a_ratio_over_a_round_that_answered_nothing_is_nan() -> None:
    assert rounds.ratio(3.0, 2.0) == 1.5 and rounds.ratio(3.0, 0.0) != rounds.ratio(3.0, 0.0)
