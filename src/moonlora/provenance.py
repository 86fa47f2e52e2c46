"""Where a result came from: code revision, package versions, time."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("moonlora", "torch", "transformers", "peft", "accelerate", "jiwer", "whisper-normalizer", "soundfile")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict:
    source_dir = Path(__file__).resolve().parent
    sha = _git("rev-parse", "HEAD", cwd=source_dir)
    status = _git("status", "--porcelain", cwd=source_dir) if sha else None
    return {
        "git_sha": sha,
        "git_dirty": None if status is None else bool(status),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
