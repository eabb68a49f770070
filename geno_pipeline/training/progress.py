"""The progress display of the train stage: a live line on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Steps, loss, it/s and ETA on stderr; never part of any declared output."""

    def __init__(self, total: int, start: int, *, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float) -> None:
        """Show progress after `step`."""
        if not self.enabled:
            return
        done = step - self.start
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - step) / rate if rate > 0 else 0.0
        text = f"train {step}/{self.total} loss {loss:.4f} {rate:.1f} it/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        if self.tty:
            self.stream.write("\r" + text + " " * 4)
            if step == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the live line."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
