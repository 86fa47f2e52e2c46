"""Hugging Face datasets: a `save_to_disk` folder, parquet or arrow files, or a hub id with --config/--split.

Audio columns are read with `Audio(decode=False)` (bytes or a path), never through `datasets`'
own decoding (torchcodec, which needs FFmpeg libraries a fresh machine lacks): the bytes are
decoded by `items.decode`, one row at a time when its turn comes. `datasets` is imported here
only, so the rest of moonlora never pays for it.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from moonlora.data.importers.items import AudioRef, Item, Skip, clean_text, safe_name
from moonlora.data.importers.layouts import (AUDIO_COLUMNS, ID_COLUMNS, SPEAKER_COLUMNS, TEXT_COLUMNS, Columns, Source,
                                             audio_ref, pick)
from moonlora.data.audio import AudioError
from moonlora.errors import InputError, MoonloraError, one_line

SHARD_NAME = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")  # the hub's data/test-00000-of-00001.parquet


class DatasetView:
    """A `datasets.Dataset` with its audio columns undecoded."""

    def __init__(self, dataset) -> None:
        from datasets import Audio

        self.audio_columns = [name for name, kind in dataset.features.items() if isinstance(kind, Audio)]
        for name in self.audio_columns:
            dataset = dataset.cast_column(name, Audio(decode=False))
        self.dataset = dataset
        self.names = list(dataset.column_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def column(self, name: str) -> list:
        return list(self.dataset[name])

    def value(self, index: int, name: str):
        return self.dataset[index][name]


class ArrowView:
    """A pyarrow table; its audio columns are those the Hugging Face features metadata marks as Audio, else
    structs holding `bytes`."""

    def __init__(self, table) -> None:
        import pyarrow as pa

        self.table, self.names = table, list(table.column_names)
        features = {}
        metadata = (table.schema.metadata or {}).get(b"huggingface")
        if metadata:
            try:
                features = json.loads(metadata).get("info", {}).get("features", {}) or {}
            except (ValueError, AttributeError):
                features = {}
        self.audio_columns = [name for name in self.names
                              if isinstance(features.get(name), dict) and features[name].get("_type") == "Audio"]
        if not self.audio_columns:
            self.audio_columns = [field.name for field in table.schema
                                  if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0]

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()

    def value(self, index: int, name: str):
        return self.table.column(name)[index].as_py()


def _fetch(view, index: int, column: str, base: Path, origin: str) -> AudioRef:
    ref = audio_ref(view.value(index, column), base)
    if isinstance(ref, str):
        raise AudioError(f"{origin}: {ref}")
    return ref


def items_from_view(view, split: str, where: str, base: Path, columns: Columns, source: Source) -> None:
    """One item per row; the audio is read when the row's turn comes."""
    audio_col = pick(view.names, columns.audio, (*view.audio_columns, *AUDIO_COLUMNS), "audio", where, "--audio-column")
    text_col = pick(view.names, columns.text, TEXT_COLUMNS, "transcript", where, "--text-column")
    speaker_col = pick(view.names, columns.speaker, SPEAKER_COLUMNS, "speaker", where, "--speaker-column",
                       required=False)
    id_col = pick(view.names, None, ID_COLUMNS, "id", where, "", required=False)
    texts = view.column(text_col)
    speakers = view.column(speaker_col) if speaker_col else [None] * len(texts)
    ids = view.column(id_col) if id_col else [None] * len(texts)
    for index, (text, speaker, uid) in enumerate(zip(texts, speakers, ids)):
        origin = f"{where}[{index}]"
        fetch = functools.partial(_fetch, view, index, audio_col, base, origin)
        source.items.append(Item(split, str(uid) if uid not in (None, "") else f"{index:06d}", clean_text(text),
                                 None if speaker in (None, "") else str(speaker), origin, AudioRef(fetch=fetch)))


def read_disk(root: Path, columns: Columns, splits: tuple[str, ...] | None) -> Source:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (memory-mapped, no cache)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(root))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"{root}: not a readable save_to_disk folder ({one_line(error)})") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or root.name): loaded}
    source = Source(str(root), "hf-disk")
    for name in _chosen(parts, splits, root):
        items_from_view(DatasetView(parts[name]), safe_name(name), f"{root}[{name}]", root, columns, source)
    return source


