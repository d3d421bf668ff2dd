"""Progress lines with an ETA for long loops."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
  """Prints `name: done/total (pct) ETA` at most every `every_seconds`."""

  def __init__(self, name: str, total: int, log: Callable[[str], None] = print,
               every_seconds: float = 10.0):
    self.name, self.total, self.log = name, total, log
    self.every_seconds = every_seconds
    self.done = 0
    self._start = self._last = time.time()

  def update(self, count: int = 1, note: str = "") -> None:
    self.done += count
    now = time.time()
    if now - self._last < self.every_seconds and self.done < self.total:
      return
    self._last = now
    rate = self.done / max(now - self._start, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    suffix = f" {note}" if note else ""
    self.log(f"{self.name}: {self.done}/{self.total} "
             f"({100 * self.done / max(self.total, 1):.0f}%) "
             f"ETA {format_seconds(eta)}{suffix}")
