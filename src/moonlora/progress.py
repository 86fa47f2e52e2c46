"""Progress of long loops: a tqdm bar on a terminal, plain lines in captured logs.

A bar redraws itself with carriage returns and escape codes, which turn a log written through
`> log 2>&1`, nohup or CI into noise. When stderr is not a terminal, `progress_bar` prints a
plain line instead: at the start, at about every 10% (or every 30 s, whichever comes first) and
at the end, such as "baseline val: 40/100 clips (40%), 12.3 s, ~18 s left".
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

LINE_STEPS = 10  # a plain line each time another tenth of the total is done ...
LINE_SECONDS = 30.0  # ... or this long after the last line, whichever comes first


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """What `progress_bar(..., enabled=False)` returns: accepts every call, prints nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """Progress as whole lines (no carriage return, no escape code), for logs and pipes."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0,
                 stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.total, self.desc, self.n = max(int(total), 0), desc, int(initial)
        self.units = unit if unit == "it" or unit.endswith("s") else unit + "s"
        self.stream = sys.stderr if stream is None else stream
        self.postfix: dict[str, object] = {}
        self._clock = clock
        self._started = self._last_time = clock()
        self._initial = self._last_step = self.n
        self._closed = False
        self._print()

    def _step(self, n: int) -> int:
        """Which tenth of the total `n` has reached."""
        return n * LINE_STEPS // self.total if self.total else 0

    def _line(self, now: float) -> str:
        percent = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.units} ({percent:.0f}%)"]
        elapsed, done = now - self._started, self.n - self._initial
        if self.n != self._initial or self._closed:
            parts.append(f"{elapsed:.1f} s")
        if done > 0 and self.n < self.total and not self._closed:
            parts.append(f"~{elapsed / done * (self.total - self.n):.0f} s left")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        return ", ".join(parts) + (", done" if self._closed else "")

    def _print(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self.stream.write(self._line(now) + "\n")
        self.stream.flush()
        self._last_time, self._last_step = now, self._step(self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if self.n < self.total and (self._step(self.n) > self._last_step or now - self._last_time >= LINE_SECONDS):
            self._print(now)  # the line at 100% is close()'s

    def set_postfix(self, **values) -> None:
        self.postfix = dict(values)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
                 stream: TextIO | None = None) -> Progress:
    """A progress display on `stream` (stderr): a tqdm bar on a terminal, plain lines otherwise.

    The object has `update(n)`, `set_postfix(**values)` and `close()`; call `close()` when done.
    """
    if not enabled:
        return NoProgress()
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream)
    return PlainProgress(total, desc, unit, initial=initial, stream=stream)
