"""Model sources: one resolver (`load_model`) behind every command's `--model`.

- `bundled:base-en` (default): Moonshine base converted from the moonshine-cpp wheel into a
  transformers checkpoint in the user cache, once, and rebuilt when the wheel's files change.
- a local `save_pretrained` directory, or a Hugging Face Hub id such as
  `UsefulSensors/moonshine-tiny`, through `from_pretrained` of its model family's class.
- `ort:DIR` (or a folder holding `encoder_model.ort` / `decoder_model_merged.ort`, without the
  prefix), and `ort:bundled:base-en` for the wheel's own folder: the ONNX Runtime graphs a user
  deploys, scored through onnxruntime (`moonlora.model.ort`); a folder in the runtime's Moonshine
  Streaming layout (`frontend.ort` ... `decoder_kv.ort`, `streaming_config.json`) is detected and run
  through its five graphs (`moonlora.model.ort_streaming`). No adapter: merge and export first.

Each LoadedModel hands out the `Decoder` that runs it (`LoadedModel.decoder()`), so the decode
path never asks which runtime it holds.

Every torch load reads config.json's `model_type` first and loads the checkpoint with that model
family's class (`moonlora.model.families`), then checks what it got before anything uses it
(`check_loaded`): no missing, unexpected or reshaped weights, a tokenizer that fits the embedding,
16 kHz features. An adapter is checked the same way against the model it is attached to
(`check_adapter`). Each refusal is one line naming the folder, the model type and what did not load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from platformdirs import user_cache_dir
from safetensors import SafetensorError, safe_open
from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2FeatureExtractor
from transformers.utils import cached_file

from moonlora.model import bundled
from moonlora.model.decoder import Decoder
from moonlora.data.audio import SAMPLE_RATE
from moonlora.configs import DEFAULT_MODEL
from moonlora.model.device import DTYPES, resolve_device
from moonlora.model.ort import RUNTIME_NAME, OrtDecoder, is_ort_folder, load_ort_model
from moonlora.model.ort_streaming import MODEL_TYPE as STREAMING_TYPE, is_streaming_folder, load_streaming_model
from moonlora.model.torch_decoder import TorchDecoder
from moonlora.errors import ModelSourceError
from moonlora.model.families import MOONSHINE, ModelFamily, family_for
from moonlora.model.verify import (ADAPTER_FIX, ADAPTER_WEIGHTS, LoadCheck, captured_load_report, check_adapter,
                                   check_loaded)

BUNDLED_PREFIX = "bundled:"
ORT_PREFIX = "ort:"
BUNDLED_MODELS = MOONSHINE.bundled
CONVERTER_VERSION = "1"  # bump when convert.py changes what it writes
COMPLETE_MARKER = "moonlora_source.json"
ADAPTER_MATH_KEYS = ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "fan_in_fan_out")
# What transformers, peft, safetensors and torch.load raise for a damaged or mismatched local file.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


@dataclass
class LoadedModel:
    """A Moonshine model with what it needs to hear and write, and where it came from."""

    # MoonshineForConditionalGeneration, or a PeftModel around it; for runtime "onnxruntime" an
    # ort.OrtModel
    model: torch.nn.Module
    feature_extractor: object
    tokenizer: object
    source: str  # the --model value
    weights_sha256: str  # of the base weights, before any adapter; for onnxruntime the artifact hash
    adapter_path: str | None = None
    runtime: str = "torch"  # torch | onnxruntime
    precision: str = "float32"  # torch: the dtype it was loaded in; onnxruntime: read from the graphs
    # Builds the Decoder that runs `model`, from (model, feature_extractor, tokenizer).
    decoder_factory: Callable[..., Decoder] = TorchDecoder
    model_type: str = MOONSHINE.model_type  # its family's key (an ORT folder's: from its layout)
    load_check: dict | None = None  # LoadCheck.to_dict() of a torch load; None where moonlora did not check

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def family(self) -> ModelFamily:
        return family_for(self.model_type)

    def decoder(self) -> Decoder:
        """The Decoder of the model held now (an adapter attached since loading decodes too)."""
        return self.decoder_factory(self.model, self.feature_extractor, self.tokenizer)

    def runtime_dict(self) -> dict:
        """The eval contract's `runtime` field."""
        return {"name": self.runtime, "precision": self.precision}


