"""[SEG] pointer loss (not in the released recipe; off unless loss.pointer_weight > 0): each
[SEG] query should land on the OMG query of the object it names.

LIRA's stage-1 projection loss makes the [SEG] projector an approximate inverse of the object-query
projector, so a [SEG] hidden state that copies an object token decodes as that object's query;
the mask loss alone must then teach the LLM which token to copy. Where nothing is pretrained, a
from-scratch LLM learns to carry into [SEG] only what the decoder can match per pixel (colour),
not what needs the object (shape, size). This loss names the token: the target of a [SEG] slot is
the query vector g = [final query ‖ query_embed] of the panoptic query whose final mask best
overlaps the slot's GT mask, when that overlap is an object (IoU >= min_iou; multi-object and
empty targets have none), regressed like the projection loss (weight · MSE, gradient stopped on g).

Axis letters: B images, M [SEG] slots per image, N = B·M, Q panoptic queries, C head channels,
h/w the stride-4 mask grid, Hg/Wg the GT side.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lira_jax.train.losses import projection_loss


def pointer_match(query_mask_logits: jax.Array, gt_masks: jax.Array, valid: jax.Array,
                  min_iou: float) -> tuple[jax.Array, jax.Array]:
  """query_mask_logits f32[B, Q, h, w], gt_masks f32[N, Hg, Wg] (slot n belongs to image n // M),
  valid bool[N] -> (the query whose mask best overlaps each slot's target i32[N], whether that
  overlap is an object: IoU >= min_iou, bool[N])."""
  b, q, h, w = query_mask_logits.shape
  n, hg, wg = gt_masks.shape
  if hg % h or wg % w:
    raise ValueError(f'GT side {(hg, wg)} is not a multiple of the mask grid {(h, w)}')
  image = jnp.arange(n) // (n // b)
  # The GT on the mask grid: cells mostly inside (area average > 0.5).
  cells = gt_masks.astype(jnp.float32).reshape(n, h, hg // h, w, wg // w).mean((2, 4))
  gt = cells > 0.5  # [N, h, w]
  pred = query_mask_logits[image] > 0  # [N, Q, h, w]
  inter = jnp.sum(pred & gt[:, None], axis=(-2, -1))
  union = jnp.sum(pred | gt[:, None], axis=(-2, -1))
  iou = inter / jnp.maximum(union, 1)  # [N, Q]
  best = jnp.argmax(iou, axis=-1)
  has = valid & (jnp.take_along_axis(iou, best[:, None], axis=-1)[:, 0] >= min_iou)
  return best.astype(jnp.int32), has


def pointer_targets(query_mask_logits: jax.Array, query_feat: jax.Array, gt_masks: jax.Array,
                    valid: jax.Array, min_iou: float) -> tuple[jax.Array, jax.Array]:
  """As `pointer_match`, with query_feat f32[B, Q, 2C] -> (target g f32[N, 2C], has bool[N])."""
  best, has = pointer_match(query_mask_logits, gt_masks, valid, min_iou)
  image = jnp.arange(best.shape[0]) // (best.shape[0] // query_feat.shape[0])
  return jax.lax.stop_gradient(query_feat[image, best]), has


def pointer_loss(seg_queries: jax.Array, query_mask_logits: jax.Array, query_feat: jax.Array,
                 gt_masks: jax.Array, valid: jax.Array, *, weight: float, min_iou: float
                 ) -> tuple[jax.Array, jax.Array]:
  """(weight · MSE between seg_queries f32[N, 2C] and their pointer targets over the slots that
  have one, number of such slots i32[])."""
  target, has = pointer_targets(query_mask_logits, query_feat, gt_masks, valid, min_iou)
  return projection_loss(seg_queries, target, weight=weight, valid=has), has.sum()
