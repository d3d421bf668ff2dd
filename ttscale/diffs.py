"""The first field where two JSON-like trees differ, as a phrase for a user.

Guards that compare what a stored result was made with against what is asked
now (checkpoint specs, outcome-table metadata, stage inputs) name the field
that changed with this, rather than saying only that something did.
"""

from __future__ import annotations

from typing import Any


def first_difference(expected: Any, found: Any, prefix: str = "") -> str | None:
  """The first dotted field where two JSON-like trees differ, as a phrase.

  Returns:
    e.g. "model.num_layers=2 in the workdir, 4 now", "search.seed (present in
    only one)", or None when the trees are equal.
  """
  if isinstance(expected, dict) and isinstance(found, dict):
    # In the expected dict's order, so callers put the telling fields first.
    for key in [*expected, *(k for k in found if k not in expected)]:
      name = f"{prefix}.{key}" if prefix else str(key)
      if key not in expected or key not in found:
        return f"{name} (present in only one)"
      difference = first_difference(expected[key], found[key], name)
      if difference:
        return difference
    return None
  if expected != found:
    return f"{prefix}={found!r} in the workdir, {expected!r} now"
  return None