def cache_root() -> Path:
    return Path(os.environ.get("MOONLORA_CACHE") or user_cache_dir("moonlora"))


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def bundled_feature_extractor() -> Wav2Vec2FeatureExtractor:
    # Moonshine reads the raw waveform: no normalization, just padding and an attention mask.
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
        do_normalize=False, return_attention_mask=True,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unreadable_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, why) for each JSON file in `folder` that does not parse and each weights file whose
    header does not read; cheap checks, run only after loading the folder has failed."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            found.append((path, f"not valid JSON: {_first_line(error)}"))
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            found.append((path, f"not a readable safetensors file: {_first_line(error)}"))
    for path in sorted(folder.glob("*.bin")):
        if not zipfile.is_zipfile(path):
            found.append((path, "not a readable PyTorch checkpoint"))
    return found


def _load_failure(folder: Path, error: BaseException, problem: str, damaged_fix: str, fix: str) -> ModelSourceError:
    """One line naming the damaged file in `folder` when there is one, else the folder and `problem`."""
    damaged = _unreadable_files(folder)
    if damaged:
        path, why = damaged[0]
        others = f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""
        return ModelSourceError(f"{path}: {why}{others}; {damaged_fix}")
    return ModelSourceError(f"{folder}: {problem} ({type(error).__name__}: {_first_line(error)}); {fix}")


def _load_local(folder: Path, damaged_fix: str) -> TorchCheckpoint:
    """`_from_pretrained` of a local folder; a failure becomes a one-line ModelSourceError."""
    try:
        return _from_pretrained(str(folder), local_only=True)
    except ModelSourceError:
        raise
    except LOAD_ERRORS as error:
        raise _load_failure(
            folder, error, "not a Moonshine save_pretrained folder", damaged_fix,
            fix="pass a folder written by save_pretrained of a Moonshine model",
        ) from None


def _write_bundled_checkpoint(target: Path, source_hash: str) -> None:
    from moonlora.model.convert import convert_bundled_base
    from moonlora.model.tokenizer import build_hf_tokenizer

    model = convert_bundled_base(bundled.encoder_ort_path(), bundled.decoder_ort_path())
    model.save_pretrained(target)
    build_hf_tokenizer(bundled.tokenizer_bin_path()).save_pretrained(target)
    bundled_feature_extractor().save_pretrained(target)
    (target / COMPLETE_MARKER).write_text(json.dumps({"source_sha256": source_hash, "converter": CONVERTER_VERSION}))


def bundled_checkpoint(name: str = "base-en") -> Path:
    """The converted checkpoint directory, converting it first if it is missing or stale."""
    if name not in BUNDLED_MODELS:
        raise ModelSourceError(f"unknown bundled model 'bundled:{name}'; available: bundled:base-en")
    try:
        sources = [bundled.encoder_ort_path(), bundled.decoder_ort_path(), bundled.tokenizer_bin_path()]
    except bundled.BundledModelMissing as error:
        raise ModelSourceError(str(error)) from None
    source_hash = _sha256_files(sources)
    target = cache_root() / f"bundled-{name}-{source_hash[:16]}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling, then rename: a crash never leaves a half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_bundled_checkpoint(staging, source_hash)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


class TorchCheckpoint(NamedTuple):
    """A checkpoint loaded by its family's class and checked (`check_loaded`)."""

    model: torch.nn.Module
    feature_extractor: object
    tokenizer: object
    family: ModelFamily
    check: LoadCheck


def read_model_type(location: str, local_only: bool) -> object:
    """config.json's `model_type` of a folder or hub id, read before any weights (None when absent)."""
    folder = Path(location).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
    else:
        path = Path(cached_file(location, "config.json", local_files_only=local_only))
    config = json.loads(path.read_text(encoding="utf-8"))
    return config.get("model_type") if isinstance(config, dict) else None


def _config_location(spec: str) -> str | None:
    """The folder or hub id whose config.json describes `spec`'s torch model; None for onnxruntime
    models and for anything `load_model` refuses by its name alone."""
    folder = Path(spec).expanduser()
    if spec.startswith(ORT_PREFIX):
        return None
    if spec.startswith(BUNDLED_PREFIX):
        return str(bundled_checkpoint(spec[len(BUNDLED_PREFIX):]))
    if folder.is_dir():
        return str(folder)
    return spec if not folder.exists() and spec.count("/") == 1 else None


