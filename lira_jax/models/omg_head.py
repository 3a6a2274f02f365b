"""Glue between the OMG-Seg head and LIRA (`OMGSegVisualEncoder`): CLIP tokens, the panoptic
perception prior (`panoptic_postprocess`) with the valid queries packed into a fixed buffer, and
the [SEG] mask post-processing back to the original image.

Einsum legend: B images, Q queries, G prior-grid cells, C channels, h/w mask-logit rows/cols,
u/v sampled rows/cols of the upsampled (S x S) map, y/x prior-grid rows/cols.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.resize import bilinear_matrix

_SMOOTH = 0.5  # OMGSegVisualEncoder.panoptic_postprocess smooth_ratio
_HIGHEST = jax.lax.Precision.HIGHEST


def clip_tokens(feat: jax.Array, ratio: int = 2) -> jax.Array:
  """Pixel shuffle of the stride-32 map: f32[B, h, w, C] -> f32[B, (h/r)(w/r), r*r*C].

  Token (i, j) (row-major) holds channel (dy*r + dx)*C + c = feat[r*i + dy, r*j + dx, c].
  """
  b, h, w, c = feat.shape
  if h % ratio or w % ratio:
    raise ValueError(f'grid {h}x{w} cannot be pixel-shuffled by {ratio}')
  x = feat.reshape(b, h // ratio, ratio, w // ratio, ratio, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // ratio) * (w // ratio), ratio * ratio * c)


@struct.dataclass
class PanopticPrior:
  """What the projector consumes from one panoptic pass.

  pixel_query: f32[B, G, 2C] softmax_q(prob)ᵀ @ query_pos_feat per prior cell (row-major).
  query_pos_feat: f32[B, Q, 2C] [final decoder query ‖ query_embed].
  attention_mask: bool[B, Q, G] True = the cell is not owned by the query.
  valid: bool[B, Q] the query owns at least one cell.
  valid_index: i32[B, V] valid query indices in ascending order first, then the other queries.
  valid_slot: bool[B, V] which entries of valid_index are valid queries.
  """
  pixel_query: jax.Array
  query_pos_feat: jax.Array
  attention_mask: jax.Array
  valid: jax.Array
  valid_index: jax.Array
  valid_slot: jax.Array


def _sampled_resize(in_size: int, mid_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Upsample in -> mid then downsample mid -> out, keeping only the mid positions the downsample
  reads: (up f32[U, in], down f32[out, U]); down @ f(up @ v) == resize(f(resize(v, mid)), out)
  for any elementwise f, without building the mid-size map."""
  down = bilinear_matrix(mid_size, out_size)
  used = np.flatnonzero(np.any(down != 0, axis=0))
  return bilinear_matrix(in_size, mid_size)[used], down[:, used]


