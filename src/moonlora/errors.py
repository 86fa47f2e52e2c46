"""Errors that come from what the user passed; the CLI prints them as one line (exit code 2).

Torch-free, so the CLI can name them without loading the model stack.
"""

from __future__ import annotations


class ModelSourceError(RuntimeError):
    """A --model or --adapter value that cannot be loaded; the message says what to do."""
