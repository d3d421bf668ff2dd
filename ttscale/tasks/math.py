"""The MATH task (Hendrycks et al. 2021), as used by Snell et al. 2024.

Format
------
The prompt is the optional few-shot prefix, inserted verbatim, then the
question between two headers, ending with the step delimiter ("\\n")::

    <few_shot_prefix>Problem:
    <question>
    Solution:
    <the model writes its solution here>

The prefix (from `task.few_shot_file`) is usually worked examples in this same
format, each ended by a blank line; it is not separated from "Problem:" by
anything, so it should end with its own newlines. A solution is free text whose
steps are its non-blank lines. The final answer is the content of the last
`\\boxed{...}` (or `\\boxed 5`, or `\\fbox{...}`), as in the MATH reference
solutions; without one, it is the rest of the last "The answer is ..." or
"The final answer is ..." sentence (the Minerva few-shot format). MATH has no
exact per-step labels, so `step_labels` returns None.

Grading
-------
Answers are compared after `normalize_answer`, in the manner of the Hendrycks
`is_equiv` and Minerva `normalize_final_answer` graders: LaTeX spacing,
`\\left`/`\\right`, `\\text{...}`-like wrappers, units after a number, degree,
percent and dollar signs, "x=" prefixes and thousands separators are removed,
and the shorthands `\\frac12`, `\\sqrt2`, `3/4` are spelled out. Two answers are
equivalent when their normal forms are equal; or when both are plain numbers
(integers, decimals, `\\frac{int}{int}` or `int/int`) of equal exact value
(`fractions.Fraction`, so 0.5 equals 1/2 but 0.33 does not equal 1/3); or when
both are tuples, intervals or bare comma lists with the same brackets whose
elements are equivalent in order. There is no algebra: "x+1" does not equal
"1+x", nor "\\sqrt{8}" equal "2\\sqrt{2}". Some deliberate choices:

- "10\\%" equals "10", not "0.1": the percent sign is dropped, as MATH does.
- "1,000" is one thousand (every group after the first has exactly 3 digits
  and the first has 1 to 3); "1,2" and "12,34" are lists, never numbers.
- A list is not a tuple: "1,2" does not equal "(1,2)", nor "A" equal "(A)";
  "[1,2)" does not equal "(1,2)".
- Comparison is case-sensitive ("x" is not "X" in LaTeX).
- An answer that normalises to the empty string equals nothing.

Grading never evaluates text: only string operations, and `Fraction` on
strings that passed a strict numeric regex. Every regex runs in linear time,
answers over `MAX_ANSWER_CHARS` are compared by normal form only, and numbers
with more than `MAX_NUMBER_DIGITS` digits are never parsed, so a model's
degenerate output (thousands of braces) cannot hang grading.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

# Longer answers are compared by normal form only: no number or tuple parsing.
MAX_ANSWER_CHARS = 1000
# Longer numbers are compared as strings; Fraction on them would be slow.
MAX_NUMBER_DIGITS = 100
# Tuples nest at most this deep for element-wise comparison ("((1,2),(3,4))").
_MAX_TUPLE_DEPTH = 3

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_SENTENCE = re.compile(r"the (?:final )?answer is", re.IGNORECASE)
# A sentence ends at a period followed by whitespace or the end of the text;
# "3.5" has no such period.
_SENTENCE_END = re.compile(r"\.(?:\s|$)")

# Removed outright. `\left` and `\right` only as whole commands, so that
# `\leftarrow` survives.
_REMOVED_COMMANDS = re.compile(
  r"\\(?:left|right)(?:\.|(?![A-Za-z]))|\\(?:displaystyle|qquad|quad)(?![A-Za-z])|\\[!,;: ]"
)
_DEGREE_SIGNS = ("^{\\circ}", "^\\circ", "\\degree", "°")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mbox)\{")
# Unit words are removed only right after a number (a digit, or the closing
# brace of `\frac{..}{..}`), so that a word answer like "units" is kept.
_UNIT_WORDS = (
  "units unit degrees degree cm centimeters centimetres mm meters metres meter km "
  "kilometers inches inch feet foot ft yards miles mph dollars dollar cents cent "
  "hours hour minutes minute seconds pounds lbs grams kg days weeks years points"
).split()
_UNITS = re.compile(
  r"(?<=[0-9}])\s*+(?:(?:square|sq\.?|cubic)\s*+)?(?:"
  + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True))
  + r")(?:\^\{?[23]\}?)?(?![A-Za-z])"
)
_SHORTHAND_COMMAND = re.compile(r"\\(?:frac|sqrt)(?![A-Za-z])")
_VARIABLE_PREFIX = re.compile(r"[A-Za-z]=")
_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_LEADING_POINT = re.compile(r"(?<![0-9A-Za-z}.])\.(?=[0-9])")
_INTEGER_POINT_ZEROS = re.compile(r"(?<![0-9.])([0-9]++)\.0++(?![0-9])")
_INTEGER_RATIO = re.compile(r"(-?)([0-9]+)/([0-9]+)")

_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_FRAC = re.compile(r"(-?)\\frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}")
_RATIO = re.compile(r"(-?[0-9]+)/(-?[0-9]+)")

_OPENING = "([{"
_CLOSING = ")]}"


def _matching_braces(text: str) -> list[int]:
  """Returns, for each index of an unescaped "{" or "}", its partner's index.

  Other indices, and braces without a partner, map to -1. A backslash escapes
  the next character, so `\\{` and `\\}` (literal braces) are not groups.
  """
  partner = [-1] * len(text)
  open_indices = []
  index = 0
  while index < len(text):
    char = text[index]
    if char == "\\":
      index += 2
      continue
    if char == "{":
      open_indices.append(index)
    elif char == "}" and open_indices:
      opening = open_indices.pop()
      partner[opening] = index
      partner[index] = opening
    index += 1
  return partner


def _group_end(text: str, opening: int) -> int | None:
  """Returns the index of the "}" closing the "{" at `opening`, or None."""
  depth = 0
  index = opening
  while index < len(text):
    char = text[index]
    if char == "\\":
      index += 2
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return index
    index += 1
  return None


def _last_boxed(text: str) -> str | None:
  """Returns the content of the last `\\boxed`/`\\fbox` in `text`, or None.

  None also when that last one is malformed (unbalanced braces, no argument):
  an earlier box is a superseded answer, not a fallback.
  """
  start = max(text.rfind(command) for command in _BOX_COMMANDS)
  if start < 0:
    return None
  command = next(command for command in _BOX_COMMANDS if text.startswith(command, start))
  after_command = start + len(command)
  argument = len(text) - len(text[after_command:].lstrip(" "))
  if text.startswith("{", argument):
    end = _group_end(text, argument)
    return None if end is None else text[argument + 1 : end]
  if argument > after_command:
    # `\boxed 5`: the argument is one token, ended by whitespace or `$`.
    return re.split(r"[\s$]", text[argument:], maxsplit=1)[0]
  return None


def _answer_sentence(text: str) -> str | None:
  """Returns the rest of the last "The (final) answer is" sentence, or None."""
  last_match = collections.deque(_ANSWER_SENTENCE.finditer(text), maxlen=1)
  if not last_match:
    return None
  rest = text[last_match[0].end() :].split("\n", 1)[0]
  end = _SENTENCE_END.search(rest)
  if end is not None:
    rest = rest[: end.start()]
  rest = rest.strip().removeprefix(":").strip().removesuffix(".").strip()
  if any(command in rest for command in _BOX_COMMANDS):
    return _last_boxed(rest)
  return rest


def _unwrap_text(text: str) -> str:
  """Returns `text` with `\\text{X}`-like wrappers replaced by X, nested too.

  Leaves `text` unchanged when a wrapper's braces are unbalanced.
  """
  pieces = []
  # One entry per open group: whether its closing brace is kept.
  keep_closing = []
  index = 0
  while index < len(text):
    char = text[index]
    if char == "\\":
      wrapper = _TEXT_WRAPPER.match(text, index)
      if wrapper:
        keep_closing.append(False)
        index = wrapper.end()
        continue
      pieces.append(text[index : index + 2])
      index += 2
      continue
    if char == "{":
      keep_closing.append(True)
    elif char == "}" and keep_closing and not keep_closing.pop():
      index += 1
      continue
    pieces.append(char)
    index += 1
  if False in keep_closing:
    return text
  return "".join(pieces)


def _spell_out_arguments(text: str) -> str:
  """Returns `text` with `\\frac12`, `\\frac1b`, `\\sqrt2` written with braces.

  As in LaTeX, a brace-less argument is one character: `\\frac123` is
  `\\frac{1}{2}3`. The first argument must be a digit or a group, since a
  letter would make a longer command name (`\\fracab` is not a fraction).
  """
  if "\\frac" not in text and "\\sqrt" not in text:
    return text
  partner = _matching_braces(text)
  wrap_at = set()
  pieces = []
  index = 0
  while index < len(text):
    if index in wrap_at:
      pieces.append("{" + text[index] + "}")
      index += 1
      continue
    if text[index] != "\\":
      pieces.append(text[index])
      index += 1
      continue
    command = _SHORTHAND_COMMAND.match(text, index)
    if command is None:
      pieces.append(text[index : index + 2])
      index += 2
      continue
    num_arguments = 2 if command.group() == "\\frac" else 1
    argument = command.end()
    for argument_index in range(num_arguments):
      if argument >= len(text):
        break
      char = text[argument]
      single = char.isascii() and (char.isdigit() or (argument_index > 0 and char.isalpha()))
      if single:
        wrap_at.add(argument)
        argument += 1
      elif char == "{" and partner[argument] >= 0:
        argument = partner[argument] + 1
      else:
        break
    pieces.append(command.group())
    index = command.end()
  return "".join(pieces)


def _peel(text: str) -> str:
  """Returns `text` without surrounding `{...}` and `\\boxed{...}` layers."""
  partner = _matching_braces(text)
  start, end = 0, len(text)  # the kept text is text[start:end]
  while start < end:
    box = next((box for box in _BOX_COMMANDS if text.startswith(box + "{", start, end)), None)
    if box is not None and partner[start + len(box)] == end - 1:
      start += len(box) + 1
    elif text[start] == "{" and partner[start] == end - 1:
      start += 1
    else:
      break
    end -= 1
  return text[start:end]


def _strip_trailing_period(text: str) -> str:
  # An ellipsis ("1,2,...") is not a sentence end.
  if text.endswith(".") and not text.endswith(".."):
    return text[:-1]
  return text


def normalize_answer(text: str) -> str:
  """Returns the normal form of a final answer, for string comparison.

  E.g. "\\boxed{\\dfrac12}" -> "\\frac{1}{2}", "x = 5 \\text{ cm}" -> "5",
  "\\$1,000.00" -> "1000", ".5" -> "0.5", "\\left( 1, 2 \\right)" -> "(1,2)".
  See the module docstring for the rules; runs in time linear in len(text).
  """
  text = text.strip()
  text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  text = _REMOVED_COMMANDS.sub("", text)
  text = text.replace("{,}", ",")
  for sign in _DEGREE_SIGNS:
    text = text.replace(sign, "")
  text = text.replace("\\%", "").replace("%", "")
  text = text.replace("\\$", "").replace("$", "")
  text = _unwrap_text(text)
  text = _UNITS.sub("", text)
  text = "".join(text.split())
  text = _spell_out_arguments(text)
  text = _peel(_strip_trailing_period(text))
  if _VARIABLE_PREFIX.match(text):
    text = _peel(text[2:])
  if _THOUSANDS.fullmatch(text):
    text = text.replace(",", "")
  text = _LEADING_POINT.sub("0.", text)
  text = _INTEGER_POINT_ZEROS.sub(r"\1", text)
  ratio = _INTEGER_RATIO.fullmatch(text)
  if ratio:
    sign, numerator, denominator = ratio.groups()
    text = f"{sign}\\frac{{{numerator}}}{{{denominator}}}"
  return text


def _parse_number(text: str) -> Fraction | None:
  """Returns the exact value of a plain number in normal form, else None.

  Plain numbers are integers, decimals, `\\frac{int}{int}` and `int/int`,
  optionally negative; a zero denominator is not a number.
  """
  if sum(char.isdigit() for char in text) > MAX_NUMBER_DIGITS:
    return None
  if _DECIMAL.fullmatch(text):
    return Fraction(text)
  frac = _FRAC.fullmatch(text)
  ratio = _RATIO.fullmatch(text)
  if frac:
    sign, numerator, denominator = frac.groups()
  elif ratio:
    sign, (numerator, denominator) = "", ratio.groups()
  else:
    return None
  if int(denominator) == 0:
    return None
  value = Fraction(int(numerator), int(denominator))
  return -value if sign else value


def _split_tuple(text: str) -> tuple[str, str, list[str]] | None:
  """Returns (opening, closing, elements) of a tuple, interval or list.

  "(1,2]" -> ("(", "]", ["1", "2"]); "1,2" -> ("", "", ["1", "2"]). Commas
  inside brackets or braces do not split. None when `text` is neither one
  bracketed sequence nor a bare list of two or more elements.
  """
  # Commas at depth 1 split an enclosed sequence, at depth 0 a bare list; which
  # one it is is known only at the end.
  commas_by_depth: tuple[list[int], list[int]] = ([], [])
  depth = 0
  enclosed = len(text) >= 2 and text[0] in "([" and text[-1] in ")]"
  index = 0
  while index < len(text):
    char = text[index]
    if char == "\\":
      index += 2
      continue
    if char in _OPENING:
      depth += 1
    elif char in _CLOSING:
      depth -= 1
      if depth < 0:
        return None
      # The first bracket closing before the end: "(1)+(2)" is not a tuple.
      if depth == 0 and index < len(text) - 1:
        enclosed = False
    elif char == "," and depth <= 1:
      commas_by_depth[depth].append(index)
    index += 1
  if depth != 0:
    return None
  if enclosed:
    opening, closing, inner, offset = text[0], text[-1], text[1:-1], 1
    commas = commas_by_depth[1]
  elif commas_by_depth[0]:
    opening, closing, inner, offset = "", "", text, 0
    commas = commas_by_depth[0]
  else:
    return None
  bounds = [-1, *(comma - offset for comma in commas), len(inner)]
  elements = [inner[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
  return opening, closing, elements


def _normal_forms_equivalent(first: str, second: str, depth: int = 0) -> bool:
  if not first or not second:
    return False
  if first == second:
    return True
  first_value, second_value = _parse_number(first), _parse_number(second)
  if first_value is not None and second_value is not None:
    return first_value == second_value
  if depth >= _MAX_TUPLE_DEPTH:
    return False
  first_tuple, second_tuple = _split_tuple(first), _split_tuple(second)
  if first_tuple is None or second_tuple is None:
    return False
  first_opening, first_closing, first_elements = first_tuple
  second_opening, second_closing, second_elements = second_tuple
  return (
    (first_opening, first_closing) == (second_opening, second_closing)
    and len(first_elements) == len(second_elements)
    and all(
      _normal_forms_equivalent(a, b, depth + 1)
      for a, b in zip(first_elements, second_elements, strict=True)
    )
  )


def is_equivalent(first: str, second: str) -> bool:
  """Returns whether two final answers are equivalent (see the module docstring).

  Symmetric. Answers longer than `MAX_ANSWER_CHARS` are compared by normal
  form only.
  """
  first_normal, second_normal = normalize_answer(first), normalize_answer(second)
  if max(len(first), len(second), len(first_normal), len(second_normal)) > MAX_ANSWER_CHARS:
    return bool(first_normal) and first_normal == second_normal
  return _normal_forms_equivalent(first_normal, second_normal)


def _read_few_shot_file(path: Any) -> str:
  if not isinstance(path, str | os.PathLike):
    raise TypeError(f"task.few_shot_file must be a path string, got {path!r}")
  try:
    with open(path, encoding="utf-8") as file:
      return file.read()
  except (OSError, UnicodeDecodeError) as error:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    # One line: the error names the field and the path, nothing else to parse.
    message = f"cannot read task.few_shot_file {os.fspath(path)!r}: {reason}"
    raise ValueError(" ".join(message.split())) from error


@dataclasses.dataclass(frozen=True)
class MathTask:
  """The MATH task; see the module docstring for the format and grading.

  Attributes:
    few_shot_prefix: text put before every prompt, verbatim (usually worked
      examples in the prompt format, each ended by a blank line).
  """

  few_shot_prefix: str = ""
  name: str = dataclasses.field(default="math", init=False)
  step_delimiter: str = dataclasses.field(default="\n", init=False)

  def __post_init__(self):
    if not isinstance(self.few_shot_prefix, str):
      raise TypeError(f"task.few_shot_prefix must be a string, got {self.few_shot_prefix!r}")

  @classmethod
  def from_config(cls, task_config: Mapping[str, Any]) -> MathTask:
    """Builds the task from the `task` config (`name` is ignored).

    Keys: `few_shot_file`, a UTF-8 text file whose content becomes the
    few-shot prefix (None or "" for none), or `few_shot_prefix`, the prefix
    itself; at most one of the two.

    Raises:
      ValueError: a key is unknown, both keys are set, or the file cannot be
        read (the message names `task.few_shot_file` and the path).
      TypeError: a value has the wrong type.
    """
    knobs = {key: value for key, value in task_config.items() if key != "name"}
    known = ["few_shot_file", "few_shot_prefix"]
    unknown = sorted(set(knobs) - set(known))
    if unknown:
      raise ValueError(
        f"unknown field task.{unknown[0]} for task 'math'; "
        f"known fields: {', '.join(['name', *known])}"
      )
    few_shot_file = knobs.get("few_shot_file")
    if few_shot_file in (None, ""):
      return cls(few_shot_prefix=knobs.get("few_shot_prefix", ""))
    if knobs.get("few_shot_prefix"):
      raise ValueError("set at most one of task.few_shot_file and task.few_shot_prefix")
    return cls(few_shot_prefix=_read_few_shot_file(few_shot_file))

  def prompt(self, question: str) -> str:
    """Returns the few-shot prefix, then "Problem:\\n{question}\\nSolution:\\n"."""
    return f"{self.few_shot_prefix}Problem:\n{question}\nSolution:{self.step_delimiter}"

  def split_steps(self, solution: str) -> list[str]:
    """Returns the lines of `solution` that are not blank, unmodified."""
    return [line for line in solution.split(self.step_delimiter) if line.strip()]

  def extract_answer(self, solution: str) -> str | None:
    """Returns the final answer of `solution` as written, or None.

    The content of the last `\\boxed{...}` (`\\boxed 5`, `\\fbox{...}`), braces
    matched by nesting; if there is none, the rest of the last "The (final)
    answer is ..." sentence without its period. None when there is neither,
    when that last box is unbalanced, or when the answer is blank.
    """
    if any(command in solution for command in _BOX_COMMANDS):
      answer = _last_boxed(solution)
    else:
      answer = _answer_sentence(solution)
    if answer is None or not answer.strip():
      return None
    return answer.strip()

  def grade(self, answer: str | None, reference: str) -> bool:
    """Returns whether `answer` is equivalent to `reference`; None never is."""
    if answer is None:
      return False
    return is_equivalent(answer, reference)

  def step_labels(self, question: str, solution: str) -> None:
    """Returns None: MATH has no exact per-step labels."""
    del question, solution  # the protocol's signature; no labels to compute
    return None
