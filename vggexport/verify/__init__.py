"""Verification: every exported file against PyTorch, numerically, by accuracy and by its metadata.

``assert_parity`` and ``ParityError`` are the public API for parity checks in a user's own tests.
"""

from vggexport.verify.run import ParityError, assert_parity

__all__ = ["ParityError", "assert_parity"]
