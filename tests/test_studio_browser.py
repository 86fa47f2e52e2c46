"""The studio in a real headless Chromium (Debian's `chromium`, driven by Playwright), its microphone fed an
espeak-ng clip through Chromium's fake capture flags: record, undo, correct, train from the form, listen, try.

Without a browser these tests skip with the reason, except in CI (env CI set), where that is an error:
`.ci/run` installs Debian's chromium. The views' screenshots go to $MOONLORA_STUDIO_SCREENSHOTS when it is
set (the README's come from `MOONLORA_STUDIO_SCREENSHOTS=docs/studio`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CLIP_TEXT = "climb flight level two nine zero"
PROMPTS = ("turn left heading one two zero", "contact tower", "descend and maintain four thousand")
TRAIN_FLAGS = ("--device cpu --min-val-clips 1 --train-batch-size 2 --grad-accum 1 --lora-r 2 --lora-alpha 4 "
               "--lora-dropout 0 --decode-batch-size 8")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (uv sync installs it with the dev group)"
    if chromium_path() is None:
        return "no Chromium on this machine (Debian: apt-get install -y chromium; .ci/run does it)"
    return None


def without_browser(reason: str | None, ci: bool) -> None:
    """Skip with the reason, but fail in CI: there the browser must be installed (.ci/run does it)."""
    if reason and ci:
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="module")
def chromium_or_skip():
    without_browser(missing_browser(), bool(os.environ.get("CI")))
    return chromium_path()


def test_a_missing_browser_skips_locally_and_fails_in_ci():
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        without_browser("no Chromium on this machine", ci=False)
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no Chromium"):
        without_browser("no Chromium on this machine", ci=True)
    assert without_browser(None, ci=True) is None


@pytest.fixture(scope="module")
def fed_clip(tmp_path_factory) -> tuple[Path, float]:
    """An espeak-ng clip (16-bit WAV) that Chromium plays as the microphone, and its length in seconds."""
    from moonlora.data.synth import espeak

    wave = espeak.synthesize(CLIP_TEXT, "en-us+m3")
    path = tmp_path_factory.mktemp("mic") / "clip.wav"
    sf.write(str(path), np.asarray(wave, dtype=np.float32), espeak.SAMPLE_RATE, subtype="PCM_16")
    return path, len(wave) / espeak.SAMPLE_RATE


@pytest.fixture(scope="module")
def live(chromium_or_skip, tiny_model_dir, tmp_path_factory):
    """A studio serving a fresh root (prompts and tone manifests) on a free port, with the tiny model as its base."""
    from conftest import tone_set
    from moonlora.configs import StudioConfig
    from moonlora.studio.server import make_server

    root = tmp_path_factory.mktemp("studio-browser")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    tone_set(root / "data", "train", 12)
    tone_set(root / "data", "main", 4, seed0=50)
    server, sock, url, studio = make_server(StudioConfig(root=str(root), port=0, model=str(tiny_model_dir),
                                                         device="cpu"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the studio did not start"
    yield url, root, studio
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(chromium_or_skip, fed_clip):
    from playwright.sync_api import sync_playwright

    clip, _ = fed_clip
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={clip}", "--autoplay-policy=no-user-gesture-required",
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_or_skip, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, live):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors


def screenshot(page, name: str) -> None:
    folder = os.environ.get("MOONLORA_STUDIO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def record_for(page, toggle: str, live_mark: str, seconds: float) -> None:
    """Press record, wait until the browser records, let `seconds` of the fed clip in, press stop."""
    page.click(toggle)
    page.wait_for_selector(f"{live_mark}.on", timeout=10_000)
    page.wait_for_timeout(int(seconds * 1000))
    page.click(toggle)


def manifest_rows(folder: Path) -> list[dict]:
    path = folder / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_record_three_prompts_then_undo_one(page, live, fed_clip):
    url, root, _ = live
    _, seconds = fed_clip
    page.goto(url + "#record")
    page.fill("#rec-folder", "recordings/ann")
    page.fill("#rec-speaker", "ann")
    page.select_option("#rec-prompts", "prompts.txt")
    page.click("#rec-start")
    page.wait_for_selector("#rec-session:not([hidden])")
    assert page.text_content("#rec-prompt") == PROMPTS[0]
    for kept in (1, 2, 3):
        record_for(page, "#rec-toggle", "#rec-live", seconds)
        page.wait_for_function(f"document.querySelector('#rec-count').textContent === '{kept}'", timeout=30_000)
        if kept == 2:
            screenshot(page, "record")
    assert page.text_content("#rec-prompt") == "All prompts recorded."
    folder = root / "recordings" / "ann"
    rows = manifest_rows(folder)
    assert [(row["text"], row["speaker"]) for row in rows] == [(prompt, "ann") for prompt in PROMPTS]
    for row in rows:
        info = sf.info(str(folder / row["audio_filepath"]))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames / info.samplerate - seconds) <= 0.1 * seconds, (row, info.frames / 16000, seconds)
    page.click("#rec-undo")
    page.wait_for_function("document.querySelector('#rec-count').textContent === '2'")
    assert page.text_content("#rec-prompt") == PROMPTS[2]
    assert [row["text"] for row in manifest_rows(folder)] == list(PROMPTS[:2])
    assert sorted(p.name for p in (folder / "clips").iterdir()) == ["ann-0000.wav", "ann-0001.wav"]


def test_correction_view_saves_the_edited_text(page, live, fed_clip):
    url, root, _ = live
    _, seconds = fed_clip
    page.goto(url + "#correct")
    page.wait_for_selector("#cor-model option[value='base']", state="attached")
    page.fill("#cor-folder", "recordings/fixes")
    page.fill("#cor-speaker", "ann")
    record_for(page, "#cor-toggle", "#cor-live", seconds)
    page.wait_for_selector("#cor-save:not([disabled])", timeout=120_000)
    heard = page.text_content("#cor-hyp")
    page.fill("#cor-text", CLIP_TEXT)
    page.click("#cor-save")
    page.wait_for_function("document.querySelector('#cor-status').textContent.startsWith('Saved')", timeout=30_000)
    screenshot(page, "correct")
    rows = manifest_rows(root / "recordings" / "fixes")
    assert len(rows) == 1 and rows[0]["text"] == CLIP_TEXT and rows[0]["source"] == "correct"
    assert rows[0]["correction"] is True and heard != CLIP_TEXT  # the random tiny model cannot have been right
    assert (root / "recordings" / "fixes" / rows[0]["audio_filepath"]).is_file()


def test_an_experiment_started_from_the_form_shows_progress_finishes_and_shows_its_verdict(page, live):
    url, root, _ = live
    page.goto(url + "#train")
    page.fill("#tr-output_dir", "runs/from-form")
    page.fill("#tr-dataset_path", "data/train.jsonl")
    page.fill("#tr-manifest_path", "data/main.jsonl")
    page.fill("#tr-max_steps", "2")
    page.fill("#tr-learning_rate", "5e-3")
    page.fill("#tr-eval_interval", "1")
    page.fill("#tr-seed", "3")
    page.fill("#tr-extra", TRAIN_FLAGS)
    screenshot(page, "train")
    page.click("#train-start")
    row = "tr.run[data-path='runs/from-form']"
    page.wait_for_selector(f"{row} td.progress", timeout=120_000)  # the Runs view shows it while it runs
    page.wait_for_function(f"document.querySelector(\"{row} td.state\")?.textContent === 'finished'",
                           timeout=300_000)
    page.wait_for_function("['PASS', 'FAIL'].includes(document.querySelector('#run-overall').textContent)",
                           timeout=30_000)
    assert page.locator("#verdicts tbody tr").count() >= 4
    assert page.locator("#run-plots svg").count() == 3
    screenshot(page, "runs")
    from moonlora.runfolder import read_record

    record = read_record(root / "runs" / "from-form")
    assert record.status in ("success", "stopped_early") and record.training.steps == 2


def test_listen_view_plays_a_clip_and_shows_the_diff(page, live):
    url, root, _ = live
    if not (root / "runs" / "from-form" / "tuned").is_dir():
        pytest.skip("needs the run the form test trains")
    page.goto(url + "#listen")
    page.wait_for_selector("#listen-folder option[value='runs/from-form']", state="attached")
    page.select_option("#listen-folder", "runs/from-form")
    page.wait_for_selector("tr.clip audio")
    assert page.locator("tr.clip").count() == 4
    assert page.locator("tr.clip .hyp-tuned .diff span").count() > 0
    assert page.locator("tr.clip .hyp-tuned .d-sub, tr.clip .hyp-tuned .d-del, tr.clip .hyp-tuned .d-ins").count() > 0
    page.evaluate("document.querySelector('tr.clip audio').play()")
    page.wait_for_function("document.querySelector('tr.clip audio').currentTime > 0.2", timeout=15_000)
    screenshot(page, "listen")


def test_try_shows_base_and_adapted_transcripts_side_by_side(page, live, fed_clip):
    url, root, _ = live
    _, seconds = fed_clip
    if not (root / "runs" / "from-form" / "adapter").is_dir():
        pytest.skip("needs the run the form test trains")
    page.goto(url + "#try")
    page.wait_for_selector("#try-adapter option[value='runs/from-form']", state="attached")
    record_for(page, "#try-toggle", "#try-live", seconds)
    page.wait_for_selector("#try-out .card >> nth=1", timeout=120_000)
    cards = page.locator("#try-out .card")
    assert cards.count() == 2 and "decoded in" in cards.nth(1).text_content()
    screenshot(page, "try")
