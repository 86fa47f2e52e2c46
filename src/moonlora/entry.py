"""The console script's entry: a Ctrl-C or SIGTERM while moonlora's modules are still loading ends
with the same one line and exit code 130 as one later (`moonlora.cli.main` handles everything after
start-up)."""

from __future__ import annotations

import signal
import sys
import threading


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM terminates at once
    raise KeyboardInterrupt


def main() -> int:
    """SIGTERM is a KeyboardInterrupt from the first line (cli.main installs its own, then restores this one)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        try:
            from moonlora.cli import main as cli_main
        except KeyboardInterrupt:
            print("moonlora: interrupted", file=sys.stderr)
            return 130
        return cli_main()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
