"""What every command line here shares: one-line argument errors, range-checked numbers, and
progress on stderr for the steps that take seconds or minutes.

Progress goes to stderr so that stdout stays the result (text or ``--json``). On a terminal
a step with many parts is a tqdm bar; anywhere else (a log file, CI, a pipe) it is a plain
line every few seconds, because a bar redrawn with carriage returns is unreadable there.
``--quiet`` silences all of it; errors are never silenced.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its error as one line, ``error: ...``, exit status 2.

    argparse prints the usage block before the error; the project's rule is one line per
    bad input, so the usage is left to ``--help``, which the line points to.
    """

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (seconds, for instance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress on stderr (errors are still printed)")


def seconds(elapsed: float) -> str:
    """``12.3 s`` or ``2 min 05 s``."""
    if elapsed < 60:
        return f"{elapsed:.1f} s"
    minutes, rest = divmod(round(elapsed), 60)
    return f"{minutes} min {rest:02d} s"


class Progress:
    """Status of long steps on stderr; nothing at all when ``quiet``.

    Parameters
    ----------
    quiet
        Print nothing.
    stream
        Where to print (default: ``sys.stderr`` at the time of printing, so a test's
        captured stderr is honoured).
    interval
        Seconds between the plain lines of a bar when ``stream`` is not a terminal.
    """

    def __init__(self, quiet: bool = False, stream=None, interval: float = 5.0):
        self.quiet = quiet
        self._stream = stream
        self.interval = interval

    @property
    def stream(self):
        return self._stream or sys.stderr

    @property
    def terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def note(self, text: str) -> None:
        """One status line."""
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, text: str, expect: str = ""):
        """``text (expect)...`` when the step starts and ``text: done in N s`` when it ends
        (not when it fails: the error says that)."""
        self.note(f"{text}{f' ({expect})' if expect else ''}...")
        start = time.perf_counter()
        yield
        self.note(f"{text}: done in {seconds(time.perf_counter() - start)}")

    def bar(self, total: int, desc: str, unit: str = "step") -> _Bar:
        """Progress over ``total`` parts: ``bar.update(postfix)`` after each, then
        ``bar.close()`` (or use it as a context manager)."""
        if self.quiet:
            return _Bar()
        if self.terminal:
            from tqdm import tqdm

            return _TqdmBar(tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                                 leave=False))
        return _LineBar(self, total, desc, unit)


class _Bar:
    """A bar that shows nothing (``--quiet``)."""

    def update(self, postfix: str = "", n: int = 1) -> None:
        """``n`` more parts done; ``postfix`` names the last (a layer, say)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TqdmBar(_Bar):
    def __init__(self, bar):
        self._bar = bar

    def update(self, postfix: str = "", n: int = 1) -> None:
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class _LineBar(_Bar):
    """Plain lines: the first part, then at most one every ``interval`` s, and the last."""

    def __init__(self, progress: Progress, total: int, desc: str, unit: str):
        self._progress, self._total, self._desc, self._unit = progress, total, desc, unit
        self._done = 0
        self._start = time.perf_counter()
        self._last: float | None = None

    def update(self, postfix: str = "", n: int = 1) -> None:
        self._done += n
        now = time.perf_counter()
        last = self._done >= self._total
        if self._last is None or last or now - self._last >= self._progress.interval:
            self._last = now
            units = self._unit + ("s" if self._total != 1 else "")
            self._progress.note(f"{self._desc}: {self._done}/{self._total} {units}"
                                + (f" ({postfix})" if postfix else "")
                                + f", {seconds(now - self._start)}")
