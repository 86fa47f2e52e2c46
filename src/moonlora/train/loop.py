"""LoRA training: a short loop around Accelerate, with exact resume and WER-guarded stops.

A "step" is one optimizer update (`grad_accum` micro-batches of `batch_size` clips). The data
order is a pure function of (seed, step), and checkpoints hold the adapter, optimizer,
scheduler and every RNG, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import io
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import get_linear_schedule_with_warmup
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache

from moonlora.data.audio import AudioConfig, BatchAudio
from moonlora.configs import TrainConfig
from moonlora.model.attention import attention_implementation, attention_implementations
from moonlora.model.device import reuse_freed_memory
from moonlora.model.families import family_for
from moonlora.model.encoder import (encode_exact, encoder_path_of, pad_states, states_from_stems, stem_is_frozen,
                                   to_model)
from moonlora.data.manifest import Utterance
from moonlora.train.output_layer import output_logits
from moonlora.outputs import OutputError, write_bytes_atomic
from moonlora.progress import progress_bar
from moonlora.runfolder import CHECKPOINT_STATE, CheckpointError, checkpoint_staging, is_main_process, publish_checkpoint, remove_path


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class TrainStream:
    """Which clips make up micro-batch g: an endless sequence of seeded epoch permutations."""

    def __init__(self, train: list[Utterance], replay: list[Utterance], config: TrainConfig):
        self.train, self.replay, self.config = train, replay, config
        self._permutations: dict[int, np.ndarray] = {}

    def _train_item(self, position: int) -> Utterance:
        epoch, offset = divmod(position, len(self.train))
        if epoch not in self._permutations:
            self._permutations[epoch] = self._epoch_order(epoch)
        return self.train[int(self._permutations[epoch][offset])]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The clips of an epoch in drawing order: a seeded permutation, or with `group_by_length` that
        permutation sorted by duration (ties stay shuffled), cut into batches whose order is shuffled."""
        rng = np.random.default_rng([self.config.seed, epoch])
        order = rng.permutation(len(self.train))
        if not self.config.group_by_length:
            return order
        order = order[np.argsort([self.train[i].duration for i in order], kind="stable")]
        size = self.config.batch_size
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])

    def _item(self, position: int) -> Utterance:
        if self.replay and self.config.replay_ratio > 0:
            draw = np.random.default_rng([self.config.seed, position, 1])
            if draw.random() < self.config.replay_ratio:
                return self.replay[int(draw.integers(len(self.replay)))]
        return self._train_item(position)

    def micro_batch(self, index: int, rank: int = 0, world: int = 1) -> list[Utterance]:
        size = self.config.batch_size
        start = (index * world + rank) * size
        return [self._item(p) for p in range(start, start + size)]


def label_ids(tokenizer, texts: list[str], eos_id: int) -> torch.Tensor:
    """Token ids + EOS per text, padded with -100 (ignored by the loss)."""
    ids = [tokenizer(text, add_special_tokens=False).input_ids + [eos_id] for text in texts]
    width = max(len(row) for row in ids)
    return torch.tensor([row + [-100] * (width - len(row)) for row in ids])


# One clip's model inputs, or a function making them: the caches call it only for a clip they lack, so a
# cached clip's audio is not read again (`moonlora.data.audio.BatchAudio`).
ClipInputs = dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]


def made(inputs: ClipInputs) -> dict[str, torch.Tensor]:
    return inputs() if callable(inputs) else inputs


class StemCache:
    """Stem outputs of training clips, computed once per run.

    The stem (Moonshine: conv1, GroupNorm, conv2, conv3; Moonshine Streaming: the frame embedder and
    its causal convs) holds no LoRA target, so its output for a clip never changes while training;
    recomputing it every epoch is about a quarter of the encoder's forward work. Used only while the
    stem is frozen, and up to `max_bytes`.
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes, self.used_bytes, self.stems = max_bytes, 0, {}

    def stem(self, encoder, path, key: str, inputs: ClipInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(stem output, frame mask or None) of one clip, through its family's EncoderPath."""
        if key in self.stems:
            return self.stems[key]
        with torch.no_grad():
            stem = path.stem(encoder, made(inputs))
        size = sum(t.numel() * t.element_size() for t in stem if t is not None)
        if self.used_bytes + size <= self.max_bytes:
            self.stems[key], self.used_bytes = stem, self.used_bytes + size
        return stem


