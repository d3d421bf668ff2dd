"""Strings that stress the MATH grader, for its fuzz test and `launch/bench.py`.

`fuzzed_answers(seed, count)` returns `count` random mixtures of the pieces
answers are made of (LaTeX commands, braces, units, separators, "The answer
is"), up to 40 pieces long, followed by a fixed list of adversarial strings of
thousands of characters (deep nesting, long runs, unbalanced braces) that a
grader with super-linear parsing or unbounded recursion would choke on.
"""

from __future__ import annotations

import random

_PIECES = list("\\{}^_$%.,/-()[]= 0123456789xA") + [
    "\\frac", "\\dfrac", "\\boxed", "\\boxed{", "\\fbox{", "\\text{", "\\textbf{",
    "\\left", "\\right", "\\sqrt", "\\!", "\\%", "\\$", "{,}", "^\\circ", " cm",
    " units", "The answer is ", ". ", "\n", "1,000", "0.5",
]  # fmt: skip

ADVERSARIAL = (
    "{" * 5000, "}" * 5000, "\\frac" * 1000, "1," * 2000, "(" * 3000,
    "(" * 2500 + ")" * 2500, "\\boxed{" * 700 + "}" * 700, "\\text{" * 700 + "}" * 700,
    "\\frac{" * 700 + "1}" * 700, "1" + " " * 5000 + "cm", "1.0" + "0" * 5000 + "1",
    "9" * 5000, "1/" + "9" * 5000, "((1,2)," * 700, "The answer is " * 350,
    "\\" * 5000, "x=" * 2500, "[1," * 1600 + "2)", "\\sqrt" * 1000,
)  # fmt: skip


def fuzzed_answers(seed: int = 0, count: int = 3000) -> list[str]:
  """`count` random answer-like strings, then `ADVERSARIAL`; the same for a seed."""
  rng = random.Random(seed)
  strings = ["".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
             for _ in range(count)]
  return strings + list(ADVERSARIAL)
