"""The command group: user errors become one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vggexport import __version__
from vggexport.errors import VggExportError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class CLI(click.Group):
    """Turns user errors (ours and click's) into one line on stderr and an exit code, no traceback."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except VggExportError as exc:
            fail(str(exc), exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=CLI, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggexport")
def cli() -> None:
    """Train, export, verify and serve VGG image classifiers.

    \b
    vggexport train                 # Fashion-MNIST, VGG-11 (cfg A)
    vggexport export --cfg A        # TorchScript + ONNX
    vggexport verify --cfg A        # parity of every runtime against PyTorch
    vggexport report --cfg A        # one self-contained HTML page about the model
    vggexport serve --cfg A         # KServe v2 over HTTP with ONNX Runtime
    """
