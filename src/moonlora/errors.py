"""Errors that come from what the user passed; the CLI prints them as one line (exit code 2).

Torch-free, so the CLI can name them without loading the model stack.
"""

from __future__ import annotations


class ModelSourceError(RuntimeError):
    """A --model or --adapter value that cannot be loaded; the message says what to do."""


class ModelFamilyError(ModelSourceError):
    """A checkpoint whose config.json names a model type moonlora has no model family for."""


class IncompleteModelError(ModelSourceError):
    """A model or adapter that did not load completely (missing, unexpected or reshaped weights), or
    whose tokenizer or feature extractor does not fit it: refused before any decode or training."""


class LoraTargetError(ModelSourceError):
    """A --target-modules value that names no layer of the loaded model that LoRA can adapt."""
