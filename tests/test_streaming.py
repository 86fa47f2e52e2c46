"""Moonshine Streaming end to end through the CLI, offline, on random-init models with the real architecture
(issue 20): no streaming weights are on these machines.

The tiny-architecture checkpoint (`streaming_tiny_arch_dir`, 44.1M parameters) drives what the issue asks of
the real shape: `moonlora experiment` with a baseline, 6 updates and interval WER, killed with SIGKILL mid-run
and resumed to the adapter an uninterrupted run saves (<= 1e-6); `moonlora export --format hf` of that run,
reloaded by plain transformers with the adapter model's logits (<= 1e-4); `moonlora transcribe` on it and on a
v1 Moonshine in one session. The much smaller `tiny_streaming_dir` runs the rest (a two-run sweep with its
verdict, decide, report, compare; the val-WER guard, best and last adapters; what the family refuses) to keep
the file's time down. Random weights never emit the end token, so
every decode runs to its per-clip token cap: the clips are short (0.8-1.8 s, caps of 8-14 tokens)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_arch_streaming_config, tone_set
from moonlora.cli import main
from moonlora.comparison import FAIL, PASS
from moonlora.runfolder import CHECKPOINT_STATE, read_record
from moonlora.train import experiment as experiment_module

STREAMING = "moonshine_streaming"
FAST_SECONDS = 15  # a refusal "before any work" comes well inside this, even on a loaded 2-core machine

# Runs `moonlora experiment` in a fresh process and kills it (SIGKILL: nothing gets to clean up) right after
# update KILL_AT_STEP, between the checkpoints of steps 3 and 6.
KILL_AT_STEP = 4
DRIVER = textwrap.dedent(f'''
    import os, signal, sys
    from moonlora import cli
    from moonlora.train import loop

    def after_update(state):
        if state.step == {KILL_AT_STEP}:
            os.kill(os.getpid(), signal.SIGKILL)

    loop._after_update = after_update
    sys.exit(cli.main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming-data")
    return {"train": tone_set(folder, "train", 12), "main": tone_set(folder, "main", 4, seed0=50)}


def experiment_argv(model_dir, data, out) -> list[str]:
    """6 updates of decoder LoRA (the official fine-tuner's default sites) with interval WER at steps 3 and 6."""
    return ["--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(data["train"]),
            "--manifest-path", str(data["main"]), "--model", str(model_dir), "--device", "cpu",
            "--max-steps", "6", "--eval-interval", "3", "--learning-rate", "5e-3", "--batch-size", "2",
            "--grad-accum", "1", "--seed", "3", "--lora-r", "2", "--lora-alpha", "4", "--lora-dropout", "0.1",
            "--target-modules", "decoder", "--decode-batch-size", "8", "--min-val-clips", "1"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, streaming_tiny_arch_dir, data):
    """An uninterrupted run on the tiny-architecture streaming checkpoint, through the CLI."""
    out = tmp_path_factory.mktemp("streaming-runs") / "reference"
    assert main(experiment_argv(streaming_tiny_arch_dir, data, out)) == 0
    return out


def adapter_tensors(adapter_dir):
    return load_file(adapter_dir / "adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def one_line_refusal(capsys, argv) -> str:
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    seconds, err = time.perf_counter() - started, capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert seconds < FAST_SECONDS
    return err


# --- the checkpoint ------------------------------------------------------------------------------------------------


def test_the_moonshine_tokenizer_fits_the_streaming_vocabulary(hf_tokenizer):
    config = tiny_arch_streaming_config()
    assert (config.vocab_size, config.encoder_config.hidden_size, config.hidden_size) == (32768, 320, 320)
    assert (config.encoder_config.num_hidden_layers, config.num_hidden_layers) == (6, 6)
    # 32000 pieces, every id a row of the 32768-row embedding; the 768 rows above are Moonshine's reserved slots
    assert len(hf_tokenizer) == 32000 and max(hf_tokenizer.get_vocab().values()) < config.vocab_size
    assert config.vocab_size - len(hf_tokenizer) == 768
    assert hf_tokenizer.convert_ids_to_tokens([config.bos_token_id, config.eos_token_id]) == ["<s>", "</s>"]
    assert config.decoder_start_token_id == 1 and config.pad_token_id == 2


def test_the_tiny_architecture_checkpoint_loads_completely(streaming_tiny_arch_dir):
    from transformers import MoonshineStreamingForConditionalGeneration

    from moonlora.model.loading import load_model

    loaded = load_model(str(streaming_tiny_arch_dir), device="cpu")
    assert loaded.model_type == STREAMING and isinstance(loaded.model, MoonshineStreamingForConditionalGeneration)
    assert loaded.load_check["vocabulary"] == 32000 and loaded.load_check["embedding_rows"] == 32768
    assert sum(p.numel() for p in loaded.model.parameters()) == 44_054_721  # the defaults, untied output layer


# --- experiment, kill -9, resume; export hf ------------------------------------------------------------------------


def test_experiment_killed_mid_run_resumes_to_the_uninterrupted_adapter(reference_run, streaming_tiny_arch_dir,
                                                                        data, tmp_path, monkeypatch):
    reference = read_record(reference_run)
    assert reference.status == "success" and reference.training.steps == 6
    assert [row["step"] for row in reference.training.intervals] == [0, 3, 6]  # interval WER at steps 3 and 6
    assert reference.baseline["main"].contract["model_type"] == STREAMING
    assert reference.tuned["main"].contract["model_type"] == STREAMING

    out = tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(driver), *experiment_argv(streaming_tiny_arch_dir, data, out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    killed = read_record(out)
    assert killed.status == "running" and killed.phase == "training"  # a kill -9 leaves no chance to write more

    labels, real_sets = [], experiment_module.evaluate_sets

    def counting(loaded, sets, config, out_dir, progress, label):
        labels.extend(f"{label} {name}" for name in sets)
        return real_sets(loaded, sets, config, out_dir, progress, label)

    monkeypatch.setattr(experiment_module, "evaluate_sets", counting)
    assert main([*experiment_argv(streaming_tiny_arch_dir, data, out), "--resume"]) == 0
    assert labels and not [label for label in labels if label.startswith("baseline")]  # the first leg's is reused
    resumed = read_record(out)
    assert resumed.status == "success" and [leg.resumed_from_step for leg in resumed.legs] == [None, 3]
    assert resumed.training.best_step == reference.training.best_step
    assert [r["step"] for r in resumed.training.intervals] == [0, 3, 6]
    assert max_difference(adapter_tensors(reference_run / "adapter"), adapter_tensors(out / "adapter")) <= 1e-6
    last = f"checkpoints/step-00000006/{CHECKPOINT_STATE}"  # the trained adapter, not only the chosen one
    trained = [torch.load(run / last, weights_only=False)["adapter"] for run in (reference_run, out)]
    assert max_difference(*trained) <= 1e-6
    assert max(float(t.abs().max()) for name, t in trained[0].items() if "lora_B" in name) > 0
    assert resumed.tuned["main"].wer == reference.tuned["main"].wer
    assert resumed.tuned["main"].contract == reference.tuned["main"].contract
    sites = {name.split(".lora_")[0].split("base_model.model.")[-1] for name in trained[0]}
    # decoder self-attention q/k/v only, the official fine-tuner's default: 6 layers x 3
    assert sites == {f"model.decoder.layers.{i}.self_attn.{p}" for i in range(6) for p in ("q_proj", "k_proj", "v_proj")}


def forward_logits(model, seconds: float = 1.2):
    torch.manual_seed(0)
    audio = torch.randn(1, int(16000 * seconds)) * 0.1
    with torch.no_grad():
        return model(input_values=audio, decoder_input_ids=torch.tensor([[1, 5, 9, 13]])).logits


def test_export_hf_reloads_in_plain_transformers_with_the_adapter_models_logits(reference_run,
                                                                                streaming_tiny_arch_dir, tmp_path):
    from transformers import MoonshineStreamingForConditionalGeneration

    from moonlora.model.loading import load_model

    out = tmp_path / "shipped"
    assert main(["--quiet", "export", str(reference_run), "--out", str(out), "--format", "hf"]) == 0
    plain = MoonshineStreamingForConditionalGeneration.from_pretrained(out).eval()  # no moonlora involved
    with_adapter = load_model(str(streaming_tiny_arch_dir), device="cpu", adapter=reference_run / "adapter")
    base = load_model(str(streaming_tiny_arch_dir), device="cpu")
    merged_logits, adapter_logits = forward_logits(plain), forward_logits(with_adapter.model)
    assert (merged_logits - adapter_logits).abs().max() <= 1e-4
    assert (forward_logits(base.model) - adapter_logits).abs().max() > 0.1  # not the identity (1.31 measured)
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["format"] == "hf" and saved["base_model"] == str(streaming_tiny_arch_dir)
    assert saved["run_eval_contracts"]["main"]["model_type"] == STREAMING
    assert load_model(str(out), device="cpu").model_type == STREAMING  # and moonlora's --model DIR


def read_hyps(folder) -> list[str]:
    return [json.loads(line)["hyp"] for line in (folder / "transcripts.jsonl").read_text().splitlines()]


# --- transcribe on both families -----------------------------------------------------------------------------------


def test_transcribe_a_folder_of_each_family_in_one_session(tiny_model_dir, streaming_tiny_arch_dir, reference_run,
                                                           data, tmp_path, capsys):
    scored = {}
    for family, folder in (("moonshine", tiny_model_dir), (STREAMING, streaming_tiny_arch_dir)):
        out = tmp_path / family
        assert main(["--quiet", "transcribe", "--manifest", str(data["main"]), "--model", str(folder),
                     "--output-dir", str(out), "--device", "cpu", "--batch-size", "2"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["clips"] == 4 and summary["contract"]["model_type"] == family
        assert summary["flags"]["token_cap_hit"] == 4  # random weights never end on their own
        scored[family] = summary
    assert scored["moonshine"]["contract"]["fingerprint"] != scored[STREAMING]["contract"]["fingerprint"]
    # batch size is a speed setting: the run decoded this manifest in batches of 8, under the same contract
    run_baseline = reference_run / "baseline" / "main"
    assert read_hyps(tmp_path / STREAMING) == read_hyps(run_baseline)
    baseline_contract = json.loads((run_baseline / "summary.json").read_text())["contract"]
    assert scored[STREAMING]["contract"]["fingerprint"] == baseline_contract["fingerprint"]
    # two families never compare as one model
    err = one_line_refusal(capsys, ["compare", str(tmp_path / "moonshine"), str(tmp_path / STREAMING)])
    assert "model_type" in err
    # the run's adapter is scored under the run's model and settings: the run's own tuned texts
    tuned = tmp_path / "tuned"
    assert main(["--quiet", "transcribe", "--manifest", str(data["main"]), "--adapter", str(reference_run),
                 "--output-dir", str(tuned), "--device", "cpu"]) == 0
    assert read_hyps(tuned) == read_hyps(reference_run / "tuned" / "main")


# --- sweep, decide, report, compare on the small streaming model ---------------------------------------------------


def test_a_two_run_sweep_has_a_verdict_and_its_runs_decide_report_and_compare(tiny_streaming_dir, data, tmp_path,
                                                                               capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
[experiment]
dataset-path = "{data['train']}"
manifest-path = "{data['main']}"
model = "{tiny_streaming_dir}"
device = "cpu"
max-steps = 2
eval-interval = 1
learning-rate = 5e-3
batch-size = 2
grad-accum = 1
lora-r = 2
target-modules = "all"
min-val-clips = 1
decode-batch-size = 8

[grid]
seed = [1, 2]
""")
    out = tmp_path / "sweep"
    code = main(["--quiet", "sweep", str(grid), "--output-dir", str(out)])
    record = json.loads((out / "sweep.json").read_text())
    assert [run["name"] for run in record["runs"]] == ["seed1", "seed2"]
    assert [run["status"] for run in record["runs"]] == ["success", "success"]
    [group] = record["groups"]
    assert code == (0 if group["passed"] else 1)  # the verdict on random tones may be either; the code follows it
    outcomes = {(v["criterion"], v["outcome"]) for v in group["verdicts"]}
    assert {outcome for criterion, outcome in outcomes if criterion == "primary"} <= {PASS, FAIL}
    assert {outcome for criterion, outcome in outcomes if criterion == "reproducibility"} <= {PASS, FAIL}
    assert {criterion for criterion, _ in outcomes} >= {"primary", "sanity", "reproducibility"}
    assert record["baselines"]["decoded_by_manifest"][str(data["main"])] == 1  # shared by both runs
    runs = [out / "runs" / name for name in ("seed1", "seed2")]
    for run in runs:
        saved = read_record(run)
        assert saved.tuned["main"].contract["model_type"] == STREAMING
        names = adapter_tensors(run / "adapter").keys()
        assert any(".encoder." in n for n in names) and any(".decoder." in n for n in names)  # "all"

    decision = tmp_path / "decision.json"
    code = main(["--quiet", "decide", *map(str, runs), "--json", str(decision)])
    decided = json.loads(decision.read_text())
    assert code == (0 if decided["passed"] else 1) and decided["runs"] == ["seed1", "seed2"]
    assert decided["passed"] == group["passed"]  # the sweep's verdict is decide's
    assert main(["--quiet", "report", str(out / "runs"), "--out", str(tmp_path / "r.md"),
                 "--html", str(tmp_path / "r.html")]) == 0
    assert "seed1" in (tmp_path / "r.md").read_text() and (tmp_path / "r.html").is_file()

    compared = tmp_path / "compare.json"
    code = main(["--quiet", "compare", str(runs[0] / "baseline" / "main"), str(runs[0] / "tuned" / "main"),
                 "--allow", "adapter_sha256", "--json", str(compared)])
    saved = json.loads(compared.read_text())
    assert code == (0 if saved["non_inferior"] else 1)
    assert [d["field"] for d in saved["allowed_differences"]] == ["adapter_sha256"]  # nothing else differs
    assert saved["a"]["contract"]["model_type"] == saved["b"]["contract"]["model_type"] == STREAMING
    assert saved["delta"] == pytest.approx(read_record(runs[0]).comparisons["main"].delta)


def test_what_the_family_cannot_do_is_refused_in_one_line_before_any_folder(tiny_streaming_dir, data, tmp_path,
                                                                              capsys):
    run_dir = tmp_path / "run"
    for command in (["experiment", "--output-dir", str(run_dir), "--dataset-path", str(data["train"]),
                     "--manifest-path", str(data["main"]), "--min-val-clips", "1"],
                    ["transcribe", "--manifest", str(data["main"]), "--output-dir", str(tmp_path / "scored")]):
        err = one_line_refusal(capsys, [*command, "--model", str(tiny_streaming_dir), "--device", "cpu",
                                        "--encoder", "batched"])  # refused before any progress line
        assert "--encoder batched: Moonshine Streaming has no exact padded-batch encoder" in err, err
    assert not run_dir.exists() and not (tmp_path / "scored").exists()


def plant_val_wer(monkeypatch, planted: dict[int, float]) -> None:
    """Interval evaluations report the planted val WER at the named steps."""
    import dataclasses

    real = experiment_module.evaluate_sets

    def evaluate_sets(loaded, sets, config, out_dir, progress, label):
        results = real(loaded, sets, config, out_dir, progress, label)
        if label.startswith("step ") and int(label.split()[1]) in planted and "val" in results:
            corpus = dataclasses.replace(results["val"].corpus, wer=planted[int(label.split()[1])])
            results["val"] = dataclasses.replace(results["val"], corpus=corpus)
        return results

    monkeypatch.setattr(experiment_module, "evaluate_sets", evaluate_sets)


def test_guarded_stop_and_best_and_last_adapters_on_the_streaming_family(tiny_streaming_dir, data, tmp_path,
                                                                         monkeypatch):
    def argv(out, *extra):
        return ["--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(data["train"]),
                "--manifest-path", str(data["main"]), "--model", str(tiny_streaming_dir), "--device", "cpu",
                "--max-steps", "4", "--eval-interval", "2", "--learning-rate", "5e-3", "--batch-size", "2",
                "--grad-accum", "1", "--seed", "3", "--lora-r", "2", "--target-modules", "encoder",
                "--decode-batch-size", "8", "--min-val-clips", "1", *extra]

    plant_val_wer(monkeypatch, {2: 0.1, 4: 0.5})  # best at step 2, mid-run; the last adapter is another one
    from moonlora.model import streaming_encoder

    batched_passes, real_layers = [], streaming_encoder.layers

    def counting_layers(encoder, hidden, frame_mask, banded=False):
        batched_passes.append((hidden.shape[0], banded))
        return real_layers(encoder, hidden, frame_mask, banded)

    monkeypatch.setattr(streaming_encoder, "layers", counting_layers)
    assert main(argv(tmp_path / "best", "--group-by-length")) == 0
    # equal-length pairs: the encoder trains in exact padded batches of 2 over clip-alone stems, with banded
    # attention; decoding encodes each clip alone through the model's own masked attention
    assert (2, True) in batched_passes and (1, False) in batched_passes
    assert all(banded for batch, banded in batched_passes if batch > 1)
    assert json.loads((tmp_path / "best" / "experiment_config.json").read_text())["train"]["group_by_length"] is True
    record = read_record(tmp_path / "best")
    best, last = record.candidates["best"], record.candidates["last"]
    assert (best.step, best.selected, last.step, last.selected) == (2, True, 4, False)
    assert best.main.wer == record.tuned["main"].wer and (tmp_path / "best" / "tuned-last" / "main").is_dir()
    assert adapter_tensors(tmp_path / "best" / "adapter-best").keys() == adapter_tensors(
        tmp_path / "best" / "adapter-last").keys()
    assert all(".encoder.layers." in name for name in adapter_tensors(tmp_path / "best" / "adapter"))
    assert last.main.contract["model_type"] == STREAMING

    monkeypatch.undo()
    plant_val_wer(monkeypatch, {2: 50.0})  # val WER far above the baseline's: the guard stops the run
    assert main(argv(tmp_path / "stopped", "--wer-stop-threshold", "1.1")) == 0
    stopped = read_record(tmp_path / "stopped")
    assert stopped.status == "stopped_early" and stopped.reason.startswith("val WER 50.0000 > baseline")
    assert stopped.training.steps == 2 and stopped.training.best_step == 0
