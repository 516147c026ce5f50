"""Two servers side by side: the same model, the same clients, rounds in ABBA order, every answer checked.

What every tool comparing two servers shares (tools/bench_peers.py: vggexport and Triton;
tools/bench_commits.py: two commits; tools/bench_http_layers.py: two HTTP layers; and
tools/serve_threads.py checks its answers with it): the round options, the model's I/O, the
offline answers every served one is checked against, the alternating rounds themselves
(``measure``), their summary and the median round's report. Stdlib-only at import, so each
tool's --help stays cheap (numpy, ONNX Runtime and vggexport are imported where used).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loadgen
import peer_servers


def even_rounds(text: str) -> int:
    rounds = int(text)
    if rounds < 2 or rounds % 2:
        raise argparse.ArgumentTypeError(f"{text} is not an even number >= 2 (ABBA order needs pairs of rounds)")
    return rounds


def add_round_options(parser: argparse.ArgumentParser, seconds: float = 5.0) -> None:
    """The model and the rounds, as ``measure`` reads them: the options every tool comparing two servers shares."""
    parser.add_argument("--model", type=Path, default=Path("artifacts/vgg11_bn/model.onnx"),
                        help="A verified FP32 ONNX (vggexport serve refuses others) [default: %(default)s].")
    parser.add_argument("--seconds", type=float, default=seconds,
                        help=f"Timed window of one round [default: {seconds:g}].")
    parser.add_argument("--warmup", type=float, default=1.0, help="Load before each round's window [default: 1].")
    parser.add_argument("--rounds", type=even_rounds, default=4,
                        help="Rounds per server and client count, an even number: ABBA gives each server the first "
                             "turn in half of them [default: 4].")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--client-processes", type=int, default=1,
                        help="Load-generator processes per round, the clients split between them [default: 1].")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="raw: keep-alive HTTP/1.1 on asyncio streams, several times cheaper per request than "
                             "aiohttp on the cores the servers share [default: raw].")


def cpu_flags() -> str:
    """The vector extensions ONNX Runtime can pick kernels by (avx2, avx512*, amx*), from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return " ".join(sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))) or "none"
    return "unknown"


def exit_on_sigterm() -> None:
    """A SIGTERM unwinds like Ctrl-C, through the ``finally`` that stops the servers: a server in a session of its
    own (``ServerProcess``'s default) gets no signal sent to this tool, so only that ``finally`` stops it."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def threads_per_instance(instances: int) -> int:
    """ORT's intra-op threads in each of ``instances``: the cores this process may use, split between them (what
    vggexport serve gives ORT by default)."""
    cores = len(os.sched_getaffinity(0))
    if not 1 <= instances <= cores:
        raise SystemExit(f"--instances must be 1 to {cores} (the cores this process may use), not {instances}")
    return cores // instances


def model_io(model: Path) -> dict[str, Any]:
    """The served name and the ONNX's input and output, from the same session the server would open."""
    from vggexport.serve.runner import ServingRunner

    with ServingRunner(model, provider="cpu") as runner:
        spec, out = runner.session.get_inputs()[0], runner.session.get_outputs()[0]
        if runner.input_datatype != "FP32" or any(d <= 0 for d in runner.input_shape[1:]):
            raise SystemExit(f"{model}: needs a fixed-size FP32 input, not {runner.input_datatype} "
                             f"{runner.input_shape}")
        return {"name": runner.metadata["model_name"], "input": [spec.name, runner.input_shape[1:]],
                "output": [out.name, runner.output_shapes[0][1:]]}


def offline_answers(model: Path, images: Any) -> Any:
    """Offline ONNX Runtime on the same inputs, one image per run as the clients send them."""
    import numpy as np

    from vggexport.serve.runner import ServingRunner

    with ServingRunner(model, provider="cpu") as runner:
        return np.concatenate([runner.infer_all(images[i:i + 1])[0] for i in range(len(images))])


def inputs_and_answers(model: Path, io: dict[str, Any], count: int, folder: Path) -> tuple[Path, Any]:
    """``count`` distinct images (seed 0, the same in every tool) in the file the load generator sends them from,
    and the offline answer to each."""
    import numpy as np

    images = np.random.default_rng(0).standard_normal((count, *io["input"][1]), dtype=np.float32)
    inputs = folder / "inputs.f32"
    inputs.write_bytes(images.tobytes())
    return inputs, offline_answers(model, images)


def check_answers(result: loadgen.Round, expected: Any, io: dict[str, Any]) -> tuple[float, list[str]]:
    """(largest |served - offline|, problems) over every answer of a round (the distinct bytes stand for all)."""
    import numpy as np

    problems = [f"{result.errors} failed requests, first: {result.first_error}"] if result.errors else []
    name, dims = io["output"]
    for header in result.headers:
        output = json.loads(header)["outputs"][0]
        if output["name"] != name or output["datatype"] != "FP32" or output["shape"] != [1, *dims]:
            problems.append(f"unexpected output header {header[:200]!r}")
    worst = 0.0
    for index, answers in result.answers.items():
        for raw in answers:
            got = np.frombuffer(raw, dtype=np.float32)
            if got.shape != expected[index].shape:
                problems.append(f"image {index}: {got.size} values, expected {expected[index].size}")
                continue
            worst = max(worst, float(np.abs(got - expected[index]).max()))
            if not np.allclose(got, expected[index], rtol=1e-4, atol=1e-4) or got.argmax() != expected[index].argmax():
                problems.append(f"image {index}: {got[:4]} ... differs from offline {expected[index][:4]} ...")
    return worst, problems


