"""ILVC (interleaved local visual coupling): local region images from masks, region slots, and the
with/without-ILVC training switch.

A local image is made as the released `extract_object_with_black_background(..., "highlight")`:
the tight bounding box of the mask (PIL getbbox: exclusive right/bottom; an empty mask gives the
whole image), crop of the original unpadded image, pixels outside the mask dimmed to
floor(float32(0.3) * v) (PIL ImageEnhance.Brightness(0.3) = blend with black, truncating), mask
pixels kept, then one InternVL tile: PIL bicubic resize to 448 x 448 (aspect not kept), ImageNet
normalisation. The semantic encoder alone turns it into 256 tokens.

Two implementations: `region_image` / `region_tile` on the host (PIL, exact), and
`region_pixels` / `region_tiles` under jit with static shapes. Both follow the pass order of the
reference's Pillow 10.2 (horizontal, then vertical); Pillow 13 goes vertical first for crops whose
height shrinks much more than their width, so the host path makes two single-axis calls. The jit
resize is Pillow's 8-bit resampler written out: antialiased bicubic (a = -0.5, support
2 * max(in/out, 1)) over the dynamic crop box, weights normalised over the taps inside the crop
and quantised to 22 fractional bits (round half away from zero), each pass rounded and clipped to
uint8 levels, integer accumulation. Pillow computes the weights in float64, we can only use
float32 (exact integer numerators, one rounding for the tap position, then XLA's float32
polynomial and normalisation), so about a third of the quantised weights are one unit (2^-22)
off. Measured vs the host path (tests/test_ilvc.py): at most 2 levels, on 0.003-0.02 % of the
values for typical crops and up to 0.8 % for a whole 640 x 480 image.

Region slots: a sample has R fixed slots. Slot r holds the local image of target r (answer order:
each grounded target has exactly one local image) and fills the r-th `<image>` inside the answers,
i.e. the (r + 2)-th sentinel of the sample (the first is the main image).

Without ILVC (`strip_ilvc`), each grounded phrase `[SEG]<image_id><image> <p> X </p> [SEG]` becomes
`[SEG] <p> X </p>`: the local image, the <image_id> that requests it and the second [SEG] go, so
every target keeps one [SEG] (the first, the one whose mask is the output at inference) and the
referring answer reads `[SEG] <p> x </p>.`. The switch is per sample (all turns alike).
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data.tiling import IMAGENET_MEAN, IMAGENET_STD, resize_bicubic, tiles_to_array
from lira_jax.lira_tokens import ILVC_PHRASE, P_END, P_START, SEG
from lira_jax.sequence import IMAGE_TOKEN_INDEX

REGION_SIZE = 448
DIM_FACTOR = np.float32(0.3)
_PRECISION_BITS = 22  # Pillow's fixed-point resampling precision for 8-bit images


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """(left, top, right, bottom) of the true pixels of bool[h, w], right/bottom exclusive, or None
  for an empty mask (PIL getbbox)."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    return None
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def region_image(image: Image.Image, mask: np.ndarray) -> Image.Image:
  """Host, exact: the highlighted crop of RGB `image` for bool/0-1 mask[h, w] (its size)."""
  pixels = np.asarray(image.convert('RGB'))
  mask = np.asarray(mask).astype(bool)
  if mask.shape != pixels.shape[:2]:
    raise ValueError(f'mask {mask.shape} does not match image {pixels.shape[:2]}')
  dimmed = (DIM_FACTOR * pixels.astype(np.float32)).astype(np.uint8)  # truncation, as PIL
  out = np.where(mask[..., None], pixels, dimmed)
  box = mask_bbox(mask)
  if box is not None:
    left, top, right, bottom = box
    out = out[top:bottom, left:right]
  return Image.fromarray(out)


def region_tile(image: Image.Image, mask: np.ndarray, size: int = REGION_SIZE) -> np.ndarray:
  """Host, exact: f32[size, size, 3] ImageNet-normalised tile of the local image (the one tile
  dynamic_preprocess(min = max = 1) makes: a plain resize of the whole crop; size 448 released)."""
  return tiles_to_array([resize_bicubic(region_image(image, mask), (size, size))])[0]


def _bicubic(t: jax.Array) -> jax.Array:
  """Pillow's bicubic kernel, a = -0.5."""
  a = -0.5
  t = jnp.abs(t)
  near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
  far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
  return jnp.where(t < 1.0, near, jnp.where(t < 2.0, far, 0.0))


