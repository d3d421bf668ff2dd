"""The study on MATH, with released checkpoints as the policy.

Variants (`--config=configs/math.py:VARIANT`):
  gemma_2b_v5e  Gemma-2B policy and PRM, Gemma-7B as the larger model, on a
                TPU v5e slice (e.g. v5litepod-16); budgets as in the paper.
  gemma_2b_v4   the same on a TPU v4 slice (e.g. v4-32).
  local_tiny    a tiny checkpoint (`launch/tiny_math_files.py` writes a Llama
                one; any family of `checkpoint.format="hf"` runs) and a small
                MATH-layout directory, end to end on a CPU in minutes (what
                the tests run); also when none is named.

No options (`configs/common.py`): a released checkpoint fixes the model
block of the Gemma variants, so nothing can shrink them as arith.py's
`runlocal` does; `local_tiny` is the CPU-sized study.

Paths come from flags, e.g.

  python -m launch.main --config=configs/math.py:gemma_2b_v5e \\
      --config.data.manual_dir=gs://BUCKET/MATH \\
      --config.data.test_ids_file=gs://BUCKET/math_test500_ids.jsonl \\
      --config.checkpoint.policy=gs://BUCKET/gemma-2b \\
      --config.checkpoint.large=gs://BUCKET/gemma-7b \\
      --config.checkpoint.tokenizer=gs://BUCKET/gemma/tokenizer.model \\
      --workdir=gs://BUCKET/runs/math-2b

The `model` block (and `large_model`, when `checkpoint.large` is set) is read
from the checkpoint: its config.json (`checkpoint.format="hf"`) or the shapes
of a Gemma tree ("gemma"). Its architecture fields are placeholders
(`common.checkpoint_model_block`); one set by a flag
(`--config.model.num_layers=18`) is checked against the checkpoint, and a
difference is an error naming the field. Every other block is the embedded
study's (`configs/arith.py`), with the values below changed.
"""

from ml_collections import config_dict

from configs import arith, common

VARIANTS = ("gemma_2b_v5e", "gemma_2b_v4", "local_tiny")

# The tiny Llama `launch/tiny_math_files.py` writes for `local_tiny` (its
# config.json says the same; `local_tiny` reads it from there).
LOCAL_TINY_MODEL = dict(
    num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
    activation="silu", rope_base=10_000.0, tie_embeddings=False)

