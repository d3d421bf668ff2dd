"""The embedded arithmetic-chain study.

`--config=configs/arith.py:VARIANT[,OPTION...]` (`configs/common.py`).

Variants:
  tiny     seconds on a CPU; what the tests use.
  default  the embedded study on a laptop CPU (minutes); also when none is named.
  paper    a bigger policy and data set, for an accelerator.

Options, on any variant:
  runlocal  sets every field that `tiny` sets, as `tiny` does, after the
            variant's own changes: the task's levels; the sizes of the data,
            of both models (not their activation), of batches and `seq_len`s;
            the steps, warm-up, patience, checkpoint and log intervals of
            every training (not the learning rates); the samples, questions,
            tokens, rollouts, rounds, rows and budgets of every stage; the
            revision data's small-run mix (reference solutions counted,
            smaller policy-data and held-out fractions). The variant keeps
            the rest: `paper,runlocal` is `tiny` with paper's gelu
            activations and policy learning rate, as fast; `default,runlocal`
            is `tiny`.

Any field can be overridden on the command line, e.g.
`--config.model.num_layers=4 --config.train.num_steps=2000`.
"""

from ml_collections import config_dict

from configs import common

VARIANTS = ("tiny", "default", "paper")
OPTIONS = ("runlocal",)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The study's settings for `arg`, `VARIANT[,OPTION...]` (module docstring).

  `variant` holds the argument in full ("paper,runlocal").

  Raises:
    ValueError: one line naming an unknown variant or option.
  """
  parsed = common.parse_arg(arg, variants=VARIANTS, default="default", options=OPTIONS)
  variant = parsed.variant
  c = config_dict.ConfigDict()
  c.variant = parsed.text
  c.seed = 0

  # Chains of +, -, * on a running value; level = number of operations.
  # Chosen so that the default policy's pass@1 spans the levels (target: ≥ 0.8
  # on level 1, ≤ 0.2 on the hardest). Multipliers up to 9 made level 1 hard
  # (3-digit products: ~0.75); values kept within ±149 or ±199 left level 8
  # easy (0.37–0.57); with multipliers up to 5 and values up to ±999, level 8
  # sat at the 0.2 edge, so a ninth level gives the hard end its margin.
  c.task = config_dict.ConfigDict(dict(
      name="arith", min_ops=1, max_ops=9, max_operand=19, max_multiplier=5,
      max_abs_value=999))

  # `too_long`: what training does with an example longer than `seq_len`
  # ("skip" it, "truncate" it, or "refuse" to train); none is, on this task.
  c.data = config_dict.ConfigDict(dict(
      num_train=60_000, num_validation=400, num_test=1800, seed=0,
      seq_len=160, too_long="skip"))

  # Start the policy (or the larger one, or the PRM's trunk) from a released
  # checkpoint; see configs/math.py. Empty: all are trained from scratch, with
  # our tokenizer, and the PRM starts from the trained policy.
  c.checkpoint = config_dict.ConfigDict(dict(
      format="", policy="", large="", prm="", tokenizer="", trim_vocab=False))

  # `compute_dtype="bfloat16"`: matmuls, activations and the KV cache in
  # bfloat16 from float32 parameters (`param_dtype`); see ModelConfig.
  c.model = config_dict.ConfigDict(dict(
      num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=4, head_dim=32,
      mlp_dim=256, activation="relu", dropout_rate=0.0, tie_embeddings=True,
      param_dtype="float32", compute_dtype="float32"))

  c.train = config_dict.ConfigDict(dict(
      batch_size=50, num_steps=750,
      **common.adamw(learning_rate=3e-3, warmup_steps=50, end_learning_rate_fraction=0.05),
      checkpoint_every=100, log_every=25, max_checkpoints=2))

  # How the policy samples, in every stage that samples. Temperature 0.8:
  # at 1.0 the small policy's tail cost ~10 points of pass@1 on every level.
  c.sampling = config_dict.ConfigDict(dict(
      temperature=0.8, top_p=1.0, max_new_tokens=128, batch_size=256))

  # eval_policy: pass@1 from `num_samples` samples per test question.
  c.eval = config_dict.ConfigDict(dict(num_samples=16))

  # prm_labels: `samples_per_question` solutions for each of the first
  # `num_questions` training questions; every step not ending a solution is
  # labelled by `num_rollouts` continuations (paper: 16). A held-out
  # `holdout_fraction` of the questions is used for early stopping and
  # calibration. Rollouts run in parts of `prefixes_per_part` prefixes (the
  # unit of resumption).
  c.prm = config_dict.ConfigDict(dict(
      num_questions=1500, samples_per_question=2, num_rollouts=16,
      holdout_fraction=0.1, prefixes_per_part=128))

  # The PRM's and ORM's training: from the policy's weights. The paper
  # fine-tunes a large model at lr 3e-5, batch 128, dropout 0.05, betas
  # 0.9/0.95; our small model, trained from scratch at 3e-3, fine-tunes at
  # 1e-3 (rows are whole solutions). Validation loss on the held-out
  # questions at every checkpoint; stop after `patience` without improvement.
  # `trunk`: the verifiers (PRM, ORM) start from the trained policy
  # ("policy", as in the paper) or from the larger policy of the FLOPs-matched
  # comparison ("large": a verifier stronger than the policy, as open
  # reproductions pair a 1B policy with an 8B PRM; `train_large` then runs
  # before `train_prm`, and the PRM's FLOPs are the larger model's).
  # `dropout_rate` applies to a trunk that trains: with `step_likelihood` the
  # trunk is frozen and its features are computed once, without dropout.
  # `step_labels`: the PRM's targets, "soft" (the fraction of rollouts that
  # end correct, the paper's) or "hard" (1 when any rollout ends correct,
  # Math-Shepherd's hard estimate).
  # `step_likelihood`: the verifier's head also reads how likely its trunk's
  # LM head found the step's tokens (their sum and minimum log-probability;
  # the trunk is then kept as trained). A head read at a step's end of a
  # 2-layer trunk cannot see the trunk's verdict on each of the step's
  # tokens. Measured (eval_prm, 600 test questions), right vs wrong sibling
  # steps AUC: 0.52 with the policy's trunk (0.53 with hard or exact labels,
  # also on 24k solutions; 0.51 with the larger trunk); with step likelihood
  # 0.76 (policy's trunk) and 0.99 (larger trunk): the defaults.
  c.verifier_train = config_dict.ConfigDict(dict(
      trunk="large", step_labels="soft", step_likelihood=True, batch_size=64,
      num_steps=600,
      **common.adamw(learning_rate=1e-3, warmup_steps=30, end_learning_rate_fraction=0.1),
      dropout_rate=0.05, checkpoint_every=50, log_every=25, max_checkpoints=2, patience=3))

  # eval_prm: a pool of `pool_size` samples for each of the first
  # `num_questions` test questions; accuracy at N = 1, 2, 4, ..., pool_size
  # averaged over `num_draws` subsets per question.
  # Sibling checks: right vs wrong next steps after one prefix (sibling AUC),
  # and the top-scored of `sibling_width` sampled siblings (a beam round's M).
  c.eval_prm = config_dict.ConfigDict(dict(
      num_questions=600, pool_size=32, num_draws=64,
      aggregations=("last", "min", "prod"), calibration_bins=10, sibling_width=4))

  # sweep_search: every configuration of the paper's Fig. 3 (best-of-N
  # weighted; beam M=4 and M=sqrt(N); lookahead k=3 with M=4 and M=sqrt(N),
  # k=1 with M=sqrt(N)) at every budget N = 1, 2, 4, ..., max_budget, on the
  # first `num_questions` test questions. Programs run `rows` rows at a time
  # (rows / N questions). A row's step may take `max_step_tokens` tokens; the
  # search stops after `max_rounds` rounds (paper: 40).
  # `methods` restricts the sweep to some of best_of_n, beam, lookahead;
  # `extra_settings` adds settings of one's own, e.g.
  # ("beam:N=16,M=2", "lookahead:N=16,M=8,k=2"): M must divide N, N on the grid.
  # Best-of-N, the cheap baseline, also runs on the larger budgets up to
  # `best_of_n_max_budget`, so that the budget it needs to match a search
  # method can be read off (the efficiency ratio). On this CPU each doubling
  # of max_budget roughly doubles the sweep (lookahead dominates).
  # `distinct_beams`: token-identical prefixes count once when beams are kept
  # (copies only fill slots that distinct prefixes cannot); False keeps the
  # plain top-N/M, copies and all (rows then say `distinct=0`).
  # `verifiers`: "prm" (the learned PRM) and, for tasks with exact step
  # labels, "exact" (a perfect verifier: the engine's own check, budgets up
  # to `exact_max_budget`; its rows say `verifier=exact` and stay out of
  # compute-optimal selection unless `select_exact` is set). `exact_methods`:
  # the methods swept with the exact verifier. Lookahead is left out: its
  # exact rows cost a quarter of the sweep (233 s of 1,052 s) and the engine
  # check's perfect-search prediction covers best-of-N, beam and DVTS only.
  # `step_aggregation`: a candidate's score from its step scores, "last" (the
  # paper's) or "min" (its lowest step: a slip early in a solution keeps it
  # down however consistent the later steps look).
  c.search = config_dict.ConfigDict(dict(
      step_aggregation="min", max_budget=16, best_of_n_max_budget=64,
      num_questions=200, max_rounds=40, max_step_tokens=16, rows=256,
      methods=("best_of_n", "beam", "lookahead", "dvts"), distinct_beams=True,
      verifiers=("prm", "exact"), exact_max_budget=16, select_exact=False,
      exact_methods=("best_of_n", "beam", "dvts"),
      extra_settings=()))

  # revision_data: `samples_per_question` policy samples (paper: 64) for each
  # of the first `num_questions` training questions, sampled in parts of
  # `questions_per_part`; `trajectories_per_question` trajectories of
  # k ~ Uniform{0..4} incorrect attempts then a correct one. The revision
  # verifier learns from `verifier_parallel` chains of `verifier_sequential`
  # attempts on the next `verifier_questions` training questions. A held-out
  # `holdout_fraction` of each question set is for early stopping. `seq_len`
  # must hold 4 attempts and the answer (4 × 130 + 130 tokens and a prompt).
  # `with_reference_solution` also counts the task's reference solution as a
  # correct attempt (off as in the paper; for policies that rarely solve).
  # `policy_data_fraction` of the revision model's training records are the
  # policy's own data, with no previous attempt, so that fine-tuning keeps
  # what the policy knew: its own samples of the revision questions, right or
  # wrong (`policy_data="samples"`), or reference solutions of further
  # training questions ("reference"), which make the first attempt better than
  # the policy's the longer the model trains (the policy is undertrained).
  # `keep_fraction` of the trajectories instead end with a correct attempt in
  # context that is also the target (the paper's data never shows a correct
  # previous attempt; test-time chains do).
  # Why these values (README, "Revisions"): the correct solution of a question
  # is unique, so 16 trajectories of one question repeat one target; 2000
  # questions × 16 samples × 4 trajectories cost the same samples as
  # 500 × 64 × 16; with the policy's samples as its data and 600 training
  # steps, attempt 4 − attempt 1 went from −0.315 to −0.050 in the full study.
  c.revision = config_dict.ConfigDict(dict(
      num_questions=2000, samples_per_question=16, trajectories_per_question=4,
      with_reference_solution=False, policy_data="samples", policy_data_fraction=0.5,
      keep_fraction=0.3, verifier_questions=300, verifier_sequential=4,
      verifier_parallel=4, questions_per_part=100, holdout_fraction=0.1, seq_len=704))

  # train_revision: fine-tuning the policy on the trajectories (loss on the
  # final attempt), early stopping on held-out next-token loss.
  c.revision_train = config_dict.ConfigDict(dict(
      batch_size=16, num_steps=600,
      **common.adamw(learning_rate=1e-3, warmup_steps=30, end_learning_rate_fraction=0.1),
      checkpoint_every=50, log_every=25, max_checkpoints=2, patience=3))

  # train_revision_verifier: as `verifier_train`, with smaller batches: its
  # rows hold up to 4 previous attempts (~700 tokens, against ~180 for the PRM).
  c.revision_verifier_train = config_dict.ConfigDict(dict(
      batch_size=16, num_steps=300,
      **common.adamw(learning_rate=1e-3, warmup_steps=30, end_learning_rate_fraction=0.1),
      dropout_rate=0.05, checkpoint_every=50, log_every=25, max_checkpoints=2, patience=2))

  # sweep_revisions: every split s × p = N (s = 1, 2, ..., N) of every budget
  # N = 1, 2, 4, ..., max_budget on the first `num_questions` test questions,
  # with three selectors, all read off one pool of chains per question
  # (`search/revision_pool.py`: 48 attempts up to N = 16, not 129); pools
  # of about `rows` questions run together. `splits` ("SxP" texts, e.g.
  # ("4x4", "16x1")) runs only those.
  c.sweep_revisions = config_dict.ConfigDict(dict(
      max_budget=16, num_questions=200, rows=512, splits=()))

  # difficulty: `num_samples` fresh policy samples (paper: 2048) for each of the
  # first `num_questions` test questions (the ones the sweeps evaluate),
  # binned into `num_bins` quantiles of pass@1 (oracle) and of the mean PRM
  # score (predicted). `select` chooses strategies per bin on those questions.
  # With the exact verifier swept, `step_success_samples` one-step samples
  # after each right prefix of the two hardest bins' questions give the policy's
  # per-step success rates: the engine check's "perfect search" (0: skip).
  c.difficulty = config_dict.ConfigDict(dict(num_questions=200, num_samples=64, num_bins=5,
                                             step_success_samples=64))

  # The larger policy of the FLOPs-matched comparison: the same data, training
  # settings and tokens as `model`, about 4x its parameters (wider, not deeper:
  # wider matmuls run closer to this CPU's peak). `flops_matched` compares it
  # greedy against the small policy with compute-optimal test-time compute at
  # R = D_inference / D_pretrain in `inference_ratios` (the paper's values).
  c.large_model = config_dict.ConfigDict(dict(
      num_layers=2, embed_dim=256, num_heads=8, num_kv_heads=8, head_dim=32,
      mlp_dim=576, activation="relu", dropout_rate=0.0, tie_embeddings=True,
      param_dtype="float32", compute_dtype="float32"))
  c.flops_matched = config_dict.ConfigDict(dict(inference_ratios=(0.16, 0.79, 22.0)))

  # ("data", "model") mesh; -1 takes the remaining devices.
  c.mesh = config_dict.ConfigDict(dict(
      data=-1, model=1,
      rules=(("batch", "data"), ("embed", None), ("mlp", "model"),
             ("heads", "model"), ("kv_heads", "model"), ("vocab", None),
             ("length", None), ("head_dim", None))))

  if variant == "paper":
    c.data.update(num_train=1_000_000, num_validation=5_000, num_test=4_000)
    c.model.update(num_layers=12, embed_dim=768, num_heads=12, num_kv_heads=4,
                   head_dim=64, mlp_dim=3072, activation="gelu")
    # 14x the policy's parameters, as in the paper's comparison.
    c.large_model.update(num_layers=32, embed_dim=2048, num_heads=16, num_kv_heads=4,
                         head_dim=128, mlp_dim=5632, activation="gelu")
    c.train.update(batch_size=256, num_steps=50_000, learning_rate=6e-4,
                   warmup_steps=2_000, checkpoint_every=2_000, log_every=100)
    c.sampling.batch_size = 1024
    c.eval.num_samples = 64
    c.mesh.update(data=-1, model=1)
  # After the variant's own changes, so that runlocal's sizes win over them.
  if variant == "tiny" or "runlocal" in parsed.options:
    c.task.max_ops = 3
    c.data.update(num_train=300, num_validation=40, num_test=48, seq_len=80)
    c.model.update(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1,
                   head_dim=16, mlp_dim=64)
    c.train.update(batch_size=8, num_steps=6, warmup_steps=2,
                   checkpoint_every=3, log_every=3)
    c.sampling.update(max_new_tokens=48, batch_size=64)
    c.eval.num_samples = 2
    c.prm.update(num_questions=40, samples_per_question=2, num_rollouts=4,
                 prefixes_per_part=16)
    c.verifier_train.update(batch_size=8, num_steps=6, warmup_steps=2,
                            checkpoint_every=3, log_every=3, patience=2)
    c.eval_prm.update(num_questions=16, pool_size=4, num_draws=8)
    # The exact verifier on best-of-N only (N <= 2): one program more to compile.
    c.search.update(max_budget=4, best_of_n_max_budget=4, num_questions=6,
                    max_step_tokens=16, max_rounds=8, rows=16, exact_max_budget=2)
    c.revision.update(num_questions=24, samples_per_question=4, trajectories_per_question=2,
                      with_reference_solution=True, policy_data_fraction=0.25,
                      verifier_questions=12, verifier_sequential=2, verifier_parallel=2,
                      questions_per_part=12, holdout_fraction=0.25, seq_len=272)
    c.revision_train.update(batch_size=8, num_steps=6, warmup_steps=2, checkpoint_every=3,
                            log_every=3, patience=2)
    c.revision_verifier_train.update(batch_size=8, num_steps=6, warmup_steps=2,
                                     checkpoint_every=3, log_every=3, patience=2)
    # Pools of 2 questions: three units, for the resume tests.
    c.sweep_revisions.update(max_budget=4, num_questions=6, rows=2)
    c.difficulty.update(num_questions=6, num_samples=4, num_bins=2, step_success_samples=4)
    c.large_model.update(num_layers=1, embed_dim=64, num_heads=2, num_kv_heads=2,
                         head_dim=32, mlp_dim=128)
  return c
