"""The explicit, fixed-length key/value cache that decoding passes in and out.

Slots, not positions. The cache has `max_slots` time slots shared by all rows;
every call that appends tokens writes them at the same slots
`[write_index, write_index + T)` for every row — a scalar-offset
`dynamic_update_slice` that XLA performs in place inside a `while_loop`. A row
that has nothing to append at a slot (it is padding, finished, or waiting for
other rows) marks that slot invalid in `slot_valid`, and attention masks it.
Each row keeps its own RoPE position counter in `next_position`, so rows of
different lengths continue side by side: the slot index is shared, the
position is per row.

Keys and values are stored heads-major: values `[batch, kv_heads, slots,
head_dim]`, keys transposed to `[batch, kv_heads, head_dim, slots]` so that
neither decode-time contraction reduces over the minor axis (on the XLA CPU
backend this layout read the cache ~5x faster than `[batch, slots, kv_heads,
head_dim]`; see `transformer.cached_attention`).

The price is slots wasted on gaps (rows waiting for the longest row of a
round); `max_slots` must cover the number of decode steps, not tokens.

A shared prefix (`SharedPrefix`): rows that continue one context in
`copies` consecutive rows (MC rollouts, a question's samples) read the
context's keys and values from one copy per group, `[groups, ...]`, and keep
only what they append in their own slots. A decode trip reads every slot of
the cache, so a context of W slots costs each row W / copies slot reads, not
W, and its scores are one matrix product per group rather than one vector
product per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ttscale.models.config import ModelConfig


@struct.dataclass
class SharedPrefix:
  """The context that `copies` consecutive rows continue, stored once per group."""
  keys: tuple[jax.Array, ...]    # per layer [groups, kv_heads, head_dim, width]
  values: tuple[jax.Array, ...]  # per layer [groups, kv_heads, width, head_dim]
  slot_valid: jax.Array          # bool: [groups, width] slot holds a context token

  @property
  def num_groups(self) -> int:
    return self.slot_valid.shape[0]

  def positions(self) -> jax.Array:
    """int32 [groups, width]: each context slot's RoPE position (see `slot_positions`)."""
    return slot_positions(self.slot_valid)

  def rows(self, batch_size: int) -> jax.Array:
    """int32 [batch_size]: the group of each row (groups of consecutive rows)."""
    return jnp.arange(batch_size) // (batch_size // self.num_groups)


@struct.dataclass
class KVCache:
  keys: tuple[jax.Array, ...]    # compute dtype: per layer [batch, kv_heads, head_dim, max_slots]
  values: tuple[jax.Array, ...]  # compute dtype: per layer [batch, kv_heads, max_slots, head_dim]
  slot_valid: jax.Array          # bool: [batch, max_slots] slot holds a real token of this row
  next_position: jax.Array       # int32: [batch] RoPE position of the row's next token
  write_index: jax.Array         # int32: [] first free slot
  # The context read before the row's own slots, or None. Its tokens come
  # first in every row: positions count from them (`next_position` starts
  # after them) and every own slot attends to them.
  prefix: SharedPrefix | None = None

  @property
  def batch_size(self) -> int:
    return self.slot_valid.shape[0]

  @property
  def max_slots(self) -> int:
    return self.slot_valid.shape[1]


def init_cache(config: ModelConfig, batch_size: int, max_slots: int,
               dtype=None) -> KVCache:
  """An empty cache: no valid slot, every row at position 0; keys and values
  in `dtype`, by default the model's compute dtype."""
  dtype = config.compute_dtype if dtype is None else dtype
  keys_shape = (batch_size, config.num_kv_heads, config.head_dim, max_slots)
  values_shape = (batch_size, config.num_kv_heads, max_slots, config.head_dim)
  layers = range(config.num_layers)
  return KVCache(
      keys=tuple(jnp.zeros(keys_shape, dtype) for _ in layers),
      values=tuple(jnp.zeros(values_shape, dtype) for _ in layers),
      slot_valid=jnp.zeros((batch_size, max_slots), bool),
      next_position=jnp.zeros((batch_size,), jnp.int32),
      write_index=jnp.zeros((), jnp.int32),
  )


def slot_positions(slot_valid: jax.Array) -> jax.Array:
  """The RoPE position of the token in each slot, int32 [batch, max_slots].

  A row's valid slots hold its tokens at positions 0, 1, 2, ... in slot order
  (`append_layout` gives each real token the row's next position), so a
  slot's position is the count of the row's valid slots before it
  (meaningless at invalid slots, which every mask drops; a row that continues
  a shared prefix adds its context's length, as `Decoder.extend` does).
  Sliding-window layers read it.
  """
  return jnp.cumsum(slot_valid.astype(jnp.int32), axis=1) - 1


def append_layout(cache: KVCache, token_valid: jax.Array):
  """Where `T` appended tokens go: their positions, validity and mask.

  Args:
    cache: the cache before the append.
    token_valid: bool [batch, T]; False entries are padding (no slot used).

  Returns:
    positions: int32 [batch, T] RoPE positions (a padding entry repeats the
      position of the row's next real token; it is masked everywhere).
    slot_valid: bool [batch, max_slots] after the append.
    attention_mask: bool [batch, T, max_slots] — query t may read slot s.
    next_position: int32 [batch] after the append.
  """
  batch, length = token_valid.shape
  counts = jnp.cumsum(token_valid.astype(jnp.int32), axis=1)
  # --> [batch, T]: each real token's position; padding shares the next one.
  positions = cache.next_position[:, None] + counts - token_valid.astype(jnp.int32)
  slot_valid = jax.lax.dynamic_update_slice(
      cache.slot_valid, token_valid, (0, cache.write_index))
  slots = jnp.arange(cache.max_slots)
  query_slots = cache.write_index + jnp.arange(length)
  causal = slots[None, :] <= query_slots[:, None]               # [T, max_slots]
  attention_mask = causal[None] & slot_valid[:, None, :]          # [batch, T, max_slots]
  next_position = cache.next_position + counts[:, -1]
  return positions, slot_valid, attention_mask, next_position


def continue_shared(context: KVCache, copies: int, max_slots: int) -> KVCache:
  """A cache of `copies` rows per row of `context`, which they share.

  Args:
    context: the groups' prefilled contexts, [groups, ...], itself without a
      prefix; all of its slots become the shared prefix.
    copies: rows per group (consecutive).
    max_slots: each row's own slots, for what it appends.

  Returns:
    An empty cache of `groups · copies` rows whose `prefix` is `context` and
    whose rows go on at the position after their group's context.
  """
  if context.prefix is not None:
    raise ValueError("continue_shared: the context already continues a shared prefix")
  batch = context.batch_size * copies
  dtype = context.keys[0].dtype
  kv_heads, head_dim = context.keys[0].shape[1:3]
  layers = range(len(context.keys))
  return KVCache(
      keys=tuple(jnp.zeros((batch, kv_heads, head_dim, max_slots), dtype) for _ in layers),
      values=tuple(jnp.zeros((batch, kv_heads, max_slots, head_dim), dtype) for _ in layers),
      slot_valid=jnp.zeros((batch, max_slots), bool),
      next_position=jnp.repeat(context.next_position, copies),
      write_index=jnp.zeros((), jnp.int32),
      prefix=SharedPrefix(keys=context.keys, values=context.values,
                          slot_valid=context.slot_valid))
