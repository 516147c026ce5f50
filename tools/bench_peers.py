"""`vggexport serve` beside NVIDIA Triton (Python backend, one ONNX Runtime CPU session), same model, same clients.

    python tools/bench_peers.py [--model artifacts/vgg11_bn/model.onnx] [--seconds 5] [--rounds 4]
                                [--clients 1 8 64] [--instances 1] [--venv DIR] [--logs DIR]

Both servers run at once on 127.0.0.1 with dynamic batching at max batch 64 and no
queue delay: `vggexport serve --provider cpu` with its defaults, and Triton's
tritonserver (from nvidia-pytriton, in its own Python 3.12 venv, built once; see
tools/peer_servers.py) with tools/triton_python/model.py. Both ONNX Runtime sessions get
the same release and options (intra-op threads = the cores this process may use, the
serve default; with --instances N, N runs at once of CORES/N threads each, from one queue in
both). Closed-loop single-image clients (tools/loadgen.py, in their own process,
binary tensor extension) drive each server in alternating rounds at each client count; the
median round is reported, every answer is checked against offline ONNX Runtime on the same
inputs, and the raw session at batch 64 is measured in the same run. Exit code 1 when an
answer was wrong or a request failed; the targets only print PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent)]

# All stdlib-only at import, so --help stays cheap (numpy, ORT and vggexport are imported in main).
import peer_servers
import rounds
import v2_http

SERVERS = ("vggexport", "triton")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds.add_round_options(parser)
    parser.add_argument("--instances", type=int, default=1,
                        help="Batches run at once, the cores split between them: vggexport serve --instances N "
                             "--threads CORES/N against Triton's instance_group count N [default: 1].")
    parser.add_argument("--images", type=int, default=64, help="Distinct inputs the clients cycle through.")
    parser.add_argument("--venv", type=Path, default=peer_servers.DEFAULT_VENV,
                        help="Triton's venv, built there once and reused [default: %(default)s].")
    parser.add_argument("--python", type=Path, default=None, help="Python 3.12 for that venv [default: pyenv's].")
    parser.add_argument("--logs", type=Path, default=None,
                        help="Folder for both servers' logs and Triton's model repository [default: a new /tmp dir].")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    return parser.parse_args()


def start_servers(args: argparse.Namespace, io: dict[str, Any], logs: Path,
                  threads: int) -> tuple[dict[str, peer_servers.ServerProcess], Path]:
    from vggexport.serve.smoke import free_port

    venv = peer_servers.ensure_venv(args.venv, args.python, logs / "triton-venv-pip.log")
    report = peer_servers.write_repository(logs / "triton-repository", io["name"], args.model, io, threads,
                                           args.instances)
    servers = rounds.start_pair({
        "vggexport": lambda: peer_servers.start_vggexport(
            args.model, logs, free_port(), free_port(), args.instances,
            threads if args.instances > 1 else None),  # one instance: the serve default, which is `threads`
        "triton": lambda: peer_servers.start_triton(venv, logs / "triton-repository", logs, free_port(), free_port()),
    }, args.ready_timeout)
    return servers, report


def describe(servers: dict[str, peer_servers.ServerProcess], report: Path, threads: int, instances: int) -> None:
    """Versions and settings beside the numbers: what ran, read back from each server where it can say."""
    ours, theirs = servers["vggexport"].get("/v2"), servers["triton"].get("/v2")
    session = json.loads(report.read_text())
    print(f"CPU: {os.cpu_count()} cores, {threads * instances} usable; flags: {rounds.cpu_flags()}")
    import numpy as np

    print(f"vggexport serve: {ours['name']} {ours['version']}, Python {sys.version.split()[0]}, "
          f"onnxruntime {peer_servers.ort_version()} (CPUExecutionProvider), numpy {np.__version__}, "
          f"max batch 64, delay 0 (its defaults), {instances} instance(s)")
    print(f"Triton: {theirs['name']} {theirs['version']} from {peer_servers.PYTRITON}, Python backend on "
          f"{session['python']}, onnxruntime {session['onnxruntime']} ({', '.join(session['providers'])}), "
          f"numpy {session['numpy']} (pytriton needs < 2), dynamic batcher max batch 64, delay 0 us, "
          f"{instances} CPU instance(s)")
    print(f"ORT sessions: all graph optimisations, sequential; intra-op threads {threads} in each of {instances} "
          f"(Triton's model reports "
          f"{session['intra_op_num_threads']}), inter-op default, spinning off "
          f"(Triton's model reports {session['allow_spinning']!r})")


def report(rows: dict[tuple[str, int], list[dict[str, float]]], clients: list[int], raw: float,
           raw_cpu: float) -> None:
    print(f"\nmedian of the rounds   {'vggexport':>28}   {'Triton':>28}   vggexport/Triton")
    print(f"{'clients':>7}  {'':14}{'req/s':>8} {'p50 ms':>9} {'p99 ms':>9}   {'req/s':>8} {'p50 ms':>9} "
          f"{'p99 ms':>9}   {'req/s':>6} {'p50':>6} {'p99':>6}")
    best = {c: (rounds.median_round(rows[("vggexport", c)]), rounds.median_round(rows[("triton", c)])) for c in clients}
    for c, (v, t) in best.items():
        print(f"{c:>7}  {'':14}{v['rate']:8.0f} {v['p50']:9.2f} {v['p99']:9.2f}   {t['rate']:8.0f} {t['p50']:9.2f} "
              f"{t['p99']:9.2f}   {rounds.ratio(v['rate'], t['rate']):6.2f} {rounds.ratio(v['p50'], t['p50']):6.2f} "
              f"{rounds.ratio(v['p99'], t['p99']):6.2f}")
    print("\nCPU in the median round's window (cores: of one core; the idle peer is the server not being driven):")
    for c, pair in best.items():
        for name, row in zip(SERVERS, pair):
            share = row["client_us"] / (row["client_us"] + row["server_us"])
            print(f"{c:>7} clients {name:<9}  client {row['client_us']:5.0f} us/req {row['client_core']:5.0%}   "
                  f"server {row['server_us']:6.0f} us/req {row['server_core']:5.0%}   client's share {share:4.0%}   "
                  f"idle peer {row['idle_core']:4.0%}   mean batch {row['batch']:5.1f}")
    top = max(clients)
    served = best[top][0]["rate"]
    # CPU per image is steadier than img/s on shared cores: the servers' us/req above minus this is their overhead
    print(f"\nraw ONNX Runtime session, batch 64: {raw:.0f} img/s, {raw_cpu * 1e6:.0f} us of CPU per image; "
          f"vggexport at {top} clients: {served / raw:.0%} of it; Triton: {best[top][1]['rate'] / raw:.0%}")
    targets = [(f"vggexport >= 1.5x Triton's req/s at {c} clients", v["rate"] >= 1.5 * t["rate"])
               for c, (v, t) in best.items()]
    targets += [(f"vggexport p99 <= Triton's at {top} clients", best[top][0]["p99"] <= best[top][1]["p99"]),
                (f"vggexport at {top} clients >= 40% of the raw session at batch 64", served >= 0.4 * raw)]
    for text, ok in targets:
        print(f"target {'PASS' if ok else 'FAIL'}: {text}")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    rounds.exit_on_sigterm()
    if not args.model.is_file():
        raise SystemExit(f"no model at {args.model}: train and verify one (vggexport pipeline) or pass --model")
    from bench_serve import raw_session  # the server's own runner at batch 64, as bench_serve measures it

    logs = args.logs or Path(tempfile.mkdtemp(prefix="bench-peers-"))
    logs.mkdir(parents=True, exist_ok=True)
    threads = rounds.threads_per_instance(args.instances)
    io = rounds.model_io(args.model)
    inputs, expected = rounds.inputs_and_answers(args.model, io, args.images, logs)
    print(f"model {args.model} ({io['name']}: {io['input']} -> {io['output']}); logs in {logs}", flush=True)
    servers, session_report = start_servers(args, io, logs, threads)
    try:
        describe(servers, session_report, threads, args.instances)
        print(f"client: {v2_http.client_name(args.client)}, {args.client_processes} process(es) of its own; "
              f"{args.images} distinct images; {args.rounds} rounds x {args.seconds:g} s "
              f"(+{args.warmup:g} s warm-up) per server and client count, alternating ABBA", flush=True)
        rows, problems = rounds.measure(servers, args, io, inputs, expected)
    finally:
        rounds.stop_all(servers)
    _, raw, raw_cpu = raw_session(args.model, "cpu", 64, args.seconds)  # servers stopped: the cores are its own
    report(rows, args.clients, raw, raw_cpu)
    worst = {name: max(r["worst"] for (n, _), rs in rows.items() if n == name for r in rs) for name in SERVERS}
    checked = {name: sum(r["requests"] for (n, _), rs in rows.items() if n == name for r in rs) for name in SERVERS}
    print(f"answers checked against offline ONNX Runtime: vggexport {checked['vggexport']:.0f} "
          f"(max |diff| {worst['vggexport']:.1e}), Triton {checked['triton']:.0f} (max |diff| {worst['triton']:.1e})")
    for problem in problems:
        print(f"WRONG: {problem}")
    print(f"run took {time.perf_counter() - started:.0f} s")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the finally blocks have stopped both servers and the clients by now
        print("interrupted: both servers stopped", file=sys.stderr)
        sys.exit(130)
