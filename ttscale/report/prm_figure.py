"""The PRM quality figure: accuracy vs N of the selectors, and a reliability diagram."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ttscale.report import png


def plot(result: dict, path: str) -> None:
  """Draws `eval_prm.json`'s content to a PNG at `path` (written atomically).

  Left: accuracy vs N (log2 axis) per selection method, with ±1 standard
  error bands. Right: the PRM's reliability diagram on held-out Monte-Carlo
  labels.
  """
  figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, curve in result["accuracy_vs_n"].items():
    budgets = sorted(int(n) for n in curve)
    means = [curve[n][0] if n in curve else curve[str(n)][0] for n in budgets]
    errors = [curve[n][1] if n in curve else curve[str(n)][1] for n in budgets]
    style = "--" if name == "pass@N" else "-"
    line, = left.plot(budgets, means, style, marker="o", markersize=3, label=name)
    left.fill_between(budgets, [m - e for m, e in zip(means, errors, strict=True)],
                      [m + e for m, e in zip(means, errors, strict=True)],
                      color=line.get_color(), alpha=0.15, linewidth=0)
  left.set_xscale("log", base=2)
  left.set_xlabel("N (samples per question)")
  left.set_ylabel("accuracy")
  left.set_title(f"Selection from a pool of {result['pool_size']} "
                 f"({result['num_questions']} test questions)")
  left.legend(fontsize=7)
  left.grid(alpha=0.3)

  table = result["calibration"]["reliability"]
  centres = [(b["lower"] + b["upper"]) / 2 for b in table]
  right.plot([0, 1], [0, 1], ":", color="grey")
  right.bar(centres, [b["mean_target"] for b in table],
            width=[b["upper"] - b["lower"] for b in table], alpha=0.5, edgecolor="k",
            label="mean MC label")
  right.plot([b["mean_prediction"] for b in table], [b["mean_target"] for b in table],
             "o-", color="C3", label="(mean score, mean label)")
  right.set_xlabel("PRM score")
  right.set_ylabel("held-out Monte-Carlo label")
  auc = result["step_auc_vs_exact"]["prm"]
  auc = "undefined" if auc is None else f"{auc:.3f}"
  right.set_title(f"Calibration (ECE {result['calibration']['ece']:.3f}); step AUC {auc}")
  right.legend(fontsize=7)
  png.save(figure, path)
