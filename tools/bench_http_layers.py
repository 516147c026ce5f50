"""The HTTP layer under `vggexport serve`: uvicorn (what it runs) against granian, the same app, side by side.

    python tools/bench_http_layers.py [--model artifacts/vgg11_bn/model.onnx] [--seconds 4] [--rounds 4]
                                      [--clients 1 8 64]

Both servers run the one app factory `vggexport serve --workers N` workers run
(`vggexport.serve.app:app_from_environment`), the same config (CPU, its batching
defaults), one process each: uvicorn as `vggexport serve` starts it (httptools and
uvloop), granian (Rust HTTP/1.1, `--interface asgi`, one worker) from this interpreter.
Rounds alternate between them; `tools/loadgen.py`'s raw HTTP/1.1 client drives each,
every answer is checked against offline ONNX Runtime, and the median round's (by req/s)
req/s, p99, server CPU per request and the ratio granian / uvicorn are printed. granian is not a
dependency: `pip install granian` first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

import rounds  # noqa: E402
import peer_servers  # noqa: E402

LAYERS = ("uvicorn", "granian")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds.add_round_options(parser, seconds=4.0)
    return parser.parse_args()


def start(model: Path, logs: Path) -> dict[str, peer_servers.ServerProcess]:
    from vggexport.serve.app import CONFIG_ENV
    from vggexport.serve.smoke import free_port

    def granian() -> peer_servers.ServerProcess:
        port = free_port()
        config = {"config": {"model": str(model.resolve()), "provider": "cpu"},
                  "listen": {"host": "127.0.0.1", "grpc_port": 0, "own_process": True}}  # as `vggexport serve`
        env = {**peer_servers.vggexport_launch(ROOT)[1], CONFIG_ENV: json.dumps(config)}
        return peer_servers.ServerProcess(
            "granian", [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                        "vggexport.serve.app:app_from_environment", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "1", "--log-level", "warning"], port, logs / "granian.log", env, cwd=ROOT)

    return rounds.start_pair({"uvicorn": lambda: peer_servers.start_vggexport(model, logs, free_port(), 0),
                              "granian": granian}, 120)


def main() -> int:
    args = parse_args()
    if importlib.util.find_spec("granian") is None:
        print("error: granian is not installed here (pip install granian); it is not a vggexport dependency",
              file=sys.stderr)
        return 2
    rounds.exit_on_sigterm()
    io = rounds.model_io(args.model)
    logs = Path(tempfile.mkdtemp(prefix="bench-http-layers-"))
    inputs, expected = rounds.inputs_and_answers(args.model, io, 64, logs)
    print(f"CPU flags: {rounds.cpu_flags()}; {os.cpu_count()} cores; logs in {logs}", flush=True)
    servers = start(args.model, logs)
    try:
        rows, problems = rounds.measure(servers, args, io, inputs, expected)
    finally:
        rounds.stop_all(servers)
    rounds.report_pair(rows, args.clients, *LAYERS)
    for problem in problems:
        print(f"WRONG: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
