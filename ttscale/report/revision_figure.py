"""Revisions: sequential vs parallel (paper Fig. 6) and the s:p ratio (Fig. 7)."""

from __future__ import annotations

import collections
import math
import re

import matplotlib.pyplot as plt
import numpy as np

from ttscale.report import png

_PARAMS = re.compile(r"s=(\d+),p=(\d+),select=(\w+)")


def accuracy_by_setting(rows: list[dict]) -> dict[tuple[int, int, str], float]:
  """{(s, p, selector): accuracy} over the revision rows."""
  groups = collections.defaultdict(list)
  for row in rows:
    match = _PARAMS.fullmatch(row["params"])
    if row["method"] == "revisions" and match:
      s, p, selector = int(match[1]), int(match[2]), match[3]
      groups[(s, p, selector)].append(row["correct"])
  return {key: float(np.mean(values)) for key, values in groups.items()}


def plot(rows: list[dict], path: str, ratio_selector: str = "hierarchical") -> None:
  """Draws both panels to a PNG at `path` (written atomically)."""
  accuracy = accuracy_by_setting(rows)
  figure, (versus, ratios) = plt.subplots(1, 2, figsize=(11, 4.2))
  selectors = sorted({sel for _, _, sel in accuracy})
  budgets = sorted({s * p for s, p, _ in accuracy})
  for selector in selectors:
    for name, split, style in (("sequential", lambda n: (n, 1), "-"),
                               ("parallel", lambda n: (1, n), "--")):
      points = [(n, accuracy[(*split(n), selector)]) for n in budgets
                if (*split(n), selector) in accuracy]
      if points:
        versus.plot(*zip(*points, strict=True), style, marker="o", markersize=3,
                    label=f"{name}, {selector}")
  versus.set_xscale("log", base=2)
  versus.set_xlabel("generation budget N")
  versus.set_ylabel("accuracy")
  versus.set_title("Sequential revisions (s=N) vs parallel samples (p=N)")
  versus.legend(fontsize=7)
  for n in budgets:
    points = sorted((math.log2(s / p), acc) for (s, p, sel), acc in accuracy.items()
                    if sel == ratio_selector and s * p == n)
    if len(points) > 1:
      ratios.plot(*zip(*points, strict=True), marker="o", markersize=3, label=f"N={n}")
  ratios.set_xlabel("log2(sequential / parallel)")
  ratios.set_title(f"Sequential:parallel ratio ({ratio_selector} selection)")
  ratios.legend(fontsize=7)
  for axis in (versus, ratios):
    axis.grid(alpha=0.3)
  png.save(figure, path)


def plot_attempts(longest_chains: dict, policy_one_sample: float | None, path: str) -> None:
  """Accuracy of attempt k of the revision chains with its 95% band (the
  paper's Fig. 6, left), beside one policy sample; a PNG at `path`."""
  accuracy = np.asarray(longest_chains["accuracy"])
  low, high = (np.asarray([np.nan if v is None else v for v in bound])
               for bound in zip(*longest_chains["interval"], strict=True))
  attempts = np.arange(1, len(accuracy) + 1)
  figure, axis = plt.subplots(figsize=(5.5, 4))
  axis.plot(attempts, accuracy, marker="o", markersize=3, label="revision model, attempt k")
  axis.fill_between(attempts, low, high, alpha=0.25)
  if policy_one_sample is not None:
    axis.axhline(policy_one_sample, linestyle="--", color="gray", label="one policy sample")
  axis.set_xlabel("attempt k of the chain")
  axis.set_ylabel("accuracy")
  axis.set_title("Revisions attempt by attempt")
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  png.save(figure, path)
