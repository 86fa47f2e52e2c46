"""`moonlora demo`: the main job on the offline default model.

1. transcribes the clip shipped with the bundled model (Beckett's "Worstward Ho" line) — general
   speech, where Moonshine base is already good;
2. synthesizes a small air-traffic-control domain (espeak-ng voices) and transcribes its test
   voices — the headroom a LoRA adapter is for.
Both under one eval contract; results land in one folder.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from moonlora import bundled
from moonlora.evaluate import EvalResult
from moonlora.manifest import write_manifest
from moonlora.model import DEFAULT_MODEL
from moonlora.synth.build import build_domain
from moonlora.transcribe import TranscribeConfig, run_transcribe


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str | None = None  # default: outputs/demo-<time>
    model: str = DEFAULT_MODEL
    domain_clips: int = 60  # synthetic ATC utterances (a third on held-out test voices)
    seed: int = 0

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / f"demo-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def sample_manifest(out_dir: Path) -> Path:
    """A manifest of the clips shipped with the bundled model and their transcripts."""
    wav = bundled.beckett_wav_path()
    return write_manifest([{"audio_filepath": str(wav), "text": bundled.BECKETT_TEXT, "speaker": "beckett"}],
                          out_dir / "samples.jsonl")


def run_demo(config: DemoConfig, progress: bool = True) -> dict[str, tuple[EvalResult, Path]]:
    """Run the demo; returns {"general": ..., "atc": ...} results and their folders."""
    out_dir = config.resolved_output_dir()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; pick another --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_config.json").write_text(__import__("json").dumps(asdict(config), indent=2) + "\n")
    domain = build_domain("atc", n=config.domain_clips, seed=config.seed, out_dir=out_dir / "atc", progress=progress)
    manifests = {"general": sample_manifest(out_dir), "atc": domain.test_manifest}
    return {
        name: run_transcribe(
            TranscribeConfig(manifest=str(manifest), model=config.model, output_dir=str(out_dir / f"baseline-{name}")),
            progress=progress,
        )
        for name, manifest in manifests.items()
    }
