"""The study report from a hand-made workdir: findings, tables and figures, no model runs."""

import json
import os

import numpy as np
import pytest

from ttscale import io_utils
from ttscale.outcomes import Outcome, OutcomeTable, uses_exact_verifier
from ttscale.report import revision_section, study_report
from ttscale.scaling import compute_optimal, revision_analysis

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUESTIONS = [0, 1, 2, 3]
ORACLE_BINS = [1, 1, 2, 2]
PREDICTED_BINS = [1, 2, 1, 2]
SEED = 0
SEQUENTIAL = "s=4,p=1,select=majority"
PARALLEL = "s=1,p=4,select=majority"

# (method, params, budget, generations, questions answered correctly)
SEARCH = [("best_of_n", "", 1, 1, {0}),               # 0.25
          ("best_of_n", "", 2, 2, {0, 1}),            # 0.50
          ("best_of_n", "", 4, 4, {0, 1}),            # 0.50
          ("best_of_n", "", 8, 8, {0, 1, 2}),         # 0.75
          ("beam", "M=4,k=0", 4, 4, {0, 1, 2}),       # 0.75
          # The engine's check (kept out of selection, as by stage_select).
          ("best_of_n", "verifier=exact", 4, 4, {0}),
          ("beam", "M=4,k=0,verifier=exact", 4, 4, {0, 1, 2, 3})]
REVISIONS = [("revisions", SEQUENTIAL, 4, 4, {0, 1, 2}),   # 0.75
             ("revisions", PARALLEL, 4, 4, {0, 1}),        # 0.50
             # Always wrong, for the s:p panel (hierarchical); never chosen but on ties, where
             # best_of_n sorts first.
             *[("revisions", f"s={s},p={4 // s},select=hierarchical", 4, 4, set())
               for s in (1, 2, 4)]]


# Graded attempts [question][chain][attempt]: attempt accuracy 1/4, 1/4, 3/4, 3/4;
# correct -> incorrect once of 5 correct attempts with a next one (q2), incorrect
# -> correct 3 times of 7.
ATTEMPT_CHAINS = [[[False, True, True, True]], [[False, False, True, True]],
                  [[True, False, True, True]], [[False, False, False, False]]]
# How each of them went wrong: a slip first, then lost operands.
ATTEMPT_FIRST_ERRORS = [[[None if right else "slip" if k == 0 else "operands"
                          for k, right in enumerate(chain)] for chain in question]
                        for question in ATTEMPT_CHAINS]


# The policy's pass@1 per question (the difficulty stage's), against the revision
# model's first attempts above (q2 right only).
POLICY_PASS_AT_1 = [0.5, 0.25, 0.75, 0.0]


def _outcomes(settings):
  return [Outcome(question_index=q, level=1, method=method, params=params, budget=budget,
                  seed=0, answer=str(q), correct=q in right, generations=generations,
                  flops=100.0 * generations, seconds=0.01)
          for method, params, budget, generations, right in settings for q in QUESTIONS]


