"""The studio's Runs and Listen data over HTTP, from a real finished run (tiny model, two updates) and copies of it
edited into the other states, plus a scored folder of 1,000 clips for paging, sorting and filtering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from moonlora.configs import DecodeConfig, ExperimentConfig, LoraSettings, StudioConfig, TrainConfig  # noqa: E402
from moonlora.runfolder import METRICS_FILE  # noqa: E402
from moonlora.studio.listen import word_diff  # noqa: E402
from moonlora.studio.server import build_app  # noqa: E402

BASE_URL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def studio_root(tiny_model_dir, tmp_path_factory) -> Path:
    """A root holding data/ and runs/run-a: a real finished run (tiny model, two updates)."""
    from conftest import tone_set
    from moonlora.train.experiment import run_experiment

    root = tmp_path_factory.mktemp("studio-views")
    data = {"train": tone_set(root / "data", "train", 12), "main": tone_set(root / "data", "main", 4, seed0=50)}
    run_experiment(ExperimentConfig(
        output_dir=str(root / "runs" / "run-a"), dataset_path=str(data["train"]), manifest_path=str(data["main"]),
        model=str(tiny_model_dir), bootstrap_resamples=100, min_val_clips=1,
        train=TrainConfig(max_steps=2, learning_rate=5e-3, batch_size=2, grad_accum=1, eval_interval=1, seed=3,
                          device="cpu"),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0), decode=DecodeConfig(batch_size=8, device="cpu")),
        progress=False)
    return root


def client_for(root: Path) -> TestClient:
    app, _ = build_app(StudioConfig(root=str(root)))
    return TestClient(app, base_url=BASE_URL)


def edited_copy(root: Path, name: str, **changes) -> Path:
    """A copy of run-a with its record's fields changed (a run in another state)."""
    copy = root / "runs" / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(root / "runs" / "run-a", copy)
    record = json.loads((copy / METRICS_FILE).read_text())
    record.update(changes)
    (copy / METRICS_FILE).write_text(json.dumps(record))
    return copy


def test_runs_view_tells_finished_died_and_interrupted_apart(studio_root):
    edited_copy(studio_root, "run-died", status="running", pid=2**22 + 12345, phase="training")
    edited_copy(studio_root, "run-stopped", status="interrupted", phase="training",
                reason="interrupted at training; continue with --resume")
    try:
        data = client_for(studio_root).get("/api/runs").json()
        states = {row["path"]: row["state"] for row in data["runs"]}
        assert states == {"runs/run-a": "finished", "runs/run-died": "died", "runs/run-stopped": "interrupted"}
        finished = next(row for row in data["runs"] if row["path"] == "runs/run-a")
        assert finished["verdict"] in ("PASS", "FAIL") and finished["progress"] == {
            "phase": "done", "steps": 2, "max_steps": 2}
        died = next(row for row in data["runs"] if row["path"] == "runs/run-died")
        assert died["verdict"] is None and "died at training" in died["status_text"]
    finally:
        for name in ("run-died", "run-stopped"):
            shutil.rmtree(studio_root / "runs" / name)


def test_run_detail_has_verdicts_plots_and_manifests(studio_root):
    detail = client_for(studio_root).get("/api/run", params={"path": "runs/run-a"}).json()
    from moonlora.verdict.decide import decide

    decision = decide([studio_root / "runs" / "run-a"])
    assert [v["criterion"] for v in detail["verdicts"]] == [v.criterion for v in decision.verdicts]
    assert detail["verdict"] == ("PASS" if decision.passed else "FAIL")
    assert detail["plots"].count("<svg") == 3  # loss, interval WER, WER by duration: the report's plots
    assert [m["Manifest"] for m in detail["manifests"]] == ["val", "main"]
    assert detail["sets"] == ["main", "val"]


