"""``python -m vggexport`` (and ``torchrun -m vggexport``) runs the CLI."""

from vggexport.cli import main

if __name__ == "__main__":
    main()
