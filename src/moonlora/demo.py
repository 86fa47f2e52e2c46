"""`moonlora demo`: the main job on the offline default model.

Transcribes the sample clip shipped with the bundled model (Beckett's "Worstward Ho" line)
under the eval contract and prints its WER.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from moonlora import bundled
from moonlora.evaluate import EvalResult
from moonlora.manifest import write_manifest
from moonlora.model import DEFAULT_MODEL
from moonlora.transcribe import TranscribeConfig, run_transcribe


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str | None = None  # default: outputs/demo-<time>
    model: str = DEFAULT_MODEL

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / f"demo-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def sample_manifest(out_dir: Path) -> Path:
    """A manifest of the clips shipped with the bundled model and their transcripts."""
    wav = bundled.beckett_wav_path()
    return write_manifest([{"audio_filepath": str(wav), "text": bundled.BECKETT_TEXT, "speaker": "beckett"}],
                          out_dir / "samples.jsonl")


def run_demo(config: DemoConfig, progress: bool = True) -> tuple[EvalResult, Path]:
    out_dir = config.resolved_output_dir()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; pick another --output-dir")
    manifest = sample_manifest(out_dir)
    return run_transcribe(
        TranscribeConfig(manifest=str(manifest), model=config.model, output_dir=str(out_dir / "samples")),
        progress=progress,
    )
