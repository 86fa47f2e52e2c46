"""Markdown for every table moonlora writes (reports, diagnose, compare, the README's commands).

One escaper, so a transcript with a pipe or an angle bracket reads the same in every file.
"""

from __future__ import annotations


def text(value) -> str:
    """One table cell or paragraph: one line, pipes escaped, no raw HTML tags."""
    line = " ".join(str(value).split())
    return line.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def code(value) -> str:
    """Inline code in a table cell (a command line), pipes escaped."""
    line = " ".join(str(value).split()).replace("|", "\\|")
    return f"`` {line} ``" if "`" in line else f"`{line}`"


def table(columns, rows) -> list[str]:
    """A table's lines; rows are lists of cells already escaped (or whole "| ... |" strings)."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    return lines + [row if isinstance(row, str) else "| " + " | ".join(row) + " |" for row in rows]


def short(value, limit: int = 160) -> str:
    """One line, cut to `limit` characters with "..." when longer."""
    line = " ".join(str(value).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def ci_cell(result) -> str:
    """A delta with its 95% CI: "-0.8759 [-0.9642, -0.7931]" (any result with delta, ci_low, ci_high)."""
    return f"{result.delta:+.4f} [{result.ci_low:+.4f}, {result.ci_high:+.4f}]"
