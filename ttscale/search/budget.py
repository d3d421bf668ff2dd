"""The budget grid, the search configurations of the study, and exact FLOPs.

Budgets are counted two ways:
- generations, the paper's count: N for best-of-N and beam search, N·(k+1)
  for lookahead search of depth k;
- FLOPs, ours: every token a model processed for the question, at
  `ModelConfig.flops_per_token(context)` each — policy prompt prefill, policy
  decode, verifier prompt prefill, verifier step tokens, lookahead rollout
  tokens (policy and verifier). Work spent on padding rows or on rows that
  already stopped is not counted: it is an artefact of fixed shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp

from ttscale.models.config import ModelConfig

METHODS = ("best_of_n", "beam", "lookahead", "dvts")
TREE_METHODS = ("beam", "lookahead", "dvts")  # PRM-guided tree search, one program
# Who scores steps: the learned PRM, or (tasks with exact step labels) the
# exact verifier, a check of the engine that never enters selection unless asked.
VERIFIERS = ("prm", "exact")


@dataclasses.dataclass(frozen=True)
class SearchSetting:
  """One configuration of a search method at one budget.

  - `best_of_n`: N independent samples.
  - `beam` (k = 0) and `lookahead` (k > 0): N/M beams kept per question, each
    expanded M ways.
  - `dvts`: N/M independent subtrees per question, each a greedy beam of
    width M (keeps its best row, expands it M ways); never exchanges rows.
  """
  method: str          # one of METHODS
  budget: int          # N
  beam_width: int = 0  # M (tree methods)
  lookahead: int = 0   # k (lookahead): greedy steps rolled out before scoring
  distinct: bool = True  # tree methods: token-identical prefixes count once when kept
  verifier: str = "prm"  # who scores steps (VERIFIERS)

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"search method {self.method!r}: expected one of {', '.join(METHODS)}")
    if self.verifier not in VERIFIERS:
      raise ValueError(f"verifier {self.verifier!r}: expected one of {', '.join(VERIFIERS)}")
    if self.budget < 1:
      raise ValueError(f"budget N={self.budget}: expected >= 1")
    if self.method == "best_of_n":
      if self.beam_width or self.lookahead or not self.distinct:
        raise ValueError("best_of_n takes no beam width, lookahead or distinct")
      return
    if self.beam_width < 1 or self.budget % self.beam_width:
      raise ValueError(f"beam width M={self.beam_width} must divide the budget N={self.budget}")
    if self.method in ("beam", "dvts") and self.lookahead:
      raise ValueError(f"{self.method} has lookahead k=0; use method 'lookahead' for k > 0")
    if self.method == "lookahead" and self.lookahead < 1:
      raise ValueError(f"lookahead k={self.lookahead}: expected >= 1 (k=0 is beam search)")

  @property
  def group_size(self) -> int:
    """Rows that compete for the kept beams: a question's N, or a DVTS subtree's M."""
    return self.beam_width if self.method == "dvts" else self.budget

  @property
  def params(self) -> str:
    """Hyperparameters as canonical text, the outcome table's `params`.

    Defaults (distinct beams, the PRM) are left out, so the paper's settings
    read as before: `M=4,k=0`; others are named: `M=4,k=0,distinct=0`,
    `verifier=exact`.
    """
    parts = [] if self.method == "best_of_n" else [f"M={self.beam_width}",
                                                  f"k={self.lookahead}"]
    if not self.distinct:
      parts.append("distinct=0")
    if self.verifier != "prm":
      parts.append(f"verifier={self.verifier}")
    return ",".join(parts)

  @property
  def generations(self) -> int:
    """The paper's cost: N, or N·(k+1) with lookahead."""
    return self.budget * (self.lookahead + 1)


def budget_grid(max_budget: int, field: str = "search.max_budget") -> list[int]:
  """1, 2, 4, ..., max_budget (a power of 2, the config's `field`)."""
  if max_budget < 1 or max_budget & (max_budget - 1):
    raise ValueError(f"{field}={max_budget}: expected a power of 2")
  return [2 ** i for i in range(int(math.log2(max_budget)) + 1)]


def check_on_grid(budget: int, grid: list[int]) -> None:
  if budget not in grid:
    raise ValueError(f"budget N={budget} is not on the grid {grid}")