def _chosen(parts: dict, splits: tuple[str, ...] | None, where) -> list[str]:
    if not splits:
        return sorted(parts)
    unknown = [split for split in splits if split not in parts]
    if unknown:
        raise InputError(f"{where}: no split {unknown[0]!r} (--split); it has {', '.join(sorted(parts))}")
    return list(splits)


def _split_of(path: Path) -> str:
    match = SHARD_NAME.match(path.stem)
    if match:
        return match["split"]
    return path.parent.name if path.stem.isdigit() else path.stem


def _read_table(path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            return pq.read_table(str(path))
        with pa.memory_map(str(path)) as stream:
            try:
                return pa.ipc.open_stream(stream).read_all()
            except pa.ArrowInvalid:
                stream.seek(0)
                return pa.ipc.open_file(stream).read_all()
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not a readable {kind} file ({one_line(error)})") from None


def read_files(path: Path, kind: str, columns: Columns, splits: tuple[str, ...] | None) -> Source:
    """Parquet or arrow files (one file, or a folder of them): one split per shard-name prefix
    (`test-00000-of-00002.parquet`), else per file name."""
    import pyarrow as pa

    files = [path] if path.is_file() else sorted(path.rglob(f"*.{kind}"))
    groups: dict[str, list[Path]] = {}
    for file in files:
        groups.setdefault(_split_of(file), []).append(file)
    source = Source(str(path), kind)
    for name in _chosen(groups, splits, path):
        tables = [_read_table(file, kind) for file in groups[name]]
        try:
            table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        except pa.ArrowException as error:
            raise InputError(f"{groups[name][0].parent}: the {name} files do not share one schema "
                             f"({one_line(error)})") from None
        base = groups[name][0].parent
        items_from_view(ArrowView(table), safe_name(name), f"{groups[name][0]}" if len(tables) == 1 else f"{base}/{name}",
                        base, columns, source)
    return source


def hub_reachable() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


class RowsView:
    """Rows streamed from the hub, held in memory (the split's encoded audio included)."""

    def __init__(self, rows: list[dict], audio_columns: list[str]) -> None:
        self.rows, self.audio_columns = rows, audio_columns
        self.names = list(rows[0]) if rows else []

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        return [row.get(name) for row in self.rows]

    def value(self, index: int, name: str):
        return self.rows[index].get(name)


def read_hub(name: str, config: str | None, splits: tuple[str, ...] | None, columns: Columns) -> Source:
    """A dataset on the Hugging Face Hub (`librispeech_asr --config clean --split test`): needs the network.

    Streamed, so only the split's own files are fetched (a plain `load_dataset` downloads every split of the
    configuration), and held in memory while importing: for a split larger than memory, download its parquet
    files and import those."""
    if not splits:
        raise InputError(f"{name}: a hub dataset needs --split (for example --split test)")
    if not hub_reachable():
        raise InputError(f"cannot load the dataset '{name}': the Hugging Face Hub is not reachable; run this import "
                         "where it is, or import a local save_to_disk folder or parquet files")
    import datasets

    source = Source(name, "hub")
    for split in splits:
        try:
            stream = datasets.load_dataset(name, config, split=split, streaming=True)
            audio_columns = [key for key, kind in (stream.features or {}).items() if isinstance(kind, datasets.Audio)]
            for key in audio_columns:
                stream = stream.cast_column(key, datasets.Audio(decode=False))
            rows = list(stream)
        except MoonloraError:
            raise
        except Exception as error:  # the hub's many failure types: one line naming the id, config and split
            raise InputError(f"cannot load the dataset '{name}' (--config {config}, --split {split}) from the Hugging "
                             f"Face Hub ({one_line(error)}); check the id, --config and --split") from None
        items_from_view(RowsView(rows, audio_columns), safe_name(split), f"{name}[{split}]", Path.cwd(), columns,
                        source)
    return source