def panoptic_postprocess(class_logits: jax.Array, mask_logits: jax.Array, query_feat: jax.Array,
                         query_pos: jax.Array, image_size: Sequence[int], grid_size: Sequence[int],
                         max_valid: int | None = None) -> PanopticPrior:
  """Perception prior of the last prediction step (`OMGSegVisualEncoder.panoptic_postprocess`).

  class_logits f32[B, Q, K+1] (background last, IoU column dropped); mask_logits f32[B, Q, h, w];
  query_feat f32[B, Q, C] (raw output of the last decoder layer); query_pos f32[B, Q, C]
  (query_embed); image_size (S_h, S_w) the padded input size the logits are upsampled to;
  grid_size (g_h, g_w) the CLIP-token grid; max_valid V (default min(Q, G), the most queries that
  can own a cell).

  prob = (0.5 * max_k softmax(cls)[:K] + 0.5) * sigmoid(upsample(mask_logits, S)), bilinearly
  downsampled to the grid; owner = argmax over queries (first wins).
  """
  b, q = class_logits.shape[:2]
  g = int(np.prod(grid_size))
  max_valid = min(q, g) if max_valid is None else max_valid
  score = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1].max(-1)
  scale = score * (1 - _SMOOTH) + _SMOOTH
  (up_h, down_h), (up_w, down_w) = (
      _sampled_resize(n, s, o) for n, s, o in zip(mask_logits.shape[-2:], image_size, grid_size))
  # Torch's bilinear weights columns inside rows; keep that order of the two passes.
  up = jnp.einsum('bqhw,vw->bqhv', mask_logits.astype(jnp.float32), up_w, precision=_HIGHEST)
  up = jnp.einsum('bqhv,uh->bquv', up, up_h, precision=_HIGHEST)
  prob = scale[..., None, None] * jax.nn.sigmoid(up)
  prob = jnp.einsum('bquv,yu->bqyv', prob, down_h, precision=_HIGHEST)
  prob = jnp.einsum('bqyv,xv->bqyx', prob, down_w, precision=_HIGHEST).reshape(b, q, g)

  query_pos_feat = jnp.concatenate([query_feat, query_pos], axis=-1)
  pixel_query = jnp.einsum('bqg,bqc->bgc', jax.nn.softmax(prob, axis=1),
                           query_pos_feat.astype(jnp.float32))
  owner = jnp.argmax(prob, axis=1)
  attention_mask = owner[:, None, :] != jnp.arange(q)[None, :, None]
  valid = ~jnp.all(attention_mask, axis=-1)
  order = jnp.argsort(~valid, axis=-1, stable=True)[:, :max_valid].astype(jnp.int32)
  return PanopticPrior(
      pixel_query=pixel_query, query_pos_feat=query_pos_feat, attention_mask=attention_mask,
      valid=valid, valid_index=order, valid_slot=jnp.take_along_axis(valid, order, axis=1))


def _crop_taps(in_size: int, square: jax.Array, offset: jax.Array, out_len: int):
  """Bilinear taps (align_corners=False) of output rows offset..offset+out_len-1 of a resize
  in_size -> square (per item, dynamic): (i0, i1 i32[N, out_len], lam f32[N, out_len]), with
  PyTorch's float32 source-index arithmetic."""
  scale = jnp.float32(in_size) / square.astype(jnp.float32)
  dst = (jnp.arange(out_len)[None, :] + offset[:, None]).astype(jnp.float32)
  src = jnp.maximum(scale[:, None] * (dst + 0.5) - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  return i0, jnp.minimum(i0 + 1, in_size - 1), lam


def seg_masks_to_image(mask_logits: jax.Array, image_hw: jax.Array, valid: jax.Array,
                       out_hw: Sequence[int]) -> jax.Array:
  """[SEG] mask logits -> binary masks on the original (unpadded) images.

  mask_logits f32[N, h, w] (last prediction step); image_hw i32[N, 2] original (height, width);
  valid bool[N]; out_hw (H, W) static canvas, at least every image's size. Returns bool[N, H, W]:
  mask n occupies [:h_n, :w_n], False elsewhere and for invalid n.

  Same as resizing to the padded square S_n = max(h_n, w_n), cropping the centred padding
  (floor((S - h)/2) before) and thresholding sigmoid > 0.5; only the kept pixels are computed.
  """
  _, h, w = mask_logits.shape
  height, width = image_hw[:, 0].astype(jnp.int32), image_hw[:, 1].astype(jnp.int32)
  square = jnp.maximum(height, width)
  r0, r1, ry = _crop_taps(h, square, (square - height) // 2, out_hw[0])
  c0, c1, cx = _crop_taps(w, square, (square - width) // 2, out_hw[1])
  x = mask_logits.astype(jnp.float32)
  rows = jax.vmap(lambda m, i: m[i])  # [h, w], [H] -> [H, w]
  cols = jax.vmap(lambda m, j: m[:, j])  # [H, w], [W] -> [H, W]

  def blend_columns(r):
    return (1 - cx[:, None]) * cols(r, c0) + cx[:, None] * cols(r, c1)

  # Columns inside rows, the order of PyTorch's bilinear kernel.
  values = ((1 - ry[:, :, None]) * blend_columns(rows(x, r0))
            + ry[:, :, None] * blend_columns(rows(x, r1)))
  inside = ((jnp.arange(out_hw[0])[None, :, None] < height[:, None, None])
            & (jnp.arange(out_hw[1])[None, None, :] < width[:, None, None]))
  return (jax.nn.sigmoid(values) > 0.5) & inside & valid.astype(bool)[:, None, None]
