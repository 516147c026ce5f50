"""The two servers tools/bench_peers.py compares: `vggexport serve`, and Triton's Python backend over ONNX Runtime.

    python tools/peer_servers.py [--venv DIR] [--python PYTHON3.12]   # only build (or check) Triton's venv

nvidia-pytriton stays out of the project's dependencies: Triton gets its own virtual
environment, built once (nvidia-pytriton, which ships the tritonserver binary and the
Python backend, plus the same onnxruntime release as this interpreter's) and reused.
It must be Python 3.12: the Python-backend stub fails on this project's 3.11 build
(`RLock._recursion_count`), and the stub loads libpython3.12.so.1.0, so that
interpreter's lib/ goes on tritonserver's LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTRITON = "nvidia-pytriton==0.7.0"
DEFAULT_VENV = Path.home() / ".cache" / "vggexport" / "bench-peers-venv"
STAMP = "bench-peers.json"  # what the venv was built with; its presence also marks the folder as ours
MODEL_PY = Path(__file__).resolve().parent / "triton_python" / "model.py"


class ServerProcess:
    """A server, in its own process group unless told otherwise, its output in a log file (never an unread pipe,
    which could fill and block)."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, env: dict[str, str],
                 cwd: Path | None = None, new_session: bool = True) -> None:
        """``new_session``: a session of its own, so a Ctrl-C reaches only the tool, which then stops the group in
        order. False for the GPU run's steps: its runner ends an overdue step by signalling the step's process
        group, and the server must be in it, or it would outlive the step that started it."""
        self.name, self.port, self.log, self.own_group = name, port, log, new_session
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.perf_counter()  # wait_ready counts from the launch
        with open(log, "w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                            start_new_session=new_session)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the launch to the first 200 on /v2/health/ready (polled every 20 ms: it is a start-up time
        tools/bench_serve.py reports); an error at once if the server exits first."""
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}); its log {self.log}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                self.get("/v2/health/ready")
                return time.perf_counter() - self.started
            except OSError:  # refused, or 503/400 before the model is loaded
                time.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready in {timeout:.0f} s; its log {self.log}:\n"
                           f"{self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        """The server process's resident memory (VmRSS), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def batch_counts(self, model: str) -> tuple[float, float]:
        """(images inferred, batches run) so far: both keep Triton's counters, Triton in its stats JSON
        (its metrics port is off), vggexport serve on /metrics."""
        if self.name == "tritonserver":
            stats = self.get(f"/v2/models/{model}/stats")["model_stats"][0]
            return float(stats["inference_count"]), float(stats["execution_count"])
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()

        def total(metric: str) -> float:
            names = (f"{metric}_total", metric)  # prometheus_client adds _total to a counter's name
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if line.split("{", 1)[0].split(" ", 1)[0] in names)
        return total("nv_inference_count"), total("nv_inference_exec_count")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and every process under it (Triton's stub is a child process)."""
        total, pending = 0.0, [self.process.pid]
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, IndexError):
                continue  # it ended between the listing and the read
        return total

    def stop(self) -> None:
        """SIGTERM to the whole group (Triton then stops its stub), SIGKILL if it has not ended in 30 s; to the
        process alone where it shares the tool's group."""
        if self.process.poll() is None:
            def send(sig: signal.Signals) -> None:
                if self.own_group:
                    os.killpg(self.process.pid, sig)
                else:
                    self.process.send_signal(sig)
            try:
                send(signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                send(signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass


# Run vggexport from a tree other than this checkout: without the editable install's finder, which would
# otherwise hand over this checkout's module for any vggexport.X the other tree lacks.
WITHOUT_EDITABLE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                    "if 'vggexport' not in getattr(f, '__module__', '')]")


def vggexport_launch(root: Path) -> tuple[list[str], dict[str, str]]:
    """How to run `python -m vggexport` from ``root``'s vggexport/ (also run with ``root`` as the working
    directory, since `python -m` and `-c` put that first): the command's start and its environment."""
    here = root.resolve() == ROOT.resolve()
    paths = [p for p in sys.path[1:] if here or not p or Path(p).resolve() != ROOT.resolve()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(root), *paths])}
    if here:
        return [sys.executable, "-m", "vggexport"], env
    run = f"{WITHOUT_EDITABLE}; import runpy; runpy.run_module('vggexport', run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", run], env


def start_vggexport(model: Path, logs: Path, port: int, grpc_port: int, instances: int = 1,
                    threads: int | None = None, *, root: Path = ROOT, name: str = "vggexport", provider: str = "cpu",
                    extra: tuple[str, ...] = (), new_session: bool = True) -> ServerProcess:
    """`vggexport serve --model`, on the CPU unless ``provider`` says otherwise, with its batching defaults unless
    ``extra`` options change them; logged to ``logs/<name>.log``.

    instances > 1: that many batches run at once from the one queue (--instances, Triton's instance group), each
    on `threads` intra-op threads. ``root``: the tree whose vggexport/ it imports (``vggexport_launch``).
    """
    start, env = vggexport_launch(root)
    command = [*start, "serve", "--model", str(model.resolve()), "--provider", provider,
               "--port", str(port), "--grpc-port", str(grpc_port), *extra]
    if instances > 1:
        command += ["--instances", str(instances)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return ServerProcess("vggexport serve", command, port, logs / f"{name}.log", env, cwd=root,
                         new_session=new_session)


def ort_version() -> str:
    """This interpreter's ONNX Runtime release (the GPU package is the same runtime; its CPU twin goes to Triton)."""
    for package in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    raise RuntimeError("onnxruntime is not installed in this interpreter")


def find_python312() -> Path:
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False).stdout.strip())
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/versions/3.12*/bin/python3.12"))
        if found:
            return Path(found[-1])
    if shutil.which("python3.12"):
        return Path(shutil.which("python3.12") or "")
    raise RuntimeError("no Python 3.12 found (pyenv's versions/3.12*, or python3.12 on PATH): pass --python")


