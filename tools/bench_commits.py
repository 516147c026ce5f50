"""`vggexport serve` of two commits side by side: the same model, clients and checks, rounds alternating.

    python tools/bench_commits.py --baseline REV [--candidate REV] [--model artifacts/vgg11_bn/model.onnx]
                                  [--seconds 5] [--rounds 4] [--clients 1 8 64] [--instances 1] [--logs DIR]

For a change to the serving path, measured in one run on the one machine, since the
machines are shared and noisy. The baseline is `git archive REV vggexport` unpacked
into the logs folder; the candidate is the working tree (or --candidate REV, unpacked
the same way). Both run under this interpreter and its packages, each importing its own
vggexport/ first on PYTHONPATH (checked before either starts), as `tools/bench_peers.py`
starts `vggexport serve`: CPU, its batching defaults, the same intra-op threads. Both run
at once; `tools/loadgen.py`'s raw HTTP/1.1 client (by default) drives each in alternating rounds, every
answer is checked against offline ONNX Runtime, and the median round of each is reported
with the ratio candidate / baseline. Exit code 1 when an answer was wrong or a request failed.
"""

from __future__ import annotations

import argparse
import io as io_module
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(ROOT)]

import rounds  # noqa: E402
import v2_http  # noqa: E402
import peer_servers  # noqa: E402

NAMES = ("baseline", "candidate")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="The commit (any git revision) to compare against.")
    parser.add_argument("--candidate", default=None, help="Another revision [default: the working tree].")
    rounds.add_round_options(parser)
    parser.add_argument("--instances", type=int, default=1, help="vggexport serve --instances [default: 1].")
    parser.add_argument("--images", type=int, default=64, help="Distinct inputs the clients cycle through.")
    parser.add_argument("--logs", type=Path, default=None, help="Logs and unpacked trees [default: a new /tmp dir].")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    return parser.parse_args()


def git(*arguments: str) -> bytes:
    done = subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, check=False)
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"git {' '.join(arguments)}: {last[0] if last else f'exit {done.returncode}'}")
    return done.stdout


def export_tree(revision: str, destination: Path) -> str:
    """Unpack ``revision``'s vggexport/ into ``destination`` (emptied first: no module of an earlier revision
    stays behind); its full commit id."""
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}").decode().strip()
    archive = git("archive", "--format=tar", commit, "vggexport")
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    with tarfile.open(fileobj=io_module.BytesIO(archive)) as tar:
        # git's own archive of this repository; the "data" filter where this Python has it (3.10.12+, 3.11.4+)
        tar.extractall(destination, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return commit


def imported_from(root: Path) -> list[Path]:
    """Every vggexport module file the server's main modules load, launched from ``root`` as the server is
    (peer_servers.vggexport_launch, in ``root``)."""
    _, env = peer_servers.vggexport_launch(root)
    code = (f"{peer_servers.WITHOUT_EDITABLE if root.resolve() != ROOT.resolve() else 'import sys'}; "
            "import vggexport.serve.app, vggexport.cli.group; "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] == 'vggexport' and getattr(m, '__file__', None)))")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                              check=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", "") or "").strip().splitlines()[-1:]
        raise SystemExit(f"vggexport does not import from {root}: {detail[0] if detail else exc}") from None
    return [Path(line).resolve() for line in done.stdout.splitlines() if line]


def trees(args: argparse.Namespace, logs: Path) -> dict[str, tuple[Path, str]]:
    """Each side's tree and what to call it, each checked to be the vggexport its server will import."""
    found = {"baseline": (logs / "baseline", export_tree(args.baseline, logs / "baseline"))}
    if args.candidate:
        found["candidate"] = (logs / "candidate", export_tree(args.candidate, logs / "candidate"))
    else:
        dirty = " with uncommitted changes" if git("status", "--porcelain", "--", "vggexport").strip() else ""
        found["candidate"] = (ROOT, f"{git('rev-parse', 'HEAD').decode().strip()} (the working tree{dirty})")
    for name, (root, _) in found.items():
        outside = [p for p in imported_from(root) if not p.is_relative_to(root.resolve() / "vggexport")]
        if outside:
            raise SystemExit(f"the {name} server would import {outside[0]}, not from {root}")
    return found


def start(args: argparse.Namespace, found: dict[str, tuple[Path, str]], logs: Path,
          threads: int) -> dict[str, peer_servers.ServerProcess]:
    from vggexport.serve.smoke import free_port

    def starter(name: str) -> Callable[[], peer_servers.ServerProcess]:
        return lambda: peer_servers.start_vggexport(args.model, logs, free_port(), free_port(), args.instances,
                                                    threads if args.instances > 1 else None, root=found[name][0],
                                                    name=name)

    return rounds.start_pair({name: starter(name) for name in NAMES}, args.ready_timeout)


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    rounds.exit_on_sigterm()
    if not args.model.is_file():
        raise SystemExit(f"no model at {args.model}: train and verify one (vggexport pipeline) or pass --model")

    logs = args.logs or Path(tempfile.mkdtemp(prefix="bench-commits-"))
    logs.mkdir(parents=True, exist_ok=True)
    found = trees(args, logs)
    threads = rounds.threads_per_instance(args.instances)
    io = rounds.model_io(args.model)
    inputs, expected = rounds.inputs_and_answers(args.model, io, args.images, logs)
    print(f"CPU: {os.cpu_count()} cores; flags: {rounds.cpu_flags()}", flush=True)
    for name in NAMES:
        print(f"{name}: {found[name][1]}", flush=True)
    print(f"model {args.model}; client: {v2_http.client_name(args.client)}, {args.client_processes} process(es); "
          f"{args.rounds} rounds x {args.seconds:g} s (+{args.warmup:g} s warm-up), alternating ABBA; logs in {logs}",
          flush=True)
    servers = start(args, found, logs, threads)
    try:
        rows, problems = rounds.measure(servers, args, io, inputs, expected)
    finally:
        rounds.stop_all(servers)
    rounds.report_pair(rows, args.clients, *NAMES)
    for problem in problems:
        print(f"WRONG: {problem}")
    checked = sum(r["requests"] for rs in rows.values() for r in rs)
    print(f"answers checked against offline ONNX Runtime: {checked:.0f}; "
          f"run took {time.perf_counter() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally has stopped both servers and the clients by now
        print("interrupted: both servers stopped", file=sys.stderr)
        sys.exit(130)
