"""Every command of docs/walkthrough.md's block, run for real with tiny training settings."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA
from tests.serve_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
TINY = "--width 0.0625 --head 32 --epochs 1 --max-steps 20"


def walkthrough() -> list[str]:
    text = (ROOT / "docs" / "walkthrough.md").read_text()
    block = re.search(r"^# Walkthrough\n.*?```bash\n(.*?)```", text, re.DOTALL)
    assert block, "docs/walkthrough.md has no walkthrough block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_walkthrough_is_not_empty() -> None:
    commands = walkthrough()
    assert commands[0].startswith("vggexport pipeline") and any(c.startswith("vggexport serve") for c in commands)


@pytest.mark.realdata
@pytest.mark.slow
def test_every_walkthrough_command_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    server: ServerProcess | None = None
    try:
        for command in walkthrough():
            command = command.replace("../shared/data", str(REAL_DATA)).replace("tools/", f"{ROOT}/tools/")
            if server is not None:
                command = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
            if command.startswith("vggexport pipeline"):
                command += f" {TINY}"
            if command.startswith("vggexport serve"):
                server = ServerProcess(tmp_path / "artifacts" / "vgg11_bn" / "model.onnx",
                                       command=shlex.split(command.rstrip("&").strip()), cwd=tmp_path, env=env)
                server.wait_ready()
                continue
            result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            if command.startswith("curl"):
                assert result.stdout.startswith("{") and '"error"' not in result.stdout, result.stdout
    finally:
        if server is not None:
            server.stop()
    assert (tmp_path / "artifacts" / "triton" / "vgg11_bn" / "config.pbtxt").is_file()
