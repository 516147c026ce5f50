"""Starts `vggexport serve` on a verified model and asks it once over HTTP and once over gRPC with the
official tritonclient; both answers must be finite and agree. The GPU run's serving check.

    python tools/serve_probe.py --artifacts ART [--provider cuda|cpu|auto] [--instances N] [--logs DIR]
                                [--ready-timeout 60]

With ``--instances N`` > 1 the server runs N batches at once on its one session (each instance warmed up on its
own thread), and 8 × N concurrent HTTP requests follow: each answer must be finite, lie within 1e-3 of the largest
logit of the single answer (batches of other sizes may pick other kernels) and give its top-1 wherever that is
not a near-tie.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent)]  # the tools beside it, and this checkout's vggexport

import peer_servers  # noqa: E402
import rounds  # noqa: E402

from vggexport.serve.smoke import free_port  # noqa: E402


def ask(server: peer_servers.ServerProcess, grpc_port: int, name: str,
        batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    given = httpclient.InferInput("input", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch, binary_data=True)
    over_http = http.infer(name, [given]).as_numpy("logits")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    given_grpc = grpcclient.InferInput("input", list(batch.shape), "FP32")
    given_grpc.set_data_from_numpy(batch)
    over_grpc = grpc.infer(name, [given_grpc]).as_numpy("logits")
    return over_http, over_grpc


def concurrent_answers(server: peer_servers.ServerProcess, name: str, batch: np.ndarray,
                       count: int) -> list[np.ndarray]:
    """``count`` HTTP requests at once, a client each (tritonclient's HTTP client is not shared across threads)."""
    import tritonclient.http as httpclient

    def one(_: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        given = httpclient.InferInput("input", list(batch.shape), "FP32")
        given.set_data_from_numpy(batch, binary_data=True)
        return client.infer(name, [given]).as_numpy("logits")

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def agree(single: np.ndarray, answers: list[np.ndarray]) -> bool:
    """Finite, within the tolerance, and the same top-1 wherever the single answer's top two are further apart
    than the tolerance (a near-tie may flip between kernels and still be within it)."""
    tolerance = 1e-3 * float(np.abs(single).max())
    top2 = np.sort(single, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * tolerance
    return all(np.isfinite(a).all() and a.shape == single.shape and float(np.abs(a - single).max()) <= tolerance
               and (a.argmax(1) == single.argmax(1))[decided].all() for a in answers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="cuda")
    parser.add_argument("--instances", type=int, default=1, help="vggexport serve --instances [default: 1]")
    parser.add_argument("--logs", type=Path, default=Path("serve-probe-logs"))
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="[default: 60, under the GPU run's 90 s limit of this step, so the tool ends it]")
    args = parser.parse_args()
    if args.instances < 1:
        print(f"error: --instances must be >= 1, not {args.instances}", file=sys.stderr)
        return 2
    rounds.exit_on_sigterm()  # through the finally that stops the server
    models = sorted(args.artifacts.glob("*/model.onnx"))
    if not models:
        print(f"error: no */model.onnx under {args.artifacts}", file=sys.stderr)
        return 2
    args.logs.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    server = peer_servers.start_vggexport(models[0], args.logs, free_port(), grpc_port, args.instances,
                                          name="serve", provider=args.provider, new_session=False)
    together: list[np.ndarray] = []
    try:
        print(f"ready in {server.wait_ready(args.ready_timeout):.1f} s, RSS {server.rss_mb():.0f} MB", flush=True)
        import httpx

        described = httpx.get(f"{server.url}/v2/models/{models[0].parent.name}", timeout=10).json()
        name, shape = described["name"], described["inputs"][0]["shape"]
        side = 32 if shape[-1] == -1 else shape[-1]
        batch = np.random.default_rng(0).standard_normal((4, shape[1], side, side)).astype(np.float32)
        over_http, over_grpc = ask(server, grpc_port, name, batch)
        if args.instances > 1:
            together = concurrent_answers(server, name, batch, 8 * args.instances)
    finally:
        server.stop()
    print(f"model {name}: HTTP {over_http.shape}, gRPC {over_grpc.shape}, top-1 {over_http.argmax(1).tolist()}")
    if not (np.isfinite(over_http).all() and np.array_equal(over_http, over_grpc)):
        print("error: the HTTP and gRPC answers are not finite and equal", file=sys.stderr)
        return 1
    if together:
        print(f"{len(together)} concurrent requests over {args.instances} instances", flush=True)
        if not agree(over_http, together):
            print("error: the concurrent answers do not agree with the single one", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