def stop_all(servers: dict[str, peer_servers.ServerProcess]) -> None:
    # A second Ctrl-C or SIGTERM must not cut the shutdown short and leave a server running.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for server in servers.values():
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_pair(starters: dict[str, Callable[[], peer_servers.ServerProcess]],
               timeout: float) -> dict[str, peer_servers.ServerProcess]:
    """Start every server, then wait for all: they load at once, and none is measured while another starts. If one
    fails to start or to become ready, those already started are stopped before the error goes on."""
    servers: dict[str, peer_servers.ServerProcess] = {}
    try:
        for name, start in starters.items():
            servers[name] = start()
        for server in servers.values():
            server.wait_ready(timeout)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def ratio(numerator: float, denominator: float) -> float:
    """NaN where the denominator is zero (a server that answered nothing in its round), never a ZeroDivisionError."""
    return numerator / denominator if denominator else float("nan")


def measure(servers: dict[str, peer_servers.ServerProcess], args: argparse.Namespace, io: dict[str, Any],
            inputs: Path, expected: Any) -> tuple[dict[tuple[str, int], list[dict[str, float]]], list[str]]:
    """Alternating rounds over the two ``servers`` at each client count, in ABBA order (the first, the second, the
    second, the first, ...; an even number of rounds, so each goes first in half): measured with the same code on
    both sides, the server driven first in every round was 3-8 % faster at its median. Every answer checked; each
    round's probe also reads the other server's CPU."""
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    problems: list[str] = []
    first, second = servers
    for clients in args.clients:
        for round_no in range(1, args.rounds + 1):
            for name in (first, second) if round_no % 2 else (second, first):
                server, idle = servers[name], servers[second if name == first else first]

                def probe(server: peer_servers.ServerProcess = server,
                          idle: peer_servers.ServerProcess = idle) -> tuple[float, ...]:
                    return server.cpu_seconds(), idle.cpu_seconds(), *server.batch_counts(io["name"])

                result = loadgen.drive(f"{server.url}/v2/models/{io['name']}/infer", inputs, [1, *io["input"][1]],
                                       clients=clients, seconds=args.seconds, warmup=args.warmup,
                                       processes=args.client_processes, names=(io["input"][0], io["output"][0]),
                                       client=args.client, probe=probe)
                worst, wrong = check_answers(result, expected, io)
                problems += [f"{name}, {clients} clients, round {round_no}: {p}" for p in wrong[:5]]
                row = summarize(result, worst)
                rows.setdefault((name, clients), []).append(row)
                print(f"  {clients:>3} clients  round {round_no}  {name:<9} {row['rate']:8.0f} req/s  "
                      f"p50 {row['p50']:7.2f} ms  p99 {row['p99']:7.2f} ms  mean batch {row['batch']:5.1f}  "
                      f"client {row['client_us']:4.0f} us/req  answers {result.requests} "
                      + ("ok" if not wrong else f"{len(wrong)} WRONG"), flush=True)
    return rows, problems


def summarize(result: loadgen.Round, worst: float) -> dict[str, float]:
    """One round's numbers; the server-side ones come from the probes taken as its window opened and closed."""
    p50, p99 = result.latency_ms()
    requests = max(result.requests, 1)
    (cpu0, idle0, images0, batches0), (cpu1, idle1, images1, batches1) = result.probes
    return {"rate": result.rate, "p50": p50, "p99": p99, "requests": result.requests,
            "client_us": result.cpu_s / requests * 1e6, "client_core": result.cpu_s / result.seconds,
            "server_us": (cpu1 - cpu0) / requests * 1e6, "server_core": (cpu1 - cpu0) / result.seconds,
            "idle_core": (idle1 - idle0) / result.seconds, "batch": (images1 - images0) / max(batches1 - batches0, 1),
            "worst": worst}


def median_round(rows: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median req/s (a real round, so its p50 and p99 belong to it)."""
    return sorted(rows, key=lambda r: r["rate"])[len(rows) // 2]


def report_pair(rows: dict[tuple[str, int], list[dict[str, float]]], clients: list[int], base: str, other: str) -> None:
    """Two servers' median rounds at each client count, and ``other`` / ``base`` (the tools comparing two of ours)."""
    print(f"\nmedian round   {base:>10}: req/s  p99 ms  server us/req   {other:>10}: req/s  p99 ms  server us/req"
          f"   {other} / {base}: req/s  p99")
    for c in clients:
        b, n = median_round(rows[(base, c)]), median_round(rows[(other, c)])
        if not b["rate"] or not b["p99"] == b["p99"]:
            print(f"{c:>4} clients   {base} answered nothing in its median round: no ratio")
            continue
        print(f"{c:>4} clients   {b['rate']:17.0f} {b['p99']:7.2f} {b['server_us']:14.0f}   {n['rate']:17.0f} "
              f"{n['p99']:7.2f} {n['server_us']:14.0f}   {n['rate'] / b['rate']:{len(other) + len(base) + 8}.2f}x "
              f"{n['p99'] / b['p99']:4.2f}x")
