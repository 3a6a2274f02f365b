"""The logical-axis rules table shards a real model over a (data, fsdp, tensor) mesh of 8 simulated
devices, and the sharded jitted forward equals the single-device one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import lira_jax  # noqa: F401
from configs import common
from lira_jax import sharding
from lira_jax.models.internvl import InternVL


def test_make_mesh_fills_the_rest_and_rejects_bad_shapes():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 2, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  with pytest.raises(ValueError, match='does not use all'):
    sharding.make_mesh({'data': 3, 'fsdp': 1, 'tensor': 1})


def test_every_param_has_logical_axes_and_a_spec():
  cfg = common.load_config('configs/internvl2_8b.py')
  abstract = nnx.eval_shape(lambda: InternVL(cfg.model, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get('out_sharding')
    assert axes is not None and len(axes) == len(var.shape), ('.'.join(map(str, path)), axes)
  specs = sharding.state_shardings(state, sharding.make_mesh({'fsdp': 4, 'tensor': 2}))
  flat = {'.'.join(map(str, p)): s for p, s in nnx.to_flat_state(specs)}
  assert flat['llm.layers.wq.kernel'].spec == PartitionSpec(None, 'fsdp', 'tensor')
  assert flat['llm.embed.embedding'].spec == PartitionSpec('tensor', 'fsdp')


def test_sharded_forward_matches_single_device():
  cfg = common.load_config('configs/internvl2_2b.py:tiny')
  model = InternVL(cfg.model, rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(1), (4, 24), 0, 180)
  valid = jnp.ones(ids.shape, bool).at[1, :5].set(False)
  expected = model(ids, valid)

  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  graphdef, state = nnx.split(model)
  shardings = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  batch = NamedSharding(mesh, sharding.logical_to_spec(('act_batch', None)))

  @jax.jit
  def forward(state, ids, valid):
    return nnx.merge(graphdef, state)(ids, valid)

  got = forward(state, jax.device_put(ids, batch), jax.device_put(valid, batch))
  assert len(jax.tree.leaves(state)[0].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5, rtol=1e-5)
