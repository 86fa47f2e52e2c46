"""One output policy for every command that writes: refuse to overwrite, and with `--overwrite`
remove only what moonlora itself wrote.

- A folder moonlora writes carries a marker file (`.moonlora-output.json`, signed) naming the
  command kind and the entries it wrote. `--overwrite` removes those entries and nothing else,
  and trusts the marker only when it is a plain signed file of the same command kind whose
  every entry is a plain name from that command's own list (no separators, not `.`, `..` or
  empty) and no listed entry is a link; otherwise nothing is removed. A folder without the
  marker is never emptied.
- A single file moonlora writes opens with a signature naming the command (a first
  `"written_by"` key in JSON, an HTML comment in Markdown/HTML). `--overwrite` replaces only a
  regular file signed by the same command.
- An output path is proven by doing: the missing folders and a scratch file are created and
  removed again before any work (root passes every access test, so asking is not enough).
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
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from moonlora.errors import MoonloraError

MARKER = ".moonlora-output.json"
SIGNATURE = "written by moonlora"  # opens every single file we write, followed by the command's name
SIGNATURE_WINDOW = 1024
COMMAND_NAME = rb"([a-z][a-z0-9_-]*)"
SIGNED_OPENINGS = (re.compile(rb"<!-- " + SIGNATURE.encode() + rb" " + COMMAND_NAME + rb" -->\n"),
                   re.compile(rb'\{\n  "written_by": "' + SIGNATURE.encode() + rb" " + COMMAND_NAME + rb'"[,\n]'))
PROBE_PREFIX = ".moonlora-probe-"


class OutputExists(MoonloraError, FileExistsError):
    """An output would replace earlier results."""


class OutputError(MoonloraError, ValueError):
    """An output path cannot be used or written (wrong kind, unwritable, disk full)."""


def signature(command: str) -> str:
    return f"{SIGNATURE} {command}"


def html_signature(command: str) -> str:
    """The first line of a Markdown or HTML file moonlora writes."""
    return f"<!-- {signature(command)} -->\n"


def signed_by(path: Path) -> str | None:
    """The moonlora command whose signature opens the regular file `path`, else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            head = handle.read(SIGNATURE_WINDOW)
    except OSError:
        return None
    for opening in SIGNED_OPENINGS:
        match = opening.match(head)
        if match:
            return match.group(1).decode()
    return None


def written_by_moonlora(path: Path) -> bool:
    return signed_by(path) is not None


def plain_name(name) -> bool:
    """A file name inside one folder: no separators, not `.`, `..` or empty."""
    separators = {"/", "\\", "\0", os.sep, os.altsep or "/"}
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(separator in name for separator in separators))


def read_marker(folder: Path) -> dict | None:
    """The folder's marker as written (a signed regular file holding a kind and a list of entries), else None."""
    marker_path = Path(folder) / MARKER
    if signed_by(marker_path) is None:
        return None
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("entries"), list):
        return None
    if not isinstance(marker.get("kind"), str) or marker.get("written_by") != signature(marker["kind"]):
        return None
    return marker


def marked_entries(folder: Path, flag: str, kind: str, known: Iterable[str]) -> list[str]:
    """The entries the folder's marker lists, when it is moonlora's marker of `kind` listing only
    plain names from `known` (the command's own list) and none of them is a link; else refused."""
    marker = read_marker(folder)
    refused = f"--overwrite only replaces a moonlora {kind} folder, so nothing was removed; pick another {flag}"
    if marker is None:
        raise OutputExists(f"{flag} {folder}: no moonlora marker ({MARKER}); {refused}")
    if marker["kind"] != kind:
        raise OutputExists(f"{flag} {folder}: a moonlora {marker['kind']} output ({MARKER}); {refused}")
    foreign = [name for name in marker["entries"] if not plain_name(name) or name not in set(known)]
    if foreign:
        raise OutputExists(f"{flag} {folder}: its marker ({MARKER}) lists {foreign[0]!r}, not a name moonlora {kind} "
                           f"writes; {refused}")
    links = [name for name in marker["entries"] if (folder / name).is_symlink()]
    if links:
        raise OutputExists(f"{flag} {folder}: {links[0]} is a link, which moonlora never writes; {refused}")
    return list(dict.fromkeys(marker["entries"]))


# --- proving a path by creating it -----------------------------------------------------------------------------------


def missing_folders(folder: Path) -> list[Path]:
    """The folders from the nearest existing ancestor down to `folder` that do not exist yet, top first."""
    missing = []
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def create_folders(folders: list[Path], flag: str, shown: Path) -> list[Path]:
    """Create `folders` (top first); on failure remove the ones created and refuse."""
    created = []
    for folder in folders:
        try:
            folder.mkdir()
        except OSError as error:
            remove_created(created)
            raise OutputError(f"{flag} {shown}: cannot create the folder {folder} ({error.strerror or error}); "
                              f"pick another {flag}") from None
        created.append(folder)
    return created


def remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass  # something else put a file there meanwhile: leave it


def prove_folder(folder: Path, flag: str, shown: Path) -> None:
    """Create the missing part of `folder` and a scratch file in it, then remove both: the path is
    proven usable by doing (root passes every access test), and nothing is left behind."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {shown}: {ancestor} is a file, not a folder; pick another {flag}")
    created = create_folders(missing_folders(folder), flag, shown)
    try:
        handle, scratch = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
        os.close(handle)
        os.unlink(scratch)
    except OSError as error:
        raise OutputError(f"{flag} {shown}: {folder} is not writable ({error.strerror or error}); "
                          f"pick another {flag}") from None
    finally:
        remove_created(created)


def check_output_file(path: str | Path, flag: str, overwrite: bool, command: str) -> Path:
    """Validate a single-file output before any work: replace only a regular file the same
    moonlora `command` wrote, and prove the folder it goes in by writing there."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{flag} {path}: is a link; moonlora does not write through links, pick another {flag}")
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file path")
    if path.exists() and not overwrite:
        raise OutputExists(f"{flag} {path}: exists; pass --overwrite to replace it or pick another path")
    if path.exists():
        refuse_foreign_file(path, flag, command)
    prove_folder(path.parent, flag, path)
    return path


def refuse_foreign_file(path: Path, flag: str, command: str) -> None:
    writer = signed_by(path)
    if writer is None:
        raise OutputExists(f"{flag} {path}: exists and was not written by moonlora; refusing to replace it")
    if writer != command:
        raise OutputExists(f"{flag} {path}: was written by moonlora {writer}, not by {command}; refusing to "
                           f"replace it, pick another {flag}")


def check_output_dir(folder: str | Path, flag: str, kind: str, entries: Iterable[str], overwrite: bool,
                     require_empty: bool = False, ignore: Iterable[str] = (), known: Iterable[str] | None = None
                     ) -> Path:
    """Validate an output folder before any work (what the proof creates is removed again).

    Refused: a file at that path; a folder already holding any of `entries` (or, with
    `require_empty`, anything but `ignore`) unless `overwrite` and the folder carries moonlora's
    marker of the same kind listing only names from `known` (the command's own list, by default
    `entries`) and every such entry present.
    """
    folder = Path(folder)
    entries = tuple(entries)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder}: is a file, not a folder; pick another {flag}")
    if not folder.exists():
        prove_folder(folder, flag, folder)
        return folder
    names = {p.name for p in folder.iterdir()}
    present = sorted(names & {*entries, MARKER})
    occupied = bool(present) or (require_empty and bool(names - set(ignore)))
    if occupied and not overwrite:
        what = ", ".join(present) if present else "other files"
        raise OutputExists(f"{flag} {folder}: already holds {what}; pass --overwrite to replace moonlora's "
                           f"results or pick another {flag}")
    if occupied:
        listed = marked_entries(folder, flag, kind, entries if known is None else known)
        unlisted = sorted(set(present) - {*listed, MARKER})
        if unlisted:
            raise OutputExists(f"{flag} {folder}: holds {unlisted[0]}, which its marker ({MARKER}) does not list; "
                               f"--overwrite only replaces what moonlora wrote, so nothing was removed; "
                               f"pick another {flag}")
    prove_folder(folder, flag, folder)
    return folder


def claim_output_dir(folder: str | Path, flag: str, kind: str, entries: Iterable[str], overwrite: bool,
                     require_empty: bool = False, ignore: Iterable[str] = (), known: Iterable[str] | None = None
                     ) -> list[str]:
    """`check_output_dir`, then remove moonlora's earlier entries (overwrite) and write the marker.

    Returns the names removed. Files moonlora did not list are left where they are.
    """
    entries = tuple(entries)
    folder = check_output_dir(folder, flag, kind, entries, overwrite, require_empty, ignore, known)
    removed = []
    if overwrite and read_marker(folder) is not None:
        for name in [*marked_entries(folder, flag, kind, entries if known is None else known), MARKER]:
            if remove_entry(folder / name, flag):
                removed.append(name)
    make_dirs(folder, flag)
    write_json(folder / MARKER, {"kind": kind, "entries": list(entries),
                                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
               command=kind)
    return removed


def remove_entry(target: Path, flag: str) -> bool:
    """Remove one of moonlora's earlier entries (a folder with what it holds); False when absent."""
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            return False
    except OSError as error:
        raise OutputError(f"{flag} {target.parent}: cannot remove moonlora's earlier {target.name} "
                          f"({error.strerror or error}); remove it by hand or pick another {flag}") from None
    return True


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
