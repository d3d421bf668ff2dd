"""The study's figures by difficulty: search per bin (paper Fig. 3 right),
compute-optimal vs best-of-N (Figs. 4 and 8) and FLOPs-matched (Fig. 9)."""

from __future__ import annotations

import collections

import matplotlib.pyplot as plt
import numpy as np

from ttscale.report import png


def search_by_bin(rows: list[dict], bins: dict[int, int], path: str) -> None:
  """Accuracy vs generations of every search configuration, one panel per bin.

  Args:
    bins: {question index: bin}.
  """
  groups = collections.defaultdict(list)
  for row in rows:
    if row["method"] != "revisions" and row["question_index"] in bins:
      name = f"{row['method']} {row['params']}".strip()
      groups[(bins[row["question_index"]], name, row["generations"])].append(row["correct"])
  bin_ids = sorted({b for b, _, _ in groups})
  figure, axes = plt.subplots(1, len(bin_ids), figsize=(3.2 * len(bin_ids), 3.4), sharey=True,
                              squeeze=False)
  names = sorted({n for _, n, _ in groups})
  for axis, b in zip(axes[0], bin_ids, strict=True):
    for name in names:
      points = sorted((g, float(np.mean(v))) for (bb, n, g), v in groups.items()
                      if bb == b and n == name)
      if points:
        axis.plot(*zip(*points, strict=True), "--" if name.startswith("lookahead") else "-",
                  marker="o", markersize=2, label=name)
    axis.set_xscale("log", base=2)
    axis.set_title(f"bin {b}")
    axis.set_xlabel("generations")
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  axes[0][-1].legend(fontsize=6)
  png.save(figure, path)


def compute_optimal_vs_best_of_n(select: dict, path: str) -> None:
  """Compute-optimal accuracy (per family, oracle and predicted bins) vs best-of-N."""
  figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
  for axis, family in zip(axes, ("search", "revisions", "both"), strict=True):
    oracle = select["oracle"][family]
    curve = sorted((int(g), v) for g, v in oracle["best_of_n_curve"].items())
    axis.plot(*zip(*curve, strict=True), "k-", marker="o", markersize=3, label="best-of-N")
    for kind, style in (("oracle", "-"), ("predicted", "--")):
      budgets = select[kind][family]["budgets"]
      points = sorted((int(g), v["accuracy"]) for g, v in budgets.items())
      axis.plot(*zip(*points, strict=True), style, marker="o", markersize=3,
                label=f"compute-optimal ({kind} bins)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("generation budget")
    axis.set_title(f"{family}: compute-optimal vs best-of-N")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  axes[0].set_ylabel("accuracy (two-fold cross-validated)")
  png.save(figure, path)


def flops_matched_bars(result: dict, path: str) -> None:
  """Per R and bin: the larger model's greedy accuracy vs the small model's
  compute-optimal accuracy at its FLOPs-matched budget (paper's count)."""
  ratios = list(result["ratios"])
  figure, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.6), sharey=True,
                              squeeze=False)
  for axis, r in zip(axes[0], ratios, strict=True):
    per_bin = result["ratios"][r]["per_bin"]
    bins = sorted(per_bin, key=int)
    x = np.arange(len(bins))
    large = [per_bin[b]["large_accuracy"] for b in bins]
    small = [per_bin[b]["paper"]["small_accuracy"] or 0.0 for b in bins]
    axis.bar(x - 0.2, large, 0.4, label=f"{result['params']['ratio']:.1f}x model, greedy")
    axis.bar(x + 0.2, small, 0.4, label="small + compute-optimal")
    axis.set_xticks(x, [f"bin {b}" for b in bins])
    k = result["ratios"][r]["multipliers"]["paper"]
    axis.set_title(f"R = {r}: small may spend {k:.1f} generations")
    axis.grid(alpha=0.3, axis="y")
  axes[0][0].set_ylabel("accuracy")
  axes[0][0].legend(fontsize=7)
  png.save(figure, path)
