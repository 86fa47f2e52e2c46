"""A recording folder: prompts read aloud, kept as 16 kHz mono WAV clips and manifest rows; corrections too.

Layout (under the studio's root, claimed by the output policy as a moonlora `record` folder):
    prompts.json     the prompts of this folder (from a text file, one per line, or a domain template)
    clips/           SPEAKER-NNNN.wav (a prompt) or SPEAKER-cNNNN.wav (a correction), 16-bit PCM
    manifest.jsonl   one row per kept clip: audio_filepath (relative), duration, text, speaker, id,
                     prompt (its index; none for corrections), source (record | correct), and for a
                     correction: correction (whether the model was wrong) and model_hyp, model
Rows are checked by the manifest reader's own row parser (`data.manifest.parse_row`) before they are
kept, and the manifest is rewritten atomically, so a kill leaves the old or the new file. A folder
that exists without moonlora's `record` marker is never written into. Resume: the next prompt is the
first one without a row; undo removes the newest row and its clip.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from moonlora.configs import SAMPLE_RATE
from moonlora.data.manifest import Utterance, parse_row
from moonlora.data.text import has_words, normalize
from moonlora.errors import InputError, MissingInput
from moonlora.outputs import claim_output_dir, read_marker, write_bytes_atomic, write_json, write_text
from moonlora.studio.guard import under_root
from moonlora.studio.takes import Take

KIND = "record"
CLIPS_DIR = "clips"
MANIFEST = "manifest.jsonl"
PROMPTS = "prompts.json"
ENTRIES = (PROMPTS, CLIPS_DIR, MANIFEST)
MAX_PROMPTS = 10_000
FOLDER_LOCK = threading.Lock()  # one writer at a time: takes are short, and rows keep their order


class RecordError(InputError):
    """A recording folder, prompt list or take that cannot be used (one line, naming it)."""


def speaker_slug(speaker: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", speaker.strip().lower()).strip("-")
    if not slug:
        raise RecordError("speaker: give a name (letters or digits), it names the clips and the manifest rows")
    return slug[:40]


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingInput(f"{path}: no such prompt file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: unreadable prompt file ({error})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for number, prompt in enumerate(prompts, 1):
        if not has_words(normalize(prompt)):
            raise RecordError(f"{path}: prompt {number} ({prompt!r}) has no words to say; fix or remove it")
    if not prompts:
        raise RecordError(f"{path}: no prompts (one per line); write the sentences to record")
    return prompts[:MAX_PROMPTS]


def domain_prompts(domain: str, count: int, seed: int = 0) -> list[str]:
    from moonlora.data.synth.domains import DOMAINS

    if domain not in DOMAINS:
        raise RecordError(f"domain {domain!r}: one of {', '.join(DOMAINS)}")
    if not 1 <= count <= MAX_PROMPTS:
        raise RecordError(f"count must be 1..{MAX_PROMPTS}, got {count}")
    return DOMAINS[domain](count, random.Random(seed))


@dataclass(frozen=True)
class Folder:
    path: Path
    relative: str

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def prompts(self) -> list[str]:
        try:
            data = json.loads((self.path / PROMPTS).read_text(encoding="utf-8"))
            return [str(p) for p in data["prompts"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RecordError(f"{self.path / PROMPTS}: unreadable ({error}); start a new recording folder") from None

    def rows(self) -> list[dict]:
        """This folder's own rows, as written (the studio is their only writer)."""
        if not self.manifest.is_file():
            return []
        rows = []
        for number, line in enumerate(self.manifest.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise RecordError(f"{self.manifest}:{number}: not a JSON row; the studio did not write it "
                                      "this way, so it changes nothing here") from None
        return rows

    def write_rows(self, rows: list[dict]) -> None:
        write_text(self.manifest, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def open_folder(root: Path, relative: str) -> Folder:
    """An existing recording folder (moonlora's `record` marker) under the root."""
    path = under_root(root, relative)
    marker = read_marker(path) if path.is_dir() else None
    if marker is None or marker.get("kind") != KIND:
        raise RecordError(f"{relative}: not a moonlora recording folder; start one in an empty or new folder")
    return Folder(path, relative)


def start_folder(root: Path, relative: str, prompts: list[str]) -> tuple[Folder, bool]:
    """Resume the recording folder at `relative`, or claim a new (or empty) one with these prompts.

    Returns (folder, resumed). A resumed folder keeps its own prompts."""
    path = under_root(root, relative)
    if path.is_dir() and read_marker(path) is not None:
        return open_folder(root, relative), True
    with FOLDER_LOCK:
        claim_output_dir(path, "folder", KIND, ENTRIES, overwrite=False, require_empty=True)
        write_json(path / PROMPTS, {"prompts": prompts}, command=KIND)
        (path / CLIPS_DIR).mkdir(exist_ok=True)
    return Folder(path, relative), False


def state(folder: Folder) -> dict:
    prompts, rows = folder.prompts(), folder.rows()
    done = {row.get("prompt") for row in rows if row.get("source") == "record"}
    pending = [index for index in range(len(prompts)) if index not in done]
    return {"folder": folder.relative, "prompts": prompts, "recorded": sorted(i for i in done if isinstance(i, int)),
            "next": pending[0] if pending else None, "rows": len(rows), "last": rows[-1] if rows else None,
            "corrections": sum(1 for row in rows if row.get("correction"))}


def wav_bytes(take: Take) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, take.waveform, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def keep_take(folder: Folder, take: Take, row: dict, name: str) -> dict:
    """Write the clip and append its row, checked by the manifest reader's row parser; nothing kept on refusal."""
    clip = folder.path / CLIPS_DIR / f"{name}.wav"
    if clip.exists():
        raise RecordError(f"{clip}: already recorded; undo it first to record it again")
    write_bytes_atomic(clip, wav_bytes(take))
    row = {"audio_filepath": f"{CLIPS_DIR}/{clip.name}", "duration": round(take.seconds, 4), **row, "id": name}
    rows = folder.rows()
    parsed = parse_row(row, folder.path, str(folder.manifest), len(rows) + 1)
    if not isinstance(parsed, Utterance):
        clip.unlink(missing_ok=True)
        raise RecordError(f"the take was not kept: {parsed.reason}")
    folder.write_rows([*rows, row])
    return row


def record_prompt(folder: Folder, index: int, speaker: str, take: Take) -> dict:
    with FOLDER_LOCK:
        prompts = folder.prompts()
        if not 0 <= index < len(prompts):
            raise RecordError(f"prompt {index}: this folder has prompts 0..{len(prompts) - 1}")
        if any(row.get("prompt") == index and row.get("source") == "record" for row in folder.rows()):
            raise RecordError(f"prompt {index} is already recorded; undo it first to record it again")
        slug = speaker_slug(speaker)
        return keep_take(folder, take, {"text": prompts[index], "speaker": slug, "prompt": index,
                                        "source": "record"}, f"{slug}-{index:04d}")


def save_correction(folder: Folder, speaker: str, take: Take, text: str, model_hyp: str, model: str) -> dict:
    """The take as a training row with the edited text; `correction` says whether the model was wrong."""
    if not has_words(normalize(text)):
        raise RecordError("the corrected text has no words; type what was said")
    with FOLDER_LOCK:
        slug = speaker_slug(speaker)
        number = sum(1 for row in folder.rows() if row.get("source") == "correct")
        wrong = normalize(text) != normalize(model_hyp)
        return keep_take(folder, take, {"text": text.strip(), "speaker": slug, "source": "correct",
                                        "correction": wrong, "model_hyp": model_hyp, "model": model},
                         f"{slug}-c{number:04d}")


def undo(folder: Folder) -> dict:
    """Remove the newest row and its clip; returns the row removed."""
    with FOLDER_LOCK:
        rows = folder.rows()
        if not rows:
            raise RecordError(f"{folder.relative}: nothing to undo")
        last = rows[-1]
        clip = under_root(folder.path, str(last.get("audio_filepath", "")))
        folder.write_rows(rows[:-1])
        clip.unlink(missing_ok=True)
        return last
