"""LoRA training: a short loop around Accelerate, with exact resume and WER-guarded stops.

A "step" is one optimizer update (`grad_accum` micro-batches of `batch_size` clips). The data
order is a pure function of (seed, step), and checkpoints hold the adapter, optimizer,
scheduler and every RNG, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

from moonlora.audio import AudioConfig, load_audio
from moonlora.configs import TrainConfig
from moonlora.encoder import encode_exact, encoder_layers, encoder_stem, pad_states, stem_is_frozen
from moonlora.manifest import Utterance

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.pt"


def is_main_process() -> bool:
    """True except on the non-zero ranks of `accelerate launch` / torchrun (they set RANK).

    Only the main process writes run files; the others train their data shard and evaluate.
    """
    return int(os.environ.get("RANK", "0")) == 0


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
            self._permutations[epoch] = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train))
        return self.train[int(self._permutations[epoch][offset])]

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


class StemCache:
    """Conv-stem outputs of training clips, computed once per run.

    The stem (conv1, GroupNorm, conv2, conv3) holds no LoRA target, so its output for a clip
    never changes while training; recomputing it every epoch is about a quarter of the
    encoder's forward work. Used only while the stem is frozen, and up to `max_bytes`.
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes, self.used_bytes, self.stems = max_bytes, 0, {}

    def stem(self, encoder, key: str, input_values: torch.Tensor) -> torch.Tensor:
        if key in self.stems:
            return self.stems[key]
        with torch.no_grad():
            stem = encoder_stem(encoder, input_values)
        size = stem.numel() * stem.element_size()
        if self.used_bytes + size <= self.max_bytes:
            self.stems[key], self.used_bytes = stem, self.used_bytes + size
        return stem


