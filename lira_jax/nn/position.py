"""Sine positional encodings of mmdet (`SinePositionalEncoding`, `SinePositionalEncoding3D`) for
unpadded maps, channels-last.

They depend only on static sizes, so they are built with NumPy in float32 (the reference's
arithmetic, op by op) and enter a jitted graph as constants.
"""
from __future__ import annotations

import math

import numpy as np

import lira_jax  # noqa: F401  (disables eager sharding)

_f32 = np.float32


def _normalized_coords(n: int, scale: float, eps: float) -> np.ndarray:
  """f32[n]: (1..n) / (n + eps) * scale, i.e. mmdet's normalised cumsum of an all-valid mask."""
  coords = np.arange(1, n + 1, dtype=_f32)
  return coords / (coords[-1:] + _f32(eps)) * _f32(scale)


def _sine_features(coords: np.ndarray, num_feats: int, temperature: float) -> np.ndarray:
  """f32[..., num_feats]: channel 2k = sin(c / t^(2k/F)), channel 2k+1 = cos(c / t^(2k/F))."""
  i = np.arange(num_feats, dtype=_f32)
  dim_t = np.power(_f32(temperature), _f32(2) * np.floor(i / _f32(2)) / _f32(num_feats))
  angles = coords[..., None] / dim_t
  return np.where(np.arange(num_feats) % 2 == 0, np.sin(angles), np.cos(angles)).astype(_f32)


def sine_position_2d(height: int, width: int, num_feats: int, *, temperature: float = 10000.,
                     scale: float = 2 * math.pi, eps: float = 1e-6) -> np.ndarray:
  """f32[height, width, 2*num_feats]: [y features | x features] (mmdet SinePositionalEncoding
  with normalize=True, offset 0, no padding)."""
  pos_y = _sine_features(_normalized_coords(height, scale, eps), num_feats, temperature)
  pos_x = _sine_features(_normalized_coords(width, scale, eps), num_feats, temperature)
  return np.concatenate([np.broadcast_to(pos_y[:, None], (height, width, num_feats)),
                         np.broadcast_to(pos_x[None, :], (height, width, num_feats))], axis=-1)


def sine_position_3d_single_frame(height: int, width: int, num_feats: int, *,
                                  temperature: float = 10000., scale: float = 2 * math.pi,
                                  eps: float = 1e-6) -> np.ndarray:
  """f32[height, width, 2*num_feats]: mmdet SinePositionalEncoding3D for one frame.

  The 2-D encoding plus a constant z term: z = 1/(1+eps)*scale encoded over 2*num_feats channels
  with its own frequency table. The z term is part of what the trained decoder saw.
  """
  pos_z = _sine_features(_normalized_coords(1, scale, eps), 2 * num_feats, temperature)
  return sine_position_2d(height, width, num_feats, temperature=temperature, scale=scale,
                          eps=eps) + pos_z
