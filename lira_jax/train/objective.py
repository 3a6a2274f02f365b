"""The LIRA training objective as released: text CE + (stage 2) point-sampled Dice/BCE over every
[SEG] prediction step, or (stage 1) text CE + the query re-projection MSE; stage 0 (the synthetic
stand-in for the pretrained checkpoints LIRA starts from) is the panoptic loss of the OMG-Seg
decoder plus, when the batch has text, the text CE of the InternVL model alone."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lira_jax.models.lira import LIRA, seg_targets
from lira_jax.train import losses, panoptic


def lira_loss(model: LIRA, batch: dict, rng: jax.Array, loss_cfg, *, pixel_feats=None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total loss f32[], logged parts). batch: LIRA.__call__'s inputs plus gt_masks
  f32[B, K, Hg, Wg] (target k of a sample is the k-th [SEG]/[REJ] target of its answer); in
  stage 0: pixels and the synthetic_panoptic targets."""
  if model.stage == 0:
    dec = model.omg(batch['pixels']).decoder
    parts = panoptic.panoptic_loss(dec.class_logits, dec.mask_logits, batch, loss_cfg.panoptic)
    if 'ids' in batch:
      logits, plan = model.internvl_logits(batch)
      parts['text'], parts['num_tokens'] = losses.text_loss(logits, plan.labels)
    return losses.total_loss(parts, loss_cfg)
  out = model(batch, pixel_feats=pixel_feats)
  text, num_tokens = losses.text_loss(out.logits, out.plan.labels)
  parts = {'text': text, 'num_tokens': num_tokens}
  if model.stage == 1:
    pred = model.reproject_queries(out.query_feat)
    parts['proj'] = losses.projection_loss(pred, out.query_feat, weight=loss_cfg.proj_weight,
                                           valid=out.query_keep)
  else:
    gt = seg_targets(out.plan, batch['gt_masks'])
    parts.update(losses.mask_losses(rng, out.seg_mask_logits, gt, out.seg_valid, loss_cfg))
    parts['seg_dropped'] = jnp.sum(out.plan.num_seg) - jnp.sum(out.plan.seg_valid)
  return losses.total_loss(parts, loss_cfg)