def model_skeleton(spec: str) -> torch.nn.Module | None:
    """The model `spec` names, built on the meta device from its config.json alone (module names and
    shapes, no weights: well under a second), so settings can be checked before any folder is made or
    weights read. Refuses a model type moonlora has no family for. None where the config is not at
    hand (onnxruntime, a hub id not in the local cache, a config that only loading can judge)."""
    location = _config_location(spec)
    if location is None:
        return None
    try:
        model_type = read_model_type(location, local_only=True)
    except (OSError, ValueError):  # not cached, unreadable or not JSON: loading names the file
        return None
    if model_type is None:
        return None
    family = family_for(model_type, source=location)
    try:
        config = family.transformers_config().from_pretrained(location, local_files_only=True)
        with torch.device("meta"):
            return family.transformers_model()(config)
    except LOAD_ERRORS:
        return None


def load_weights(family: ModelFamily, location: str, local_only: bool) -> tuple[torch.nn.Module, dict, list[str]]:
    """The family's model from `location`, transformers' loading info and its captured load report.

    Reshaped weights are reported, not raised, so that `check_loaded` names them like the others.
    """
    with captured_load_report() as report:
        model, info = family.transformers_model().from_pretrained(
            location, local_files_only=local_only, output_loading_info=True, ignore_mismatched_sizes=True,
        )
    return model, info, report


