"""The one rich console every command prints its human-readable lines through (stderr), and markup escaping."""

from __future__ import annotations

import sys

from rich.console import Console

# Logs and CI have no terminal width; 132 columns keeps the parity table readable there.
console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 132)


def escape(text: str) -> str:
    """Failure messages quote file contents: rich must not read their brackets as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)
