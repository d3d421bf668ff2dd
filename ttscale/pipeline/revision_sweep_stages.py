"""The revision sweep stage: every (s, p) split of every budget on the test
questions (`search/revision_sweep.py`), rows appended to
`outcomes/revisions.jsonl` unit by unit, and what the chains do attempt by
attempt (`scaling/revision_analysis.py`)."""

from __future__ import annotations

import os

import jax
import numpy as np
from etils import epath

from ttscale import io_utils, layout, outcomes, resumable
from ttscale.models.config import comparable_records
from ttscale.pipeline import fingerprints
from ttscale.pipeline.context import Context
from ttscale.progress import Progress
from ttscale.report import revision_figure
from ttscale.scaling import revision_analysis
from ttscale.search import revision_sweep
from ttscale.search.budget import FlopsRate


def stage_sweep_revisions(ctx: Context) -> dict:
  """Every (s, p) split of every budget on the test questions; appends to the table."""
  cfg, sw = ctx.config, ctx.config.sweep_revisions
  test = ctx.examples("test")[:sw.num_questions]
  table = outcomes.OutcomeTable(ctx.path(layout.REVISION_TABLE),
                                fingerprints.revision_table_meta(ctx),
                                comparable_records)
  models = {"revision": ctx.load_revision_model(),
            "revision_verifier": ctx.load_verifier("revision_verifier"),
            "prm": ctx.load_verifier("prm")}
  splits = revision_sweep.sweep_splits(sw)
  units = revision_sweep.sweep_units(splits, len(test), sw.rows)
  rates = {name: FlopsRate.of(network.config) for name, network in models.items()}
  progress = Progress("sweep_revisions", len(units), ctx.log)
  unit_dir = ctx.path(layout.REVISION_UNITS)
  epath.Path(unit_dir).mkdir(parents=True, exist_ok=True)
  selections = revision_sweep.selections(cfg.search.verifiers)
  # Units whose rows are all in the table are neither read nor run (their
  # files may be gone); the others are read from their files or run.
  to_run = []
  for unit in units:
    missing = [(i, s, p, sel) for i in range(unit.first, unit.last) for s, p in splits
               for sel in selections
               if not table.has((i, "revisions", revision_sweep.row_params(s, p, sel), s * p,
                                 cfg.seed))]
    if missing:
      to_run.append(resumable.Part(os.path.join(unit_dir, unit.file_name), unit.description,
                                   (unit, missing)))
    else:
      progress.update(note=f"questions {unit.first}-{unit.last - 1}")

  def run(part: resumable.Part) -> dict:
    unit = part.item[0]
    key = jax.random.key(resumable.stream_seed(cfg.seed, "sweep_revisions", "pool",
                                               unit.first))
    return revision_sweep.run_unit(
        models, ctx.tokenizer, ctx.task, test[unit.first:unit.last], unit,
        sampler_config=ctx.sampler_config(), batch_size=cfg.sampling.batch_size, key=key,
        exact="exact" in cfg.search.verifiers, mesh=ctx.mesh, rules=ctx.rules)

  def scores_every_missing_row(part: resumable.Part, saved: dict) -> bool:
    # A unit saved before the exact verifier was swept is run again (same key).
    return all(revision_sweep.scored_by(sel) in (None, *saved["scores"])
               for *_, sel in part.item[1])

  def append_rows(index: int, saved: dict, resumed: bool) -> None:
    unit, missing = to_run[index].item
    # Appended unit by unit: a kill keeps the rows of every unit finished.
    table.append(revision_sweep.unit_rows(saved, unit, missing, test, ctx.task, cfg.seed,
                                          rates))
    progress.update(note=f"questions {unit.first}-{unit.last - 1}")

  mapped = resumable.map_parts(to_run, run, delete=unit_dir,
                               reusable=scores_every_missing_row, on_part=append_rows)
  return _summary(ctx, table.rows(), unit_dir, units, len(to_run) - mapped.num_resumed)


def _rate_text(rate: float | None) -> str:
  return "n/a" if rate is None else f"{rate:.3f}"


def _summary(ctx: Context, rows: list[dict], unit_dir: str,
             units: list[revision_sweep.Unit], ran: int) -> dict:
  """Accuracy per setting, sequential vs parallel, and how often revising hurts."""
  curves, sequential_vs_parallel = revision_analysis.sweep_accuracy(
      rows, revision_sweep.SELECTORS)
  # Every chain of the pools once: each group of equal-length chains of a pool.
  chains, first_errors = {}, {}
  for unit in units:
    path = os.path.join(unit_dir, unit.file_name)
    if epath.Path(path).exists():
      saved = io_utils.read_json(path)
      for group, correct in enumerate(saved["correct"]):
        chains[f"{unit.file_name}#{group}"] = (unit.first, np.asarray(correct, bool))
        if "first_errors" in saved:
          first_errors[f"{unit.file_name}#{group}"] = saved["first_errors"][group]
  attempts = revision_analysis.attempt_analysis(chains, ctx.config.seed, first_errors)
  io_utils.write_json_atomic(ctx.path(layout.REVISION_ATTEMPTS), attempts)
  revision_figure.plot(rows, ctx.path(layout.REVISION_FIGURE))
  for sel, by_budget in sequential_vs_parallel.items():
    ctx.log(f"sweep_revisions: {sel:17s} sequential vs parallel: " + " ".join(
        f"N={n}: {v['sequential']} vs {v['parallel']}" for n, v in by_budget.items()))
  turned, fresh = attempts["transitions"], attempts["fresh_baseline"]
  ctx.log("sweep_revisions: a correct attempt is revised into an incorrect one "
          f"{turned['correct_to_incorrect']['count']}/{turned['correct_to_incorrect']['of']} "
          f"times, an incorrect one into a correct one "
          f"{turned['incorrect_to_correct']['count']}/{turned['incorrect_to_correct']['of']}"
          " times (a fresh sample in their place: right "
          f"{_rate_text(fresh['after_correct'])} after a correct attempt, "
          f"{_rate_text(fresh['after_incorrect'])} after an incorrect one)")
  if attempts["longest_chains"]:
    by_attempt = attempts["longest_chains"]["accuracy"]
    gain = attempts["longest_chains"]["gain"]
    ctx.log(f"sweep_revisions: accuracy by attempt of the {len(by_attempt)}-attempt chains: "
            + " ".join(f"{a:.3f}" for a in by_attempt)
            + f"; attempt {gain['attempt']} − attempt 1: {gain['gain']:+.3f} "
            f"[{gain['interval'][0]:+.3f}, {gain['interval'][1]:+.3f}]")
  return {"num_rows": len(rows), "units_run": ran, "num_units": len(units),
          "accuracy": curves, "sequential_vs_parallel": sequential_vs_parallel,
          "transitions": attempts["transitions"], "fresh_baseline": fresh,
          "longest_chains": attempts["longest_chains"]}
