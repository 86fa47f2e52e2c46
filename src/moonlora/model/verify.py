"""What a model load must prove before anything uses the model (issue 25).

transformers and PEFT load what they can and only log or warn about the rest: a checkpoint of
another shape or family, a truncated weights file or an adapter for other layers would be scored
with random weights. These checks turn every such load into one IncompleteModelError line naming
the folder, the model type and what did not load (the first few names and the count):
- `check_loaded`: no missing, unexpected or reshaped weights (transformers' loading info), a
  tokenizer that fits the embedding and ends text on the model's end token, 16 kHz features;
- `check_adapter`: every tensor of the adapter file landed on the model, in the saved shape.
`LoadCheck` is what passed; the eval contract records it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from moonlora.errors import IncompleteModelError
from moonlora.model.families import ModelFamily

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_FIX = "pass the --model the adapter was trained on"
NAMES_SHOWN = 3  # names a refusal lists before "..."


@dataclass(frozen=True)
class LoadCheck:
    """What the loader verified before anything used the model; the eval contract records it."""

    tensors: int  # in the loaded state dict, each read from the checkpoint (none missing, unexpected or reshaped)
    vocabulary: int  # tokenizer ids, every one a row of the embedding
    embedding_rows: int
    sampling_rate: int  # of the feature extractor

    def to_dict(self) -> dict:
        return {"status": "complete", **asdict(self)}


class _CapturedLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def captured_load_report():
    """The LOAD REPORT table transformers logs for missing, unexpected or reshaped weights, kept off
    the console: the loader refuses such a model in one line of its own (`check_loaded`)."""
    logger = logging.getLogger("transformers.modeling_utils")
    handler, propagate = _CapturedLog(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (", ..." if len(names) > NAMES_SHOWN else "")


def weight_problems(info: dict) -> list[str]:
    """Each kind of weight that did not load, with its count and first names."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    reshaped = sorted(info.get("mismatched_keys") or ())  # (name, checkpoint shape, model shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) missing from the checkpoint ({_named(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) the model does not have ({_named(unexpected)})")
    if reshaped:
        shapes = [f"{name} {list(saved)} vs {list(expected)}" for name, saved, expected in reshaped]
        problems.append(f"{len(reshaped)} weight(s) of another shape than config.json says ({_named(shapes)})")
    errors = [str(message).strip() for message in info.get("error_msgs") or ()]
    problems += [f"load error: {message.splitlines()[0]}" for message in errors if message]
    return problems


def _vocabulary_problem(family: ModelFamily, model: torch.nn.Module, tokenizer) -> str | None:
    """Every tokenizer id needs an embedding row; at most `reserved_vocab_slots` rows may be unused
    (Moonshine: 32000 pieces + 768 reserved = 32768), and the end token must be the model's."""
    vocabulary, rows = len(tokenizer), model.get_input_embeddings().weight.shape[0]
    if not vocabulary <= rows <= vocabulary + family.reserved_vocab_slots:
        return (f"the tokenizer's {vocabulary} ids do not fit the embedding's {rows} rows "
                f"(a {family.name} tokenizer leaves at most {family.reserved_vocab_slots} rows unused)")
    if tokenizer.eos_token_id != model.config.eos_token_id:
        return f"the tokenizer ends text with id {tokenizer.eos_token_id}, the model with {model.config.eos_token_id}"
    return None


def check_loaded(where: str, family: ModelFamily, model: torch.nn.Module, info: dict, feature_extractor,
                 tokenizer) -> LoadCheck:
    """Refuse, in one IncompleteModelError line naming `where` and the model type, a model whose
    weights did not all load or whose tokenizer or feature extractor does not fit it."""
    problems = weight_problems(info)
    vocabulary = _vocabulary_problem(family, model, tokenizer)
    if vocabulary:
        problems.append(vocabulary)
    sampling_rate = getattr(feature_extractor, "sampling_rate", None)
    if sampling_rate != family.sampling_rate:
        problems.append(f"the feature extractor is set to {sampling_rate} Hz, not {family.sampling_rate}")
    if problems:
        raise IncompleteModelError(
            f"{where}: the {family.model_type} model did not load completely: {'; '.join(problems)}; "
            "pass the complete folder save_pretrained wrote (weights, config.json, tokenizer, preprocessor "
            "config of one model)"
        )
    return LoadCheck(tensors=len(model.state_dict()), vocabulary=len(tokenizer),
                     embedding_rows=model.get_input_embeddings().weight.shape[0], sampling_rate=sampling_rate)


def adapter_file_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name and shape in a saved adapter's weights file (read after PEFT loaded it)."""
    safetensors_file = adapter_dir / ADAPTER_WEIGHTS[0]
    if safetensors_file.is_file():
        with safe_open(str(safetensors_file), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    state = torch.load(adapter_dir / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _short(adapter_key: str) -> str:
    return adapter_key.removeprefix("base_model.model.")


def adapter_problems(saved: dict[str, tuple[int, ...]], loaded: dict[str, tuple[int, ...]]) -> list[str]:
    """How a saved adapter's tensors differ from the adapter weights the model holds after loading it."""
    not_in_model = [_short(name) for name in sorted(saved.keys() - loaded.keys())]
    not_in_file = [_short(name) for name in sorted(loaded.keys() - saved.keys())]
    reshaped = sorted(name for name in saved.keys() & loaded.keys() if saved[name] != loaded[name])
    problems = []
    if not_in_model:
        problems.append(f"{len(not_in_model)} of its {len(saved)} weights target layers this model lacks "
                        f"({_named(not_in_model)})")
    if not_in_file:
        problems.append(f"it lacks {len(not_in_file)} weights of the layers it adapts here ({_named(not_in_file)})")
    if reshaped:
        shapes = [f"{_short(name)} {list(saved[name])} vs {list(loaded[name])}" for name in reshaped]
        problems.append(f"{len(reshaped)} of its weights have another shape here ({_named(shapes)})")
    return problems


def check_adapter(adapter_dir: Path, wrapped: torch.nn.Module) -> None:
    """Refuse an adapter whose weights do not all land on this model (PEFT skips them with a warning)."""
    from peft import get_peft_model_state_dict

    loaded = {name: tuple(tensor.shape) for name, tensor in get_peft_model_state_dict(wrapped).items()}
    problems = adapter_problems(adapter_file_shapes(adapter_dir), loaded)
    if problems:
        model_type = getattr(wrapped.config, "model_type", None)
        raise IncompleteModelError(
            f"{adapter_dir}: cannot load the adapter onto this model ({model_type}): {'; '.join(problems)}; "
            f"{ADAPTER_FIX}"
        )
