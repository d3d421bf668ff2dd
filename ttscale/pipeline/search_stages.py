"""The search sweep stage: every configuration of the paper at every budget,
into the outcome table (`search/search_sweep.py`), and its figure."""

from __future__ import annotations

from ttscale import layout, outcomes
from ttscale.models.config import comparable_records
from ttscale.pipeline import fingerprints
from ttscale.pipeline.context import Context
from ttscale.progress import Progress
from ttscale.report import search_figure
from ttscale.scaling import search_checks
from ttscale.search import common, search_sweep
from ttscale.search.exact_verifier import ExactVerifier


def stage_sweep_search(ctx: Context) -> dict:
  """Runs every search setting on the test questions; appends to the table."""
  cfg = ctx.config
  test = ctx.examples("test")[:cfg.search.num_questions]
  questions = [e.question for e in test]
  table = outcomes.OutcomeTable(ctx.path(layout.SEARCH_TABLE),
                                fingerprints.search_table_meta(ctx),
                                comparable_records)
  policy, prm = ctx.load_policy(), ctx.load_verifier("prm")
  settings = search_sweep.sweep_settings(cfg.search)
  exact = (ExactVerifier(ctx.tokenizer, ctx.task, questions)
           if any(s.verifier == "exact" for s in settings) else None)
  models = common.SearchModels(policy.graphdef, prm.graphdef, policy.config, prm.config,
                               exact_verifier=exact)
  options = search_sweep.search_options(cfg)
  devices = list(ctx.mesh.devices.flat)
  units = search_sweep.sweep_units(settings, ctx.tokenizer, ctx.task, questions, options,
                                   devices)
  progress = Progress("sweep_search", len(units), ctx.log)
  ran = search_sweep.run_sweep(
      table, units, models, policy.params, prm.params, ctx.tokenizer, ctx.task, test,
      options=options, seed=cfg.seed, devices=devices,
      on_unit=lambda note: progress.update(note=note))
  rows = table.rows()
  search_figure.plot(rows, ctx.path(layout.SEARCH_FIGURE))
  curves = search_checks.accuracy_curves(rows)
  for name, curve in curves.items():
    ctx.log(f"sweep_search: {name:24s} " + " ".join(f"N={n}:{a:.3f}" for n, a in curve.items()))
  return {"num_rows": len(rows), "num_settings": len(settings), "batches_run": ran,
          "num_questions": len(test), "accuracy": curves,
          "distinct_prefixes_per_round": search_checks.distinct_prefixes(rows)}
