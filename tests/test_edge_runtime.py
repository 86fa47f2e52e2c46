"""A real client: the moonshine-voice runtime (C++ core over onnxruntime, a test dependency) loads a
folder written by `moonlora export --format ort` unchanged and transcribes what moonlora's
onnxruntime backend transcribes from the same folder."""

import numpy as np
import pytest
import torch

from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import DecodeConfig
from moonlora.eval.decode import decode_clips
from moonlora.data.manifest import load_manifest
from moonlora.model.loading import load_model
from moonlora.ship.ort_export import write_merged_ort
from moonlora.data.synth.build import build_domain

pytestmark = pytest.mark.integration
moonshine_voice = pytest.importorskip("moonshine_voice")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A changed model (a low-rank delta on every decoder MLP, like a LoRA) written as .ort graphs."""
    loaded = load_model("bundled:base-en", device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in loaded.model.named_parameters():
            if ".decoder.layers." in name and name.endswith(("fc1.weight", "fc2.weight")):
                delta = torch.randn(weight.shape[0], 4, generator=generator) @ torch.randn(4, weight.shape[1],
                                                                                           generator=generator)
                weight += delta * (0.02 * weight.abs().max() / delta.abs().max())
    folder = tmp_path_factory.mktemp("exported") / "ort"
    report = write_merged_ort(loaded.model, folder)
    assert report["changed_tensors"] >= 16
    return folder


def test_moonshine_voice_transcribes_the_export_as_moonlora_does(exported, tmp_path):
    """The runtime cuts a clip into voice-activity "lines" (trimming silence changes the model's input,
    and with it the text of an unstable model); each line carries the audio it transcribed, and
    moonlora's onnxruntime backend must write the same text for that audio."""
    domain = build_domain("atc", n=6, seed=3, out_dir=tmp_path / "atc", progress=False)
    ours = load_model(f"ort:{exported}")
    transcriber = moonshine_voice.Transcriber(str(exported), moonshine_voice.ModelArch.BASE)
    lines = 0
    for utterance in load_manifest(domain.test_manifest).utterances:
        samples = load_audio(utterance.audio_filepath, AudioConfig())
        for line in transcriber.transcribe_without_streaming(samples.astype(np.float32).tolist(), 16000).lines:
            audio = np.asarray(line.audio_data, dtype=np.float32)
            (clip,), _ = decode_clips(ours.decoder(), [audio.size / 16000],
                                      lambda index: audio, DecodeConfig(device="cpu"))
            assert line.text == clip.text, utterance.utt_id
            lines += 1
    assert lines >= 2