# FSDP over "data" and tensor parallelism over "model": a parameter's "embed"
# axis is split over data, its heads/MLP/vocab axes over model. A mesh axis
# splits at most one dimension of an array, so activations keep "batch" on data.
_FSDP_TP_RULES = (("batch", "data"), ("embed", "data"), ("mlp", "model"),
                  ("heads", "model"), ("kv_heads", None), ("vocab", "model"),
                  ("length", None), ("head_dim", None))


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The MATH study's settings for the variant `arg` (module docstring).

  Raises:
    ValueError: one line naming an unknown variant, or any option.
  """
  variant = common.parse_arg(arg, variants=VARIANTS, default="local_tiny").variant
  c = arith.get_config("tiny" if variant == "local_tiny" else "default")
  c.variant = variant
  c.task = config_dict.ConfigDict(dict(name="math", few_shot_file=""))
  # `test_split` "test500" (the paper's) needs `test_ids_file`.
  # `too_long` as in configs/arith.py: MATH has solutions longer than a small
  # `seq_len` (local_tiny's 96); they are left out of training by default.
  c.data = config_dict.ConfigDict(dict(
      manual_dir="", test_ids_file="", test_split="test", seq_len=2048, too_long="skip"))
  # The released Gemma embeddings have 256128 rows for 256000 tokenizer pieces:
  # `trim_vocab` drops the padding rows (never a token's, so no logit of a
  # real token changes).
  # `prm`: the PRM's trunk from another checkpoint of the policy's shape and
  # tokenizer (empty: from the trained policy, as in the paper).
  c.checkpoint = config_dict.ConfigDict(dict(
      format="gemma", policy="", large="", prm="", tokenizer="", trim_vocab=True))
  c.model = common.checkpoint_model_block(dropout_rate=0.0)
  # MATH has no exact step labels: the learned PRM is the only verifier. The
  # PRM is the paper's: fine-tuned from the policy (or `checkpoint.prm`),
  # reading only its own value head, its last step's score kept.
  c.search.verifiers = ("prm",)
  c.search.step_aggregation = "last"
  c.verifier_train.update(trunk="policy", step_likelihood=False)
  if variant == "local_tiny":
    return _local_tiny(c)

  # Gemma-2B and Gemma-7B (`checkpoint.policy`, `.large`), read from their
  # checkpoints. bfloat16 compute (the TPU's matmul rate, half the
  # activations and KV cache) from float32 parameters (fine-tuning keeps
  # full-precision weights).
  c.model.compute_dtype = "bfloat16"
  c.large_model = common.checkpoint_model_block(dropout_rate=0.0,
                                                compute_dtype="bfloat16")
  c.data.test_split = "test500"
  # The base policies are used as released, few-shot prompted (train.num_steps
  # = 0 saves the imported weights as the policy's checkpoint).
  c.train.update(num_steps=0, batch_size=64, learning_rate=1e-5, warmup_steps=0)
  c.sampling.update(temperature=1.0, max_new_tokens=512, batch_size=512)
  c.eval.num_samples = 16
  # The paper's PRM: 16 rollouts per step, fine-tuned at lr 3e-5, batch 128,
  # dropout 0.05.
  c.prm.update(num_questions=12_000, samples_per_question=16, num_rollouts=16,
               prefixes_per_part=4096)
  c.verifier_train.update(batch_size=128, num_steps=3_000, learning_rate=3e-5,
                          warmup_steps=100, checkpoint_every=250, log_every=50)
  c.eval_prm.update(num_questions=500, pool_size=256)
  c.search.update(max_budget=256, best_of_n_max_budget=256, num_questions=500,
                  max_rounds=40, max_step_tokens=128, rows=1024)
  # The paper's recipe only: 16 trajectories of a question's 64 samples, no
  # kept attempts, none of the policy's own data mixed in.
  c.revision.update(num_questions=12_000, samples_per_question=64, seq_len=4096,
                    trajectories_per_question=16, keep_fraction=0.0,
                    questions_per_part=500, verifier_questions=2_000,
                    policy_data_fraction=0.0)
  c.revision_train.update(batch_size=32, num_steps=2_000, learning_rate=1e-5,
                          checkpoint_every=250, log_every=50)
  c.revision_verifier_train.update(batch_size=32, num_steps=2_000, learning_rate=3e-5,
                                   checkpoint_every=250, log_every=50)
  c.sweep_revisions.update(max_budget=128, num_questions=500, rows=1024)
  c.difficulty.update(num_questions=500, num_samples=2048, num_bins=5, step_success_samples=0)
  c.mesh.update(data=-1, model=4 if variant == "gemma_2b_v5e" else 8,
                rules=_FSDP_TP_RULES)
  return c


def _local_tiny(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """A tiny policy from a Hugging Face checkpoint (its shape from its
  config.json) on a few MATH-layout files; the larger model is arith's tiny
  one, trained from scratch."""
  c.checkpoint.update(format="hf", trim_vocab=False)
  c.data.seq_len = 96
  c.train.update(num_steps=3, checkpoint_every=3, log_every=3)
  c.sampling.update(max_new_tokens=32, batch_size=32)
  c.prm.update(num_questions=8, samples_per_question=4, num_rollouts=2, prefixes_per_part=64)
  c.eval_prm.update(num_questions=6, pool_size=4, num_draws=4)
  c.search.update(num_questions=4, max_step_tokens=12, max_rounds=4, rows=16)
  c.revision.update(num_questions=8, samples_per_question=2, trajectories_per_question=1,
                    verifier_questions=4, questions_per_part=8, seq_len=512)
  # A few packed rows of trajectories: small batches.
  c.revision_train.batch_size = 2
  c.revision_verifier_train.batch_size = 2
  c.sweep_revisions.update(num_questions=4, rows=16)
  c.difficulty.update(num_questions=4, num_samples=4, num_bins=2)
  return c
