"""The revision model's training data: trajectories of incorrect attempts then a
correct one, the policy's own data mixed in, and their token sequences."""

from __future__ import annotations

import collections

import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.tasks.base import Example, Task
from ttscale.tasks.revision import build_keep_trajectory, build_trajectory, revision_context
from ttscale.training.labelled_records import holdout_questions


def trajectory_records(task: Task, examples: list[Example], texts: list[list[str]],
                       holdout: set[int], revision_config, rng: np.random.Generator
                       ) -> tuple[list[dict], list[bool]]:
  """Per question, `trajectories_per_question` trajectories from its samples
  (`tasks/revision.py`: k incorrect attempts then a correct one; with
  `keep_fraction`, a correct attempt kept); and every sample's grade.

  Args:
    texts: [question][sample] the policy's sampled solutions.
    revision_config: the `revision` block (`trajectories_per_question`,
      `keep_fraction`, `with_reference_solution`).

  Returns:
    (records {"question_index", "question", "level", "holdout", "source",
    "previous", "target"}, grades of the samples in order).
  """
  r = revision_config
  records, sample_correct = [], []
  for q, (example, samples) in enumerate(zip(examples, texts, strict=True)):
    graded = [task.grade(task.extract_answer(t), example.answer) for t in samples]
    sample_correct.extend(graded)
    correct = [t for t, g in zip(samples, graded, strict=True) if g]
    incorrect = [t for t, g in zip(samples, graded, strict=True) if not g]
    if r.with_reference_solution:
      correct.append(example.solution)
    for _ in range(r.trajectories_per_question):
      # No draw when off: the paper's trajectories stay those of earlier runs.
      keep = r.keep_fraction > 0 and rng.random() < r.keep_fraction
      trajectory = (build_keep_trajectory if keep else build_trajectory)(correct, incorrect, rng)
      if trajectory is not None:
        records.append({"question_index": q, "question": example.question,
                        "level": example.level, "holdout": q in holdout,
                        "source": "keep" if keep else "trajectory", **trajectory})
  return records, sample_correct


def policy_data_records(train_examples: list[Example], first: int, num_trajectories: int,
                        fraction: float, holdout_seed: int, holdout_fraction: float
                        ) -> list[dict]:
  """The policy's own training data mixed into the revision model's: reference
  solutions of the training questions from `first` on, with no previous
  attempt, `fraction` of all records (so that fine-tuning on long revision
  contexts keeps what the policy knew about first attempts). A held-out
  fraction validates, as for trajectories."""
  count = round(num_trajectories * fraction / (1.0 - fraction))
  if first + count > len(train_examples):
    raise ValueError(f"revision.policy_data_fraction={fraction}: needs {count} training "
                     f"questions after the first {first}; the train split has "
                     f"{len(train_examples)}")
  holdout = holdout_questions(count, holdout_fraction, holdout_seed)
  return [{"question_index": first + i, "question": e.question, "level": e.level,
           "holdout": i in holdout, "source": "policy_data", "previous": [],
           "target": e.solution}
          for i, e in enumerate(train_examples[first:first + count])]


def revision_sequences(tokenizer: Tokenizer, task: Task, records: list[dict]
                       ) -> tuple[list[list[int]], list[list[bool]]]:
  """Token sequences (bos, context, target, eos) and their loss masks (target + eos)."""
  sequences, masks = [], []
  for record in records:
    context = [tokenizer.bos_id] + tokenizer.encode(
        revision_context(task, record["question"], record["previous"]))
    target = tokenizer.encode(record["target"]) + [tokenizer.eos_id]
    sequences.append(context + target)
    masks.append([False] * len(context) + [True] * len(target))
  return sequences, masks


def data_summary(records: list[dict], sample_correct, num_questions: int,
                 samples_per_question: int, parts: list[dict]) -> dict:
  """The `revision_data` stage's summary: what the records are made of and
  how fast the samples came (`parts`: the sampled parts, with their tokens
  and seconds)."""
  ks = collections.Counter(len(t["previous"]) for t in records if t["source"] == "trajectory")
  sources = collections.Counter(t["source"] for t in records)
  tokens = sum(p["generated_tokens"] for p in parts)
  return {
      "num_questions": num_questions, "samples_per_question": samples_per_question,
      "sample_accuracy": float(np.mean(sample_correct)),
      "questions_with_a_correct_sample": len({t["question_index"] for t in records}),
      "num_trajectories": sources["trajectory"], "num_keep_trajectories": sources["keep"],
      "num_policy_data_records": sources["policy_data"],
      "previous_attempts_histogram": {str(k): ks[k] for k in sorted(ks)},
      "sampled_tokens": tokens,
      "sampled_tokens_per_second": round(tokens / max(sum(p["seconds"] for p in parts), 1e-9)),
  }
