"""Orbax saves of small replicated arrays: written whole, not cut per replica."""

import jax
import jax.numpy as jnp
import numpy as np

from ttscale.training.checkpoints import Checkpointer


def test_small_replicated_arrays_save_without_compiling_a_slice_per_replica(tmp_path):
  """Fails if orbax is back to cutting each replica's slice of a small array
  with an eager `slice` (one compile per shape and device, seconds a save)."""
  mesh = jax.make_mesh((8,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {f"w{i}": jax.device_put(jnp.arange(64.0 * (i + 1)).reshape(i + 1, 64), replicated)
          for i in range(3)}
  compiled = []

  def on_event(event, _seconds, **kwargs):
    if event.endswith("backend_compile_duration"):
      compiled.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), {"model": "tiny"})
    checkpointer.save(1, tree)
    checkpointer.wait()
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert not [name for name in compiled if "slice" in (name or "")], compiled
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          tree)
  restored = checkpointer.restore(1, abstract)
  for name, array in tree.items():
    np.testing.assert_array_equal(restored[name], array)
