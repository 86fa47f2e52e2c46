"""The eval contract: everything that decides a WER number, recorded with the number.

Two results are comparable only when their contracts match; `require_comparable` refuses
otherwise and names each differing field. Baseline-vs-tuned comparisons allow the adapter
(and only the adapter) to differ.

`runtime` is what ran the model: {"name": "torch", "precision": <the dtype>} or
{"name": "onnxruntime", "precision": "int8" | "float16" | "float32"} (read from the graphs). For
onnxruntime, `model_sha256` is the artifact hash (the .ort files and tokenizer.bin, see
`moonlora.model.ort`). A torch and an onnxruntime result compare only when the caller allows it
knowingly: `require_comparable(a, b, allow=("runtime", "model_sha256"))`.

`model_type` is the model family that was loaded (config.json's model type; "moonshine" for
contracts from before it was recorded, when Moonshine was the only family). `load_check` is what the
loader verified (`moonlora.model.loading.LoadCheck`: every weight loaded, tokenizer and sampling
rate fit; None where moonlora did not check, e.g. onnxruntime graphs). It is recorded, not compared
or fingerprinted: a model that fails the check is never scored. `frontend` is the audio front end and
encoder pipeline of that family as moonlora runs it (`ModelFamily.frontend`: e.g. Moonshine Streaming's
80-sample frames and sliding-window attention); recorded, not compared, since `model_type` decides it.

`language` (an ISO code) picks `normalizer` (moonlora.data.text) and `metric` is the primary metric
("wer" | "cer", moonlora.eval.metrics); both are compared, so a Spanish result never compares with an
English one, nor a CER with a WER, and the refusal names the field. Contracts from before they were
recorded read as "en" and "wer", and a contract at exactly those values leaves them out of its
fingerprint: an English WER result keeps the fingerprint it always had. `nonspeech` says the manifest
was scored as clips without speech (`experiment --nonspeech-manifest`: words emitted per clip); False,
as on every speech set, leaves it out of the fingerprint too. The decode settings hold the repetition
guard only when it is on (`DecodeConfig.result_dict`), so no earlier fingerprint moves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from moonlora.data.audio import AudioConfig
from moonlora.configs import DEFAULT_LANGUAGE, DecodeConfig, ScoringConfig
from moonlora.data.text import normalizer_id
from moonlora.errors import MoonloraError
from moonlora.model.families import FAMILIES


class ContractMismatch(MoonloraError, ValueError):
    """Two results measured under different protocols."""


LEGACY_MODEL_TYPE = "moonshine"  # the only model family before contracts recorded one
# What contracts from before languages were recorded measured; at these values a field stays out of the
# fingerprint, so English WER fingerprints do not move.
LEGACY_SCORING = {"language": DEFAULT_LANGUAGE, "metric": "wer", "nonspeech": False}


def family_frontend(model_type: str) -> str | None:
    """The recorded front end of a model family (None for a type moonlora has no family for)."""
    family = FAMILIES.get(model_type)
    return None if family is None else family.frontend


def torch_runtime(dtype: str = "float32") -> dict:
    return {"name": "torch", "precision": dtype}


@dataclass(frozen=True)
class EvalContract:
    manifest_sha256: str
    audio: dict  # AudioConfig.to_dict()
    normalizer: dict  # name and version
    decode: dict  # DecodeConfig.result_dict(): the settings that can change a transcript
    model_sha256: str
    adapter_sha256: str | None
    runtime: dict  # {"name": "torch" | "onnxruntime", "precision": ...}
    model_type: str = LEGACY_MODEL_TYPE  # the loaded model's family (config.json's model_type)
    load_check: dict | None = field(default=None, compare=False)  # what the loader verified; not compared
    frontend: str | None = field(default=None, compare=False)  # the family's audio pipeline; not compared
    language: str = DEFAULT_LANGUAGE  # ISO code of the transcripts; picks the normalizer
    metric: str = "wer"  # the primary metric: "wer" | "cer"
    nonspeech: bool = False  # scored as clips without speech (words emitted); fingerprinted only when True

    @classmethod
    def build(cls, manifest_sha256: str, audio: AudioConfig, decode: DecodeConfig,
              model_sha256: str, adapter_sha256: str | None, runtime: dict | None = None,
              model_type: str = LEGACY_MODEL_TYPE, load_check: dict | None = None,
              scoring: ScoringConfig | None = None, nonspeech: bool = False) -> EvalContract:
        """`runtime` defaults to torch at the decode dtype (what `load_model(dtype=decode.dtype)` runs);
        `model_type` and `load_check` come from the LoadedModel; `scoring` (default: English, WER)
        gives the language, its normalizer and the primary metric; `nonspeech`: the manifest holds clips
        without speech, scored by the words emitted."""
        scoring = scoring or ScoringConfig()
        return cls(manifest_sha256=manifest_sha256, audio=audio.to_dict(),
                   normalizer=normalizer_id(scoring.language), language=scoring.language,
                   metric=scoring.primary_metric,
                   decode=decode.result_dict(), model_sha256=model_sha256, adapter_sha256=adapter_sha256,
                   runtime=dict(runtime) if runtime is not None else torch_runtime(decode.dtype),
                   model_type=model_type, load_check=None if load_check is None else dict(load_check),
                   frontend=family_frontend(model_type), nonspeech=nonspeech)

    def to_dict(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: dict) -> EvalContract:
        names = {f.name for f in fields(cls)}
        if "runtime" not in data and isinstance(data.get("decode"), dict) and "dtype" in data["decode"]:
            # Contracts from before the runtime field was recorded were all measured by torch.
            data = {**data, "runtime": {"name": "torch", "precision": data["decode"]["dtype"]}}
        data = {"model_type": LEGACY_MODEL_TYPE, "load_check": None, "frontend": None, **LEGACY_SCORING, **data}
        missing = names - data.keys()
        if missing:
            raise ContractMismatch(f"eval contract lacks field(s): {', '.join(sorted(missing))}")
        return cls(**{name: data[name] for name in names})

    def compared(self) -> dict:
        """The fields that decide comparability (every field but the recorded-only ones)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if item.compare}

    @property
    def fingerprint(self) -> str:
        """Hash of the compared fields; language and metric only where they differ from English WER."""
        fingerprinted = {name: value for name, value in self.compared().items()
                         if not (name in LEGACY_SCORING and value == LEGACY_SCORING[name])}
        canonical = json.dumps(fingerprinted, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def differences(self, other: EvalContract) -> list[str]:
        """Names of differing fields; dict fields name the differing key (e.g. decode.num_beams)."""
        differing = []
        theirs_by_name = other.compared()
        for name, mine in self.compared().items():
            theirs = theirs_by_name[name]
            if isinstance(mine, dict) and isinstance(theirs, dict):
                keys = sorted(set(mine) | set(theirs))
                differing += [f"{name}.{k}" for k in keys if mine.get(k) != theirs.get(k)]
            elif mine != theirs:
                differing.append(name)
        return differing


def require_comparable(first: EvalContract, second: EvalContract, allow: tuple[str, ...] = ()) -> None:
    """Raise ContractMismatch unless the contracts match on every field not in `allow`."""
    differing = [name for name in first.differences(second) if name.split(".")[0] not in allow]
    if differing:
        details = ", ".join(
            f"{name} ({_field_value(first, name)!r} vs {_field_value(second, name)!r})" for name in differing
        )
        raise ContractMismatch(f"results were measured under different eval contracts: {details}")


def _field_value(contract: EvalContract, dotted: str):
    head, _, key = dotted.partition(".")
    value = getattr(contract, head)
    value = value.get(key) if key else value
    return value[:12] if isinstance(value, str) and len(value) == 64 else value
