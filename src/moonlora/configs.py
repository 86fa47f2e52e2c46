"""Run settings as frozen dataclasses: model, decode, training, LoRA, experiment, transcribe, demo, export
and synth configs, and EXPERIMENT_FLAGS, the one map from the experiment's flags to their config fields.

Torch-free on purpose (stdlib only), so command-line parsing,
eval contracts and reports can build and read configs without loading torch, transformers,
peft or accelerate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

from moonlora.errors import ConfigError

SAMPLE_RATE = 16_000  # Moonshine's only input rate
PIPELINE_VERSION = "1"  # bump when load_audio changes what it returns


DEFAULT_MODEL = "bundled:base-en"
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # moonlora.model.device.DTYPES maps them to torch dtypes
ENCODER_MODES = ("auto", "per-clip", "batched")  # DecodeConfig.encoder
# The experiment plan's targets: attention projections and MLPs of every encoder/decoder layer.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
# LoraSettings.variant: plain LoRA, or DoRA (PEFT use_dora: a learned magnitude per output row).
LORA_VARIANTS = ("lora", "dora")
# LoraSettings.init_weights: PEFT's init_lora_weights. default: B = 0 (A Kaiming-uniform), gaussian: B = 0
# (A Gaussian); pissa (full SVD) and olora (QR) move the weights' top subspace into the adapter, the base
# keeps the residual: the model starts as the base, and saved adapters are converted to plain LoRA.
LORA_INITS = ("default", "gaussian", "pissa", "olora")


DEFAULT_LANGUAGE = "en"
CJK_LANGUAGES = ("zh", "ja", "ko", "yue")  # no spaces between words: CER is their primary metric
METRIC_NAMES = ("wer", "cer")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


class UnreadableConfig(ConfigError, TypeError):
    """A saved config whose fields are not this moonlora's (another tool's file, or another version's)."""


@dataclass(frozen=True)
class AudioConfig:
    """How a file becomes Moonshine input."""

    sample_rate: int = SAMPLE_RATE
    # RMS level to scale each clip to, in dBFS; None keeps the recorded level.
    rms_target_dbfs: float | None = None
    # Clips quieter than this RMS (dBFS) are left as they are: scaling near-silence up only
    # amplifies noise.
    silence_floor_dbfs: float = -70.0

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ConfigError(f"Moonshine needs {SAMPLE_RATE} Hz input, got sample_rate={self.sample_rate}")
        if self.rms_target_dbfs is not None and not -60.0 <= self.rms_target_dbfs <= 0.0:
            raise ConfigError(f"rms_target_dbfs must lie in [-60, 0] dBFS, got {self.rms_target_dbfs}")

    def to_dict(self) -> dict:
        return {**asdict(self), "pipeline_version": PIPELINE_VERSION}


@dataclass(frozen=True)
class ScoringConfig:
    """How transcripts are scored: the language picks the normalizer (moonlora.data.text) and the
    primary metric (moonlora.eval.metrics); both are recorded in, and compared by, the eval contract."""

    language: str = DEFAULT_LANGUAGE  # ISO 639-1/-3 code of the transcripts, e.g. en, es, de, zh, ja
    # The primary metric: wer or cer; None picks cer for zh/ja/ko/yue and wer for every other language.
    metric: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.language, str) or not _LANGUAGE_CODE.fullmatch(self.language):
            raise ConfigError(f"--language must be an ISO 639 code of 2 or 3 lower-case letters (en, es, de, zh, "
                              f"ja, ...), got {self.language!r}")
        if self.metric is not None and self.metric not in METRIC_NAMES:
            raise ConfigError(f"--metric must be one of {', '.join(METRIC_NAMES)}, got {self.metric!r}")

    @property
    def primary_metric(self) -> str:
        return self.metric or ("cer" if self.language in CJK_LANGUAGES else "wer")

    def to_dict(self) -> dict:
        return asdict(self)


MAX_REPETITION_GUARD = 64  # tokens; Moonshine's longest loops repeat phrases of ~20


