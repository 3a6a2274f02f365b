"""PyTorch-exact resizing for static sizes: F.interpolate 'bilinear' (align_corners=False,
antialias=False) and 'nearest'.

`jax.image.resize` antialiases when downsampling and rounds source coordinates differently, so
neither mode matches the reference. Here the source indices and weights are computed with NumPy
at trace time, in float32 exactly as PyTorch's CPU kernels do (so border and rounding cases agree),
for an explicit output size (F.interpolate(size=...): scale = in / out).

Einsum legend: i input positions along the resized axis, o output positions.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lira_jax  # noqa: F401  (disables eager sharding)


def _scale(in_size: int, out_size: int) -> np.float32:
  return np.float32(in_size) / np.float32(out_size)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """f32[out_size, in_size] W with W @ v == F.interpolate(v, out_size, 'linear', False) per axis.

  Source coordinate (o + 0.5) * in/out - 0.5, clamped below at 0; taps floor(src) and the next
  one (repeated at the last input); identity when the sizes match.
  """
  # PyTorch's kernel evaluates scale * (o + 0.5) - 0.5 as one fused multiply-add in float32:
  # exact in float64 here, then rounded once.
  exact = np.float64(_scale(in_size, out_size)) * (np.arange(out_size) + 0.5) - 0.5
  src = np.maximum(exact.astype(np.float32), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
  i1 = np.minimum(i0 + 1, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, i0), np.float32(1) - lam)
  np.add.at(matrix, (rows, i1), lam)
  return matrix


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """int[out_size]: PyTorch 'nearest' source index min(floor(o * in/out), in - 1), in float32."""
  o = np.arange(out_size, dtype=np.float32)
  return np.minimum(np.floor(o * _scale(in_size, out_size)).astype(np.int64), in_size - 1)


def _axes_and_sizes(x: jax.Array, out_size: Sequence[int], axes: Sequence[int]):
  if len(out_size) != len(axes):
    raise ValueError(f'out_size {tuple(out_size)} and axes {tuple(axes)} differ in length')
  return [(a % x.ndim, int(n)) for a, n in zip(axes, out_size)]


def resize_bilinear(x: jax.Array, out_size: Sequence[int], axes: Sequence[int] = (-2, -1)
                    ) -> jax.Array:
  """Resizes `x` along `axes` to `out_size` like F.interpolate(mode='bilinear',
  align_corners=False, antialias=False) (any rank, one separable pass per axis).

  Floating inputs keep their dtype; accumulation is float32 at HIGHEST precision so TPU/GPU
  matmuls do not round the weights to bf16/tf32.
  """
  dtype = x.dtype
  y = x.astype(jnp.float32)
  for axis, size in _axes_and_sizes(x, out_size, axes):
    if y.shape[axis] == size:
      continue
    w = jnp.asarray(bilinear_matrix(y.shape[axis], size))
    y = jnp.moveaxis(y, axis, -1)
    y = jnp.einsum('...i,oi->...o', y, w, precision=jax.lax.Precision.HIGHEST)
    y = jnp.moveaxis(y, -1, axis)
  return y.astype(dtype)


def resize_nearest(x: jax.Array, out_size: Sequence[int], axes: Sequence[int] = (-2, -1)
                   ) -> jax.Array:
  """Resizes `x` (any dtype, e.g. bool/uint8 masks) along `axes` like
  F.interpolate(mode='nearest')."""
  for axis, size in _axes_and_sizes(x, out_size, axes):
    if x.shape[axis] != size:
      x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[axis], size)), axis=axis)
  return x
