"""Conv's matmul / shifted-sum forms against XLA's convolution (values and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lira_jax.nn.layers import Conv

CASES = {  # name: (input shape, in, out, kernel, strides, padding, groups)
    'patchify': ((2, 30, 30, 3), 3, 8, (14, 14), (14, 14), 'VALID', 1),
    'pointwise': ((2, 9, 9, 6), 6, 5, (1, 1), (1, 1), 'VALID', 1),
    'depthwise': ((2, 11, 11, 4), 4, 4, (7, 7), (1, 1), ((3, 3), (3, 3)), 4),
    'dense': ((2, 10, 10, 6), 6, 5, (3, 3), (1, 1), ((1, 1), (1, 1)), 1),
    # Non-square maps and kernels: the hand-written VJPs index rows and columns separately.
    'depthwise_rect': ((3, 12, 9, 4), 4, 4, (5, 3), (1, 1), ((2, 2), (1, 1)), 4),
    'dense_rect': ((2, 7, 11, 6), 6, 5, (1, 3), (1, 1), ((0, 0), (1, 1)), 1),
    'strided': ((2, 10, 10, 6), 6, 5, (3, 3), (2, 2), ((1, 1), (1, 1)), 1),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_conv_matches_xla_convolution(name):
  shape, cin, cout, kernel, strides, padding, groups = CASES[name]
  conv = Conv(cin, cout, kernel, strides=strides, padding=padding, groups=groups,
              rngs=nnx.Rngs(0))
  conv.bias[...] = jnp.linspace(-1, 1, cout)
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

  graphdef, state = nnx.split(conv)

  def ours(x, state):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))

  def reference(x, k):
    y = jax.lax.conv_general_dilated(x, k, strides, padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=groups,
                                     precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(jnp.sin(y + conv.bias[...]))

  value, (grad_x, grad_state) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, state)
  got = (value, grad_x, grad_state['kernel'][...])
  want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(x, conv.kernel[...])
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
