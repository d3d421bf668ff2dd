"""Tests of the outcome table: appends, resumption after a cut write, guards."""

from __future__ import annotations

import json

import pytest

from ttscale import outcomes
from ttscale.models.config import comparable_records


def _row(question: int, budget: int = 4, correct: bool = True) -> outcomes.Outcome:
  return outcomes.Outcome(
      question_index=question, level=1, method="beam", params="M=2,k=0", budget=budget,
      seed=0, answer="7" if correct else None, correct=correct, generations=budget,
      flops=1e6, seconds=0.1)


META = {"search": {"max_budget": 4}}


def test_rows_are_appended_and_found_again(tmp_path):
  path = str(tmp_path / "search.jsonl")
  table = outcomes.OutcomeTable(path, META)
  table.append([_row(0), _row(1)])
  reopened = outcomes.OutcomeTable(path, META)
  assert len(reopened) == 2 and reopened.has(_row(1).key) and not reopened.has(_row(2).key)
  assert outcomes.read_table(path)[0]["question_index"] == 0
  with pytest.raises(ValueError, match="already in the table"):
    reopened.append([_row(1)])


def test_a_cut_last_line_is_dropped_and_the_rest_kept(tmp_path):
  path = tmp_path / "search.jsonl"
  table = outcomes.OutcomeTable(str(path), META)
  table.append([_row(0), _row(1)])
  whole = path.read_text()
  path.write_text(whole + json.dumps(json.loads(whole.splitlines()[0]))[:25])  # a killed append
  assert len(outcomes.read_table(str(path))) == 2  # reading does not change the file
  reopened = outcomes.OutcomeTable(str(path), META)
  assert len(reopened) == 2 and path.read_text() == whole
  reopened.append([_row(2)])
  assert [r["question_index"] for r in outcomes.read_table(str(path))] == [0, 1, 2]


def test_a_table_of_another_setup_is_refused_untouched(tmp_path):
  path = tmp_path / "search.jsonl"
  outcomes.OutcomeTable(str(path), META).append([_row(0)])
  before = path.read_bytes()
  with pytest.raises(ValueError, match=r"search\.max_budget=4 in the workdir, 8 now"):
    outcomes.OutcomeTable(str(path), {"search": {"max_budget": 8}})
  assert path.read_bytes() == before


def test_damage_inside_the_table_is_an_error_naming_the_line(tmp_path):
  path = tmp_path / "search.jsonl"
  outcomes.OutcomeTable(str(path), META).append([_row(0), _row(1)])
  lines = path.read_text().splitlines()
  path.write_text("\n".join([lines[0][:-3], lines[1]]) + "\n")
  with pytest.raises(ValueError, match="line 1 is not a JSON row"):
    outcomes.OutcomeTable(str(path), META)
  path.write_text(json.dumps({"question_index": 0}) + "\n")
  with pytest.raises(ValueError, match="line 1 has fields"):
    outcomes.read_table(str(path))
  (tmp_path / "orphan.jsonl").write_text("")
  with pytest.raises(ValueError, match="has no orphan.jsonl.meta.json"):
    outcomes.OutcomeTable(str(tmp_path / "orphan.jsonl"), META)


def test_a_table_written_before_a_model_field_existed_is_still_extended(tmp_path):
  """Fails if a model field added since (at its default) refuses an older
  table under the pipeline's comparison, or if a field that does change the
  model is let through."""
  path = str(tmp_path / "search.jsonl")
  older = {"policy": {"model": {"num_layers": 2, "embed_dim": 128}}}
  outcomes.OutcomeTable(path, older, comparable_records).append([_row(0)])
  today = {"policy": {"model": {"num_layers": 2, "embed_dim": 128, "qk_norm": False}}}
  outcomes.OutcomeTable(path, today, comparable_records).append([_row(1)])
  assert len(outcomes.read_table(path)) == 2
  with pytest.raises(ValueError, match=r"policy\.model\.qk_norm=False in the workdir, True now"):
    outcomes.OutcomeTable(path, {"policy": {"model": {**today["policy"]["model"],
                                                      "qk_norm": True}}}, comparable_records)