def _from_pretrained(location: str, local_only: bool) -> TorchCheckpoint:
    family = family_for(read_model_type(location, local_only), source=location)
    model, info, _ = load_weights(family, location, local_only)
    feature_extractor = AutoFeatureExtractor.from_pretrained(location, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
    check = check_loaded(location, family, model, info, feature_extractor, tokenizer)
    return TorchCheckpoint(model, feature_extractor, tokenizer, family, check)


def _load_hub(spec: str) -> TorchCheckpoint:
    try:  # already in the local Hugging Face cache: works offline
        return _from_pretrained(spec, local_only=True)
    except OSError:
        pass
    if not _hub_reachable():
        raise ModelSourceError(
            f"cannot load '{spec}': the Hugging Face Hub is not reachable and the model is not in "
            f"the local cache; use --model {DEFAULT_MODEL} for the offline Moonshine base"
        )
    try:
        return _from_pretrained(spec, local_only=False)
    except OSError as error:
        raise ModelSourceError(
            f"cannot load '{spec}' from the Hugging Face Hub ({_first_line(error)}); "
            f"check the id, or use --model {DEFAULT_MODEL} offline"
        ) from None


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor in the state dict, by name: the same weights give the same hash."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def adapter_sha256(model: torch.nn.Module) -> str | None:
    """Hash of the adapter (LoRA) tensors alone; None when no adapter is attached."""
    if not hasattr(model, "peft_config"):
        return None
    from moonlora.model.lora import shipped_adapter

    # The adapter as it is saved (`shipped_adapter`: a PiSSA/OLoRA adapter as the plain LoRA that applies to
    # the original base), so a run's scores and its reloaded folder name the same adapter. Only the settings
    # that change what the adapter computes: the rest of a PEFT config (inference_mode, base model path, ...)
    # differs between a trained and a reloaded adapter.
    config, tensors = shipped_adapter(model)
    digest = hashlib.sha256(json.dumps(
        {key: config.get(key) for key in ADAPTER_MATH_KEYS}, sort_keys=True, default=str,
    ).encode())
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def attach_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """Wrap the model in a PeftModel with the saved LoRA adapter active."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir).expanduser()
    if not adapter_dir.is_dir():
        what = "is a file, not a folder" if adapter_dir.exists() else "no such folder"
        raise ModelSourceError(f"--adapter {adapter_dir}: {what}; pass the adapter directory a moonlora run wrote")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelSourceError(
            f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json); pass the adapter "
            "directory a moonlora run wrote"
        )
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise ModelSourceError(
            f"{adapter_dir}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); copy the whole adapter "
            "directory a moonlora run wrote"
        )
    try:
        with warnings.catch_warnings():
            # peft calls a transformers API deprecated in 5.x (not ours to fix), and warns about adapter
            # weights it skipped: check_adapter refuses those in one line instead.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", module=r"peft\.")
            wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False, ignore_mismatched_sizes=True)
    except LOAD_ERRORS as error:
        raise _load_failure(
            adapter_dir, error, "cannot load the adapter onto this model",
            damaged_fix="copy the adapter directory again from its run, or train it again",
            fix=ADAPTER_FIX,
        ) from None
    check_adapter(adapter_dir, wrapped)
    return wrapped


def ort_folder(spec: str) -> Path | None:
    """The ONNX Runtime model folder `spec` names (`ort:DIR`, `ort:bundled:base-en`, or a folder
    holding the .ort graphs), or None for a torch model."""
    if spec.startswith(ORT_PREFIX):
        rest = spec[len(ORT_PREFIX):]
        if rest.startswith(BUNDLED_PREFIX):
            name = rest[len(BUNDLED_PREFIX):]
            if name not in BUNDLED_MODELS:
                raise ModelSourceError(f"unknown bundled model '{spec}'; available: ort:bundled:base-en")
            try:
                return bundled.base_en_dir()
            except bundled.BundledModelMissing as error:
                raise ModelSourceError(str(error)) from None
        if not rest:
            raise ModelSourceError(f"--model {spec}: name the folder, e.g. ort:path/to/model or ort:bundled:base-en")
        return Path(rest).expanduser()
    folder = Path(spec).expanduser()
    return folder if folder.is_dir() and (is_ort_folder(folder) or is_streaming_folder(folder)) else None


def require_torch(loaded: LoadedModel, what: str = "training") -> None:
    """Refuse an onnxruntime model where moonlora needs torch weights (training, adapters, export)."""
    if loaded.runtime != "torch":
        raise ModelSourceError(
            f"--model {loaded.source}: {what} needs a torch model; an onnxruntime model can only be scored "
            "(moonlora transcribe); pass the torch model it was exported from"
        )


def load_ort(spec: str, folder: Path, device: str = "auto", dtype: str = "float32",
             adapter: str | Path | None = None) -> LoadedModel:
    """An ONNX Runtime model folder as a LoadedModel (runtime "onnxruntime", CPU)."""
    if adapter is not None:
        raise ModelSourceError(
            f"--adapter cannot apply to the onnxruntime model {spec}: merge the adapter and export the model "
            "first, then score the exported folder"
        )
    if dtype != "float32":
        raise ModelSourceError(f"--dtype {dtype}: an onnxruntime model runs at its graphs' own precision; drop --dtype")
    if device not in ("auto", "cpu"):
        raise ModelSourceError(f"--device {device}: the onnxruntime backend runs on the CPU; drop --device")
    streaming = folder.is_dir() and is_streaming_folder(folder)  # the runtime's five streaming graphs
    model, tokenizer = load_streaming_model(folder, spec) if streaming else load_ort_model(folder, spec)
    return LoadedModel(
        model=model, feature_extractor=bundled_feature_extractor(), tokenizer=tokenizer, source=spec,
        weights_sha256=model.artifact_sha256, runtime=RUNTIME_NAME, precision=model.precision,
        decoder_factory=OrtDecoder, model_type=STREAMING_TYPE if streaming else MOONSHINE.model_type,
    )


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "float32",
    adapter: str | Path | None = None,
) -> LoadedModel:
    """Resolve `--model` (and optionally `--adapter`) into a ready-to-use model in eval mode."""
    folder = ort_folder(spec)
    if folder is not None:
        return load_ort(spec, folder, device=device, dtype=dtype, adapter=adapter)
    if spec.startswith(BUNDLED_PREFIX):
        folder = bundled_checkpoint(spec[len(BUNDLED_PREFIX):])
        checkpoint = _load_local(folder, damaged_fix=f"delete {folder} and rerun to convert the bundled model again")
    elif Path(spec).expanduser().is_dir():
        checkpoint = _load_local(
            Path(spec).expanduser(), damaged_fix="copy the model folder again, or save_pretrained it again"
        )
    elif Path(spec).expanduser().exists() or spec.count("/") != 1:
        raise ModelSourceError(
            f"--model {spec!r}: not a folder, a hub id (owner/name), ort:DIR or {DEFAULT_MODEL}"
        )
    else:
        checkpoint = _load_hub(spec)
    base_hash = weights_sha256(checkpoint.model)
    model = checkpoint.model if adapter is None else attach_adapter(checkpoint.model, adapter)
    model = model.to(device=resolve_device(device), dtype=DTYPES[dtype]).eval()
    return LoadedModel(
        model=model, feature_extractor=checkpoint.feature_extractor, tokenizer=checkpoint.tokenizer, source=spec,
        weights_sha256=base_hash, adapter_path=None if adapter is None else str(adapter), precision=dtype,
        model_type=checkpoint.family.model_type, load_check=checkpoint.check.to_dict(),
    )
