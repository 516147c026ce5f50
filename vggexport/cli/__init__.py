"""The ``vggexport`` command line: parse options into a frozen config, call the library.

torch and onnxruntime are imported inside the commands so ``--help`` is instant. Each module holds one
family of commands; importing it registers them on the group.
"""

from vggexport.cli import checking, exporting, serving, signing, training  # noqa: F401 - registers the commands
from vggexport.cli.group import cli


def main() -> None:
    cli()
