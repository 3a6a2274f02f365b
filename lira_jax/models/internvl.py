"""InternVL2: semantic encoder (InternViT + pixel shuffle + mlp1) feeding an LLM through
`<IMG_CONTEXT>` placeholder tokens.

Axis letters: B batch, T text positions, I tiles per sample (static buffer), N tokens per tile,
D LLM hidden, S tile side, C channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.models.intern_vit import SemanticEncoder
from lira_jax.models.llm import LLM


def splice_image_tokens(embeds: jax.Array, input_ids: jax.Array, image_embeds: jax.Array,
                        image_context_id: int) -> jax.Array:
  """Overwrites `<IMG_CONTEXT>` positions, in order, by the sample's image tokens.

  embeds f32[B, T, D]; input_ids i32[B, T]; image_embeds f32[B, M, D] (M = I·N, tile-major).
  The k-th `<IMG_CONTEXT>` of sample b takes image_embeds[b, k]; placeholders beyond M keep their
  text embedding (the caller guarantees counts match; `count_image_tokens` checks on the host).
  """
  is_ctx = input_ids == image_context_id
  slot = jnp.cumsum(is_ctx, axis=1) - 1
  slot = jnp.clip(slot, 0, image_embeds.shape[1] - 1)
  gathered = jnp.take_along_axis(image_embeds, slot[..., None], axis=1)
  return jnp.where(is_ctx[..., None], gathered.astype(embeds.dtype), embeds)


class InternVL(nnx.Module):
  """`vision` (SemanticEncoder) + `llm` (LLM)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.image_context_id = int(cfg.image_context_id)
    self.vision = SemanticEncoder(cfg.vision, cfg.projector, cfg.llm.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, remat_policy=cfg.remat_policy,
                                  rngs=rngs)
    self.llm = LLM(cfg.llm, dtype=dtype, param_dtype=param_dtype,
                   remat_policy=cfg.remat_policy, rngs=rngs)

  def encode_images(self, tiles: jax.Array) -> jax.Array:
    """tiles f32[B, I, S, S, 3] -> image tokens f32[B, I·N, D] (tile-major)."""
    b, i = tiles.shape[:2]
    feats = self.vision(tiles.reshape(b * i, *tiles.shape[2:]))
    return feats.reshape(b, i * feats.shape[1], feats.shape[2])

  def input_embeddings(self, input_ids: jax.Array, tiles: jax.Array | None) -> jax.Array:
    """Token embeddings f32[B, T, D] with `<IMG_CONTEXT>` positions replaced by image tokens."""
    embeds = self.llm.embed_tokens(input_ids)
    if tiles is None:
      return embeds
    return splice_image_tokens(embeds, input_ids, self.encode_images(tiles),
                               self.image_context_id)

  def __call__(self, input_ids: jax.Array, valid: jax.Array, tiles: jax.Array | None = None,
               *, return_hidden_states: bool = False):
    """Logits f32[B, T, V] for ids i32[B, T] with validity bool[B, T] and tiles f32[B, I, S, S, 3]."""
    embeds = self.input_embeddings(input_ids, tiles)
    return self.llm(embeds, valid, return_hidden_states=return_hidden_states)
