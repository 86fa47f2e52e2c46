"""The studio at the HTTP level: what it refuses (paths out of the root, missing tokens, foreign hosts, big or bad
uploads) and what it keeps (recorded takes as 16 kHz WAV + manifest rows, undo, resume, corrections)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from moonlora.configs import StudioConfig  # noqa: E402
from moonlora.studio.guard import ACCESS_COOKIE, PathRefused, Tokens, under_root  # noqa: E402
from moonlora.studio.server import build_app  # noqa: E402

BASE_URL = "http://127.0.0.1:8765"


def client_for(root: Path, **settings) -> tuple[TestClient, object]:
    app, studio = build_app(StudioConfig(root=str(root), **settings))
    return TestClient(app, base_url=BASE_URL), studio


def token_headers(studio) -> dict:
    return {"X-Moonlora-Token": studio.tokens.session}


def tone(seconds: float, rate: int = 16000, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * (np.sin(2 * np.pi * 220 * t) + 0.07 * rng.standard_normal(t.size))).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def webm_opus_bytes(wave: np.ndarray, rate: int = 48000) -> bytes:
    """What Chromium's MediaRecorder sends: Opus in WebM (encoded here with PyAV's own FFmpeg)."""
    from fractions import Fraction

    import av

    frame_size = 960  # 20 ms at 48 kHz, one Opus frame
    wave = np.concatenate([wave, np.zeros(-len(wave) % frame_size, dtype=np.float32)])
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate, layout="mono")
        for start in range(0, len(wave), frame_size):
            frame = av.AudioFrame.from_ndarray(wave[start:start + frame_size].reshape(1, -1), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@pytest.fixture()
def root(tmp_path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "prompts.txt").write_text("# a comment\nclimb flight level two nine zero\n\nturn left heading one two "
                                        "zero\ncontact tower\n", encoding="utf-8")
    (folder / "inside.txt").write_text("inside", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-BYTES", encoding="utf-8")
    return folder


# --- paths ---------------------------------------------------------------------------------------------------------


def test_under_root_refuses_climbing_absolute_and_links_out(root):
    os.symlink(root.parent / "secret.txt", root / "out-link")
    os.symlink(root / "inside.txt", root / "in-link")
    assert under_root(root, "inside.txt") == (root / "inside.txt").resolve()
    assert under_root(root, "in-link") == (root / "inside.txt").resolve()
    for bad in ("../secret.txt", "a/../../secret.txt", "/etc/passwd", str(root.parent / "secret.txt"), "out-link",
                "x\0y", "..\\secret.txt"):
        with pytest.raises(PathRefused):
            under_root(root, bad)


def test_files_route_serves_only_under_the_root(root):
    os.symlink(root.parent / "secret.txt", root / "out-link")
    client, _ = client_for(root)
    assert client.get("/files/inside.txt").text == "inside"
    for path in ("/files/%2e%2e/secret.txt", "/files/sub/%2e%2e/%2e%2e/secret.txt", "/files/%2Fetc%2Fpasswd",
                 "/files/out-link"):
        response = client.get(path)
        assert response.status_code in (403, 404), path
        assert "TOP-SECRET-BYTES" not in response.text
    assert client.get("/files/out-link").status_code == 403
    assert client.get("/files/%2e%2e/secret.txt").status_code == 403
    assert client.get("/api/listen", params={"folder": "../"}).status_code == 403
    assert client.get("/api/listen", params={"folder": str(root)}).status_code == 403
    assert client.get("/api/run", params={"path": "/etc"}).status_code == 403


# --- tokens and hosts ----------------------------------------------------------------------------------------------


def test_state_changing_requests_need_the_session_token(root):
    client, studio = client_for(root)
    body = {"folder": "rec", "prompts_file": "prompts.txt", "speaker": "ann"}
    assert client.post("/api/record/start", json=body).status_code == 403
    assert client.post("/api/record/start", json=body, headers={"X-Moonlora-Token": "guess"}).status_code == 403
    evil = {**token_headers(studio), "Origin": "http://evil.example"}
    assert client.post("/api/record/start", json=body, headers=evil).status_code == 403
    assert not (root / "rec").exists()  # refused: nothing was written
    page = client.get("/").text
    assert studio.tokens.session in page  # only the studio's own page carries it
    assert client.post("/api/record/start", json=body, headers=token_headers(studio)).status_code == 200
    assert (root / "rec" / "prompts.json").is_file()


def test_a_foreign_host_header_is_refused(root):
    client, _ = client_for(root)
    response = client.get("/api/runs", headers={"Host": "attacker.example:8765"})
    assert response.status_code == 400 and "attacker.example" in response.json()["error"]
    assert client.get("/api/runs", headers={"Host": "localhost:8765"}).status_code == 200


def test_another_host_needs_the_access_token_on_every_request(root):
    tokens = Tokens.for_host(remote=True)
    app, studio = build_app(StudioConfig(root=str(root), host="192.0.2.7"), tokens)
    client = TestClient(app, base_url="http://192.0.2.7:8765")
    assert tokens.access and studio.config.remote
    assert client.get("/").status_code == 403
    assert client.get("/files/inside.txt").status_code == 403
    assert client.get("/api/runs", headers={"X-Moonlora-Access": "wrong"}).status_code == 403
    assert client.get("/api/runs", headers={"X-Moonlora-Access": tokens.access}).status_code == 200
    first = client.get(f"/?access={tokens.access}", follow_redirects=False)
    assert first.status_code == 303 and ACCESS_COOKIE in first.headers["set-cookie"]
    client.cookies.set(ACCESS_COOKIE, tokens.access)
    assert client.get("/files/inside.txt").text == "inside"
    assert client.post("/api/record/undo", json={"folder": "x"}).status_code == 403  # still needs the session token


def test_loopback_is_the_default_and_needs_no_access_token():
    config = StudioConfig()
    assert config.host == "127.0.0.1" and not config.remote
    assert Tokens.for_host(config.remote).access is None


# --- recording -----------------------------------------------------------------------------------------------------


def start(client, studio, folder="rec", speaker="ann"):
    response = client.post("/api/record/start", json={"folder": folder, "prompts_file": "prompts.txt",
                                                       "speaker": speaker}, headers=token_headers(studio))
    assert response.status_code == 200, response.text
    return response.json()


def take(client, studio, data: bytes, prompt: int, folder="rec", kind="audio/webm"):
    return client.post("/api/record/take", params={"folder": folder, "prompt": prompt, "speaker": "ann"},
                       content=data, headers={**token_headers(studio), "Content-Type": kind})


def manifest_rows(folder: Path) -> list[dict]:
    path = folder / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_takes_become_16k_wav_clips_and_manifest_rows_with_undo_and_resume(root):
    client, studio = client_for(root)
    state = start(client, studio)
    assert state["prompts"] == ["climb flight level two nine zero", "turn left heading one two zero", "contact tower"]
    assert state["next"] == 0 and not state["resumed"]
    webm = take(client, studio, webm_opus_bytes(tone(1.5, 48000)), 0)
    assert webm.status_code == 200, webm.text
    wav = take(client, studio, wav_bytes(tone(2.0, 44100), 44100), 1, kind="audio/wav")
    assert wav.status_code == 200, wav.text
    rows = manifest_rows(root / "rec")
    assert [(r["id"], r["text"], r["speaker"], r["prompt"]) for r in rows] == [
        ("ann-0000", "climb flight level two nine zero", "ann", 0), ("ann-0001", "turn left heading one two zero", "ann", 1)]
    for row, seconds in zip(rows, (1.5, 2.0)):
        info = sf.info(str(root / "rec" / row["audio_filepath"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - seconds) < 0.05 and abs(row["duration"] - info.frames / 16000) < 1e-3
    from moonlora.data.manifest import load_manifest

    assert len(load_manifest(root / "rec" / "manifest.jsonl").utterances) == 2  # the one manifest reader takes them
    again = take(client, studio, wav_bytes(tone(1.0)), 1, kind="audio/wav")
    assert again.status_code == 400 and "already recorded" in again.json()["error"]
    undone = client.post("/api/record/undo", json={"folder": "rec"}, headers=token_headers(studio)).json()
    assert undone["removed"]["id"] == "ann-0001" and undone["next"] == 1 and undone["rows"] == 1
    assert not (root / "rec" / "clips" / "ann-0001.wav").exists()
    resumed = start(client, studio)  # a new session in the same folder resumes where it stopped
    assert resumed["resumed"] and resumed["next"] == 1 and resumed["rows"] == 1


@pytest.mark.parametrize("data, kind, reason", [
    (b"", "audio/webm", "empty"),
    (b"this is not audio at all" * 40, "audio/webm", "not audio"),
    (wav_bytes(tone(1.0, 8000), 8000), "audio/wav", "8000 Hz"),
    (wav_bytes(tone(0.2)), "audio/wav", "too short"),
    (wav_bytes(tone(1.0, amplitude=0.001)), "audio/wav", "too quiet"),
    (wav_bytes(np.clip(tone(1.0, amplitude=3.0), -1, 1)), "audio/wav", "clipped"),
])
def test_bad_takes_are_refused_with_the_reason_and_change_nothing(root, data, kind, reason):
    client, studio = client_for(root)
    start(client, studio)
    before = sorted(p.name for p in (root / "rec").rglob("*"))
    response = take(client, studio, data, 0, kind=kind)
    assert response.status_code == 400 and reason in response.json()["error"], response.text
    assert sorted(p.name for p in (root / "rec").rglob("*")) == before
    assert manifest_rows(root / "rec") == []


def test_uploads_over_the_limit_are_refused_before_anything_is_written(root):
    client, studio = client_for(root, max_upload_mb=0.5)
    start(client, studio)
    big = wav_bytes(tone(20.0))  # 640 KB > 0.5 MiB
    response = take(client, studio, big, 0, kind="audio/wav")
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams
        yield big[:300_000]
        yield big[300_000:]

    streamed = take(client, studio, chunks(), 0, kind="audio/wav")
    assert streamed.status_code == 413
    assert manifest_rows(root / "rec") == [] and list((root / "rec" / "clips").iterdir()) == []


def test_a_folder_moonlora_did_not_write_is_never_recorded_into(root):
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    client, studio = client_for(root)
    response = client.post("/api/record/start", json={"folder": "mine", "prompts_file": "prompts.txt"},
                           headers=token_headers(studio))
    assert response.status_code == 400 and "mine" in response.json()["error"]
    assert sorted(p.name for p in (root / "mine").iterdir()) == ["notes.txt"]


# --- the command ---------------------------------------------------------------------------------------------------


def start_command(root: Path, *flags: str):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "moonlora", "studio", "--root", str(root), "--port", "0",
                                *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [process.stdout.readline() for _ in range(3 if flags else 2)]
    assert "http://" in lines[0], lines
    return process, lines[0][lines[0].index("http://"):].split()[0], lines


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_command_serves_on_loopback_and_stops_cleanly_on_ctrl_c(root):
    import signal

    process, url, _ = start_command(root)
    try:
        assert url.startswith("http://127.0.0.1:")
        status, body = get(url + "api/runs")
        assert status == 200 and json.loads(body)["runs"] == []
        assert "<script src=\"/static/app.js\">" in get(url)[1] and get(url + "static/app.js")[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def test_another_host_prints_the_access_token_that_every_request_needs(root):
    process, url, lines = start_command(root, "--host", "127.0.0.2")  # loopback, but not the default address
    try:
        token = url.split("access=")[1]
        assert token in lines[1] and "access token" in lines[1]
        bare = url.split("?")[0]
        assert get(bare + "api/runs")[0] == 403
        assert get(bare + "api/runs", {"X-Moonlora-Access": token})[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_studio_loads_no_model_stack_until_it_transcribes():
    import subprocess
    import sys

    code = ("import json, sys, moonlora.studio.server\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
            "print(json.dumps(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