# Encoder outputs kept per run when the encoder trains nothing (decoder-only adaptation); 0 turns
# that path off, so the encoder runs on every step as for an all-stack adapter (tests compare both).
ENCODER_CACHE_BYTES = 2 * 2**30


def encoder_is_frozen(model) -> bool:
    """True when no encoder weight trains (e.g. `--target-modules decoder`)."""
    return not any(p.requires_grad for p in model.get_encoder().parameters())


def cross_attention_is_frozen(model, path) -> bool:
    """True when nothing between the encoder states and the decoder's cross-attention keys and values trains
    (e.g. Moonshine Streaming's `decoder` preset: self-attention only), so those keys and values are a pure
    function of the clip."""
    decoder = model.get_decoder()
    for layer in decoder.layers:
        for projection in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
            if any(p.requires_grad for p in projection.parameters()):
                return False
    return not any(p.requires_grad for m in path.memory_modules(decoder) for p in m.parameters())


@contextmanager
def eval_mode(module: torch.nn.Module):
    """Put a module tree in eval mode for a section, then give each submodule its own mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


# auto checkpoints a micro-batch only above this much audio: base all-stack peaks near
# 0.9 GB + 30 MB per second of batch audio on the CPU (benchmarks/train_speed.py --memory: 6.9 GB
# for 8 clips of ~25 s), so 60 s stays under 3 GB unchecked, while short batches (the demo's 8 x
# 5.5 s) keep full speed; checkpointing costs 10-20 % of samples/s.
LONG_BATCH_SECONDS = 60.0


def resolve_gradient_checkpointing(setting: str, model, device_type: str) -> bool:
    """Whether the encoder's transformer layers may be recomputed in backward instead of keeping their
    activations (auto: for micro-batches over LONG_BATCH_SECONDS of audio; on: always).

    auto: allowed when encoder weights train on the CPU, where those activations set the peak
    memory of a batch of long clips; GPUs have room to keep them.
    """
    if setting != "auto":
        return setting == "on"
    return device_type == "cpu" and not encoder_is_frozen(model)


def same_attention_in_rerun(layer) -> tuple:
    """`torch.utils.checkpoint` context_fn: called as a checkpointed forward starts, it notes the attention
    implementation each of the layer's configs has then and reruns the layer in backward under it."""
    configs = {id(module.config): module.config for module in layer.modules()
               if hasattr(getattr(module, "config", None), "_attn_implementation_internal")}
    in_forward = [(config, config._attn_implementation_internal) for config in configs.values()]
    return nullcontext(), attention_implementations(in_forward)


@contextmanager
def checkpointed_layers(layers, enabled: bool = True):
    """Gradient checkpointing for a section: each layer keeps only its inputs and reruns its forward in
    backward. Transformers' layers do this themselves in training mode with gradients on, once flagged.

    Non-reentrant checkpointing restores the RNG state for the rerun, so dropout draws the same masks
    and the loss, gradients and RNG stream equal an unflagged run's; the rerun also gets the attention
    implementation the forward had (training may switch it for a call: `moonlora.model.attention`).
    """
    saved = [(layer, layer.gradient_checkpointing, layer.__dict__.get("_gradient_checkpointing_func")) for layer in layers]
    if enabled:
        for layer in layers:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False,
                                                         context_fn=partial(same_attention_in_rerun, layer))
    try:
        yield
    finally:
        for layer, flag, function in saved:
            layer.gradient_checkpointing = flag
            if function is None:
                layer.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                layer._gradient_checkpointing_func = function


