"""How much of what a plugin makes the core log gets logged: a token bucket per plugin, and a
summary of what was dropped. A plugin controls its stderr and every byte on its wire; without a
limit it could fill the operator's log (and stall whoever writes it) at the speed of a pipe."""

from __future__ import annotations

import logging
import time

from . import _defaults

__all__ = ["LogFlood"]


class LogFlood:
    """At most ``rate`` lines a second, sustained, after a ``burst``; the lines refused are
    counted and reported (at most once a second, or when asked) in one warning."""

    def __init__(
        self, what: str, rate: float = _defaults.LOG_RATE, burst: int = _defaults.LOG_BURST
    ) -> None:
        #: what the dropped lines were, for the report ("lines from plugin")
        self.what = what
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = self.last_report = time.monotonic()
        self.dropped = 0

    def allow(self) -> bool:
        """Whether the next line may be logged (else it is counted as dropped)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.dropped += 1
            return False
        self.tokens -= 1
        return True

    def report(self, log: logging.Logger, prefix: str, *, force: bool = False) -> None:
        """Say how many lines were dropped since the last report (a second ago at least,
        unless ``force``)."""
        now = time.monotonic()
        if self.dropped and (force or now - self.last_report >= 1.0):
            log.warning(
                "%s dropped %d %s (more than %g lines/s)",
                prefix,
                self.dropped,
                self.what,
                self.rate,
                extra={"plugin_dropped": self.dropped},
            )
            self.dropped = 0
            self.last_report = now
