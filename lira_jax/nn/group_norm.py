"""GroupNorm on channels-last maps with torch.nn.GroupNorm semantics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)


class GroupNorm(nnx.Module):
  """Normalises each of `num_groups` contiguous channel groups over (spatial dims, channels in
  the group) with the biased variance, then applies per-channel scale/bias; stats in float32.

  Input [B, ..., C] (NHWC or [B, N, C]); channel c belongs to group c // (C / num_groups), as in
  torch's NCHW GroupNorm.
  """

  def __init__(self, num_groups: int, dim: int, *, eps: float = 1e-5, axis_name: str = 'norm',
               param_dtype=jnp.float32):
    if dim % num_groups:
      raise ValueError(f'{dim} channels cannot be split into {num_groups} groups')
    self.num_groups, self.eps = num_groups, eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis_name,))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=(axis_name,))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype, shape = x.dtype, x.shape
    g = x.astype(jnp.float32).reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
    return (y * self.scale[...] + self.bias[...]).astype(dtype)
