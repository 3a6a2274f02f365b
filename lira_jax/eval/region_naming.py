"""Teacher-forced GCG phrase accuracy: does the phrase after each grounded [SEG] name the object?
The quantity ILVC is for (LIRA's claim: a description grounded in the local image of the region
just segmented hallucinates less).

With ILVC the answer reads `[SEG]<image_id><image> <p> a red circle </p> [SEG]` and the phrase
is predicted after the local image; without, `[SEG] <p> a red circle </p>`. A phrase counts as
right when every token strictly between `<p>` and `</p>` is the argmax of the logits before it.
Two local images:
  GT   the crop of the GT mask, as the released training data renders it: teacher forcing all
       the way (`phrase_hits` on the evaluator's own pass, lira_jax.eval.teacher_forced);
  own  the crop of the model's own first-[SEG] mask (refined, on the original image), what the
       released inference loop feeds: a second pass with those crops (`own_region_hits`).

Axis letters: B batch, L sequence, V vocabulary, R phrases = region slots, H / W image canvas.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax import ilvc
from lira_jax.models.omg_head import seg_masks_to_image
from lira_jax.sequence import first_slot_per_target


def phrase_hits(pred_ids: jax.Array, labels: jax.Array, tokens: Mapping[str, int],
                num_phrases: int) -> tuple[jax.Array, jax.Array]:
  """pred_ids i32[B, L] (the argmax of the logits at each position; position t predicts
  labels[t + 1]), labels i32[B, L], tokens: the ids of p_start / p_end -> (phrase r entirely
  right bool[B, R], phrase r exists bool[B, R])."""
  opened = jnp.cumsum(labels == tokens['p_start'], axis=1)
  inside = (opened - jnp.cumsum(labels == tokens['p_end'], axis=1) > 0) & (
      labels != tokens['p_start'])
  predicted = jnp.concatenate([jnp.full_like(labels[:, :1], -1), pred_ids[:, :-1]], axis=1)
  phrase = jnp.where(inside, opened - 1, num_phrases)  # phrase index of each token; R: none
  in_phrase = phrase[..., None] == jnp.arange(num_phrases)  # [B, L, R]
  wrong = jnp.any(in_phrase & (predicted != labels)[..., None], axis=1)
  exists = jnp.any(in_phrase, axis=1)
  return exists & ~wrong, exists


def own_region_hits(model, batch: dict, tokens: Mapping[str, int]) -> dict[str, jax.Array]:
  """batch: a LIRA batch of GCG answers with ILVC plus image u8[B, H, W, 3] (the original
  images, top-left in the canvas) and image_hw i32[B, 2] -> right / valid bool[B, R] with the
  local images of the model's own first-[SEG] masks. Every GCG target is present, so region r
  is target r's."""
  regions = batch['regions']
  b, r, side = regions.shape[0], regions.shape[1], regions.shape[2]
  first = model(batch)
  slot, has_slot = first_slot_per_target(first.plan, r)
  logits = first.seg_mask_logits[-1].reshape(b, -1, *first.seg_mask_logits.shape[-2:])
  logits = jnp.take_along_axis(logits, slot[:, :, None, None], axis=1)
  logits = model.refine_seg_logits(logits.reshape(b * r, *logits.shape[2:]), batch['pixels'],
                                   jnp.repeat(jnp.arange(b, dtype=jnp.int32), r))
  masks = seg_masks_to_image(logits, jnp.repeat(batch['image_hw'], r, axis=0),
                             has_slot.reshape(-1), batch['image'].shape[1:3])
  tiles = jax.vmap(lambda image, m, hw: ilvc.region_tiles(image, m, hw, side))(
      batch['image'], masks.reshape(b, r, *masks.shape[1:]), batch['image_hw'])
  own = model(dict(batch, regions=tiles.astype(regions.dtype)))
  right, valid = phrase_hits(jnp.argmax(own.logits, axis=-1), own.plan.labels, tokens, r)
  return dict(right=right, valid=valid)


def make_own_region_fn(graphdef: nnx.GraphDef, tokens: Mapping[str, int]):
  """jit(states, batch) -> own_region_hits(...), for the model nnx.merge(graphdef, *states)."""
  tokens = {key: int(tokens[key]) for key in ('p_start', 'p_end')}

  @jax.jit
  def fn(states, batch):
    return own_region_hits(nnx.merge(graphdef, *states), batch, tokens)

  return fn
