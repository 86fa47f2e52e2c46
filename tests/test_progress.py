import io

import pytest

from moonlora.progress import LINE_SECONDS, PlainProgress, progress_bar


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = progress_bar(100, "baseline val", unit="clip", stream=stream)
    for _ in range(25):
        bar.update(4)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # a second close prints nothing
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "baseline val: 0/100 clips (0%)"
    assert lines[-1].startswith("baseline val: 100/100 clips (100%), ") and lines[-1].endswith(", loss=0.1234, done")
    counts = [line.split(": ")[1].split("/")[0] for line in lines]
    assert counts == ["0", "12", "20", "32", "40", "52", "60", "72", "80", "92", "100"]  # each tenth once


def test_a_line_every_tenth_with_uneven_batches():
    stream = io.StringIO()
    bar = progress_bar(100, "decode", unit="clip", stream=stream)
    for _ in range(6):
        bar.update(16)  # 16, 32, 48, 64, 80, 96: each crosses a tenth
    bar.update(4)
    bar.close()
    counts = [line.split(": ")[1].split("/")[0] for line in stream.getvalue().splitlines()]
    assert counts == ["0", "16", "32", "48", "64", "80", "96", "100"]


def test_slow_progress_prints_every_30_seconds():
    stream, clock = io.StringIO(), FakeClock()
    bar = PlainProgress(1000, "training", unit="step", initial=200, stream=stream, clock=clock)
    clock.now += LINE_SECONDS - 1
    bar.update(1)  # 201: same tenth, not yet 30 s
    clock.now += 2
    bar.update(1)  # 202: 31 s since the start line
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "training: 200/1000 steps (20%)"
    assert lines[1].startswith("training: 202/1000 steps (20%), 31.0 s, ~")  # with time left
    assert lines[2] == "training: 202/1000 steps (20%), 31.0 s, done"
    assert len(lines) == 3


def test_disabled_prints_nothing():
    stream = io.StringIO()
    bar = progress_bar(10, "quiet", enabled=False, stream=stream)
    bar.update(5)
    bar.set_postfix(loss=1)
    bar.close()
    assert stream.getvalue() == ""


def test_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    stream = TerminalStream()
    bar = progress_bar(10, "tty", unit="clip", stream=stream)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "\r" in stream.getvalue()


@pytest.mark.parametrize("total", [0, 1])
def test_tiny_totals(total):
    stream = io.StringIO()
    bar = progress_bar(total, "tiny", stream=stream)
    bar.update(total)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"tiny: 0/{total} it ({0 if total else 100}%)" and lines[-1].endswith(", done")
    assert len(lines) == 2