def _write_workdir(workdir, with_select=True):
  """The outcome tables, difficulty.json and (like stage_select) select.json."""
  search = OutcomeTable(os.path.join(workdir, "outcomes", "search.jsonl"), meta={})
  search.append(_outcomes(SEARCH))
  revisions = OutcomeTable(os.path.join(workdir, "outcomes", "revisions.jsonl"), meta={})
  revisions.append(_outcomes(REVISIONS))
  io_utils.write_json_atomic(os.path.join(workdir, "difficulty.json"), {
      "questions": QUESTIONS, "oracle_bins": ORACLE_BINS, "predicted_bins": PREDICTED_BINS,
      "pass_at_1": POLICY_PASS_AT_1, "num_samples": 8, "num_bins": 2, "bin_agreement": 0.5,
      # Two steps each written right half the time: the engine check's perfect search.
      "step_success": {"num_samples": 8, "rates": {str(q): [0.5, 0.5] for q in QUESTIONS}},
      "prediction_cost": {"generations_per_question": 8, "policy_flops_per_question": 1.0e6,
                          "prm_flops_per_question": 5.0e5}})
  # Attempt by attempt: one 4-attempt chain per question (see ATTEMPT_CHAINS).
  io_utils.write_json_atomic(os.path.join(workdir, "revisions", "attempts.json"),
                             revision_analysis.attempt_analysis(
                                 {"N0004_s0004_q00000.json": (0, np.array(ATTEMPT_CHAINS))},
                                 SEED, {"N0004_s0004_q00000.json": ATTEMPT_FIRST_ERRORS}))
  io_utils.write_json_atomic(os.path.join(workdir, "stages", "train_revision_verifier.json"), {
      "stage": "train_revision_verifier", "seconds": 1.0, "compile_seconds": 0.4, "summary": {
          "heldout_outcome_auc": {"revision_verifier": 0.8, "base_prm": 0.7},
          "heldout_auc_advantage": {"difference": 0.1, "interval": [-0.05, 0.25],
                                    "num_questions": 30}}})
  if with_select:
    rows = [row for row in search.rows() + revisions.rows()
            if not uses_exact_verifier(row["params"])]
    select = {"num_questions": len(QUESTIONS), "num_bins": 2}
    for kind, bins in (("oracle", ORACLE_BINS), ("predicted", PREDICTED_BINS)):
      assert kind in compute_optimal.KINDS
      select[kind] = {family: compute_optimal.compute_optimal(
          rows, QUESTIONS, np.asarray(bins), SEED + 21, keep, baseline)
          for family, (keep, baseline) in compute_optimal.FAMILIES.items()}
    io_utils.write_json_atomic(os.path.join(workdir, "select.json"),
                               json.loads(json.dumps(select)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("study"))
  _write_workdir(workdir)
  markdown, results = study_report.build(workdir)
  return workdir, markdown, results


def _finding(results, start):
  matches = [f for f in results["findings"] if f["finding"].startswith(start)]
  assert len(matches) == 1, [f["finding"] for f in results["findings"]]
  return matches[0]


def test_report_has_the_findings_table_with_one_row_per_finding(built):
  """Fails if the findings table header is missing or its rows differ from the findings."""
  _, markdown, results = built
  lines = markdown.split("\n")
  header = lines.index("| paper's finding | paper's number | ours | holds? |")
  assert lines[header + 1] == "|---|---|---|---|"
  table = lines[header + 2:lines.index("", header)]
  # Beam vs best-of-N on the hardest bins and overall, lookahead, compute-optimal
  # (search, revisions against the base policy and against parallel samples),
  # sequential vs parallel, later attempts vs the first, revised into wrong; no
  # flops_matched.json, so no FLOPs-matched rows.
  assert len(results["findings"]) == 9
  holds = {True: "yes", False: "no", None: "see text"}
  assert table == [f"| {f['finding']} | {f['paper']} | {f['ours']} | {holds[f['holds']]} |"
                   for f in results["findings"]]


def test_sequential_vs_parallel_finding_has_the_table_numbers(built):
  """Fails if the finding does not report sequential 3/4 vs parallel 2/4 at N=4."""
  _, _, results = built
  finding = _finding(results, "sequential revisions beat parallel")
  assert finding["ours"] == "N=4, majority: sequential 0.750 vs parallel 0.500"
  assert finding["holds"] is True


def test_search_findings_have_the_table_numbers(built):
  """Fails if beam (3/4) vs best-of-N (2/4) at N=4 is misreported, or absent lookahead is
  not n/a."""
  _, _, results = built
  beam = _finding(results, "PRM beam search (M=4) beats best-of-N")
  assert "N=4 here" in beam["finding"]
  assert beam["ours"] == "beam 0.750 vs best-of-N 0.500"
  assert beam["holds"] is True
  lookahead = _finding(results, "lookahead (k=3)")
  assert lookahead["ours"] == "16 generations: lookahead n/a vs beam n/a"
  assert lookahead["holds"] is None
  revised = _finding(results, "revisions turn correct answers incorrect")
  assert revised["ours"] == "1/5 (0.200)"
  assert revised["holds"] is True


def test_revision_section_reports_attempts_splits_and_the_verifier(built):
  """Fails if the attempt-by-attempt numbers, the per-bin sequential/parallel
  table or the revision verifier's advantage are misreported."""
  workdir, markdown, results = built
  section = results["revisions"]
  longest = section["attempts"]["longest_chains"]
  assert longest["accuracy"] == [0.25, 0.25, 0.75, 0.75]
  assert longest["gain"]["gain"] == 0.5 and longest["gain"]["attempt"] == 4
  assert "| accuracy | 0.250 | 0.250 | 0.750 | 0.750 |" in markdown
  assert "| right | 0.25 | 0.25 | 0.75 | 0.75 |" in markdown
  assert "| operands | 0.00 | 0.75 | 0.25 | 0.25 |" in markdown
  assert "| slip | 0.75 | 0.00 | 0.00 | 0.00 |" in markdown
  # Rows by total share: right (2.0), operands (1.25), slip (0.75).
  assert (markdown.index("| right | 0.25") < markdown.index("| operands | 0.00")
          < markdown.index("| slip | 0.75"))
  later = _finding(results, "later revisions improve on the first attempt")
  assert later["ours"].startswith("gain 0.500 [")
  assert "incorrect one into a correct one 3 of 7 times (0.429)" in markdown
  # Fresh accuracy from first attempts: q2 1, the others 0. After the 5 correct
  # attempts, 2 are q2's; after the 7 incorrect ones, 1 is.
  assert ("would have been right 0.400 of the time after a correct attempt (revising "
          "kept 0.800) and 0.143 after an incorrect one (revising fixed 0.429)") in markdown
  # N=4 in bin 1 (q0, q1): only the hierarchical splits s=1,2,4 (all wrong) -> ties go
  # to the most parallel split.
  assert section["splits_by_bin"]["budget"] == 4
  assert section["splits_by_bin"]["bins"]["1"]["best"] == "1:4"
  assert "difference 0.100 [-0.050, 0.250] over 30 held-out questions" in markdown
  # First-attempt pass@1 1/4 against the policy's 1.5/4; per question -0.5, -0.25,
  # 0.25, 0: the paired difference -0.125.
  versus = section["first_attempt_vs_policy"]
  assert versus["difference"] == pytest.approx(-0.125)
  assert versus["interval"][0] <= -0.125 <= versus["interval"][1]
  assert ("from every chain's first attempt (1 a question on average) and the difficulty "
          "stage's policy samples: revision model 0.250, policy 0.375; difference "
          "-0.125 [") in markdown
  assert "as pass@1 on the same questions, 0.250 against 0.375 (difference -0.125 [" in markdown
  assert "fig6_attempts.png" in results["figures"]
  with open(os.path.join(workdir, "fig6_attempts.png"), "rb") as f:
    assert f.read(8) == PNG_SIGNATURE


def test_compute_optimal_revisions_against_parallel_samples_of_the_revision_model(built):
  """Fails if the within-revision-model comparison does not take the revision
  model's own parallel samples (s=1, hierarchical) as its baseline."""
  _, _, results = built
  against = results["select"]["oracle"]["revisions_vs_parallel"]
  assert against["baseline"] == "revisions s=1,p=1,select=hierarchical"
  # Only N=4 has s=1 hierarchical rows here (always wrong): its curve is 0.
  assert against["best_of_n_curve"] == {"4": 0.0}


def test_compute_optimal_findings_have_hand_computed_ratios(built):
  """Fails if the oracle-bin efficiency ratios differ from the hand-computed ones.

  Bin 1 (q0, q1): every strategy at 4 generations is right on both. Bin 2 (q2, q3), one
  question per fold: beam is right on q2 only, best-of-N on neither. Search: the fold with q2
  picks beam (scored 0 on q3), the fold with q3 ties and keeps best-of-N (ties go to it; scored
  0 on q2): 2/4, which best-of-N reaches at 2 generations -> 2/4 = 0.5. Revisions: the q2 fold picks
  sequential (0 on q3), the q3 fold ties and picks best_of_n (0 on q2): 2/4, reached at 2 -> 0.5.
  """
  _, markdown, results = built
  search = _finding(results, "compute-optimal search needs")
  assert search["ours"].startswith("median 1.00 [")
  assert search["ours"].endswith(
      "; baseline budget / budget: N=1: 1.00, N=2: 1.00, N=4: 0.50, N=8: 1.00")
  assert search["holds"] is False
  revisions = _finding(results, "compute-optimal revisions needs fewer generations than the "
                       "base policy's")
  assert revisions["ours"].endswith("baseline budget / budget: N=1: 1.00, N=2: 1.00, "
                                    "N=4: 0.50, N=8: 1.00")
  assert revisions["holds"] is False
  assert "| bins | family | N=1 | N=2 | N=4 | N=8 |" in markdown
  row = next(line for line in markdown.split("\n") if line.startswith("| oracle | search |"))
  cells = row.strip("| ").split(" | ")[2:]
  assert [cell.split(" [")[0] for cell in cells] == ["1.00", "1.00", "0.50", "1.00"]
  assert results["select"]["oracle"]["search"]["budgets"]["4"]["accuracy"] == pytest.approx(0.5)


def test_report_accuracy_and_difficulty_sections(built):
  """Fails if accuracies by generations or the prediction cost line are misreported."""
  _, markdown, results = built
  assert results["accuracy_by_generations"]["best_of_n"] == pytest.approx(
      {"1": 0.25, "2": 0.5, "4": 0.5, "8": 0.75})
  assert results["accuracy_by_generations"][f"revisions {SEQUENTIAL}"] == {"4": 0.75}
  row = next(line for line in markdown.split("\n") if line.startswith("| best_of_n |"))
  assert [part.split(" [")[0] for part in row[len("| best_of_n | "):-2].split("], ")] == [
      "1: 0.250", "2: 0.500", "4: 0.500", "8: 0.750"]
  assert "| beam M=4,k=0 | 4: 0.750 [" in markdown
  assert "4 test questions;" in markdown
  assert ("agree with the oracle's on 0.50 of the questions; predicting costs 8 generations "
          "and 1.5e+06 FLOPs per question.") in markdown
  assert "Not run (stage `flops_matched`)." in markdown
  assert results["flops_matched"] is None
  assert "| train_revision_verifier | 1.0 | 0.4 |" in markdown
  assert "| total | 1.0 | 0.4 |" in markdown
  assert results["stage_compile_seconds"] == {"train_revision_verifier": 0.4}


def test_engine_check_compares_tree_search_with_best_of_n_per_verifier(built):
  """Fails if the engine check does not pair beam with best-of-N of the same
  verifier on the two hardest bins (here both bins, all 4 questions)."""
  _, markdown, results = built
  engine = results["search_checks"]["engine"]
  assert engine["bins"] == [1, 2] and engine["budget"] == 4
  exact = engine["exact"]["beam M=4,k=0"]
  assert exact["accuracy"] == 1.0 and exact["gap_to_best_of_n"]["gap"] == 0.75
  learned = engine["prm"]["beam M=4,k=0"]
  assert learned["gap_to_best_of_n"]["gap"] == pytest.approx(0.25)
  low, high = learned["gap_to_best_of_n"]["interval"]
  assert low <= 0.25 <= high
  assert "| exact | beam M=4,k=0 | 1.000 [1.000, 1.000] | 0.750 [" in markdown
  # Perfect search from the step rates: beam (1 - 0.5^4)^2, best-of-4 1 - 0.75^4.
  assert exact["predicted"] == pytest.approx((1 - 0.5 ** 4) ** 2)
  assert engine["exact"]["best_of_n"]["predicted"] == pytest.approx(1 - 0.75 ** 4)
  assert "predicted" not in learned
  assert markdown.count("| 0.879 |") == 1
  finding = _finding(results, "beam search (M=4) beats best-of-N on the hardest")
  assert finding["ours"].startswith("beam − best-of-N 0.250 [")


def test_report_draws_the_figures_as_png(built):
  """Fails if a figure named in the results is missing or is not a PNG file."""
  workdir, markdown, results = built
  expected = ["fig3_search.png", "fig3_search_by_bin.png", "fig4_8_compute_optimal.png",
              "fig6_7_revisions.png", "fig6_attempts.png"]
  assert results["figures"] == expected
  assert not os.path.exists(os.path.join(workdir, "fig9_flops_matched.png"))
  for name in expected:
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == PNG_SIGNATURE, name
    if name != "fig3_search_by_bin.png":
      assert f"![]({name})" in markdown


def test_results_are_json(built):
  """Fails if the results do not survive a JSON round trip unchanged."""
  _, _, results = built
  assert json.loads(json.dumps(results)) == results


def test_build_on_an_empty_directory_names_the_missing_file(tmp_path):
  """Fails if a missing outcome table is not a one-line ValueError naming it."""
  with pytest.raises(ValueError) as error:
    study_report.build(str(tmp_path))
  message = str(error.value)
  assert "\n" not in message
  assert os.path.join(str(tmp_path), "outcomes", "search.jsonl") in message


def test_build_without_select_names_select_json(tmp_path):
  """Fails if a workdir lacking only select.json does not name select.json."""
  _write_workdir(str(tmp_path), with_select=False)
  with pytest.raises(ValueError, match="select.json is missing") as error:
    study_report.build(str(tmp_path))
  assert "\n" not in str(error.value)
  assert not os.path.exists(os.path.join(str(tmp_path), "fig3_search.png"))


def test_flops_matched_finding_holds_only_on_the_papers_pattern():
  """Fails if the FLOPs-matched verdict does not follow its stated rule: for
  R < 1, a win on an easier bin and a loss on the hardest; for R > 1, a loss
  on the hardest and no more wins than at the smallest R; None when a bin's
  budget is below the grid."""
  small_r = {"1": True, "2": True, "3": False, "4": False, "5": False}
  by_ratio = {"0.16": small_r}
  assert study_report.flops_matched_holds(0.16, small_r, by_ratio) is True
  hard_win = {**small_r, "5": True}
  assert study_report.flops_matched_holds(0.16, hard_win, {"0.16": hard_win}) is False
  only_hard_half = {"1": False, "2": False, "3": False, "4": True, "5": False}
  assert study_report.flops_matched_holds(0.79, only_hard_half, by_ratio) is False
  large_r = {"1": True, "2": False, "3": False, "4": False, "5": False}
  assert study_report.flops_matched_holds(22.0, large_r, {**by_ratio, "22.0": large_r}) is True
  more_wins = {"1": True, "2": True, "3": True, "4": False, "5": False}
  assert study_report.flops_matched_holds(22.0, more_wins, {**by_ratio, "22.0": more_wins}) \
      is False
  unknown = {**small_r, "1": None}
  assert study_report.flops_matched_holds(0.16, unknown, {"0.16": unknown}) is None


def test_efficiency_finding_holds_on_the_median_budget_not_the_best():
  """Fails if one budget's ratio above 1 (noise where best-of-N's curve is
  flat) makes the compute-optimal finding hold, or if a budget where
  best-of-N never catches up (None) does not count as a win."""
  assert study_report.efficiency_holds([1.0, 0.5, 1.05, 0.95, 0.43, 2.0, 0.5]) is False
  assert study_report.efficiency_holds([1.0, 2.0, 4.0]) is True
  assert study_report.efficiency_holds([1.0, None, None]) is True
  assert study_report.efficiency_holds([]) is None


def test_first_attempt_against_the_policy_pairs_only_common_questions():
  first = {"questions": [0, 1, 7], "pass_at_1": [1.0, 0.5, 0.0], "samples": [4, 4, 2]}
  versus = revision_section.first_attempt_vs_policy(first, {0: 0.5, 1: 0.5, 3: 0.9})
  assert versus["num_questions"] == 2
  assert (versus["first_attempt"], versus["policy"]) == (0.75, 0.5)
  assert versus["difference"] == pytest.approx(0.25)
  assert versus["first_attempts_per_question"] == 4.0
  assert revision_section.first_attempt_vs_policy(first, {3: 0.9}) is None
  assert revision_section.first_attempt_vs_policy(None, {0: 0.5}) is None
