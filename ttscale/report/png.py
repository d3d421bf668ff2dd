"""Writing matplotlib figures: headless, atomic."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on TPU hosts and CI
import matplotlib.pyplot as plt  # noqa: E402

from ttscale import io_utils  # noqa: E402


def save(figure, path: str) -> None:
  """Lays out `figure`, writes it to a PNG at `path` atomically, closes it."""
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  io_utils.write_bytes_atomic(path, buffer.getvalue())
