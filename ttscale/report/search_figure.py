"""Accuracy of the search methods against generations and against FLOPs (paper Fig. 3)."""

from __future__ import annotations

import collections

import matplotlib.pyplot as plt
import numpy as np

from ttscale.report import png


def curves(rows: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
  """{configuration: [(mean generations, mean FLOPs, accuracy) per budget]}."""
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(f"{row['method']} {row['params']}".strip(), row["budget"])].append(row)
  result = collections.defaultdict(list)
  for (name, _), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
    result[name].append((float(np.mean([r["generations"] for r in group])),
                         float(np.mean([r["flops"] for r in group])),
                         float(np.mean([r["correct"] for r in group]))))
  return dict(result)


def plot(rows: list[dict], path: str) -> None:
  """Draws the two panels to a PNG at `path` (written atomically)."""
  figure, (by_generations, by_flops) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for name, points in curves(rows).items():
    generations, flops, accuracy = zip(*points, strict=True)
    style = "--" if name.startswith("lookahead") else "-"
    line, = by_generations.plot(generations, accuracy, style, marker="o", markersize=3,
                                label=name)
    by_flops.plot(flops, accuracy, style, marker="o", markersize=3, color=line.get_color())
  num_questions = len({r["question_index"] for r in rows})
  by_generations.set_xscale("log", base=2)
  by_generations.set_xlabel("generation budget (N; N·(k+1) with lookahead)")
  by_generations.set_ylabel("accuracy")
  by_generations.set_title(f"Search against the PRM ({num_questions} test questions)")
  by_generations.legend(fontsize=7)
  by_flops.set_xscale("log")
  by_flops.set_xlabel("FLOPs per question (counted exactly)")
  for axis in (by_generations, by_flops):
    axis.grid(alpha=0.3)
  png.save(figure, path)