def test_listen_view_of_a_run_joins_baseline_and_tuned_per_clip(studio_root):
    client = client_for(studio_root)
    page = client.get("/api/listen", params={"folder": "runs/run-a", "sort": "order"}).json()
    assert page["total"] == 4 and page["sides"] == {"baseline": True, "tuned": True}
    first = page["rows"][0]
    assert first["ref"] == "main clip number 0" and first["audio"] == "data/main0.wav"
    assert first["baseline"]["diff"] and first["tuned"]["diff"]
    assert client.get("/files/" + first["audio"]).content[:4] == b"RIFF"
    speaker = page["speakers"][0]
    only = client.get("/api/listen", params={"folder": "runs/run-a", "speaker": speaker}).json()
    assert {row["speaker"] for row in only["rows"]} == {speaker} and only["matching"] == 1


def test_two_runs_side_by_side_are_what_compare_computes(studio_root):
    shutil.copytree(studio_root / "runs" / "run-a", studio_root / "runs" / "run-b")
    try:
        result = client_for(studio_root).get("/api/compare", params={"a": "runs/run-a", "b": "runs/run-b"}).json()
        from moonlora.eval.compare import compare_folders

        expected = compare_folders(studio_root / "runs/run-a/tuned/main", studio_root / "runs/run-b/tuned/main",
                                   allow=("adapter_sha256",))
        assert result["delta"] == expected.bootstrap.delta == 0.0
        assert result["agreement"]["same_text"] == 4 and result["differing_clips"] == 0
    finally:
        shutil.rmtree(studio_root / "runs" / "run-b")


def scored_rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        ref = f"clip {i} says alpha bravo charlie"
        hyp = ref if i % 3 else f"clip {i} says alpha bravo delta"
        rows.append({"utt_id": f"{i + 1}:c{i}.wav", "audio_filepath": f"/nowhere/c{i}.wav", "duration": 1.0 + i % 7,
                     "speaker": f"s{i % 5}", "ref": ref, "hyp": hyp, "ref_norm": ref, "hyp_norm": hyp,
                     "ref_words": 6, "substitutions": 0 if i % 3 else 1, "deletions": 0, "insertions": 0,
                     "wer": 0.0 if i % 3 else 1 / 6, "flags": ["repeat_loop"] if i % 100 == 0 else []})
    return rows


def test_a_thousand_clip_folder_pages_sorts_and_filters(tmp_path):
    folder = tmp_path / "scored"
    folder.mkdir()
    (folder / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored_rows(1000)))
    (folder / "summary.json").write_text("{}")
    client = client_for(tmp_path)
    page = client.get("/api/listen", params={"folder": "scored", "limit": 50, "offset": 100}).json()
    assert page["total"] == 1000 and page["matching"] == 1000 and len(page["rows"]) == 50
    assert page["sides"] == {"baseline": True, "tuned": False}
    assert all(row["audio"] is None for row in page["rows"])  # outside the root: no player, no file served
    worst = client.get("/api/listen", params={"folder": "scored", "limit": 500}).json()["rows"]
    assert [row["baseline"]["wer"] for row in worst[:334]] == [1 / 6] * 334
    flagged = client.get("/api/listen", params={"folder": "scored", "flag": "repeat_loop"}).json()
    assert flagged["matching"] == 10 and flagged["flags"] == ["repeat_loop"]
    longest = client.get("/api/listen", params={"folder": "scored", "sort": "duration", "min": 7}).json()
    assert longest["matching"] == 142 and {row["duration"] for row in longest["rows"]} == {7.0}
    assert client.get("/api/listen", params={"folder": "scored", "sort": "nonsense"}).status_code == 400


def test_word_diff_marks_wrong_inserted_and_missed_words():
    assert word_diff("a b c d".split(), "a x c d e".split()) == [
        ["eq", "a"], ["del", "b"], ["sub", "x"], ["eq", "c d"], ["ins", "e"]]


