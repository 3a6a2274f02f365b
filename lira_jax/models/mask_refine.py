"""Full-resolution refinement of [SEG] masks from the image's own pixels: not in the released
LIRA, whose masks come from stride-4 OMG-Seg features of a pretrained ConvNeXt-L at 1024². On
the synthetic world's 128² scenes the same stride-4 grid is 32², and 76 % of the pixels a
correctly chosen mask gets wrong lie within 2 px of the object's outline (session 19,
README "The main job"). A few 3x3 convolutions over a window around each mask correct that
boundary. Their input per pixel: the image, the image minus the mean colour under the coarse
mask (how much the pixel looks like the object: a whole-window statistic that a few small
convolutions could not gather) and the squashed coarse logit. The correction is added to the
bilinearly upsampled logits, so the module starts as the identity (zero-initialised last layer).

Off unless cfg.model.mask_refine is set (configs/tiny_synthetic.py sets it): released
checkpoints have no such parameters.

Axis letters: N masks, B images, S pixel-input side, W window side, h / w stride-4 grid.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.nn.layers import Conv, conv3x3_same, gelu_exact
from lira_jax.nn.resize import bilinear_matrix, resize_bilinear

_LOGIT_SCALE = 4.0  # logits enter the convolutions squashed by tanh(x / 4): O(1) inputs
_INPUTS = 7  # rgb, rgb - mean colour under the mask, tanh(logit / 4)


class MaskRefiner(nnx.Module):
  """cfg: channels (conv width), layers (3x3 convs, >= 2), window (side W of the refined square,
  at most S). Param tree: convs[i].{kernel, bias}."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    c, layers = int(cfg.channels), int(cfg.layers)
    widths = [_INPUTS] + [c] * (layers - 1) + [1]
    self.window = int(cfg.window)
    self.convs = nnx.List([
        Conv(i, o, (3, 3), rngs=rngs, param_dtype=param_dtype)
        for i, o in zip(widths[:-1], widths[1:])])
    last = self.convs[-1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])

  def _origins(self, mask_logits: jax.Array, side: int, win: int) -> jax.Array:
    """i32[N, 2]: top-left of the win x win window centred on the box of each coarse mask
    f32[N, h, w] > 0 (the image centre when a mask is empty), clipped to the image."""
    fg = jax.lax.stop_gradient(mask_logits) > 0

    def centre(any_along):  # bool[N, g] -> pixel coordinate of the box centre, i32[N]
      g = any_along.shape[-1]
      idx = jnp.arange(g)
      lo = jnp.min(jnp.where(any_along, idx, g), axis=-1)
      hi = jnp.max(jnp.where(any_along, idx, -1), axis=-1)
      return jnp.where(hi >= lo, (lo + hi + 1) * side // (2 * g), side // 2)

    centres = jnp.stack([centre(fg.any(2)), centre(fg.any(1))], axis=-1)
    return jnp.clip(centres - win // 2, 0, side - win).astype(jnp.int32)

  def refine_windows(self, mask_logits: jax.Array, pixels: jax.Array, image_index: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """mask_logits f32[N, h, w] (stride 4), pixels f32[B, S, S, 3] (the OMG-Seg input,
    normalised), image_index i32[N] -> (refined logits f32[N, W, W] of each window, its
    top-left i32[N, 2] in the S x S map)."""
    side = pixels.shape[1]
    _, h, w = mask_logits.shape
    win = min(self.window, side)
    origins = self._origins(mask_logits, side, win)
    rows_up, cols_up = (jnp.asarray(bilinear_matrix(n, side)) for n in (h, w))  # [S, h], [S, w]

    def one(logits, image, origin):
      ry = jax.lax.dynamic_slice(rows_up, (origin[0], 0), (win, h))
      rx = jax.lax.dynamic_slice(cols_up, (origin[1], 0), (win, w))
      crop = jnp.einsum('yi,ij,xj->yx', ry, logits.astype(jnp.float32), rx,
                        precision=jax.lax.Precision.HIGHEST)
      rgb = jax.lax.dynamic_slice(pixels, (image, origin[0], origin[1], 0), (1, win, win, 3))
      rgb = rgb[0].astype(jnp.float32)
      weight = jax.nn.sigmoid(crop)[..., None]
      mean = (weight * rgb).sum((0, 1)) / (weight.sum() + 1e-3)
      x = jnp.concatenate([rgb, rgb - mean, jnp.tanh(crop / _LOGIT_SCALE)[..., None]], axis=-1)
      x = x[None]
      for conv in self.convs[:-1]:
        x = gelu_exact(conv3x3_same(conv, x))
      return crop + conv3x3_same(self.convs[-1], x)[0, ..., 0]

    return jax.vmap(one)(mask_logits, image_index, origins), origins

  def __call__(self, mask_logits: jax.Array, pixels: jax.Array, image_index: jax.Array
               ) -> jax.Array:
    """Same inputs as refine_windows -> logits f32[N, S, S]: bilinearly upsampled, with each
    mask's refined window pasted in."""
    side = pixels.shape[1]
    windows, origins = self.refine_windows(mask_logits, pixels, image_index)
    full = resize_bilinear(mask_logits.astype(jnp.float32), (side, side))
    return jax.vmap(jax.lax.dynamic_update_slice)(full, windows, origins)


def crop_windows(maps: jax.Array, origins: jax.Array, win: int) -> jax.Array:
  """maps [N, S, S] (any dtype), origins i32[N, 2] -> the win x win windows [N, win, win]."""
  return jax.vmap(lambda m, o: jax.lax.dynamic_slice(m, o, (win, win)))(maps, origins)
