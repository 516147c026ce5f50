"""Every command of the README's "Deploy torchvision's VGG16" section, run for real.

The download is replaced by torchvision's vgg11_bn with random weights (vgg16_bn -> vgg11_bn throughout:
the smallest of the family), and fine-tuning stops after two steps.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.test_importer import framed_photo, photo_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_FINE_TUNE = "--max-steps 2 --batch-size 4 --device cpu --precision fp32"
RANDOM_WEIGHTS = ("python -c \"import torch, torchvision; torch.manual_seed(0); "
                  "torch.save(torchvision.models.vgg11_bn().state_dict(), '{file}')\"")


def section_blocks() -> list[list[str]]:
    text = (ROOT / "docs" / "torchvision.md").read_text()
    section = re.search(r"^# Deploy torchvision's VGG16\n(.*)", text, re.DOTALL)
    assert section, "docs/torchvision.md has no \"Deploy torchvision's VGG16\" page"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.DOTALL)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def test_section_goes_from_a_pth_to_a_served_and_embedded_model() -> None:
    deploy, fine_tune = section_blocks()
    assert deploy[0].startswith("curl") and deploy[1].startswith("vggexport import torchvision:vgg16_bn")
    assert any(c.startswith("vggexport serve") for c in deploy) and any("embed_onnx.py" in c for c in deploy)
    assert "--init torchvision:vgg16_bn" in fine_tune[0]


def tiny(command: str) -> str:
    command = command.replace("vgg16_bn", "vgg11_bn").replace("tools/", f"{ROOT}/tools/")
    if command.startswith("curl -sLO"):
        return RANDOM_WEIGHTS.format(file=command.rsplit("/", 1)[1])
    if command.startswith("vggexport train"):
        return f"{command} {TINY_FINE_TUNE}"
    return command


@pytest.mark.slow
def test_every_command_of_the_section_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    framed_photo(tmp_path / "photo.jpg", (400, 300), 0)
    photo_folder(tmp_path / "my_photos")
    deploy, fine_tune = section_blocks()
    server: ServerProcess | None = None
    try:
        for command in map(tiny, deploy + fine_tune):
            if server is not None:
                command = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
            if command.startswith("vggexport serve"):
                server = ServerProcess(tmp_path / "model.onnx", command=shlex.split(command.rstrip("&").strip()),
                                       cwd=tmp_path, env=env).wait_ready(120)
                continue
            result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=900)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            if command.startswith("curl"):
                assert result.stdout.startswith("{") and '"predictions"' in result.stdout, result.stdout
            if "embed_onnx.py" in command:
                assert '"label"' in result.stdout, result.stdout
    finally:
        if server is not None:
            server.stop()
    assert (tmp_path / "artifacts" / "triton" / "vgg16-imagenet" / "config.pbtxt").is_file()
    assert (tmp_path / "artifacts" / "my-vgg16" / "model.preprocessing.onnx").is_file()