class EncoderCache:
    """Encoder outputs of training clips, computed once per run, while the encoder trains nothing.

    A frozen encoder gives a clip the same states at every step, so a decoder-only adapter needs
    them once: each clip is encoded alone (as decoding does), without gradients and in eval mode
    (dropout off, as at decode time), and kept up to `max_bytes`; clips beyond that are
    re-encoded the same way when drawn.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used_bytes, self.saved = max_bytes, 0, {}

    def states(self, encoder, path, key: str, inputs: ClipInputs) -> torch.Tensor:
        """(frames, hidden) encoder states of one clip, through its family's EncoderPath."""
        if key in self.saved:
            return self.saved[key]
        with torch.no_grad(), eval_mode(encoder):
            states = path.clip_states(encoder, made(inputs))
        self._keep(key, states)
        return states

    def batch_states(self, encoder, path, keys: list[str], inputs: list[ClipInputs]) -> list[torch.Tensor]:
        """`states` of a batch's clips; those not cached yet go through the family's one-pass exact batch
        where it has one and it pays (similar lengths: `--group-by-length`), else clip by clip."""
        missing = [index for index, key in enumerate(keys) if key not in self.saved]
        if path.states_from_stems_batched is None or len(missing) < 2:
            return [self.states(encoder, path, key, x) for key, x in zip(keys, inputs)]
        with torch.no_grad(), eval_mode(encoder):
            fresh = dict(zip(missing, states_from_stems(encoder, path, [path.stem(encoder, made(inputs[i]))
                                                                         for i in missing])))
        for index, states in fresh.items():
            self._keep(keys[index], states)
        return [fresh[index] if index in fresh else self.saved[key] for index, key in enumerate(keys)]

    def _keep(self, key, states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        if self.used_bytes + size <= self.max_bytes:
            self.saved[key], self.used_bytes = states, self.used_bytes + size

    def batch_cross_kv(self, decoder, path, keys: list[str], states: list[torch.Tensor]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each clip's per-layer cross-attention (keys, values), (kv heads, frames, head dim) each, while the
        cross-attention trains nothing. Projecting every clip's memory at every step is a large share of a
        decoder-only step (the memory has ~12 frames a token: on the streaming tiny architecture about as
        much work as the 32768-way output layer); kept in the same byte budget as the states. Clips not
        cached yet are projected together: their memories joined along frames, one matrix product per
        projection (a clip's 150-400 frames alone keep these products small and slow on the CPU)."""
        missing = [index for index, key in enumerate(keys) if ("cross", key) not in self.saved]
        fresh = {}
        if missing:
            with torch.no_grad(), eval_mode(decoder):
                memories = [path.memory(decoder, states[index]) for index in missing]
                frames = [memory.shape[0] for memory in memories]
                joined = torch.cat(memories)
                per_layer = [[projection(joined).view(joined.shape[0], -1, layer.encoder_attn.head_dim).split(frames)
                              for projection in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj)]
                             for layer in decoder.layers]
            for position, index in enumerate(missing):
                fresh[index] = [tuple(parts[position].transpose(0, 1).contiguous() for parts in layer)
                                for layer in per_layer]
                size = sum(t.numel() * t.element_size() for pair in fresh[index] for t in pair)
                if self.used_bytes + size <= self.max_bytes:
                    self.saved[("cross", keys[index])], self.used_bytes = fresh[index], self.used_bytes + size
        return [fresh[index] if index in fresh else self.saved[("cross", key)] for index, key in enumerate(keys)]


def cross_attention_cache(per_clip: list[list[tuple[torch.Tensor, torch.Tensor]]]):
    """A transformers EncoderDecoderCache whose cross-attention layers hold the clips' keys and values, padded
    to the longest clip (the encoder mask keeps attention off the padding), marked as already computed.
    Both halves are `held_cache`s: the padded keys and values are written once, not copied again."""
    cross = held_cache()
    for index in range(len(per_clip[0])):
        cross.update(*(padded_heads([clip[index][part] for clip in per_clip]) for part in (0, 1)), index)
    return EncoderDecoderCache(held_cache(), cross)


def padded_heads(per_clip: list[torch.Tensor]) -> torch.Tensor:
    """(heads, frames, head dim) tensors -> one (clips, heads, most frames, head dim), zero-padded."""
    heads, _, head_dim = per_clip[0].shape
    batch = per_clip[0].new_zeros(len(per_clip), heads, max(t.shape[1] for t in per_clip), head_dim)
    for row, states in enumerate(per_clip):
        batch[row, :, :states.shape[1]] = states
    return batch


class HeldLayer(DynamicLayer):
    """A `DynamicLayer` that keeps the first keys and values it is given instead of copying them."""

    def update(self, key_states, value_states, *args, **kwargs):
        if self.is_initialized:
            return super().update(key_states, value_states, *args, **kwargs)
        self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return self.keys, self.values


def held_cache() -> Cache:
    """A transformers Cache of `HeldLayer`s. `DynamicLayer` concatenates onto an empty tensor, a copy of every
    layer's keys and values per forward (about 50 MB a decoder-only step with the cross-attention ones); the
    training forward updates each layer once, so here nothing is copied (a second update appends as
    `DynamicLayer` does)."""
    return Cache(layer_class_to_replicate=HeldLayer)


def clip_inputs(path, encoder, feature_extractor, waveforms: Sequence[np.ndarray],
                parameter: torch.Tensor) -> list[Callable[[], dict[str, torch.Tensor]]]:
    """For each clip, a function making its model inputs (batch of 1, its family's EncoderPath) on the model's
    device and dtype; the waveform is taken from `waveforms` only then."""
    def inputs_of(index: int) -> dict[str, torch.Tensor]:
        return to_model(path.clip_inputs(encoder, feature_extractor, waveforms[index]), parameter.device, parameter.dtype)

    return [partial(inputs_of, index) for index in range(len(waveforms))]


def batch_loss(model, feature_extractor, tokenizer, waveforms: Sequence[np.ndarray], texts: list[str],
               keys: list[str] | None = None, cache: StemCache | None = None,
               encoder_cache: EncoderCache | None = None) -> torch.Tensor:
    """Teacher-forced cross-entropy, encoding each clip alone exactly as decoding does.

    With `encoder_cache` and an encoder that trains nothing, whole encoder outputs come from the
    cache; otherwise, with `cache` and a frozen conv stem, the stem outputs do. A cached clip's waveform
    is not read (`waveforms` may read lazily: `BatchAudio`).
    """
    parameter = next(p for p in model.parameters())
    path, encoder = encoder_path_of(model), model.get_encoder()
    cache_kwargs = {}
    if encoder_cache is not None and keys is not None and encoder_is_frozen(model):
        inputs = clip_inputs(path, encoder, feature_extractor, waveforms, parameter)
        clip_states = encoder_cache.batch_states(encoder, path, keys, inputs)
        # pad_states copies: the streaming decoder adds its position embedding to the states in place
        states, mask = pad_states(clip_states)
        if cross_attention_is_frozen(model, path):
            decoder = model.get_decoder()
            cache_kwargs["cache"] = cross_attention_cache(
                encoder_cache.batch_cross_kv(decoder, path, keys, clip_states))
    elif cache is not None and keys is not None and stem_is_frozen(model):
        inputs = clip_inputs(path, encoder, feature_extractor, waveforms, parameter)
        states, mask = pad_states(states_from_stems(encoder, path, [cache.stem(encoder, path, key, x)
                                                                    for key, x in zip(keys, inputs)]))
    else:
        states, mask = encode_exact(model, feature_extractor, waveforms, parameter.dtype)
    eos_id = model.config.eos_token_id
    labels = label_ids(tokenizer, texts, eos_id).to(parameter.device)
    encoded = path.output_class(last_hidden_state=states, attention_mask=mask)
    return teacher_forced_loss(model, encoded, mask, labels, **cache_kwargs)


def teacher_forced_loss(model, encoded, mask: torch.Tensor, labels: torch.Tensor, **cache_kwargs) -> torch.Tensor:
    """The model's own seq2seq loss (`model(labels=...).loss`: decoder inputs are the labels shifted right
    behind the start token, mean cross-entropy over the non-padded targets), with the output layer applied
    to the non-padded positions only, and the decoder's attention as the family trains it
    (`ModelFamily.training_attention`: the same function, computed another way).

    The vocabulary projection and its softmax are most of a decoder-only step (32768 classes: on the
    streaming tiny architecture about half of it), and a batch's padded label positions, a quarter or more
    of them, add nothing to the loss; transformers' forward projects them all.
    """
    from transformers.models.moonshine.modeling_moonshine import shift_tokens_right

    generator = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = generator.config
    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    with attention_implementation(config, family_for(config.model_type).training_attention):
        hidden = generator.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                                 **cache_kwargs).last_hidden_state
    targets = labels != -100
    logits = output_logits(generator.proj_out, hidden[targets])
    return torch.nn.functional.cross_entropy(logits.float(), labels[targets])


class ExactEncodeLoss(torch.nn.Module):
    """The training loss as one module, so a DDP wrapper sees a single forward call."""

    def __init__(self, model, feature_extractor, tokenizer):
        super().__init__()
        self.model, self.feature_extractor, self.tokenizer = model, feature_extractor, tokenizer
        self.stem_cache = StemCache()
        self.encoder_cache = EncoderCache(ENCODER_CACHE_BYTES) if ENCODER_CACHE_BYTES > 0 else None

    def forward(self, waveforms: list[np.ndarray], texts: list[str], keys: list[str]) -> torch.Tensor:
        return batch_loss(self.model, self.feature_extractor, self.tokenizer, waveforms, texts, keys,
                          self.stem_cache, self.encoder_cache)


@dataclass
class TrainState:
    step: int = 0
    losses: list[dict] = field(default_factory=list)  # {"step", "loss" (None if non-finite), "lr", "skipped"}
    intervals: list[dict] = field(default_factory=list)  # whatever the evaluator returned, plus "step"
    skipped_updates: int = 0  # non-finite loss or gradient (on any process: all skip together)
    best_step: int = 0
    best_wer: float | None = None
    stop_reason: str | None = None
    train_seconds: float = 0.0  # training steps only: every evaluation and checkpoint excluded
    eval_seconds: float = 0.0  # interval evaluations
    checkpoint_seconds: float = 0.0
    samples: int = 0  # clips trained on, all processes together


@dataclass
class TrainResult:
    """What training leaves: its state and both candidate adapters (PEFT state dicts on the CPU).

    `best_adapter` had the lowest val WER (ties keep the earlier step); `last_adapter` is the one
    after the final update. The plan's H2 asks how the last one drifts from the best one.
    """

    state: TrainState
    best_adapter: dict
    last_adapter: dict

    def adapter(self, candidate: str) -> dict:
        """The "best" or the "last" adapter."""
        return {"best": self.best_adapter, "last": self.last_adapter}[candidate]


@dataclass(frozen=True)
class IntervalEval:
    """What the experiment's evaluator reports at an interval."""

    val_wer: float
    stop_reason: str | None  # set when the run must stop (WER or canary guard)
    details: dict


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class InterruptsHeld:
    """Hold SIGINT/SIGTERM while a section that must not be cut runs (an update's commit, a
    checkpoint's publication); a signal that arrives meanwhile is raised as KeyboardInterrupt
    at the end of the section. Outside the main thread, signals cannot be handled: no-op."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> InterruptsHeld:
        self.pending, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._hold)
        return self

    def _hold(self, number, frame) -> None:
        self.pending = True

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        if self.pending and exc[0] is None:
            raise KeyboardInterrupt


@dataclass
class Trainee:
    """What a checkpoint must hold to continue a run exactly."""

    peft_model: object
    optimizer: object
    scheduler: object
    state: TrainState
    best_adapter: dict
    rng: dict  # RNG states right after the last completed update


def save_checkpoint(run_dir: Path, trainee: Trainee) -> None:
    """Serialise in memory, write under a temporary name, publish with one rename (runfolder).

    Accelerate's save_state would also write the frozen 246 MB base model at every checkpoint.
    """
    if not is_main_process():
        return
    buffer = io.BytesIO()
    torch.save({
        "adapter": get_peft_model_state_dict(trainee.peft_model), "best_adapter": trainee.best_adapter,
        "optimizer": trainee.optimizer.state_dict(), "scheduler": trainee.scheduler.state_dict(),
        "rng": trainee.rng, "state": asdict(trainee.state),
    }, buffer)
    with InterruptsHeld():
        staging = checkpoint_staging(run_dir, trainee.state.step)
        try:
            write_bytes_atomic(staging / CHECKPOINT_STATE, buffer.getvalue())
            publish_checkpoint(run_dir, staging, trainee.state.step)
        except (OSError, OutputError):
            remove_path(staging)
            raise


def load_checkpoint(checkpoint: Path, trainee: Trainee) -> None:
    """Restore a verified checkpoint (runfolder.find_resume_checkpoint) into the trainee."""
    try:
        saved = torch.load(checkpoint / CHECKPOINT_STATE, weights_only=False, map_location="cpu")
        set_peft_model_state_dict(trainee.peft_model, saved["adapter"])
        trainee.optimizer.load_state_dict(saved["optimizer"])
        trainee.scheduler.load_state_dict(saved["scheduler"])
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{checkpoint / CHECKPOINT_STATE}: cannot be restored ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); remove that folder and rerun "
                              "with --resume to fall back to the previous checkpoint") from None
    trainee.state, trainee.best_adapter, trainee.rng = TrainState(**saved["state"]), saved["best_adapter"], saved["rng"]
    restore_rng_states(trainee.rng)


def _after_update(state: TrainState) -> None:
    """Hook run after every optimizer update (tests use it to simulate an interruption)."""


def copy_adapter(model) -> dict:
    return {name: tensor.detach().clone().cpu() for name, tensor in get_peft_model_state_dict(model).items()}


@contextmanager
def adapter_loaded(model, adapter: dict):
    """The PEFT model with `adapter`'s LoRA weights for a section; its own weights are back afterwards
    (exactly: copies of the same tensors), so whoever names an adapter leaves the model as it was."""
    own = copy_adapter(model)
    set_peft_model_state_dict(model, adapter)
    try:
        yield model
    finally:
        set_peft_model_state_dict(model, own)


def is_eval_step(step: int, config: TrainConfig) -> bool:
    return step == 0 or step % config.eval_interval == 0 or step == config.max_steps


def train(
    loaded,
    stream: TrainStream,
    config: TrainConfig,
    audio: AudioConfig,
    evaluate: Callable[[object, int], IntervalEval],
    run_dir: Path,
    checkpoint: Path | None = None,
    progress: bool = True,
    log: Callable[[str, float, int], None] | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train the LoRA adapter of `loaded.model` (a PeftModel) on `config.device`; returns both
    candidate adapters. The model ends in eval mode holding the weights of the last update: a later
    step that wants a candidate names it (`adapter_loaded`).

    `evaluate(model, step)` runs at step 0, every `eval_interval` steps and at the end; the
    adapter with the lowest val WER wins (ties keep the earlier step). An interval evaluation
    belongs to its step: a checkpoint taken before it finished makes the resumed run do it
    first, so an interrupted and resumed run chooses exactly what an uninterrupted one does.
    """
    # bf16 autocast is applied around the training loss only (train_step), not through
    # Accelerate: its mixed precision wraps model.forward, and the interval evals must decode
    # in fp32 like the baseline (the eval contract's dtype).
    accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available(),
                              step_scheduler_with_optimizer=False)
    autocast_bf16 = resolve_mixed_precision(config.mixed_precision) == "bf16"
    if accelerator.device.type == "cpu":
        reuse_freed_memory()
    loss_module = ExactEncodeLoss(loaded.model, loaded.feature_extractor, loaded.tokenizer)
    parameters = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(loss_module, optimizer, scheduler)
    peft_model = accelerator.unwrap_model(model).model
    trainee = Trainee(peft_model, optimizer, scheduler, TrainState(), copy_adapter(peft_model), rng_states())
    if checkpoint is not None:
        load_checkpoint(checkpoint, trainee)
    state = trainee.state

    def run_eval() -> None:
        peft_model.eval()
        eval_started = time.perf_counter()
        result = evaluate(peft_model, state.step)
        peft_model.train()
        restore_rng_states(trainee.rng)  # an evaluation leaves no trace in the RNGs
        with InterruptsHeld():
            state.eval_seconds += time.perf_counter() - eval_started
            state.intervals.append({"step": state.step, "val_wer": result.val_wer, **result.details})
            if state.best_wer is None or result.val_wer < state.best_wer:
                state.best_wer, state.best_step, trainee.best_adapter = result.val_wer, state.step, copy_adapter(peft_model)
            state.stop_reason = result.stop_reason
        if log:
            log("wer/val", result.val_wer, state.step)

    def checkpoint_now() -> None:
        saving_started = time.perf_counter()
        save_checkpoint(run_dir, trainee)
        state.checkpoint_seconds += time.perf_counter() - saving_started
        if on_checkpoint is not None:
            on_checkpoint(state)

    checkpointing = resolve_gradient_checkpointing(config.gradient_checkpointing, peft_model, accelerator.device.type)
    bar = progress_bar(config.max_steps, "training", unit="step", enabled=progress, initial=state.step)
    encoder_layer_list = peft_model.get_encoder().layers
    checkpoint_long = checkpointing and config.gradient_checkpointing == "auto"  # decided per micro-batch
    with checkpointed_layers(encoder_layer_list, checkpointing and config.gradient_checkpointing == "on"):
        try:
            if is_eval_step(state.step, config) and all(row["step"] != state.step for row in state.intervals):
                run_eval()  # step 0, or the evaluation an interruption cut off
                if state.step > 0:
                    checkpoint_now()
            peft_model.train()
            while state.step < config.max_steps and state.stop_reason is None:
                step_started = time.perf_counter()
                loss = train_step(model, accelerator, optimizer, scheduler, stream, config, audio, trainee, autocast_bf16,
                                  encoder_layer_list if checkpoint_long else ())
                state.train_seconds += time.perf_counter() - step_started
                if log:
                    log("train/loss", loss, state.step)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.losses[-1]['lr']:.2e}")
                bar.update(1)
                if is_eval_step(state.step, config):
                    run_eval()
                    checkpoint_now()
                _after_update(state)
        except KeyboardInterrupt:
            checkpoint_now()  # the state of the last completed update; a cut-off evaluation is redone on resume
            raise
        finally:
            bar.close()
    peft_model.eval()
    return TrainResult(state, trainee.best_adapter, copy_adapter(peft_model))


