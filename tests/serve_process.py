"""A real `vggexport serve` process on 127.0.0.1, for the tests of every stage that serve (serve/, store/,
deploy/, report/): the server is never mocked."""

from __future__ import annotations

from pathlib import Path

from vggexport.serve.smoke import free_port


class ServerProcess:
    """A real `vggexport serve` process on 127.0.0.1."""

    def __init__(self, model: Path, *extra: str, command: list[str] | None = None, gate: bool = False,
                 **popen: object) -> None:
        """``gate``: keep serve's verified-only gate (tests of the server itself serve unverified tiny models)."""
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        base = command or [sys.executable, "-m", "vggexport", "serve", "--model", str(model),
                           *([] if gate else ["--allow-unverified"])]
        # Never a fixed port: gRPC is off unless a test asks for it (8001 may be taken on the machine).
        grpc = [] if "--grpc-port" in extra or "--grpc-port" in base else ["--grpc-port", "0"]
        self.process = subprocess.Popen([*base, "--port", str(self.port), *grpc, *extra], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, **popen)  # type: ignore[call-overload]

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early: {self.process.stdout.read() if self.process.stdout else ''}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def stop(self) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
