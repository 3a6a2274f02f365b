"""Multi-scale deformable attention (Deformable DETR), as mmcv's `MultiScaleDeformableAttention`
computes it without its compiled op: bilinear `grid_sample` (zero padding, align_corners=False) of
each head's value map at the sampling locations, weighted by softmaxed attention weights.

Sampling is gather-based. Per level, the four bilinear corners of every possible top-left corner
are packed side by side into one table row (4*D wide, zero border), so each sampling point needs a
single row gather instead of four — gathers, not FLOPs, dominate on TPU/GPU.

Shape letters: B batch, S value positions (all levels), Q queries, M heads, L levels, P points
per level, D head dim.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.layers import Linear

SpatialShapes = Sequence[tuple[int, int]]


def _corner_table(value: jax.Array, height: int, width: int) -> jax.Array:
  """value [B, H*W, M, D] -> [B, M, (H+1)*(W+1), 4*D].

  Row (y0+1)*(W+1) + (x0+1), for top-left corner (x0, y0) in [-1, W-1] x [-1, H-1], holds the
  values at (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1); corners outside the map are zero.
  """
  b, _, m, d = value.shape
  padded = jnp.pad(value.reshape(b, height, width, m, d), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  corners = [padded[:, dy:dy + height + 1, dx:dx + width + 1] for dy in (0, 1) for dx in (0, 1)]
  table = jnp.concatenate(corners, axis=-1)
  return table.reshape(b, (height + 1) * (width + 1), m, 4 * d).transpose(0, 2, 1, 3)


def _sample_level(value: jax.Array, height: int, width: int, locations: jax.Array,
                  weights: jax.Array) -> jax.Array:
  """Weighted bilinear samples of one level: value [B, H*W, M, D], locations f32[B, Q, M, P, 2],
  weights f32[B, Q, M, P] -> f32[B, Q, M, D] (sum over the P points)."""
  b, q, m, p, _ = locations.shape
  # grid_sample with align_corners=False: pixel coordinate = loc * size - 0.5 (the reference's
  # detour through grid = 2*loc - 1 is algebraically the same, and XLA simplifies it away).
  x = locations[..., 0] * width - 0.5
  y = locations[..., 1] * height - 0.5
  x0, y0 = jnp.floor(x), jnp.floor(y)
  # A top-left corner outside [-1, size-1] has all four corners in the zero padding.
  inside = (x0 >= -1) & (x0 <= width - 1) & (y0 >= -1) & (y0 <= height - 1)
  row = ((jnp.clip(y0, -1, height - 1) + 1) * (width + 1)
         + jnp.clip(x0, -1, width - 1) + 1).astype(jnp.int32)
  wx1, wy1 = x - x0, y - y0
  wx0, wy0 = (x0 + 1) - x, (y0 + 1) - y
  corner_w = jnp.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], axis=-1)
  corner_w = corner_w * jnp.where(inside, weights, 0)[..., None]

  table = _corner_table(value, height, width)
  rows = row.transpose(0, 2, 1, 3).reshape(b, m, q * p, 1)
  gathered = jnp.take_along_axis(table, rows, axis=2).reshape(b, m, q, p, 4, -1)
  # Multiply-and-reduce rather than a dot: XLA can fuse the gather into the reduction, so the
  # [B, M, Q, P, 4, D] samples never hit memory (a dot would materialise them).
  corner_w = corner_w.transpose(0, 2, 1, 3, 4)[..., None]
  out = jnp.sum(gathered.astype(jnp.float32) * corner_w, axis=(3, 4))
  return out.transpose(0, 2, 1, 3)


def ms_deform_attn_sample(value: jax.Array, spatial_shapes: SpatialShapes,
                          sampling_locations: jax.Array, attention_weights: jax.Array) -> jax.Array:
  """Deformable attention core (mmcv `multi_scale_deformable_attn_pytorch`).

  value [B, S, M, D] with S = sum of H*W over `spatial_shapes` (static ((H, W), ...), levels
  concatenated row-major); sampling_locations f32[B, Q, M, L, P, 2] as (x, y) in [0, 1] (outside
  is allowed: zero padding); attention_weights f32[B, Q, M, L, P].
  Returns [B, Q, M*D] (head-major channels) in value's dtype, accumulated in float32.
  """
  b, s, m, d = value.shape
  sizes = [h * w for h, w in spatial_shapes]
  if sum(sizes) != s:
    raise ValueError(f'value has {s} positions, spatial_shapes {tuple(spatial_shapes)} give {sum(sizes)}')
  starts = np.cumsum([0] + sizes)
  out = jnp.zeros((b, sampling_locations.shape[1], m, d), jnp.float32)
  for level, (h, w) in enumerate(spatial_shapes):
    out = out + _sample_level(value[:, starts[level]:starts[level + 1]], h, w,
                              sampling_locations[:, :, :, level], attention_weights[:, :, :, level])
  return out.reshape(b, -1, m * d).astype(value.dtype)


def _grid_offset_bias(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
  """mmcv's initial sampling offsets: head h points along angle 2*pi*h/M (scaled so the larger of
  |cos|, |sin| is 1), point k at distance k+1; f32[M*L*P*2]."""
  theta = np.arange(num_heads) * (2 * math.pi / num_heads)
  direction = np.stack([np.cos(theta), np.sin(theta)], -1)
  direction = direction / np.abs(direction).max(-1, keepdims=True)
  grid = direction[:, None, None, :] * np.arange(1, num_points + 1)[None, None, :, None]
  return np.broadcast_to(grid, (num_heads, num_levels, num_points, 2)).reshape(-1).astype(np.float32)


class MSDeformAttn(nnx.Module):
  """mmcv MultiScaleDeformableAttention with 2-D reference points; returns output_proj(attn)
  without the residual (the caller adds it).

  Parameters (mmcv names): sampling_offsets (C -> M*L*P*2, order (m, l, p, xy)),
  attention_weights (C -> M*L*P), value_proj (C -> C), output_proj (C -> C).
  """

  def __init__(self, dim: int, *, num_heads: int, num_levels: int, num_points: int,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'dim {dim} is not divisible by {num_heads} heads')
    self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    zeros = jax.nn.initializers.zeros
    xavier = jax.nn.initializers.xavier_uniform()
    sampling = num_heads * num_levels * num_points
    self.sampling_offsets = Linear(dim, sampling * 2, axes=('seg_embed', 'seg_sampling'),
                                   kernel_init=zeros, **lin)
    self.sampling_offsets.bias[...] = jnp.asarray(
        _grid_offset_bias(num_heads, num_levels, num_points), param_dtype)
    self.attention_weights = Linear(dim, sampling, axes=('seg_embed', 'seg_sampling'),
                                    kernel_init=zeros, **lin)
    self.value_proj = Linear(dim, dim, axes=('seg_embed', 'seg_heads'), kernel_init=xavier, **lin)
    self.output_proj = Linear(dim, dim, axes=('seg_heads', 'seg_embed'), kernel_init=xavier, **lin)

  def __call__(self, query: jax.Array, value: jax.Array, reference_points: jax.Array,
               spatial_shapes: SpatialShapes) -> jax.Array:
    """query [B, Q, C] (positional encoding already added); value [B, S, C] (levels flattened as
    in `spatial_shapes`); reference_points f32[B or 1, Q, L, 2] as (x, y) in [0, 1].
    Returns [B, Q, C]."""
    b, q, c = query.shape
    m, l, p = self.num_heads, self.num_levels, self.num_points
    if len(spatial_shapes) != l:
      raise ValueError(f'{len(spatial_shapes)} spatial shapes for a {l}-level attention')
    v = self.value_proj(value).reshape(b, value.shape[1], m, c // m)
    offsets = self.sampling_offsets(query).astype(jnp.float32).reshape(b, q, m, l, p, 2)
    logits = self.attention_weights(query).astype(jnp.float32).reshape(b, q, m, l * p)
    weights = jax.nn.softmax(logits, axis=-1).reshape(b, q, m, l, p)
    # Offsets are in pixels of each level: divide by that level's (W, H).
    normalizer = np.array([[w, h] for h, w in spatial_shapes], np.float32)
    locations = (reference_points[:, :, None, :, None, :].astype(jnp.float32)
                 + offsets / normalizer[:, None, :])
    return self.output_proj(ms_deform_attn_sample(v, spatial_shapes, locations, weights))