@dataclass(frozen=True)
class DecodeConfig:
    """How Moonshine turns audio into text. Only `result_fields` can change a transcript."""

    num_beams: int = 1  # 1 = greedy search
    # Per-clip cap on generated tokens: ceil(tokens_per_second * seconds) + extra_tokens.
    # 6.5/s is Moonshine's runtime default; it stops the model's repeat-the-last-words loops.
    tokens_per_second: float = 6.5
    extra_tokens: int = 2
    dtype: str = "float32"  # model weights and inputs; bfloat16/float16 only on accelerators
    batch_size: int = 32  # eval_speed.py --sweep on 2 CPU cores: 30.5x real time vs 8.8x at batch 1
    sort_by_length: bool = True  # batch clips of similar length: less padding, same output
    device: str = "auto"  # auto | cpu | cuda | mps
    # How clips are encoded: "per-clip" (one encoder pass per clip) or "batched" (one pass per
    # padded batch, exact: the same states within 1e-4, the same transcripts). "auto" is
    # per-clip on CPU, where eval_speed.py measures it faster, and batched on accelerators.
    encoder: str = "auto"
    # Repetition guard: 0 = off; N = stop a hypothesis once it ends in a loop (two copies of a phrase
    # of N or more tokens, or three or more copies holding N tokens) and keep one copy
    # (`moonlora.model.decoder.repetition_cut`). A contract records it only when on.
    repetition_guard: int = 0

    result_fields = ("num_beams", "tokens_per_second", "extra_tokens", "dtype", "repetition_guard")
    # result fields a contract records only away from their default, so earlier fingerprints hold
    recorded_when_set = {"repetition_guard": 0}

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.tokens_per_second > 0 and math.isfinite(self.tokens_per_second)) or self.extra_tokens < 1:
            raise ConfigError("tokens_per_second must be > 0 and extra_tokens >= 1")
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if not _device_name(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.encoder not in ENCODER_MODES:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODER_MODES)}, got {self.encoder!r}")
        if isinstance(self.repetition_guard, bool) or not isinstance(self.repetition_guard, int) \
                or not 0 <= self.repetition_guard <= MAX_REPETITION_GUARD:
            raise ConfigError(f"--repetition-guard must be 0 (off) or a phrase length in tokens from 1 to "
                              f"{MAX_REPETITION_GUARD}, got {self.repetition_guard!r}")

    def token_cap(self, seconds: float) -> int:
        return math.ceil(self.tokens_per_second * seconds) + self.extra_tokens

    def to_dict(self) -> dict:
        return asdict(self)

    def result_dict(self) -> dict:
        """The settings that can change a transcript (batching and device cannot)."""
        return {name: getattr(self, name) for name in self.result_fields
                if getattr(self, name) != self.recorded_when_set.get(name, object())}


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 200  # optimizer updates
    learning_rate: float = 1e-4
    batch_size: int = 1  # clips per micro-batch (per process)
    grad_accum: int = 4  # micro-batches per update
    warmup_steps: int = 0  # linear warmup, then linear decay to 0 at max_steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_interval: int = 50  # interval WER on the val split every this many steps
    seed: int = 42
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | no | bf16
    replay_ratio: float = 0.0  # share of training clips drawn from the replay manifest
    # batches of similar duration (each epoch: clips sorted by duration, random order among equals,
    # cut into batches, batches shuffled), as transformers' group_by_length and moonshine_voice.lora
    # batch; off: each epoch a random permutation
    group_by_length: bool = False
    # auto: recompute the encoder's transformer layers in backward (instead of keeping their
    # activations) when they train on the CPU | on | off; no effect on the numbers
    gradient_checkpointing: str = "auto"
    device: str = "auto"  # where the model trains (and, loaded once, decodes): auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # the weights it trains; the experiment requires decode.dtype to match

    def __post_init__(self) -> None:
        checks = {
            "--max-steps must be >= 1": self.max_steps >= 1,
            "--learning-rate must be a finite number > 0": self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "--batch-size must be >= 1": self.batch_size >= 1,
            "--grad-accum must be >= 1": self.grad_accum >= 1,
            "--warmup-steps must be in [0, max-steps)": 0 <= self.warmup_steps < max(self.max_steps, 1),
            "--eval-interval must be >= 1": self.eval_interval >= 1,
            "--seed must be >= 0": self.seed >= 0,
            "weight_decay must be a finite number >= 0": _at_least(self.weight_decay, 0.0),
            "max_grad_norm must be a finite number > 0": self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm),
            "--replay-ratio must be in [0, 1)": 0.0 <= self.replay_ratio < 1.0,
            "mixed_precision must be auto, no or bf16": self.mixed_precision in ("auto", "no", "bf16"),
            "gradient_checkpointing must be auto, on or off": self.gradient_checkpointing in ("auto", "on", "off"),
            f"device must be auto, cpu, cuda or mps, got {self.device!r}": _device_name(self.device),
            f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}": self.dtype in DTYPE_NAMES,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError("; ".join(failed))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  # module names, or one preset (the family's target_presets) as given
    variant: str = "lora"  # one of LORA_VARIANTS
    init_weights: str = "default"  # one of LORA_INITS

    presets = ("all", "decoder", "encoder")  # class attribute, not a field: expanded in lora.expand_targets

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"--lora-r must be >= 1, got {self.r}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"--lora-alpha must be a finite number > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("--target-modules needs at least one module name")
        if len(self.target_modules) > 1 and set(self.target_modules) & set(self.presets):
            raise ConfigError(f"--target-modules: a preset ({', '.join(self.presets)}) stands alone, "
                             f"got {','.join(self.target_modules)}")
        if self.variant not in LORA_VARIANTS:
            raise ConfigError(f"--lora-variant must be one of {', '.join(LORA_VARIANTS)}, got {self.variant!r}")
        if self.init_weights not in LORA_INITS:
            raise ConfigError(f"--init-lora-weights must be one of {', '.join(LORA_INITS)}, got {self.init_weights!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExperimentConfig:
    output_dir: str
    dataset_path: str  # training manifest; its val split guides every choice
    manifest_path: str  # main held-out manifest: scored at baseline and at the end only
    model: str = DEFAULT_MODEL
    max_seconds: float | None = 30.0  # drop longer training clips (Moonshine hallucinates past ~30 s)
    val_fraction: float = 0.2
    wer_stop_threshold: float | None = None  # stop when val WER > baseline val WER x this
    extra_manifests: tuple[str, ...] = ()
    canary_manifest: str | None = None  # general speech that must not get worse
    canary_margin: float = 0.02  # stop when canary WER > baseline canary WER + this
    nonspeech_manifest: str | None = None  # clips without speech: words emitted per clip, baseline vs tuned
    replay_manifest: str | None = None  # general speech mixed into training (replay_ratio in train)
    log_manifest_interval_wer: bool = False  # main-manifest WER at intervals, for plots only
    export: str | None = None  # "ort": export the chosen adapter and score it (export parity)
    export_margin: float = 0.005  # export parity holds when WER(export) - WER(torch) has its CI high end below this
    select: str = "best"  # which adapter becomes adapter/: best (lowest val WER) or last; both are scored and kept
    min_val_clips: int = 10  # a smaller val split would drive every choice on noise: refused
    allow_leakage: bool = False  # accept training audio, transcripts or speakers shared with an evaluated set
    bootstrap_resamples: int = 10_000
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    audio: AudioConfig = field(default_factory=AudioConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)  # language and primary metric
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if self.wer_stop_threshold is not None and not (self.wer_stop_threshold > 0
                                                        and math.isfinite(self.wer_stop_threshold)):
            raise ConfigError(f"--wer-stop-threshold must be a finite number > 0, got {self.wer_stop_threshold}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        for flag, margin in (("--canary-margin", self.canary_margin), ("--export-margin", self.export_margin)):
            if not _at_least(margin, 0.0):
                raise ConfigError(f"{flag} is an absolute WER difference, a finite number >= 0 (0.02 = 2 WER "
                                  f"points), got {margin}")
        if self.bootstrap_resamples < 1:
            raise ConfigError(f"bootstrap_resamples must be >= 1, got {self.bootstrap_resamples}")
        if self.train.replay_ratio > 0 and not self.replay_manifest:
            raise ConfigError("--replay-ratio needs --replay-manifest")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if self.export not in (None, "ort"):
            raise ConfigError(f"--export must be ort, got {self.export!r}")
        if self.export and self.decode.num_beams != 1:
            raise ConfigError(f"--export {self.export} scores the export with onnxruntime, which decodes greedily: "
                              f"use --num-beams 1 (got {self.decode.num_beams}), or drop --export and run "
                              "moonlora export after the run")
        if self.select not in ("best", "last"):
            raise ConfigError(f"--select must be best or last, got {self.select!r}")
        if self.min_val_clips < 1:
            raise ConfigError(f"--min-val-clips must be >= 1, got {self.min_val_clips}")
        if (self.train.device, self.train.dtype) != (self.decode.device, self.decode.dtype):
            raise ConfigError(f"train and decode must name one device and dtype (one model trains and decodes), got "
                             f"train {self.train.device}/{self.train.dtype}, decode {self.decode.device}/{self.decode.dtype}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "experiment config") -> ExperimentConfig:
        """The config back from `to_dict()` output (e.g. a saved experiment_config.json); one that is not
        (another tool's, or an older moonlora's with other fields) is a ConfigError naming `source`."""
        nested = {"train": TrainConfig, "lora": LoraSettings, "audio": AudioConfig, "decode": DecodeConfig,
                  "scoring": ScoringConfig}  # a config saved before `scoring` reads as English, WER
        data = _train_device_from_decode(data)
        try:
            values = {key: _typed(nested[key], value) if key in nested and isinstance(value, dict) else value
                      for key, value in data.items()}
            return _typed(cls, values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        except (TypeError, AttributeError, ValueError) as error:
            raise UnreadableConfig(f"{source}: not an experiment config this moonlora can read ({error}); written "
                                   "by another tool or another moonlora version") from None

    @classmethod
    def from_flags(cls, values: dict) -> ExperimentConfig:
        """The config of experiment settings by flag name (EXPERIMENT_FLAGS; typed, or as a grid file
        gives them); a setting not given keeps its field's default."""
        return _built(cls, _by_path(values))

    def with_flags(self, values: dict) -> ExperimentConfig:
        """This config with some settings, by flag name, put in place (validated again)."""
        return _replaced(self, _by_path(values))


# --- the experiment's flags ------------------------------------------------------------------------------------------

# The one map between the experiment's flags and ExperimentConfig: flag name (dashes as underscores, the
# argparse dest and a grid file's key) -> field path. The parser takes each flag's default and type from its
# field, `ExperimentConfig.from_flags` builds the config of them, and a sweep's axes are flags of this table.
EXPERIMENT_FLAGS = {
    "output_dir": "output_dir",
    "dataset_path": "dataset_path",
    "manifest_path": "manifest_path",
    "max_steps": "train.max_steps",
    "learning_rate": "train.learning_rate",
    "eval_interval": "train.eval_interval",
    "max_seconds": "max_seconds",
    "seed": "train.seed",
    "wer_stop_threshold": "wer_stop_threshold",
    "model": "model",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules",
    "lora_variant": "lora.variant",
    "init_lora_weights": "lora.init_weights",
    "train_batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "warmup_steps": "train.warmup_steps",
    "mixed_precision": "train.mixed_precision",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "val_fraction": "val_fraction",
    "extra_manifest": "extra_manifests",  # repeatable: one manifest per flag
    "canary_manifest": "canary_manifest",
    "canary_margin": "canary_margin",
    "nonspeech_manifest": "nonspeech_manifest",
    "replay_manifest": "replay_manifest",
    "replay_ratio": "train.replay_ratio",
    "group_by_length": "train.group_by_length",
    "log_manifest_interval_wer": "log_manifest_interval_wer",
    "export": "export",
    "export_margin": "export_margin",
    "select": "select",
    "min_val_clips": "min_val_clips",
    "allow_leakage": "allow_leakage",
    "decode_batch_size": "decode.batch_size",
    "num_beams": "decode.num_beams",
    "device": ("decode.device", "train.device"),  # one model trains and decodes on one device
    "encoder": "decode.encoder",
    "repetition_guard": "decode.repetition_guard",
    "rms_target_dbfs": "audio.rms_target_dbfs",
    "language": "scoring.language",
    "metric": "scoring.metric",
    "resume": "resume",
    "overwrite": "overwrite",
}
FLAG_ALIASES = {"batch_size": "train_batch_size"}  # earlier flag names that stay accepted


def parse_targets(value) -> tuple[str, ...]:
    """LoRA target modules from "q_proj,v_proj" (the flag) or a list (a grid file)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def flag_paths(name: str) -> tuple[str, ...]:
    """The field paths experiment flag `name` sets (most set one)."""
    paths = EXPERIMENT_FLAGS[FLAG_ALIASES.get(name, name)]
    return paths if isinstance(paths, tuple) else (paths,)


def flag_field(name: str) -> tuple[type, str]:
    """(config class, field name) that experiment flag `name` sets."""
    *sections, attribute = flag_paths(name)[0].split(".")
    cls = ExperimentConfig
    for section in sections:
        cls = get_type_hints(cls)[section]
    return cls, attribute


def flag_default(name: str):
    """The default of experiment flag `name`: its config field's."""
    return default_of(*flag_field(name))


def flag_type(name: str) -> type:
    """int, float, str, bool or tuple: the type of experiment flag `name`'s field (None aside)."""
    return _flag_hint(name)[0]


def _flag_hint(name: str) -> tuple[type, bool]:
    """(type, whether None is allowed) of experiment flag `name`'s field."""
    cls, attribute = flag_field(name)
    hint = get_type_hints(cls)[attribute]
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional:
        (hint,) = [arg for arg in hint.__args__ if arg is not type(None)]
    return getattr(hint, "__origin__", hint), optional


def flag_value(name: str, value):
    """`value` of experiment flag `name` as its field holds it (a flag's string or a grid file's value)."""
    kind, optional = _flag_hint(name)
    if value is None:
        if not optional:
            raise ValueError("give a value")
        return None
    if name == "target_modules":
        return parse_targets(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("give true or false")
        return value
    if kind is tuple:
        return tuple(str(item) for item in (value if isinstance(value, (list, tuple)) else [value]))
    return kind(value)


def _by_path(values: dict) -> dict:
    """Flag name -> value, as field path -> typed value; an unknown or ill-typed one is a one-line error."""
    by_path = {}
    for key, value in values.items():
        name = FLAG_ALIASES.get(key, key)
        if name not in EXPERIMENT_FLAGS:
            raise ConfigError(f"{key.replace('_', '-')}: not an experiment setting")
        try:
            typed = flag_value(name, value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{name.replace('_', '-')} = {value!r}: {error}") from None
        by_path.update(dict.fromkeys(flag_paths(name), typed))
    return by_path


def _sections(by_path: dict) -> tuple[dict, dict]:
    """Field path -> value, split into this level's fields and the nested sections' paths."""
    top, sections = {}, {}
    for path, value in by_path.items():
        section, _, rest = path.partition(".")
        if rest:
            sections.setdefault(section, {})[rest] = value
        else:
            top[path] = value
    return top, sections


def _built(cls, by_path: dict):
    top, sections = _sections(by_path)
    hints = get_type_hints(cls)
    return cls(**top, **{section: _built(hints[section], paths) for section, paths in sections.items()})


def _replaced(config, by_path: dict):
    top, sections = _sections(by_path)
    return dataclasses.replace(config, **top, **{section: _replaced(getattr(config, section), paths)
                                                 for section, paths in sections.items()})


@dataclass(frozen=True)
class TranscribeConfig:
    manifest: str
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    output_dir: str | None = None  # default: outputs/transcribe/<manifest>-<time>
    overwrite: bool = False
    nonspeech: bool = False  # the manifest holds clips without speech: scored by the words emitted
    audio: AudioConfig = field(default_factory=AudioConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / "transcribe" / f"{Path(self.manifest).stem}-{_stamp()}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str | None = None  # default: outputs/demo-<time>
    model: str = DEFAULT_MODEL
    domain_clips: int = 150  # synthetic ATC utterances; a third on the held-out test voices
    canary_sentences: int = 36  # with beckett.wav 295 words: one word is 0.34 WER points, not 2
    max_steps: int = 30
    # Measured, not guessed: on this domain lr 1e-3 reached held-out WER 0.03 in 100 steps where
    # 1e-4 needed 300 for 0.05 (docs/benchmarks.md, FACTS).
    learning_rate: float = 1e-3
    batch_size: int = 8
    eval_interval: int = 10
    seeds: tuple[int, ...] = (1, 2)  # two runs that differ only by seed: the reproducibility check
    device: str = "auto"
    overwrite: bool = False  # replace an earlier demo in output_dir (only what the demo wrote)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated:
            raise ConfigError(f"--seeds: {', '.join(map(str, repeated))} given twice; each seed is one run, "
                              "give each once")
        if self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        try:
            DecodeConfig(device=self.device)
        except ConfigError as error:
            raise ConfigError(f"--device: {error}") from None

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / f"demo-{_stamp()}"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class StudioConfig:
    """`moonlora studio`: where the local web app serves from and what it may read and write."""

    root: str = "."  # every file the studio serves, reads or writes lies under this folder
    port: int = 8765
    host: str = "127.0.0.1"  # another host (a network interface) needs an access token on every request
    model: str = DEFAULT_MODEL  # the base model of Correct, Try and the Train form
    device: str = "auto"
    max_upload_mb: float = 20.0  # one recorded or dropped take
    open_browser: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535 (0: any free port), got {self.port}")
        if not (math.isfinite(self.max_upload_mb) and 0 < self.max_upload_mb <= 1024):
            raise ConfigError(f"--max-upload-mb must be in (0, 1024], got {self.max_upload_mb}")
        if not self.host.strip():
            raise ConfigError("--host must name an address, e.g. 127.0.0.1")
        try:
            DecodeConfig(device=self.device)
        except ConfigError as error:
            raise ConfigError(f"--device: {error}") from None

    @property
    def remote(self) -> bool:
        """Bound beyond this machine: every request must then carry the printed access token."""
        return self.host not in LOOPBACK_HOSTS

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def _at_least(value: float, low: float) -> bool:
    """A finite number >= low (NaN and infinity are not)."""
    return math.isfinite(value) and value >= low


@dataclass(frozen=True)
class ExportConfig:
    """`moonlora export`: how a run's (or an adapter folder's) merged model is written."""

    format: str = "hf"  # hf (merged transformers checkpoint) | ort (int8 .ort graphs) | both
    rounding: str = "stochastic"  # int8 rounding of the merged weights (ort) | nearest
    precision: str = "int8"  # of the ort graphs | float32 (Moonshine Streaming and moonlora's ONNX route only)
    model: str | None = None  # base model of a plain adapter folder (None: DEFAULT_MODEL); a run names its own

    formats = ("hf", "ort", "both")  # a class attribute, not a field
    precisions = ("int8", "float32")  # a class attribute, not a field


@dataclass(frozen=True)
class SynthConfig:
    """`moonlora synth`: a synthetic domain (moonlora.data.synth.build.build_domain)."""

    domain: str = "atc"  # a registered domain (moonlora.data.synth.domains)
    n: int = 300  # utterances
    seed: int = 0  # of texts, voices, rates and pitches


def _train_device_from_decode(data: dict) -> dict:
    """A config saved before TrainConfig had a device and dtype trained on the decode ones."""
    train, decode = data.get("train"), data.get("decode")
    if not isinstance(train, dict) or not isinstance(decode, dict):
        return data
    inherited = {key: decode[key] for key in ("device", "dtype") if key not in train and key in decode}
    return {**data, "train": {**train, **inherited}} if inherited else data


def _device_name(device: str) -> bool:
    return device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_of(cls, name: str):
    """The default of dataclass field `name` (also for classes with required fields)."""
    for item in fields(cls):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            if item.default_factory is not MISSING:
                return item.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def _typed(cls, data: dict):
    """`cls(**data)` with JSON lists turned back into tuples for tuple fields.

    Keys that are not fields raise TypeError, except `pipeline_version`, which
    AudioConfig.to_dict adds from the code rather than from a setting.
    """
    tuple_fields = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    derived = {"pipeline_version"} if cls is AudioConfig else set()
    return cls(**{key: tuple(value) if key in tuple_fields and isinstance(value, list) else value
                  for key, value in data.items() if key not in derived})
