"""Model families: the one place that knows each kind of Moonshine moonlora can load, tune and ship.

A family is keyed by the `model_type` in a checkpoint's config.json. The loader reads that type
first and loads the checkpoint with its family's class, so a checkpoint of another family is
refused in one line instead of being poured into the wrong class (issue 25). Torch-free: the
transformers classes are named here and imported only when a model loads.

Two families today: Moonshine (v1: tiny, base; model type `moonshine`) and Moonshine Streaming
(tiny, small, medium; `moonshine_streaming`). How to add a model family:
1. Add a `ModelFamily` to `FAMILIES` under its transformers `model_type`: its transformers model
   and config classes, where it loads from (hub ids; `bundled` only if moonlora converts one).
2. Give it LoRA `target_presets` for every name in `LoraSettings.presets` ("all", "decoder",
   "encoder"), written with the family's own module names (PEFT matches a string preset with
   re.fullmatch against each module's full name, a list by module-name suffix).
3. Write its `EncoderPath` (`moonlora.model.encoder`): how one clip becomes inputs and exact encoder
   states, its stem, its encoder-output type; name it in `encoding`. Say what its encoder can do:
   `exact_padded_batches` only if a padded batch can give each clip the states it gets alone
   (Moonshine: `moonlora.model.encoder.encode_batched_exact`); otherwise clips are encoded alone.
   Optionally `training_attention`: another registered attention implementation for the decoder in
   the training forward, where it is measured faster (decoding keeps the model's own).
4. Name its `export_routes` (empty while it has none: `--format ort` must then be refused before any
   work) and its vocabulary rule (`reserved_vocab_slots`: embedding rows allowed beyond the
   tokenizer's pieces).
5. Tests: a tiny random-init model of the family built in a fixture (tests/conftest.py), loaded
   through `load_model` (tests/test_model_loading.py), and each loader refusal for it.
The loader hands the family on with the model (`LoadedModel.model_type`, `LoadedModel.family`) and
the eval contract records the type, so the stages that differ by family (encoder batch policy,
LoRA presets, export route) ask the family instead of testing a class or a model name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from moonlora.configs import DEFAULT_TARGETS, SAMPLE_RATE
from moonlora.errors import ConfigError, ModelFamilyError


@dataclass(frozen=True)
class ModelFamily:
    """What moonlora needs to know about one kind of Moonshine checkpoint."""

    model_type: str  # config.json's "model_type"; the registry key
    name: str  # for messages and docs
    model_class: str  # transformers class that loads the checkpoint (imported lazily)
    config_class: str  # transformers config class of that model
    hub_ids: tuple[str, ...]  # published checkpoints (`--model owner/name`); any save_pretrained folder works too
    bundled: tuple[str, ...]  # names moonlora converts itself (`--model bundled:NAME`)
    # `--target-modules` presets (keys: LoraSettings.presets): a regex string or a list of module names.
    target_presets: Mapping[str, str | tuple[str, ...]] = field(hash=False)
    exact_padded_batches: bool  # the encoder has an exact batched path (padding never changes a clip's states)
    export_routes: tuple[str, ...]  # `moonlora export --format ort` routes, tried in order (see ship.export)
    reserved_vocab_slots: int  # embedding rows allowed beyond the tokenizer's vocabulary
    encoding: str  # "module:NAME" of its EncoderPath (imported lazily: it needs torch)
    frontend: str  # the audio front end and encoder pipeline moonlora runs, as the eval contract records it
    sampling_rate: int = SAMPLE_RATE  # what its feature extractor must be set to (Hz)
    # The decoder's attention implementation in the training forward (`train.loop.teacher_forced_loss`),
    # None to keep the model's; decoding always keeps the model's (the eval contract's pipeline).
    training_attention: str | None = None

    def encoder_path(self):
        """The family's `moonlora.model.encoder.EncoderPath` (imports torch and transformers)."""
        module, _, name = self.encoding.partition(":")
        return getattr(importlib.import_module(module), name)

    def transformers_model(self):
        """The transformers model class (imports transformers)."""
        return getattr(importlib.import_module("transformers"), self.model_class)

    def transformers_config(self):
        """The transformers config class (imports transformers)."""
        return getattr(importlib.import_module("transformers"), self.config_class)