def paper_settings(grid: list[int], best_of_n_grid: list[int] | None = None,
                   distinct: bool = True, verifier: str = "prm") -> list[SearchSetting]:
  """Every configuration of the paper's Fig. 3 at every budget of `grid`, and DVTS.

  Best-of-N weighted (on `best_of_n_grid`, default `grid`); beam search with
  M=4 and M=√N; lookahead k=3 with M=4 and M=√N; lookahead k=1 with M=√N;
  DVTS with M=4 (N/4 subtrees) from N=8, and M=2 at N=4 (with M=4 it would
  be one subtree: beam search M=4).
  M=4 needs N ≥ 4 (N/M beams); M=√N needs N a power of 4 (N = 1 has M = 1:
  no search, left out).
  """
  settings = [SearchSetting("best_of_n", n, verifier=verifier)
              for n in best_of_n_grid or grid]
  tree = functools.partial(SearchSetting, distinct=distinct, verifier=verifier)
  for n in grid:
    root = math.isqrt(n)
    square = root * root == n and n > 1
    widths = ({4} if n >= 4 else set()) | ({root} if square else set())  # √16 = 4: once
    for m in sorted(widths):
      settings.append(tree("beam", n, beam_width=m))
      settings.append(tree("lookahead", n, beam_width=m, lookahead=3))
    if square:
      settings.append(tree("lookahead", n, beam_width=root, lookahead=1))
    if n >= 4:
      settings.append(tree("dvts", n, beam_width=4 if n >= 8 else 2))
  return settings


_SETTING_KEYS = {"N": "budget", "M": "beam_width", "k": "lookahead", "distinct": "distinct",
                 "verifier": "verifier"}


def parse_setting(text: str, grid: list[int], field: str = "search.extra_settings"
                  ) -> SearchSetting:
  """A setting from text: `best_of_n:N=8`, `beam:N=16,M=2`, `lookahead:N=16,M=2,k=2`,
  `dvts:N=16,M=4`; options `distinct=0` (keep copies) and `verifier=exact`.

  Raises ValueError, naming `field`, for an unknown method or key, a budget off
  `grid`, or an M that does not divide N.
  """
  method, _, rest = text.partition(":")
  values = {}
  for item in filter(None, rest.split(",")):
    key, _, value = item.partition("=")
    if key == "verifier" and value in VERIFIERS:
      values["verifier"] = value
    elif key == "distinct" and value in ("0", "1"):
      values["distinct"] = value == "1"
    elif key in ("N", "M", "k") and value.isdigit():
      values[_SETTING_KEYS[key]] = int(value)
    else:
      raise ValueError(f"{field}: {text!r}: expected METHOD:N=<int>[,M=<int>][,k=<int>]"
                       f"[,distinct=0|1][,verifier={'|'.join(VERIFIERS)}], e.g. beam:N=16,M=2")
  if "budget" not in values:
    raise ValueError(f"{field}: {text!r} has no budget N=")
  try:
    setting = SearchSetting(method.strip(), **values)
    check_on_grid(setting.budget, grid)
  except ValueError as error:
    raise ValueError(f"{field}: {text!r}: {error}") from None
  return setting


@dataclasses.dataclass(frozen=True)
class FlopsRate:
  """`flops_per_token(context) = per_token + per_context_key · context
  + per_window_key · min(context, window)`, traceable.

  The last term is the sliding-window layers' attention (`ModelConfig.
  sliding_window`), which reads at most `window` keys; 0 without them.
  """
  per_token: float
  per_context_key: float
  per_window_key: float = 0.0
  window: int = 0

  @classmethod
  def of(cls, config: ModelConfig) -> FlopsRate:
    base = config.flops_per_token(0)
    per_key = config.flops_per_token(1) - base
    window = config.sliding_window
    if not window:
      return cls(float(base), float(per_key))
    # Past the window only global layers read one more key per token.
    global_key = config.flops_per_token(window + 1) - config.flops_per_token(window)
    return cls(float(base), float(global_key), float(per_key - global_key), window)

  def decode(self, start_context, num_tokens):
    """FLOPs of `num_tokens` tokens decoded one by one after `start_context`
    tokens: Σ_j flops_per_token(start_context + j + 1).

    Arrays broadcast (jax or numpy); the result is float32.
    """
    n = jnp.asarray(num_tokens, jnp.float32)
    c = jnp.asarray(start_context, jnp.float32)
    flops = n * self.per_token + self.per_context_key * (n * c + n * (n + 1) / 2)
    if self.per_window_key:
      window = float(self.window)

      def keys_read(m):  # Σ_{t=1..m} min(t, window)
        return jnp.where(m <= window, m * (m + 1) / 2,
                         window * (window + 1) / 2 + (m - window) * window)

      flops = flops + self.per_window_key * (keys_read(c + n) - keys_read(c))
    return flops
