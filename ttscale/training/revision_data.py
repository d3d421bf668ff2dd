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


def policy_data_count(num_trajectories: int, fraction: float) -> int:
  """How many policy-data records make `fraction` of all records."""
  return round(num_trajectories * fraction / (1.0 - fraction))


def policy_data_records(train_examples: list[Example], first: int, count: int,
                        holdout_seed: int, holdout_fraction: float) -> list[dict]:
  """The policy's own training data as reference solutions: `count` records,
  those of the training questions from `first` on, with no previous attempt
  (`revision.policy_data="reference"`). A held-out fraction validates, as for
  trajectories."""
  if first + count > len(train_examples):
    raise ValueError(f"revision.policy_data_fraction: needs {count} training questions after "
                     f"the first {first}; the train split has {len(train_examples)}")
  holdout = holdout_questions(count, holdout_fraction, holdout_seed)
  return [{"question_index": first + i, "question": e.question, "level": e.level,
           "holdout": i in holdout, "source": "policy_data", "previous": [],
           "target": e.solution}
          for i, e in enumerate(train_examples[first:first + count])]


def policy_sample_records(examples: list[Example], texts: list[list[str]], count: int,
                          holdout: set[int], rng: np.random.Generator) -> list[dict]:
  """The policy's own data as its own samples (`revision.policy_data="samples"`):
  `count` records, each a revision question drawn at random with one of the
  policy's samples of it, right or wrong, as the target and no previous attempt.

  Reference solutions teach the first attempt more than the policy knew (the
  policy is undertrained), so a revision model trained on them for longer
  starts better than the policy; its own samples keep the first attempt where
  the policy's is, and what later attempts gain is revision. A record is held
  out when its question is (`holdout`, the trajectories' split).

  Args:
    texts: [question][sample] the policy's samples of `examples`.
  """
  questions = rng.integers(len(examples), size=count)
  records = []
  for q in questions.tolist():
    samples = texts[q]
    records.append({"question_index": q, "question": examples[q].question,
                    "level": examples[q].level, "holdout": q in holdout,
                    "source": "policy_data", "previous": [],
                    "target": samples[int(rng.integers(len(samples)))]})
  return records


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