def ensure_venv(venv: Path, python: Path | None, log: Path) -> Path:
    """Build Triton's venv once; later runs only read its stamp. Never deletes anything: pip installs into it."""
    wanted = {"packages": [PYTRITON, f"onnxruntime=={ort_version()}"]}
    stamp = venv / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return venv
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise RuntimeError(f"{venv} exists and is not a virtual environment: pass another --venv")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "pyvenv.cfg").exists():
        python = python or find_python312()
        print(f"building Triton's venv in {venv} with {python} (once; about a minute)", flush=True)
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    with open(log, "w") as handle:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *wanted["packages"]],
                              stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise RuntimeError(f"pip install {' '.join(wanted['packages'])} failed; see {log}")
    stage_backend(venv)
    stamp.write_text(json.dumps(wanted))
    return venv


def pytriton_dir(venv: Path) -> Path:
    found = glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "pytriton" / "tritonserver"))
    if not found:
        raise RuntimeError(f"no pytriton/tritonserver in {venv}")
    return Path(found[0])


def stage_backend(venv: Path) -> Path:
    """The Python backend with the stub for the venv's Python beside it, where tritonserver looks for it.

    The wheel keeps one stub per Python version under python_backend_stubs/; pytriton copies the
    matching one into backends/python/ at every start. Done once here, inside the venv.
    """
    dist = pytriton_dir(venv)
    backends = venv / "triton-backends"
    shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
    minor = glob.glob(str(venv / "lib" / "python3*"))[0].rsplit("python", 1)[1]
    shutil.copy2(dist / "python_backend_stubs" / minor / "triton_python_backend_stub",
                 backends / "python" / "triton_python_backend_stub")
    return backends


def write_repository(repo: Path, name: str, model: Path, io: dict[str, list], threads: int,
                     instances: int = 1) -> Path:
    """A model repository with one Python-backend model: config.pbtxt and 1/model.py. Returns the report path.

    instances: the CPU instance group's count, each instance a stub process with its own session.

    io: {"input": [name, [dims without batch]], "output": [name, [dims]]}, FP32 both (the ONNX's).
    """
    (repo / name / "1").mkdir(parents=True)
    shutil.copy2(MODEL_PY, repo / name / "1" / "model.py")
    report = repo / "ort-session.json"
    params = {"model": str(model.resolve()), "intra_op_num_threads": str(threads), "report": str(report)}
    (repo / name / "config.pbtxt").write_text("\n".join([
        f'name: "{name}"', 'backend: "python"', "max_batch_size: 64",
        f'input [ {{ name: "{io["input"][0]}" data_type: TYPE_FP32 dims: {io["input"][1]} }} ]',
        f'output [ {{ name: "{io["output"][0]}" data_type: TYPE_FP32 dims: {io["output"][1]} }} ]',
        "dynamic_batching { max_queue_delay_microseconds: 0 }",
        f'instance_group [ {{ count: {instances} kind: KIND_CPU }} ]',
        *(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()), ""]))
    return report


def start_triton(venv: Path, repo: Path, logs: Path, port: int, grpc_port: int) -> ServerProcess:
    dist = pytriton_dir(venv)
    python = Path(os.path.realpath(venv / "bin" / "python"))
    libs = [str(python.parent.parent / "lib"), str(dist.parent.parent / "nvidia_pytriton.libs")]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
           # the stub's embedded interpreter finds its prefix (and so the venv's site-packages) from PATH
           "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")])}
    env.pop("PYTHONPATH", None)  # this project's 3.11 paths must not leak into the 3.12 stub
    command = [str(dist / "bin" / "tritonserver"), "--model-repository", str(repo),
               "--backend-directory", str(venv / "triton-backends"), "--http-address", "127.0.0.1",
               "--http-port", str(port), "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
               "--allow-metrics", "false", "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
               "--pinned-memory-pool-byte-size", "0", "--strict-readiness", "true", "--exit-on-error", "true",
               "--disable-auto-complete-config", "--log-verbose", "0"]  # the config runs as written
    return ServerProcess("tritonserver", command, port, logs / "triton.log", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"Triton's venv [default: {DEFAULT_VENV}].")
    parser.add_argument("--python", type=Path, default=None, help="Python 3.12 to build it with [default: pyenv's].")
    args = parser.parse_args()
    venv = ensure_venv(args.venv, args.python, args.venv.parent / "bench-peers-pip.log")
    print(f"{venv}: {json.loads((venv / STAMP).read_text())}; tritonserver at {pytriton_dir(venv) / 'bin'}")


if __name__ == "__main__":
    main()
