"""Pixel-encoder input (lira_reference.md §1.1) and its inverse for mask logits (§7.4).

Forward, on the host: RGB -> centred pad to a square of side max(w, h) with the pad colour ->
CLIPImageProcessor path (PIL bicubic resize to S x S; the centre crop is then a no-op) -> x / 255
(float64, cast to float32) -> (x - mean) / std in float32, as transformers' numpy ops do.
Inverse: mask logits at any square size -> bilinear (PyTorch, no antialias) to the padded square
-> crop the padding -> f32[..., h, w].
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.resize import resize_bilinear


def pad_to_square(image: Image.Image, color: Sequence[int]) -> tuple[Image.Image, tuple[int, int]]:
  """Pastes `image` centred on a max(w, h) square filled with `color`.

  Returns (square, (pad_top, pad_left)): a wide image sits at row (w - h) // 2, a tall one at
  column (h - w) // 2 (the smaller margin is on the top/left). A square image is returned as is.
  """
  w, h = image.size
  if w == h:
    return image, (0, 0)
  side = max(w, h)
  top, left = (side - h) // 2, (side - w) // 2
  square = Image.new(image.mode, (side, side), tuple(color))
  square.paste(image, (left, top))
  return square, (top, left)


def preprocess_pixel_image(image: Image.Image, cfg) -> tuple[np.ndarray, dict[str, Any]]:
  """PIL image -> (f32[S, S, 3] normalised NHWC pixels, meta), S = cfg.image_size.

  cfg: configs.omg_seg config (image_size, pixel_mean, pixel_std, pad_color).
  meta: orig_hw (h, w), pad (pad_top, pad_left), square (side of the padded square).
  """
  image = image.convert('RGB')
  w, h = image.size
  square, pad = pad_to_square(image, cfg.pad_color)
  size = cfg.image_size
  resized = np.asarray(square.resize((size, size), resample=Image.BICUBIC))
  pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
  mean = np.asarray(cfg.pixel_mean, np.float32)
  std = np.asarray(cfg.pixel_std, np.float32)
  meta = dict(orig_hw=(h, w), pad=pad, square=max(w, h))
  return (pixels - mean) / std, meta


def unpad_mask_logits(mask: jax.Array, meta: dict[str, Any]) -> jax.Array:
  """Mask logits f32[..., s, s] on the padded square -> f32[..., h, w] on the original image.

  As the original post-processing: bilinear resize (align_corners=False, no antialias) to the
  padded square's side first, then crop the centred padding away. Threshold afterwards.
  """
  (h, w), (top, left), side = meta['orig_hw'], meta['pad'], meta['square']
  mask = resize_bilinear(mask, (side, side))
  return mask[..., top:top + h, left:left + w]
