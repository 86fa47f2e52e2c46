"""The README's package map is generated from the tree, so it cannot name a module that does not exist."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "moonlora"
START, END = "<!-- package:start", "<!-- package:end -->"
STAGES = ("data", "model", "eval", "train", "verdict", "ship", "studio")
MAX_MODULES_PER_FOLDER = 15


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring (a package's __init__ for folders)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first if len(first) <= 160 else first.split(". ")[0].rstrip(".") + "."


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".py" and p.name != "__init__.py" or
                  p.is_dir() and (p / "__init__.py").exists())


def _name(path: Path) -> str:
    return path.name + "/" if path.is_dir() else path.stem


def _doc_of(path: Path) -> str:
    return _summary(path / "__init__.py" if path.is_dir() else path).replace("|", "\\|")


def package_markdown() -> str:
    """The package map: the top-level modules, then each stage folder and its modules, in pipeline order."""
    lines = ["| module | what it holds |", "| --- | --- |"]
    lines += [f"| `{p.stem}` | {_doc_of(p)} |" for p in _modules(PACKAGE) if p.is_file() and p.stem != "__main__"]
    for stage in STAGES:
        folder = PACKAGE / stage
        lines.append(f"| **`{stage}/`** | **{_doc_of(folder)}** |")
        lines += [f"| `{stage}/{_name(p)}` | {_doc_of(p)} |" for p in _modules(folder)]
    return "\n".join(lines) + "\n"


def test_readme_package_map_is_generated_from_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n", readme.index(START)) + 1
    written = readme[start:readme.index(END)]
    assert written == package_markdown(), (
        "README's package map is stale; paste the output of\n"
        "  uv run python -c 'import tests.test_architecture as t; print(t.package_markdown(), end=\"\")'\n"
        "between its markers")


def test_every_stage_folder_exists_and_stays_small():
    for stage in STAGES:
        modules = [p for p in _modules(PACKAGE / stage) if p.is_file()]
        assert modules, stage
        assert len(modules) <= MAX_MODULES_PER_FOLDER, (stage, len(modules))


def test_architecture_doc_names_only_existing_modules():
    import re
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for relative in re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)", doc):  # `model/ort.py` or `eval/decode.py:decode_clips`
        assert (PACKAGE / relative).exists() or (ROOT / relative).exists(), relative
