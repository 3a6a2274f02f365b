"""The AOT planner: FLOPs of scanned bodies counted in full (XLA's cost analysis counts them once),
per-device parameter / optimizer bytes from the shardings, and a tiny LIRA plan on a 2x2x2 mesh of
simulated devices with nothing allocated."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lira_jax  # noqa: F401
from configs import common
from lira_jax import sharding
from lira_jax.train import plan, sharded_step


def test_scan_bodies_count_length_times():
  m, k, n, layers = 16, 32, 8, 5

  def f(x, ws):
    def body(h, w):
      return jnp.tanh(h @ w), None
    return jax.lax.scan(body, x, ws)[0] @ jnp.ones((k, n))

  x = jax.ShapeDtypeStruct((m, k), jnp.float32)
  ws = jax.ShapeDtypeStruct((layers, k, k), jnp.float32)
  want = layers * 2 * m * k * k + 2 * m * k * n
  assert plan.jaxpr_flops(jax.make_jaxpr(f)(x, ws)) == want
  # The gradient: the backward pass of each matmul costs two more matmuls of the same size.
  grad = jax.make_jaxpr(jax.grad(lambda x, ws: f(x, ws).sum(), argnums=1))(x, ws)
  assert plan.jaxpr_flops(grad) == pytest.approx(3 * layers * 2 * m * k * k + 2 * 2 * m * k * n,
                                                 rel=0.01)


def test_conv_flops():
  x = jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 4, 6), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert plan.jaxpr_flops(jax.make_jaxpr(conv)(x, w)) == 2 * (2 * 7 * 7 * 6) * 4 * 9


@pytest.mark.slow
def test_tiny_lira_plan_on_eight_simulated_devices():
  cfg = common.load_config('configs/lira_2b.py:tiny')
  cfg.optim.grad_accum = 2
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  got = plan.plan_train_step(cfg, mesh, global_batch=8)
  per = got['per_device_bytes']
  assert set(per) == {'params', 'optimizer', 'gradients', 'activations', 'temporary', 'batch'}
  assert got['devices'] == 8
  assert all(v >= 0 for v in per.values()) and per['activations'] > 0
  # A leaf sharded over fsdp holds half its bytes per device, so params < their full size.
  _, abstract, _ = sharded_step.abstract_train_state(cfg, mesh)
  full = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(
      (abstract.trainable, abstract.frozen)) if hasattr(x, 'shape') and
      not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
  assert per['params'] < full
  assert got['total_bytes'] >= got['xla']['temp']
  assert got['flops_per_step'] > 0
  np.testing.assert_allclose(plan.mfu(2e12, 1.0, 2, 1e12), 1.0)
