"""Every command of the README's "Deploy torchvision's VGG16" section, run for real.

The download is replaced by torchvision's vgg11_bn with random weights (vgg16_bn -> vgg11_bn throughout:
the smallest of the family), and fine-tuning stops after two steps. The commands run once per session
(the ``torchvision_section`` fixture of tests/conftest.py, ~4 min here): this module checks that each one
ran, tests/test_pretrained.py checks the files they wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serve_process import ServerProcess
from tests.imagenet_photos import framed_photo, photo_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_FINE_TUNE = "--max-steps 2 --batch-size 4 --device cpu --precision fp32"


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


def tiny(command: str, weights: Path) -> str:
    """The command as run here: vgg11_bn, the random ``weights`` in place of the download, two fine-tuning steps."""
    command = command.replace("vgg16_bn", "vgg11_bn").replace("tools/", f"{ROOT}/tools/")
    if command.startswith("curl -sLO"):
        return f"cp {shlex.quote(str(weights))} {shlex.quote(command.rsplit('/', 1)[1])}"
    if command.startswith("vggexport train"):
        return f"{command} {TINY_FINE_TUNE}"
    return command


@dataclass(frozen=True)
class Ran:
    """One command of the section and what it printed (the server: its start, returncode 0 once ready)."""

    command: str
    returncode: int
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class SectionRun:
    folder: Path  # the working directory the commands ran in
    commands: list[str]  # every command of the section, as run
    ran: list[Ran]  # up to and including the first that failed

    def save(self, path: Path) -> None:
        """As JSON: under pytest-xdist another worker reads the run (tests/conftest.py ``built_once``)."""
        path.write_text(json.dumps({"folder": str(self.folder), "commands": self.commands,
                                    "ran": [dataclasses.asdict(r) for r in self.ran]}))

    @classmethod
    def load(cls, path: Path) -> SectionRun:
        data = json.loads(path.read_text())
        return cls(Path(data["folder"]), data["commands"], [Ran(**r) for r in data["ran"]])

    def model_dir(self, prefix: str) -> Path:
        """artifacts/<--name> of the first command that starts with ``prefix``."""
        words = shlex.split(next(c for c in self.commands if c.startswith(prefix)))
        return self.folder / "artifacts" / words[words.index("--name") + 1]


def run_section(folder: Path, weights: Path) -> SectionRun:
    """Run the section's commands in ``folder`` with a photo and a folder of photos, stopping at the first failure
    (each later command reads what the earlier ones wrote). The server it starts is stopped at the end."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    framed_photo(folder / "photo.jpg", (400, 300), 0)
    photo_folder(folder / "my_photos")
    deploy, fine_tune = section_blocks()
    commands = [tiny(c, weights) for c in deploy + fine_tune]
    ran: list[Ran] = []
    server: ServerProcess | None = None
    try:
        for command in commands:
            if server is not None:
                command = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
            if command.startswith("vggexport serve"):
                server = ServerProcess(folder / "model.onnx", command=shlex.split(command.rstrip("&").strip()),
                                       cwd=folder, env=env).wait_ready(120)
                ran.append(Ran(command, 0))
                continue
            result = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
                                    timeout=900)
            ran.append(Ran(command, result.returncode, result.stdout, result.stderr))
            if result.returncode != 0:
                break
    finally:
        if server is not None:
            server.stop()
    return SectionRun(folder, commands, ran)


@pytest.mark.slow
def test_every_command_of_the_section_runs(torchvision_section: SectionRun) -> None:
    for result in torchvision_section.ran:
        assert result.returncode == 0, f"{result.command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        if result.command.startswith("curl"):
            assert result.stdout.startswith("{") and '"predictions"' in result.stdout, result.stdout
        if "embed_onnx.py" in result.command:
            assert '"label"' in result.stdout, result.stdout
    assert len(torchvision_section.ran) == len(torchvision_section.commands)
    artifacts = torchvision_section.folder / "artifacts"
    assert (artifacts / "triton" / "vgg16-imagenet" / "config.pbtxt").is_file()
    assert (artifacts / "my-vgg16" / "model.preprocessing.onnx").is_file()