def processes_agree_finite(accelerator, finite: bool) -> bool:
    """True only when the value is finite on every process, so all skip a bad micro-batch together
    (one rank skipping backward alone would leave the others waiting in the gradient sync)."""
    if accelerator.num_processes == 1:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)


def train_step(model, accelerator, optimizer, scheduler, stream, config, audio, trainee: Trainee,
               autocast_bf16: bool, checkpoint_long_batches=()) -> float:
    """One optimizer update over grad_accum micro-batches; returns the mean micro-batch loss.

    `checkpoint_long_batches`: encoder layers to checkpoint in micro-batches longer than
    LONG_BATCH_SECONDS of audio (gradient_checkpointing auto); empty: no per-batch choice.

    Nothing in the trainee changes until the commit at the end, which signals cannot cut, so an
    interruption anywhere leaves the state of the previous update.
    """
    state = trainee.state
    losses, finite = [], True
    for micro in range(config.grad_accum):
        batch = stream.micro_batch(state.step * config.grad_accum + micro,
                                   accelerator.process_index, accelerator.num_processes)
        waveforms = BatchAudio([u.audio_filepath for u in batch], audio)
        long_batch = (bool(checkpoint_long_batches)
                      and sum(len(w) for w in waveforms) / audio.sample_rate > LONG_BATCH_SECONDS)
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=autocast_bf16), \
                checkpointed_layers(checkpoint_long_batches, long_batch):
            loss = model(waveforms, [u.text for u in batch], [f"{u.audio_sha256}:{u.audio_filepath}" for u in batch])
        if not processes_agree_finite(accelerator, bool(torch.isfinite(loss))):
            finite = False
            continue
        accelerator.backward(loss / config.grad_accum)
        losses.append(float(loss.detach()))
    if finite:
        grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                config.max_grad_norm)
        finite = processes_agree_finite(accelerator, bool(torch.isfinite(torch.as_tensor(grad_norm))))
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    if finite and accelerator.num_processes > 1:  # the record holds the loss of all processes together
        mean_loss = float(accelerator.reduce(torch.tensor([mean_loss], device=accelerator.device), reduction="mean"))
    with InterruptsHeld():
        if finite:
            optimizer.step()
        else:
            state.skipped_updates += 1
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples += config.batch_size * config.grad_accum * accelerator.num_processes
        state.losses.append({"step": state.step, "loss": mean_loss if finite else None,
                             "lr": scheduler.get_last_lr()[0], "skipped": not finite})
        trainee.rng = rng_states()
    return mean_loss
