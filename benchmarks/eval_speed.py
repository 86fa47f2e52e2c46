"""Eval speed: moonlora's decode path vs the two usual Hugging Face loops, in one run.

  ours         decode_clips: clips encoded one by one, decoder batched over length-sorted
               batches (DecodeConfig defaults), per-clip token cap
  batch-1 loop feature_extractor + model.generate one clip at a time, per-clip token cap
  fixed batch  feature_extractor over batches in manifest order + model.generate, one cap per batch

Same model (bundled:base-en, fp32), same clips (synthetic ATC test voices + beckett.wav).
Prints a Markdown table of RTFx, WER and ratios, and writes JSON next to this script.

    uv run python benchmarks/eval_speed.py [--threads 2]
    uv run python benchmarks/eval_speed.py --sweep 1 8 16 32 64   # ours at each decode batch size
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from moonlora import bundled
from moonlora.audio import load_audio
from moonlora.configs import DecodeConfig
from moonlora.decode import decode_clips
from moonlora.manifest import load_manifest, write_manifest
from moonlora.metrics import corpus_score, score_utterance
from moonlora.model import load_model
from moonlora.synth.build import build_domain


def benchmark_manifest(work: Path) -> Path:
    """~100 synthetic ATC clips on held-out voices plus the real beckett.wav."""
    synth = build_domain("atc", n=303, seed=0, out_dir=work / "atc", progress=False)
    rows = [json.loads(line) for line in synth.test_manifest.read_text().splitlines()]
    rows = [{**row, "audio_filepath": str(synth.out_dir / row["audio_filepath"])} for row in rows]
    rows.append({"audio_filepath": str(bundled.beckett_wav_path()), "text": bundled.BECKETT_TEXT})
    return write_manifest(rows, work / "bench.jsonl")


def hf_generate(model, feature_extractor, waveforms, max_new_tokens: int) -> list[list[int]]:
    inputs = feature_extractor(waveforms, sampling_rate=16000, return_tensors="pt", padding=True,
                               return_attention_mask=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return out.tolist()


def run_batch1_loop(loaded, waveforms, caps):
    return [hf_generate(loaded.model, loaded.feature_extractor, [w], cap)[0] for w, cap in zip(waveforms, caps)]


def run_fixed_batches(loaded, waveforms, caps, batch_size: int):
    rows = []
    for start in range(0, len(waveforms), batch_size):
        chunk = slice(start, start + batch_size)
        rows += hf_generate(loaded.model, loaded.feature_extractor, waveforms[chunk], max(caps[chunk]))
    return rows


def texts_from_ids(tokenizer, rows) -> list[str]:
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def wer_of(utterances, texts) -> float:
    return corpus_score([score_utterance(u.text, t) for u, t in zip(utterances, texts)]).wer


def sweep(args) -> None:
    """Ours at several decode batch sizes: RTFx, WER, and whether texts equal batch 1's."""
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="moonlora-bench-"))
    utterances = load_manifest(benchmark_manifest(work)).utterances
    loaded = load_model(device="cpu")
    waveforms = [load_audio(u.audio_filepath) for u in utterances]
    audio_seconds = sum(len(w) for w in waveforms) / 16000
    rows, first_texts = [], None
    for batch_size in args.sweep:
        started = time.perf_counter()
        clips, _ = decode_clips(loaded.model, loaded.feature_extractor, loaded.tokenizer,
                                [u.duration for u in utterances], lambda i: waveforms[i],
                                DecodeConfig(device="cpu", batch_size=batch_size))
        seconds, texts = time.perf_counter() - started, [c.text for c in clips]
        first_texts = first_texts or texts
        rows.append({"batch_size": batch_size, "seconds": seconds, "rtfx": audio_seconds / seconds,
                     "wer": wer_of(utterances, texts), "same_texts_as_first": texts == first_texts})
    Path(args.out or Path(__file__).with_name("eval_speed_sweep.json")).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{len(utterances)} clips, {audio_seconds:.0f} s of audio, {args.threads} threads, bundled:base-en fp32\n")
    print(f"| decode batch size | seconds | RTFx | WER | same texts as batch {args.sweep[0]} |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['batch_size']} | {row['seconds']:.1f} | {row['rtfx']:.1f}x | {row['wer']:.4f} | "
              f"{row['same_texts_as_first']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", type=int, nargs="+", default=None,
                        help="instead: time ours at each of these decode batch sizes")
    parser.add_argument("--out", default=None, help="JSON results (default: next to this script)")
    args = parser.parse_args()
    if args.sweep:
        return sweep(args)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="moonlora-bench-"))
    manifest = load_manifest(benchmark_manifest(work))
    utterances = manifest.utterances
    loaded = load_model(device="cpu")
    config = DecodeConfig(device="cpu")
    waveforms = [load_audio(u.audio_filepath) for u in utterances]  # loaded once, outside every timer
    caps = [config.token_cap(len(w) / 16000) for w in waveforms]
    audio_seconds = sum(len(w) for w in waveforms) / 16000

    results = {}
    started = time.perf_counter()
    clips, _ = decode_clips(loaded.model, loaded.feature_extractor, loaded.tokenizer,
                            [u.duration for u in utterances], lambda i: waveforms[i], config)
    results["ours"] = (time.perf_counter() - started, [c.text for c in clips])
    started = time.perf_counter()
    rows = run_batch1_loop(loaded, waveforms, caps)
    results["batch-1 loop"] = (time.perf_counter() - started, texts_from_ids(loaded.tokenizer, rows))
    started = time.perf_counter()
    rows = run_fixed_batches(loaded, waveforms, caps, config.batch_size)
    results[f"fixed batch {config.batch_size}, manifest order"] = (time.perf_counter() - started,
                                                                    texts_from_ids(loaded.tokenizer, rows))

    loop_seconds = results["batch-1 loop"][0]
    table = {
        name: {"seconds": seconds, "rtfx": audio_seconds / seconds, "wer": wer_of(utterances, texts),
               "speedup_vs_batch1_loop": loop_seconds / seconds,
               "same_texts_as_batch1_loop": texts == results["batch-1 loop"][1]}
        for name, (seconds, texts) in results.items()
    }
    report = {"clips": len(utterances), "audio_seconds": audio_seconds, "threads": args.threads,
              "batch_size": config.batch_size, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "results": table}
    Path(args.out or Path(__file__).with_name("eval_speed.json")).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(utterances)} clips, {audio_seconds:.0f} s of audio, {args.threads} threads, bundled:base-en fp32\n")
    print("| decode path | seconds | RTFx | WER | speed vs batch-1 loop | same texts as batch-1 loop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in table.items():
        print(f"| {name} | {row['seconds']:.1f} | {row['rtfx']:.1f}x | {row['wer']:.4f} | "
              f"{row['speedup_vs_batch1_loop']:.2f}x | {row['same_texts_as_batch1_loop']} |")


if __name__ == "__main__":
    main()