def test_sweeps_under_the_root_show_their_runs_and_group_verdicts(tmp_path):
    from moonlora.outputs import write_json
    from moonlora.sweep import SWEEP_FILE, SweepRun, SweepState

    folder = tmp_path / "sweeps" / "lr"
    folder.mkdir(parents=True)
    state = SweepState(config={"output_dir": str(folder), "grid_file": None, "base": {}, "axes": {}}, command="",
                       runs=[SweepRun("seed-1", {"seed": 1}, "runs/seed-1", "success"),
                             SweepRun("seed-2", {"seed": 2}, "runs/seed-2", "interrupted")],
                       groups=[{"group": "lr-1e-3", "runs": ["seed-1", "seed-2"], "passed": False, "verdicts": []}])
    write_json(folder / SWEEP_FILE, state.to_dict(), command="sweep")
    (tmp_path / "sweeps" / "broken").mkdir()
    (tmp_path / "sweeps" / "broken" / SWEEP_FILE).write_text("{}")
    sweeps = {s["path"]: s for s in client_for(tmp_path).get("/api/runs").json()["sweeps"]}
    assert sweeps["sweeps/lr"]["statuses"] == {"success": 1, "interrupted": 1}
    assert sweeps["sweeps/lr"]["groups"] == [{"group": "lr-1e-3", "passed": False, "verdicts": []}]
    assert "sweep" in sweeps["sweeps/broken"]["error"]


def test_try_and_correct_transcribe_one_take_through_the_decode_path(studio_root, tiny_model_dir):
    import io

    import soundfile as sf

    from moonlora.eval.decode import decode_batch
    from moonlora.model.loading import load_model
    from moonlora.configs import DecodeConfig as Decode

    app, studio = build_app(StudioConfig(root=str(studio_root), model=str(tiny_model_dir), device="cpu"))
    client = TestClient(app, base_url=BASE_URL)
    headers = {"X-Moonlora-Token": studio.tokens.session, "Content-Type": "audio/wav"}
    wav = (studio_root / "data" / "main1.wav").read_bytes()
    tried = client.post("/api/try", params={"adapter": "runs/run-a"}, content=wav, headers=headers)
    assert tried.status_code == 200, tried.text
    result = tried.json()
    waveform = sf.read(io.BytesIO(wav), dtype="float32")[0]  # 16 kHz mono already
    base = load_model(str(tiny_model_dir), device="cpu")
    expected = decode_batch(base.decoder(), [waveform], Decode(batch_size=1, device="cpu"))[0].text
    assert result["base"]["text"] == expected and result["adapted"]["model"] == "runs/run-a"
    assert result["adapted"]["decode_seconds"] > 0
    heard = client.post("/api/transcribe", params={"model": "runs/run-a"}, content=wav, headers=headers).json()
    assert heard["text"] == result["adapted"]["text"]
    start = client.post("/api/record/start", json={"folder": "fixes", "domain": "atc", "count": 2},
                        headers={"X-Moonlora-Token": studio.tokens.session})
    assert start.status_code == 200 and len(start.json()["prompts"]) == 2
    def save(text: str) -> dict:
        return client.post("/api/correct/save", json={"folder": "fixes", "take_id": heard["take_id"], "speaker": "bo",
                                                      "text": text, "hyp": heard["text"], "model": "runs/run-a"},
                           headers={"X-Moonlora-Token": studio.tokens.session}).json()["kept"]

    fixed, right = save("main clip number one"), save(heard["text"])
    assert (fixed["source"], fixed["model"], fixed["correction"], fixed["id"]) == ("correct", "runs/run-a", True, "bo-c0000")
    assert (right["correction"], right["id"], right["model_hyp"]) == (False, "bo-c0001", heard["text"])


def test_resuming_a_run_whose_settings_no_flag_gives_is_refused_naming_them(studio_root):
    edited_copy(studio_root, "run-py", status="interrupted", phase="training")
    try:
        app, studio = build_app(StudioConfig(root=str(studio_root)))
        response = TestClient(app, base_url=BASE_URL).post(
            "/api/run/resume", json={"path": "runs/run-py"}, headers={"X-Moonlora-Token": studio.tokens.session})
        assert response.status_code == 400 and "bootstrap_resamples (100 -> 10000)" in response.json()["error"]
        assert studio.jobs.listing() == []
    finally:
        shutil.rmtree(studio_root / "runs" / "run-py")
