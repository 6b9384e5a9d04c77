"""Terminal progress for long stages: count, rate, ETA, and a few stage-specific numbers.

Prints at most every ``interval`` seconds, one line per update, so it reads well both in
a terminal and in Prefect/CI logs (no carriage-return tricks). Without an explicit
``stream`` a line goes to the ``forgeflow.progress`` logger once ``forgeflow run`` has set
up its logging (terminal + log file, see ``pipeline.logs``), else to stderr. The CLI sets
``DEFAULT_INTERVAL`` longer so a quickstart's terminal stays short.
"""

from __future__ import annotations

import logging
import sys
import time

DEFAULT_INTERVAL = 2.0
_log = logging.getLogger("forgeflow.progress")


def _fmt_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """``p = Progress("filter", total=n, unit="docs"); p.update(k, kept=...); p.close()``."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "items",
                 interval: float | None = None, stream=None, enabled: bool = True):
        self.desc, self.total, self.unit = desc, total, unit
        self.interval = DEFAULT_INTERVAL if interval is None else interval
        self.stream = stream
        self.enabled = enabled
        self.n = 0
        self.start = time.monotonic()
        self._last = float("-inf")   # the first update always prints
        self._shown = None          # (n, postfix) of the last printed line
        self.postfix: dict = {}

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [f"[{self.desc}] {_fmt_count(self.n)}"]
        if self.total:
            parts[0] += f"/{_fmt_count(self.total)} ({100.0 * self.n / self.total:.0f}%)"
        parts.append(f"{_fmt_count(rate)} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_fmt_eta((self.total - self.n) / rate)}")
        parts.extend(f"{k}={_fmt_count(v) if isinstance(v, (int, float)) else v}"
                     for k, v in self.postfix.items())
        return "  ".join(parts)

    def _print(self, now: float) -> None:
        if self.enabled:
            self._shown = (self.n, dict(self.postfix))
            from pipeline.logs import log_file
            if self.stream is None and log_file() is not None:
                _log.info("%s", self.line(now))
            else:
                print(self.line(now), file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        """Print the final line, unless the last printed line already says the same."""
        if self._shown != (self.n, self.postfix):
            self._print(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
