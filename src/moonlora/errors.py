"""moonlora's own error types: what the user can fix, said in one line.

The CLI prints a `MoonloraError` as one line on stderr and exits 2; any other exception is a bug
in moonlora and keeps its traceback (`moonlora.cli.main`). So raise one of these, with a message
that names the flag or file and says what to do, wherever the user's input, files or tools are at
fault — never a bare ValueError or FileNotFoundError.

Torch-free (stdlib only), so the CLI can name them without loading the model stack.
"""

from __future__ import annotations


class MoonloraError(Exception):
    """An error the user can fix; the message names the flag, file or tool and says what to do."""


class InputError(MoonloraError, ValueError):
    """A flag value, setting or input file that cannot be used."""


class ConfigError(InputError):
    """A setting out of its range, or settings that exclude each other (the config dataclasses' checks)."""


class MissingInput(MoonloraError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ModelSourceError(MoonloraError, RuntimeError):
    """A --model or --adapter value that cannot be loaded; the message says what to do."""


class DeviceError(InputError):
    """A --device this machine does not have."""


class ToolError(MoonloraError, RuntimeError):
    """An outside tool (eSpeak NG, torch.onnx, onnxruntime) failed; the message names the tool."""


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).splitlines()) or type(error).__name__


class ModelFamilyError(ModelSourceError):
    """A checkpoint whose config.json names a model type moonlora has no model family for."""


class IncompleteModelError(ModelSourceError):
    """A model or adapter that did not load completely (missing, unexpected or reshaped weights), or
    whose tokenizer or feature extractor does not fit it: refused before any decode or training."""


class LoraTargetError(ModelSourceError):
    """A --target-modules value that names no layer of the loaded model that LoRA can adapt."""