def batch_loss(model, feature_extractor, tokenizer, waveforms: list[np.ndarray], texts: list[str],
               keys: list[str] | None = None, cache: StemCache | None = None) -> torch.Tensor:
    """Teacher-forced cross-entropy, encoding each clip alone exactly as decoding does."""
    parameter = next(p for p in model.parameters())
    if cache is not None and keys is not None and stem_is_frozen(model):
        encoder = model.get_encoder()
        inputs = [feature_extractor(w, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
                  ["input_values"].to(device=parameter.device, dtype=parameter.dtype) for w in waveforms]
        states, mask = pad_states([encoder_layers(encoder, cache.stem(encoder, key, x))[0]
                                   for key, x in zip(keys, inputs)])
    else:
        states, mask = encode_exact(model, feature_extractor, waveforms, parameter.dtype)
    eos_id = model.config.eos_token_id
    labels = label_ids(tokenizer, texts, eos_id).to(parameter.device)
    encoded = MoonshineEncoderModelOutput(last_hidden_state=states, attention_mask=mask)
    return model(encoder_outputs=encoded, attention_mask=mask, labels=labels).loss


class ExactEncodeLoss(torch.nn.Module):
    """The training loss as one module, so a DDP wrapper sees a single forward call."""

    def __init__(self, model, feature_extractor, tokenizer):
        super().__init__()
        self.model, self.feature_extractor, self.tokenizer = model, feature_extractor, tokenizer
        self.stem_cache = StemCache()

    def forward(self, waveforms: list[np.ndarray], texts: list[str], keys: list[str]) -> torch.Tensor:
        return batch_loss(self.model, self.feature_extractor, self.tokenizer, waveforms, texts, keys, self.stem_cache)


@dataclass
class TrainState:
    step: int = 0
    losses: list[dict] = field(default_factory=list)  # {"step", "loss", "lr"}
    intervals: list[dict] = field(default_factory=list)  # whatever the evaluator returned, plus "step"
    skipped_updates: int = 0  # non-finite loss or gradient
    best_step: int = 0
    best_wer: float | None = None
    stop_reason: str | None = None
    train_seconds: float = 0.0  # wall time of the loop, interval evals included
    eval_seconds: float = 0.0  # of which interval evals


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


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: TrainState, best_adapter: dict) -> None:
    """Adapter + optimizer + scheduler + RNG + progress, written to a temp folder then renamed.

    Accelerate's save_state would also write the frozen 246 MB base model at every checkpoint.
    """
    if not is_main_process():
        return
    target, staging = run_dir / CHECKPOINT_DIR, run_dir / f".{CHECKPOINT_DIR}-tmp"
    staging.mkdir(parents=True, exist_ok=True)
    torch.save({
        "adapter": get_peft_model_state_dict(model), "best_adapter": best_adapter,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_states(), "state": asdict(state),
    }, staging / STATE_FILE)
    (staging / "progress.json").write_text(json.dumps({"step": state.step}) + "\n")
    if target.exists():
        old = run_dir / f".{CHECKPOINT_DIR}-old"
        target.rename(old)
        staging.rename(target)
        for path in old.iterdir():
            path.unlink()
        old.rmdir()
    else:
        staging.rename(target)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> tuple[TrainState, dict]:
    saved = torch.load(run_dir / CHECKPOINT_DIR / STATE_FILE, weights_only=False)
    set_peft_model_state_dict(model, saved["adapter"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng_states(saved["rng"])
    return TrainState(**saved["state"]), saved["best_adapter"]


def _after_update(state: TrainState) -> None:
    """Hook run after every optimizer update (tests use it to simulate an interruption)."""


def copy_adapter(model) -> dict:
    return {name: tensor.detach().clone().cpu() for name, tensor in get_peft_model_state_dict(model).items()}


def train(
    loaded,
    stream: TrainStream,
    config: TrainConfig,
    audio: AudioConfig,
    evaluate: Callable[[object, int], IntervalEval],
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str, float, int], None] | None = None,
) -> TrainState:
    """Train the LoRA adapter on `loaded.model` (a PeftModel); leave the best adapter loaded.

    `evaluate(model, step)` runs at step 0 (unless resuming), every `eval_interval` steps and at
    the end; the adapter with the lowest val WER wins (ties keep the earlier step).
    """
    # bf16 autocast is applied around the training loss only (train_step), not through
    # Accelerate: its mixed precision wraps model.forward, and the interval evals must decode
    # in fp32 like the baseline (the eval contract's dtype).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False)
    autocast_bf16 = resolve_mixed_precision(config.mixed_precision) == "bf16"
    loss_module = ExactEncodeLoss(loaded.model, loaded.feature_extractor, loaded.tokenizer)
    parameters = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(loss_module, optimizer, scheduler)
    peft_model = accelerator.unwrap_model(model).model
    state, best_adapter = TrainState(), copy_adapter(peft_model)
    if resume and (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
        state, best_adapter = load_checkpoint(run_dir, peft_model, optimizer, scheduler)

    def run_eval() -> bool:
        nonlocal best_adapter
        peft_model.eval()
        eval_started = time.perf_counter()
        result = evaluate(peft_model, state.step)
        state.eval_seconds += time.perf_counter() - eval_started
        peft_model.train()
        state.intervals.append({"step": state.step, "val_wer": result.val_wer, **result.details})
        if state.best_wer is None or result.val_wer < state.best_wer:
            state.best_wer, state.best_step, best_adapter = result.val_wer, state.step, copy_adapter(peft_model)
        if log:
            log("wer/val", result.val_wer, state.step)
        state.stop_reason = result.stop_reason
        return result.stop_reason is None

    if state.step == 0 and not state.intervals:
        run_eval()
    peft_model.train()
    bar = tqdm(total=config.max_steps, initial=state.step, desc="training", unit="step", disable=not progress)
    started = time.perf_counter() - state.train_seconds
    try:
        while state.step < config.max_steps and state.stop_reason is None:
            loss = train_step(model, accelerator, optimizer, scheduler, stream, config, audio, state, autocast_bf16)
            state.step += 1
            state.train_seconds = time.perf_counter() - started
            lr = scheduler.get_last_lr()[0]
            state.losses.append({"step": state.step, "loss": loss, "lr": lr})
            if log:
                log("train/loss", loss, state.step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            at_end = state.step == config.max_steps
            if state.step % config.eval_interval == 0 or at_end:
                run_eval()
                save_checkpoint(run_dir, peft_model, optimizer, scheduler, state, best_adapter)
            _after_update(state)
    except KeyboardInterrupt:
        save_checkpoint(run_dir, peft_model, optimizer, scheduler, state, best_adapter)
        raise
    finally:
        bar.close()
    set_peft_model_state_dict(peft_model, best_adapter)
    peft_model.eval()
    loaded.model = peft_model
    return state


def train_step(model, accelerator, optimizer, scheduler, stream, config, audio, state, autocast_bf16) -> float:
    """One optimizer update over grad_accum micro-batches; returns the mean micro-batch loss."""
    losses, finite = [], True
    for micro in range(config.grad_accum):
        batch = stream.micro_batch(state.step * config.grad_accum + micro,
                                   accelerator.process_index, accelerator.num_processes)
        waveforms = [load_audio(u.audio_filepath, audio) for u in batch]
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(waveforms, [u.text for u in batch], [f"{u.audio_sha256}:{u.audio_filepath}" for u in batch])
        if not torch.isfinite(loss):
            finite = False
            continue
        accelerator.backward(loss / config.grad_accum)
        losses.append(float(loss.detach()))
    if finite:
        grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                config.max_grad_norm)
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
    if finite:
        optimizer.step()
    else:
        state.skipped_updates += 1
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses) if losses else math.nan
