"""The OMG-Seg pixel path as LIRA consumes it (`OMGSegVisualEncoder`): ConvNeXt CLIP backbone ->
MSDeformAttn pixel decoder -> masked-attention decoder, then the CLIP tokens and the panoptic
perception prior (lira_reference.md §3.3-3.6), plus the [SEG] path (§7.3) against the cached
pixel-decoder outputs.

Parameter tree: `backbone.*` (ConvNeXt, absent when built without a backbone: the head alone,
fed with backbone features), `pixel_decoder.*`, `decoder.*`. All maps are channels-last (NHWC).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.models.convnext import ConvNeXt
from lira_jax.models.mask_decoder import DecoderOutputs, MaskedAttentionDecoder
from lira_jax.models.omg_head import PanopticPrior, clip_tokens, panoptic_postprocess
from lira_jax.models.pixel_decoder import MSDeformAttnPixelDecoder


@struct.dataclass
class OMGSegOutputs:
  """One panoptic pass over B images (S x S padded input, C head channels).

  mask_features: f32[B, S/4, S/4, C] stride-4 pixel-decoder output (cached for [SEG] decoding).
  memories: num_levels maps f32[B, h_l, w_l, C], low -> high resolution (cached likewise).
  decoder: every prediction step and layer output of the panoptic pass (see DecoderOutputs).
  clip_tokens: f32[B, G, r*r*C_3] the pixel-shuffled stride-32 backbone map (G = (S/32r)^2).
  prior: the perception prior of the last prediction step (see PanopticPrior).
  """
  mask_features: jax.Array
  memories: tuple[jax.Array, ...]
  decoder: DecoderOutputs
  clip_tokens: jax.Array
  prior: PanopticPrior

  @property
  def clip_feature(self) -> jax.Array:
    """f32[B, G, r*r*C_3 + 2C]: [clip tokens ‖ pixel_query] per cell, the encoder's output 0."""
    pixel_query = self.prior.pixel_query.astype(self.clip_tokens.dtype)
    return jnp.concatenate([self.clip_tokens, pixel_query], axis=-1)


class OMGSeg(nnx.Module):
  """cfg = configs.omg_seg config (backbone, head). with_backbone: build the ConvNeXt (default:
  cfg.with_backbone when the config has it, else True)."""

  def __init__(self, cfg, *, with_backbone: bool | None = None, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if with_backbone is None:
      with_backbone = bool(cfg.get('with_backbone', True))
    mods = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.backbone = ConvNeXt(cfg.backbone, **mods) if with_backbone else None
    self.pixel_decoder = MSDeformAttnPixelDecoder(cfg.head, **mods)
    self.decoder = MaskedAttentionDecoder(cfg.head, **mods)
    self.input_stride = int(cfg.head.strides[0])
    self.shuffle_ratio = int(cfg.head.pixel_shuffle_down_ratio)

  def __call__(self, pixels: jax.Array, *, max_valid: int | None = None) -> OMGSegOutputs:
    """pixels f32[B, S, S, 3] (padded square, CLIP-normalised, NHWC; S a multiple of 64)."""
    if self.backbone is None:
      raise ValueError('this OMGSeg was built without a backbone; call from_features')
    return self.from_features(self.backbone(pixels), max_valid=max_valid)

  def from_features(self, feats: Sequence[jax.Array], *, image_size: Sequence[int] | None = None,
                    max_valid: int | None = None) -> OMGSegOutputs:
    """feats: the backbone maps f32[B, H_i, W_i, C_i], stride 4 first.

    image_size: the padded input size (S_h, S_w) the final mask logits are upsampled to for the
    prior (default: the stride-4 map's size times its stride). max_valid: the prior's valid-query
    buffer size (default min(Q, G)).
    """
    mask_features, memories = self.pixel_decoder(list(feats))
    dec = self.decoder(mask_features, memories)
    if image_size is None:
      image_size = tuple(self.input_stride * n for n in feats[0].shape[1:3])
    tokens = clip_tokens(feats[-1], self.shuffle_ratio)
    grid = tuple(n // self.shuffle_ratio for n in feats[-1].shape[1:3])
    query_pos = jnp.broadcast_to(self.decoder.query_embed[...].astype(dec.queries.dtype),
                                 dec.queries.shape[1:])
    prior = panoptic_postprocess(dec.class_logits[-1], dec.mask_logits[-1], dec.queries[-1],
                                 query_pos, tuple(int(s) for s in image_size), grid, max_valid)
    return OMGSegOutputs(mask_features=mask_features, memories=tuple(memories), decoder=dec,
                         clip_tokens=tokens, prior=prior)

  def forward_seg(self, seg_queries: jax.Array, image_index: jax.Array, seg_valid: jax.Array,
                  mask_features: jax.Array, memories: Sequence[jax.Array]) -> DecoderOutputs:
    """The [SEG] path (`forward_llm_seg`) against cached `mask_features` / `memories` of the B
    images: seg_queries f32[N, 2C] ([:C] content, [C:] position), image_index i32[N],
    seg_valid bool[N]. See MaskedAttentionDecoder.forward_seg."""
    return self.decoder.forward_seg(seg_queries, image_index, seg_valid, mask_features, memories)
