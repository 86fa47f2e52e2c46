"""The console script's entry: a Ctrl-C while moonlora's modules are still loading ends with the
same one line as a Ctrl-C later (`moonlora.cli.main` handles everything after start-up)."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from moonlora.cli import main as cli_main
    except KeyboardInterrupt:
        print("moonlora: interrupted", file=sys.stderr)
        return 130
    return cli_main()