def _resample_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int
                      ) -> jax.Array:
  """i32[out_size, in_size] fixed-point weights resizing pixels [start, start + length) to
  out_size; zero outside the crop.

  The tap position relative to the filter centre, scaled by 1 / max(length / out_size, 1), is
  ((2x + 1) * out - (2o + 1) * length) / (2 * max(length, out)) in crop coordinates x: an exact
  integer ratio, so a single float32 division gives it.
  """
  x = jnp.arange(in_size, dtype=jnp.int32) - start
  o = jnp.arange(out_size, dtype=jnp.int32)
  num = (2 * x[None] + 1) * out_size - (2 * o[:, None] + 1) * length
  den = 2 * jnp.maximum(length, out_size)
  w = _bicubic(num.astype(jnp.float32) / den.astype(jnp.float32))
  w = jnp.where((x >= 0) & (x < length), w, 0.0)
  w = w / jnp.sum(w, axis=1, keepdims=True)
  scaled = w * np.float32(1 << _PRECISION_BITS)
  return jnp.trunc(scaled + jnp.where(w < 0, -0.5, 0.5)).astype(jnp.int32)


def _clip8(acc: jax.Array) -> jax.Array:
  """Pillow's rounding of a fixed-point sum back to uint8 levels (kept as int32)."""
  return jnp.clip((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


def region_pixels(image: jax.Array, mask: jax.Array, image_hw: jax.Array | None = None,
                  size: int = REGION_SIZE) -> jax.Array:
  """Jittable: i32[size, size, 3] uint8 levels of the local image (before normalisation).

  image: [H, W, 3] RGB levels in [0, 255] (uint8, or float holding integers), top-left aligned in
  a static buffer; mask bool[H, W] (false outside the real image); image_hw i32[2]: the real
  (h, w), default (H, W) — only used for an empty mask, whose box is the whole real image.
  """
  big_h, big_w = mask.shape
  hw = jnp.array([big_h, big_w], jnp.int32) if image_hw is None else jnp.asarray(image_hw,
                                                                                 jnp.int32)
  pixels = jnp.round(jnp.asarray(image, jnp.float32))
  dimmed = jnp.floor(DIM_FACTOR * pixels)
  pixels = jnp.where(mask[..., None], pixels, dimmed).astype(jnp.int32)

  rows, cols = jnp.any(mask, axis=1), jnp.any(mask, axis=0)
  empty = ~jnp.any(rows)
  top = jnp.where(empty, 0, jnp.argmax(rows))
  left = jnp.where(empty, 0, jnp.argmax(cols))
  bottom = jnp.where(empty, hw[0], big_h - jnp.argmax(rows[::-1]))
  right = jnp.where(empty, hw[1], big_w - jnp.argmax(cols[::-1]))

  wx = _resample_weights(left, right - left, big_w, size)
  wy = _resample_weights(top, bottom - top, big_h, size)
  horizontal = _clip8(jnp.einsum('yxc,ox->yoc', pixels, wx, preferred_element_type=jnp.int32))
  return _clip8(jnp.einsum('yoc,py->poc', horizontal, wy, preferred_element_type=jnp.int32))


def normalize_tile(levels: jax.Array) -> jax.Array:
  """uint8 levels [..., 3] -> f32 ImageNet-normalised as tiles_to_array does (XLA may turn the
  division into a multiply: equal to about an ulp)."""
  x = jnp.asarray(levels).astype(jnp.float32) / np.float32(255)
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def region_tiles(image: jax.Array, masks: jax.Array, image_hw: jax.Array | None = None,
                 size: int = REGION_SIZE) -> jax.Array:
  """Jittable: f32[R, size, size, 3] tiles for image [H, W, 3] and masks bool[R, H, W] (masks[r]
  = the mask of target r; slots beyond the sample's targets are masked out downstream)."""
  return jax.vmap(lambda m: normalize_tile(region_pixels(image, m, image_hw, size)))(masks)


def region_slots(ids: Sequence[int], max_regions: int) -> np.ndarray:
  """bool[R] slot validity for one encoded sample: one slot per `<image>` sentinel after the
  first (the main image). Raises if they do not fit."""
  local = max(sum(1 for i in ids if i == IMAGE_TOKEN_INDEX) - 1, 0)
  if local > max_regions:
    raise ValueError(f'{local} local images do not fit max_regions={max_regions}')
  return np.arange(max_regions) < local


_ILVC_PATTERN = re.compile(re.escape(ILVC_PHRASE).replace(re.escape('{}'), '(.*?)'), re.S)


def strip_ilvc(answer: str) -> str:
  """The non-ILVC form of an answer: each ILVC phrase -> `[SEG] <p> X </p>`."""
  return _ILVC_PATTERN.sub(lambda m: f'{SEG} {P_START} {m.group(1)} {P_END}', answer)


def ilvc_switch(turns: Sequence[tuple[str, str]], rng: random.Random, p_ilvc: float = 0.5
                ) -> tuple[list[tuple[str, str]], bool]:
  """The paper's two-prompt switch: with probability p_ilvc the turns are kept (ILVC), otherwise
  every answer is stripped. Returns (turns, use_ilvc)."""
  use_ilvc = rng.random() < p_ilvc
  if use_ilvc:
    return list(turns), True
  return [(user, strip_ilvc(answer)) for user, answer in turns], False
