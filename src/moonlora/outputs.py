"""One output policy for every command that writes: refuse to overwrite, and with `--overwrite`
remove only what moonlora itself wrote.

- A folder moonlora writes carries a marker file (`.moonlora-output.json`) naming the command
  kind and the entries it wrote. `--overwrite` removes those entries and nothing else; a folder
  without the marker is never emptied.
- A single file moonlora writes carries a signature near its start (a `"written_by"` key in
  JSON, an HTML comment in Markdown/HTML). `--overwrite` replaces only a file that has it.
- Every write is atomic (temporary name, flush, fsync, rename), JSON is strict (no NaN), and a
  full disk or an unwritable path becomes a one-line `OutputError` naming the path.

Nothing here imports torch: `diagnose`, `decide` and `report` use it too.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from moonlora.errors import MoonloraError

MARKER = ".moonlora-output.json"
SIGNATURE = "written by moonlora"  # in the first SIGNATURE_WINDOW bytes of every single file we write
SIGNATURE_WINDOW = 1024


class OutputExists(MoonloraError, FileExistsError):
    """An output would replace earlier results."""


class OutputError(MoonloraError, ValueError):
    """An output path cannot be used or written (wrong kind, unwritable, disk full)."""


def signature(command: str) -> str:
    return f"{SIGNATURE} {command}"


def html_signature(command: str) -> str:
    """The first line of a Markdown or HTML file moonlora writes."""
    return f"<!-- {signature(command)} -->\n"


def written_by_moonlora(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(SIGNATURE_WINDOW)
    except OSError:
        return False
    return SIGNATURE.encode() in head


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("entries"), list) else None


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a writable folder (so mkdir and the write can succeed)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a folder; pick another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {ancestor} is not writable; pick another {flag}")


def check_output_file(path: str | Path, flag: str, overwrite: bool) -> Path:
    """Validate a single-file output before any work: refuse to replace a file unless it is moonlora's."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file path")
    if path.exists() and not overwrite:
        raise OutputExists(f"{flag} {path}: exists; pass --overwrite to replace it or pick another path")
    if path.exists() and not written_by_moonlora(path):
        raise OutputExists(f"{flag} {path}: exists and was not written by moonlora; refusing to replace it")
    _writable_parent(path, flag)
    return path


def check_output_dir(folder: str | Path, flag: str, kind: str, entries: Iterable[str], overwrite: bool,
                     require_empty: bool = False, ignore: Iterable[str] = ()) -> Path:
    """Validate an output folder before any work (nothing is created or removed here).

    Refused: a file at that path; a folder already holding any of `entries` (or, with
    `require_empty`, anything but `ignore`) unless `overwrite` and the folder carries moonlora's
    marker of the same kind.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder}: is a file, not a folder; pick another {flag}")
    if not folder.exists():
        _writable_parent(folder / "x", flag)
        return folder
    present = sorted(p.name for p in folder.iterdir() if p.name in set(entries) | {MARKER})
    occupied = bool(present) or (require_empty and any(p.name not in set(ignore) for p in folder.iterdir()))
    if occupied and not overwrite:
        what = ", ".join(present) if present else "other files"
        raise OutputExists(f"{flag} {folder}: already holds {what}; pass --overwrite to replace moonlora's "
                           f"results or pick another {flag}")
    if occupied:
        marker = read_marker(folder)
        if marker is None or marker.get("kind") != kind:
            found = f"a moonlora {marker.get('kind')} output" if marker else "no moonlora marker"
            raise OutputExists(f"{flag} {folder}: {found} ({MARKER}); --overwrite only replaces a moonlora {kind} "
                               f"folder, so nothing was removed; pick another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {folder}: not writable; pick another {flag}")
    return folder


def claim_output_dir(folder: str | Path, flag: str, kind: str, entries: Iterable[str], overwrite: bool,
                     require_empty: bool = False, ignore: Iterable[str] = ()) -> list[str]:
    """`check_output_dir`, then remove moonlora's earlier entries (overwrite) and write the marker.

    Returns the names removed. Files moonlora did not list are left where they are.
    """
    entries = tuple(entries)
    folder = check_output_dir(folder, flag, kind, entries, overwrite, require_empty, ignore)
    removed = []
    marker = read_marker(folder) if folder.exists() else None
    if overwrite and marker is not None:
        for name in dict.fromkeys([*marker["entries"], MARKER]):
            target = folder / Path(name).name  # marker entries are names inside the folder, nothing else
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            else:
                continue
            removed.append(target.name)
    make_dirs(folder, flag)
    write_json(folder / MARKER, {"kind": kind, "entries": list(entries),
                                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
               command=kind)
    return removed


def make_dirs(folder: Path, flag: str = "output") -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{flag} {folder}: cannot create the folder ({error.strerror})") from None


# --- atomic, strict writes -----------------------------------------------------------------------------------------


def finite_json(value):
    """The value with every non-finite float replaced by None (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def dumps_strict(value) -> str:
    return json.dumps(finite_json(value), indent=2, allow_nan=False, default=str) + "\n"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename: a reader sees the old or the new file."""
    path = Path(path)
    handle, temporary = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            handle = None
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise output_error(path, error, len(data)) from None
    finally:
        if handle is not None:
            os.close(handle)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def output_error(path: Path, error: OSError, needed_bytes: int | None = None) -> OutputError:
    if error.errno == errno.ENOSPC:
        need = f" (needs about {needed_bytes / 2**20:.1f} MiB)" if needed_bytes else ""
        return OutputError(f"{path.parent}: disk full while writing {path.name}{need}; free space and rerun")
    return OutputError(f"{path}: cannot write ({error.strerror or error})")


def write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, value: dict, command: str | None = None) -> None:
    """Strict, atomic JSON; with `command`, the object carries moonlora's signature."""
    if command is not None:
        value = {"written_by": signature(command), **value}
    write_text(path, dumps_strict(value))


def write_signed_text(path: Path, text: str, command: str) -> None:
    """Markdown or HTML with moonlora's signature as its first line."""
    write_text(path, html_signature(command) + text)