# Moonshine (v1: tiny, base). "decoder" leaves the encoder without a trainable weight, so training
# encodes each clip once per run and trains the decoder alone (train.loop.EncoderCache).
MOONSHINE = ModelFamily(
    model_type="moonshine",
    name="Moonshine",
    model_class="MoonshineForConditionalGeneration",
    config_class="MoonshineConfig",
    hub_ids=("UsefulSensors/moonshine-tiny", "UsefulSensors/moonshine-base"),
    bundled=("base-en",),
    target_presets=MappingProxyType({
        "all": tuple(DEFAULT_TARGETS),
        "decoder": r"(.*\.)?decoder\.layers\.\d+\.(self_attn|encoder_attn|mlp)\.(" + "|".join(DEFAULT_TARGETS) + ")",
        "encoder": r"(.*\.)?encoder\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(DEFAULT_TARGETS) + ")",
    }),
    exact_padded_batches=True,
    # "bundled-graphs": the merged weights written into the bundled base-en .ort graphs (base shape only);
    # "onnx-export": moonlora's own torch.onnx export, int8, ORT format (any Moonshine shape).
    export_routes=("bundled-graphs", "onnx-export"),
    # The bundled tokenizer has 32000 pieces, the hub's adds 768 reserved "<<ST_n>>" tokens; the
    # embedding has 32768 rows either way.
    reserved_vocab_slots=768,
    encoding="moonlora.model.encoder:MOONSHINE_PATH",
    frontend=("raw 16 kHz samples; conv stem with its GroupNorm over each clip alone; full encoder attention; "
              "each clip's encoder states exact in any batch"),
)

# Moonshine Streaming (tiny 34M, small 123M, medium; English, and e.g. a German tiny). "decoder" is
# the official fine-tuner's default (moonshine_voice.lora: self-attention q/k/v of the decoder) and
# "encoder" its encoder sites; "all" is every attention and MLP projection, as for Moonshine. No
# checkpoint ships offline: tests build random-init models with the real architecture.
MOONSHINE_STREAMING = ModelFamily(
    model_type="moonshine_streaming",
    name="Moonshine Streaming",
    model_class="MoonshineStreamingForConditionalGeneration",
    config_class="MoonshineStreamingConfig",
    hub_ids=("UsefulSensors/moonshine-streaming-tiny", "UsefulSensors/moonshine-streaming-small",
             "UsefulSensors/moonshine-streaming-medium", "moonshine-ai/moonshine-streaming-medium",
             "moonshine-ai/moonshine-streaming-tiny-de"),
    bundled=(),
    target_presets=MappingProxyType({
        "all": tuple(DEFAULT_TARGETS),
        "decoder": r"(.*\.)?decoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)",
        "encoder": r"(.*\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)",
    }),
    # A padded batch through the model's own masked forward gains frames a clip alone does not have
    # (moonlora.model.streaming_encoder; measured in tests/test_streaming_encoder.py): clip by clip.
    exact_padded_batches=False,
    # "streaming-graphs": moonlora's export to the runtime's five streaming graphs (moonlora.ship.streaming_export).
    export_routes=("streaming-graphs",),
    reserved_vocab_slots=768,  # the same Moonshine tokenizer and 32768-row embedding
    encoding="moonlora.model.streaming_encoder:STREAMING_PATH",
    frontend=("raw 16 kHz samples in 80-sample frames, a trailing partial frame dropped (frame CMVN, asinh, "
              "causal convs inside the model); "
              "sliding-window encoder attention (the model's masked forward); each clip encoded alone"),
    # Eager: at a training batch's shapes (20-30 queries over 20-30 tokens or 150-400 encoder frames) the
    # CPU flash kernel behind SDPA cost ~33 ms of a ~0.22 s decoder-only step on 2 cores, eager ~17 ms
    # (torch.profiler over 19 steps, benchmarks/streaming_probes.py's setup). Moonshine keeps SDPA: not
    # measured there, and its training numerics stay those the README's demo numbers were made with.
    training_attention="eager",
)

FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (MOONSHINE, MOONSHINE_STREAMING)}


def family_for(model_type: object, source: str | None = None) -> ModelFamily:
    """The family of `model_type`; a type moonlora has no family for is one ModelFamilyError line,
    prefixed by `source` (the folder or hub id it was read from) when given."""
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is not None:
        return family
    where = f"{source}: " if source else ""
    known = ", ".join(f"{key} ({value.name})" for key, value in FAMILIES.items())
    raise ModelFamilyError(
        f"{where}model type {model_type!r} is not a model family moonlora can load (known: {known}); "
        "pass a checkpoint of a known family"
    )


def check_family_settings(family: ModelFamily, export_format: str | None = None, encoder: str | None = None,
                          flag: str = "--format") -> None:
    """Refuse, before any work, settings this family cannot honour: an ORT export where it has no export
    route, a batched encoder where it has no exact padded-batch path. One ConfigError line."""
    if export_format in ("ort", "both") and not family.export_routes:
        raise ConfigError(f"{flag} {export_format}: moonlora has no ONNX Runtime export for {family.name} "
                          "(the family names no export route); export --format hf, or score the torch model")
    if encoder == "batched" and not family.exact_padded_batches:
        raise ConfigError(f"--encoder batched: {family.name} has no exact padded-batch encoder (a padded batch "
                          "changes a clip's states); use --encoder per-clip or auto")
