"""`moonlora import` of Hugging Face datasets offline: a save_to_disk folder, parquet and arrow files, and the
hub path (streamed) with `load_dataset` standing in for the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import soundfile as sf

import import_corpora as corpora
from import_corpora import read_manifest, seconds
from moonlora.data.importers import hf
from moonlora.data.importers.layouts import detect
from moonlora.data.importers.run import ImportConfig, run_import
from moonlora.data.manifest import load_manifest
from moonlora.errors import MoonloraError

datasets = pytest.importorskip("datasets")


def imported(source, out, **settings):
    return run_import(ImportConfig(source=str(source), out_dir=str(out), **settings), progress=False)


def check_rows(manifest_path: Path, indices) -> None:
    rows = read_manifest(manifest_path)
    assert [row["id"] for row in rows] == [f"utt-{i}" for i in indices]
    assert [row["speaker"] for row in rows] == [corpora.UTTERANCES[i][2] for i in indices]
    assert [row["text"] for row in rows] == [corpora.UTTERANCES[i][0].lower() for i in indices]
    for row, index in zip(rows, indices):  # 24 kHz FLAC bytes, resampled
        assert row["duration"] == pytest.approx(seconds(index), abs=2e-3)
        info = sf.info(str(manifest_path.parent / row["audio_filepath"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert len(load_manifest(manifest_path).utterances) == len(indices)


def test_save_to_disk_dataset_dict(tmp_path):
    dataset = corpora.hf_dataset()
    datasets.DatasetDict({"train": dataset.select([0, 1, 2]), "test": dataset.select([3])}).save_to_disk(
        str(tmp_path / "disk"))
    assert detect(str(tmp_path / "disk")) == "hf-disk"
    result = imported(tmp_path / "disk", tmp_path / "out")
    assert result.format == "hf-disk" and result.text_mode == "lower"
    check_rows(tmp_path / "out" / "train.jsonl", [0, 1, 2])
    check_rows(tmp_path / "out" / "test.jsonl", [3])
    only = imported(tmp_path / "disk", tmp_path / "only", splits=("test",))
    assert list(only.splits) == ["test"]
    with pytest.raises(MoonloraError, match=r"no split 'dev' \(--split\); it has test, train"):
        imported(tmp_path / "disk", tmp_path / "none", splits=("dev",))


def test_parquet_files_split_by_shard_name_and_arrow(tmp_path):
    dataset = corpora.hf_dataset()
    (tmp_path / "pq" / "data").mkdir(parents=True)
    dataset.select([0, 1]).to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    dataset.select([2, 3]).to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    assert detect(str(tmp_path / "pq")) == "parquet"
    result = imported(tmp_path / "pq", tmp_path / "out")
    assert {name: split.clips for name, split in result.splits.items()} == {"test": 2, "train": 2}
    check_rows(tmp_path / "out" / "test.jsonl", [2, 3])
    single = imported(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet", tmp_path / "one")
    assert list(single.splits) == ["train"]
    dataset.select([1]).save_to_disk(str(tmp_path / "disk1"))
    (arrow,) = (tmp_path / "disk1").glob("*.arrow")
    result = imported(arrow, tmp_path / "arrow", text_column="text", speaker_column="speaker_id")
    assert result.format == "arrow" and sum(split.clips for split in result.splits.values()) == 1


def test_columns_given_and_a_row_without_audio(tmp_path):
    table = datasets.Dataset.from_dict({
        "sound": [{"bytes": corpora.wav_bytes(0), "path": None}, {"bytes": None, "path": None}],
        "words": ["CLEARED FOR TAKEOFF", "NOTHING"], "who": ["a", "b"]})
    table.to_parquet(str(tmp_path / "custom.parquet"))
    with pytest.raises(MoonloraError, match=r"no transcript column found among sound, words, who; name it with "
                                            r"--text-column"):
        imported(tmp_path / "custom.parquet", tmp_path / "out")
    result = imported(tmp_path / "custom.parquet", tmp_path / "out", audio_column="sound", text_column="words",
                      speaker_column="who")
    assert result.splits["custom"].clips == 1 and result.skipped_by_kind() == {"unreadable_audio": 1}
    assert "custom.parquet[1]" in result.skipped[0].origin


def test_hub_id_is_streamed_split_by_split(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return corpora.hf_dataset([2, 3] if split == "test" else [0]).to_iterable_dataset()

    monkeypatch.setattr(hf, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    result = imported("librispeech_asr", tmp_path / "out", config="clean", splits=("test",))
    assert calls == [("librispeech_asr", "clean", "test", True)] and result.format == "hub"
    check_rows(tmp_path / "out" / "test.jsonl", [2, 3])


def test_hub_unreachable_or_without_split_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(MoonloraError, match="needs --split"):
        imported("librispeech_asr", tmp_path / "out", config="clean")
    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    with pytest.raises(MoonloraError, match="the Hugging Face Hub is not reachable"):
        imported("librispeech_asr", tmp_path / "out", config="clean", splits=("test",))
    assert not (tmp_path / "out").exists()

    def failing(*args, **kwargs):
        raise ValueError("BuilderConfig 'cleen' not found.\nAvailable: ['clean', 'other']")

    monkeypatch.setattr(hf, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(MoonloraError, match=r"--config cleen, --split test.*BuilderConfig 'cleen' not found\. Avail"):
        imported("librispeech_asr", tmp_path / "out", config="cleen", splits=("test",))


def test_reading_audio_never_goes_through_torchcodec(tmp_path):
    corpora.hf_dataset([0]).save_to_disk(str(tmp_path / "disk"))
    sys.modules.pop("torchcodec", None)
    imported(tmp_path / "disk", tmp_path / "out")
    assert "torchcodec" not in sys.modules
